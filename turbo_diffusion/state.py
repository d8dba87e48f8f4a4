"""Turbo's mutable state: one `CallState` per installation and thread, asked by the processors through one
interface whatever route installed them.

* `Generation`: consecutive UNet calls that are the steps of one denoising loop. It is opened explicitly: by a
  pipeline call (around its denoising loop) or by ``with turbo_generation(unet):`` (see
  :mod:`turbo_diffusion.generation`), and closed when that ends, on success or failure. Nothing else is a
  generation: a UNet call outside one is a generation of its own, so it never reuses a plan, a text mass or a
  prompt of another call.
* `CallState`: where this thread's current UNet call is. Its two kinds differ only in how they find a layer's
  token grid: `HookedCall` (`apply_turbo`: its UNet hook reports the latent size and timestep) and `BareCall`
  (``unet.set_attn_processor(TurboProcessor(...))``: the first self-attention layer it sees is the reference).
  Both offer the processor the same things: ``level``, ``block``, ``current``, ``partition`` (the call's
  shared tables), ``timestep``, ``content_mask``, and the clock (``planning``, ``previous`` and their tensor
  forms for compiled graphs).
* `BlockState`: what one transformer block keeps: this call's plan (for its cross-attention and feed-forward),
  the plan it reuses under ``plan_every``, the previous step's text mass.

Every `CallState` lives in a `ThreadLocal`, so two threads calling one Turbo UNet each see their own calls, as if
they had run one after the other. Nothing here reads a device value into Python: the clock is Python integers
(a timestep is compared only when it is already on the host), and compiled graphs receive its decisions as CPU
scalar tensors, which they read without waiting for the device.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .config import TurboConfig
from .core import MergePlan, Partition, partition_tokens, seeded_offsets, window_grid
from .levels import Level, locate_from_reference, locate_level
from .prompts import EncodedPrompt, content_mask

T = TypeVar("T")

# The clock's decisions as graph inputs: one of two constant CPU scalars per decision (a compiled graph reads them
# on the host, with no device sync, and never specialises on which one it got). Four objects, not two: one tensor
# passed as both inputs would make dynamo recompile ("duplicate tensors").
_PLANNING = {True: torch.tensor(True), False: torch.tensor(False)}
_PREVIOUS = {True: torch.tensor(True), False: torch.tensor(False)}
_SERIALS = itertools.count(1)
_NUMPY_READABLE = (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.uint8)


class ThreadLocal(Generic[T]):
    """One value per thread, made by ``factory`` on the thread's first `get`."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._local = threading.local()
        self._factory = factory

    def get(self) -> T:
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._factory()
        return value

    def __deepcopy__(self, memo: dict) -> ThreadLocal[T]:
        """A copy starts with no per-thread values (a copied model has made no call yet); ``copy.deepcopy`` of a
        Turbo UNet would otherwise fail on ``threading.local``."""
        return ThreadLocal(self._factory)


@dataclass
class BlockState:
    """One transformer block's state in one thread.

    Attributes:
        plan: the plan its self-attention made in this UNet call, until the block's last component used it.
        saved: the plan reused under ``plan_every`` (eager mode), and ``saved_in``, the serial of the generation
            that made it: a plan is only ever reused inside the generation that made it.
        storage: ``MergePlan.indices()``-shaped tensors that compiled graphs copy each new plan into (their
            addresses are static, as CUDA graphs require); ``None`` until the shapes are known.
        text_mass: ``(B, N)`` float32 cross-attention mass on the prompt's content tokens of this generation's
            last step (``semantic="text"``); static storage for compiled graphs.
    """

    plan: MergePlan | None = None
    saved: MergePlan | None = None
    saved_in: int = 0
    storage: tuple[torch.Tensor, ...] | None = None
    text_mass: torch.Tensor | None = None


@dataclass
class Generation:
    """One denoising loop in one thread, between its explicit start and end.

    Attributes:
        serial: unique per generation (plans are tagged with it).
        step: UNet calls of this generation so far, minus one (``-1`` before the first).
        key: ``(batch, latent size, device, dtype)`` of its calls; a call with another key starts afresh.
        last_time: the previous call's timestep when it was on the host (a Python number or a CPU tensor).
        calling: a call started and did not return (it raised): the next call starts afresh.
        prompt: what the pipeline call that opened it encoded (``semantic="text"``), or ``None``.
    """

    serial: int
    step: int = -1
    key: tuple | None = None
    last_time: float | None = None
    calling: bool = False
    prompt: EncodedPrompt | None = None


