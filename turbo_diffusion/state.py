"""Turbo's mutable state, split by concern and kept per thread.

* `CallState`: the clock of the UNet calls that `apply_turbo`'s UNet hook reports (latent size, timestep, step
  of the generation), and the prompt's content tokens.
* `BareCallState`: the same for the bare-processor route, which has no hook and counts calls itself.
* `BlockState`: what one transformer block keeps: this call's plan (for its cross-attention and feed-forward),
  the plan indices it reuses under ``plan_every``, the previous step's text mass.

Every piece lives in a `ThreadLocal`, so two threads calling one Turbo UNet each see their own calls, as if they
had run one after the other. Everything that changes from step to step is a tensor (the timestep, the step
count): a compiled graph reads it as an input and never specialises on its value, and nothing here reads a
tensor value into Python except `CallState.is_planning_step`, in eager mode only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .core import MergePlan

T = TypeVar("T")


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
        saved: ``MergePlan.indices()`` kept for reuse under ``plan_every`` (see ``MergePlan.empty_indices``).
        text_mass: ``(B, N)`` float32 cross-attention mass on the prompt's content tokens, from the last step.
    """

    plan: MergePlan | None = None
    saved: tuple[torch.Tensor, ...] | None = None
    text_mass: torch.Tensor | None = None

    def keep(self, name: str, value: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        """Store ``value`` as ``saved`` or ``text_mass``: copied into the existing storage when the shapes agree
        (compiled graphs then mutate an input instead of growing Python state), else assigned."""
        current = getattr(self, name)
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if current is not None and current.shape == value.shape:
                current.copy_(value)
                return
        elif current is not None and all(c.shape == v.shape for c, v in zip(current, value, strict=True)):
            for c, v in zip(current, value, strict=True):
                c.copy_(v)
            return
        setattr(self, name, value)


def block_memory() -> ThreadLocal[BlockState]:
    """The per-thread `BlockState` of one transformer block (shared by its processors and feed-forward hook)."""
    return ThreadLocal(BlockState)


class CallState:
    """Where the current UNet call is, as `apply_turbo`'s UNet hook reported it (one per thread).

    Attributes:
        latent_hw: the latent's ``(h, w)``.
        batch: the UNet batch.
        timestep: ``(1,)`` float32 timestep on the sample's device (the first element of a per-sample one).
        step: ``(1,)`` int64 UNet calls since the generation started. A timestep above the previous call's
            starts a new generation (denoising runs towards t = 0), and so does a new batch, latent size or
            device.
        content_mask: ``(B, L)`` bool, True for the prompt's content tokens, or ``None`` when unknown.
    """

    def __init__(self) -> None:
        self.latent_hw: tuple[int, int] | None = None
        self.batch = 0
        self.timestep: torch.Tensor | None = None
        self.step: torch.Tensor | None = None
        self.content_mask: torch.Tensor | None = None
        self.prompt_key: tuple | None = None  # what content_mask was laid out from
        self._key: tuple | None = None
        self._planning: bool | None = None

    def start(self, latent_hw: tuple[int, int], batch: int, device: torch.device, timestep: object) -> bool:
        """Advance the clock to a new UNet call. Returns True when the shapes changed (the caller then
        reallocates the blocks' storage); tensor ops only, nothing is read back from the device."""
        t = _timestep_tensor(timestep, device)
        key = (batch, latent_hw, device)
        reshaped = key != self._key or self.step is None
        if reshaped:
            self.step = torch.zeros(1, dtype=torch.long, device=device)
        elif t is not None and self.timestep is not None:
            self.step = torch.where(t > self.timestep, 0, self.step + 1)
        else:
            self.step = self.step + 1
        self._key, self.latent_hw, self.batch, self.timestep = key, latent_hw, batch, t
        self._planning = None
        return reshaped

    def planning_due(self, every: int) -> torch.Tensor:
        """``(1,)`` bool: whether blocks plan afresh at this call (every ``every`` calls from the generation's
        start), as a tensor for ``torch.cond``."""
        return self.step % every == 0

    def is_planning_step(self, every: int) -> bool:
        """`planning_due` as a Python bool, for eager mode: reads one value from the device, once per UNet call
        (Python cannot branch on a device value otherwise)."""
        if self._planning is None:
            self._planning = bool(self.planning_due(every))
        return self._planning

    def has_previous_step(self) -> torch.Tensor:
        """``(1, 1)`` bool: whether this generation had a step before this call (so last step's text mass
        belongs to it), to broadcast over ``(B, N)``."""
        return (self.step > 0).view(1, 1)


class BareCallState:
    """The bare-processor route's stand-in for the UNet hook (one per thread): the first self-attention layer it
    sees is the reference, and each time that layer runs a new UNet call starts."""

    def __init__(self) -> None:
        self.reference_tokens = 0
        self.step = -1
        self.current: BlockState | None = None  # the block whose self-attention ran last
        self._leader: weakref.ref | None = None
        self._blocks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def see_layer(self, attn: object, num_tokens: int) -> None:
        """Note a self-attention layer's call: the reference layer starts a new UNet call."""
        if self._leader is None or self._leader() is None:
            self._leader = weakref.ref(attn)
        if self._leader() is attn:
            self.reference_tokens = num_tokens
            self.step += 1

    def block(self, attn: object) -> BlockState:
        """The state of the block whose self-attention is ``attn``; it becomes the current block."""
        state = self._blocks.get(attn)
        if state is None:
            state = self._blocks[attn] = BlockState()
        self.current = state
        return state

    def is_planning_step(self, every: int) -> bool:
        return self.step % every == 0


def _timestep_tensor(timestep: object, device: torch.device) -> torch.Tensor | None:
    """A UNet call's timestep as a ``(1,)`` float32 tensor on ``device``, without reading it into Python."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            return None
        return timestep.detach().reshape(-1)[:1].to(device=device, dtype=torch.float32)
    if isinstance(timestep, (int, float)):
        return torch.full((1,), float(timestep), dtype=torch.float32, device=device)
    return None