class BlockMemory:
    """Where `apply_turbo`'s processors find their transformer block's state: one per block, shared by its
    self-attention, cross-attention and feed-forward, one `BlockState` per thread. Reached by attribute from the
    layer's processor, so a compiled block (``compile_repeated_blocks``) reads it without specialising on which
    block it is."""

    def __init__(self) -> None:
        self._states: ThreadLocal[BlockState] = ThreadLocal(BlockState)

    def state(self, call: CallState, attn: object) -> BlockState:
        return self._states.get()


class LayerMemory:
    """Where a bare `TurboProcessor` (one instance on every layer) finds a block's state: the call state keeps
    one per self-attention layer."""

    def state(self, call: CallState, attn: object) -> BlockState:
        return call.state_of(attn)


class CallState:
    """This thread's current UNet call on one installation (see the module docstring).

    Attributes:
        timestep: ``(1,)`` float32 timestep on the sample's device (seeds the destinations), or ``None``.
        current: the state of the block whose self-attention ran last (its cross-attention and feed-forward run
            next, in this thread).
        generation: the open `Generation`, or ``None``.
        planning, previous: the clock: whether blocks plan afresh at this call, and whether this generation had
            a step before it (whose text mass is then valid); as tensors ``planning_flag`` / ``previous_flag``.
    """

    def __init__(self, config: TurboConfig, max_downsample: int) -> None:
        self.config = config
        self.max_downsample = max_downsample
        self.timestep: torch.Tensor | None = None
        self.current: BlockState | None = None
        self.generation: Generation | None = None
        self._set_clock(planning=True, previous=False)
        self._blocks: dict[int, BlockState] = {}
        self._partitions: dict[tuple, Partition] = {}
        self._content: tuple[tuple, torch.Tensor | None] | None = None

    # -- what the processor asks -----------------------------------------------------------------------------
    def level(self, attn: object, num_tokens: int) -> Level | None:
        """The merged level a self-attention layer of ``num_tokens`` tokens runs at, or ``None``."""
        raise NotImplementedError

    def state_of(self, attn: object) -> BlockState:
        """The state of the block whose self-attention is ``attn``, kept by this call state (the bare route's
        `LayerMemory`)."""
        state = self._blocks.get(id(attn))
        if state is None:
            state = self._blocks[id(attn)] = BlockState()
        return state

    def partition(self, level: Level, device: torch.device) -> Partition:
        """The destinations, sources and candidate tables of ``level``'s grid at this call: they depend on (seed,
        timestep, grid) only, so the first block of the grid makes them and the others share them (in eager
        mode; a compiled graph recomputes them per block, where they fuse into its kernels)."""
        cfg = self.config
        key = (level.height, level.width, level.sx, level.sy, str(device))
        partition = None if torch.compiler.is_compiling() else self._partitions.get(key)
        if partition is None:
            grid = window_grid(level.height, level.width, level.sx, level.sy, cfg.match_radius, str(device))
            offsets = seeded_offsets(grid, cfg.seed, self.timestep) if cfg.use_rand else None
            partition = partition_tokens(grid, offsets)
            if not torch.compiler.is_compiling():
                self._partitions[key] = partition
        return partition

    def content_mask(self, batch: int) -> torch.Tensor | None:
        """``(B, L)`` bool: the prompt's content tokens of this generation, or ``None`` when unknown."""
        return None

    # -- the clock ---------------------------------------------------------------------------------------------
    def open_generation(self) -> Generation | None:
        """Start a generation in this thread; returns the one it replaces (to put back with `close_generation`)."""
        outer, self.generation = self.generation, Generation(next(_SERIALS))
        self._clear_clock()
        return outer

    def close_generation(self, outer: Generation | None) -> None:
        self.generation = outer
        self._clear_clock()

    def start(self, key: tuple, timestep: object) -> None:
        """A UNet call starts: advance the clock. ``key`` is ``(batch, latent size, device, dtype)``; a new key, a
        call after one that raised, or a host timestep not strictly below the previous call's starts the
        generation afresh (a GPU timestep is not read: that would stall the device)."""
        self.current = None
        self._partitions.clear()
        generation = self.generation
        if generation is None:
            self._clear_clock()
            return
        time = _host_value(timestep)
        fresh = (generation.step < 0 or generation.calling or key != generation.key
                 or (time is not None and generation.last_time is not None and time >= generation.last_time))
        generation.step = 0 if fresh else generation.step + 1
        generation.key, generation.last_time, generation.calling = key, time, True
        self._set_clock(planning=generation.step % self.config.plan_every == 0, previous=generation.step > 0)

    def finish(self) -> None:
        """The UNet call returned."""
        self.current = None
        if self.generation is not None:
            self.generation.calling = False

    def _clear_clock(self) -> None:
        self._set_clock(planning=True, previous=False)

    def _set_clock(self, planning: bool, previous: bool) -> None:
        # Attributes, not properties: a compiled graph reads the tensors as inputs; a property would make it read
        # (and specialise on) the Python bool.
        self.planning, self.previous = planning, previous
        self.planning_flag, self.previous_flag = _PLANNING[planning], _PREVIOUS[previous]

    def __deepcopy__(self, memo: dict) -> CallState:
        return type(self)(self.config, self.max_downsample)


class HookedCall(CallState):
    """`apply_turbo`'s route: its UNet hook reports every call's latent size and timestep."""

    def __init__(self, config: TurboConfig, max_downsample: int) -> None:
        super().__init__(config, max_downsample)
        self.latent_hw: tuple[int, int] | None = None
        self.batch = 0

    def level(self, attn: object, num_tokens: int) -> Level | None:
        if self.latent_hw is None:  # called outside a UNet call (unet.forward bypasses module hooks)
            return None
        cfg = self.config
        return locate_level(self.latent_hw, num_tokens, self.max_downsample, cfg.sx, cfg.sy)

    def begin(self, sample: torch.Tensor, timestep: object) -> bool:
        """The UNet hook's report. Returns True when the shapes changed (the caller then sizes the blocks'
        storage); tensor ops only, nothing is read back from the device."""
        latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        reshaped = (sample.shape[0], latent_hw) != (self.batch, self.latent_hw)
        self.latent_hw, self.batch = latent_hw, sample.shape[0]
        self.timestep = _timestep_tensor(timestep, sample.device)
        self.start((self.batch, latent_hw, sample.device, sample.dtype), timestep)
        return reshaped

    def content_mask(self, batch: int) -> torch.Tensor | None:
        generation = self.generation
        if generation is None or generation.prompt is None or self.timestep is None:
            return None
        key = (generation.serial, batch, self.timestep.device)
        if self._content is None or self._content[0] != key:
            mask = content_mask(generation.prompt, batch)
            self._content = (key, mask.to(self.timestep.device) if mask is not None else None)
        return self._content[1]


class BareCall(CallState):
    """The bare-processor route's stand-in for the UNet hook: the first self-attention layer it sees is the
    reference, and each time that layer runs a new UNet call starts (for the call's shared tables; the clock of
    a generation is driven by `turbo_generation`'s UNet hooks)."""

    def __init__(self, config: TurboConfig, max_downsample: int) -> None:
        super().__init__(config, max_downsample)
        self.reference_tokens = 0
        self._leader: int | None = None

    def level(self, attn: object, num_tokens: int) -> Level | None:
        if self._leader is None:
            self._leader = id(attn)
        if self._leader == id(attn):
            self.reference_tokens = num_tokens
            if not torch.compiler.is_compiling():
                self._partitions.clear()
        cfg = self.config
        return locate_from_reference(self.reference_tokens, num_tokens, self.max_downsample, cfg.sx, cfg.sy)


def _host_value(timestep: object) -> float | None:
    """The timestep as a Python float when reading it costs nothing (a number or a CPU tensor), else ``None``.

    A CPU tensor is read through numpy, which shares its memory without dispatching a tensor operation, so a CPU
    run dispatches exactly the operations a GPU run does (the op counts in tests and benchmarks rely on that)."""
    if isinstance(timestep, (int, float)):
        return float(timestep)
    if (isinstance(timestep, torch.Tensor) and timestep.device.type == "cpu" and timestep.numel() > 0
            and not timestep.requires_grad and timestep.dtype in _NUMPY_READABLE):
        return float(timestep.numpy().reshape(-1)[0])
    return None


def _timestep_tensor(timestep: object, device: torch.device) -> torch.Tensor | None:
    """A UNet call's timestep as a ``(1,)`` float32 tensor on ``device``, without reading it into Python."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            return None
        first = timestep.reshape(1) if timestep.numel() == 1 else timestep.reshape(-1)[:1]
        return first.detach().to(device=device, dtype=torch.float32) if first.requires_grad else \
            first.to(device=device, dtype=torch.float32)
    if isinstance(timestep, (int, float)):
        return torch.full((1,), float(timestep), dtype=torch.float32, device=device)
    return None
