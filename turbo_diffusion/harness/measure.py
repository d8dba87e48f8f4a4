"""The measurement layer shared by `bench`, `compare` and `generate`: methods installed in turn on one model,
timed with the device synchronised, peak memory (`memory`), optionally under ``torch.compile``.

`time_interleaved` is the protocol: one priming call with the first method, so one-time initialisation (kernel
selection, library workspaces, allocator pools) is charged to no method; with ``compile_backend``, one compiling
call per method, timed on its own (``Timing.compile_seconds``); warm-up rounds, one call per method each, the first
of which measures peak memory, so the timed calls run without a sampling thread; then repeats that visit the
methods in rotating order, so drift on a shared machine hits them all alike. The minimum over repeats is the
least-disturbed run (noise only adds time); ``Timing.spread`` (max / min) says how disturbed the run was.

A method is anything with a ``name`` and ``install(model)`` / ``uninstall(model)``: a `methods.Method` bound to
its grid, or a custom pair (`turbo_diffusion.bench.Variant`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .memory import PeakMemory, peak_memory

Progress = Callable[[str], None]
NOISY_SPREAD = 1.5  # max / min above this flags a measurement as noisy
RECOMPILE_LIMIT = 64  # torch.compile cache entries per frame while methods take turns (torch's default is 8)


class Installable(Protocol):
    name: str

    def install(self, model: Any) -> None: ...

    def uninstall(self, model: Any) -> None: ...


@dataclass
class Timing:
    """Seconds of one method's timed calls, the peak memory of its first warm-up call and, under
    ``torch.compile``, the seconds of its compiling call and how many timed calls compiled again."""

    name: str
    seconds: list[float] = field(default_factory=list)
    memory: PeakMemory | None = None
    compile_seconds: float | None = None
    recompiles: int | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    @property
    def spread(self) -> float:
        """Slowest over fastest timed call: 1 on a quiet machine, far above on a busy one."""
        return self.worst / self.best

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


@contextmanager
def installed(model: Any, method: Installable) -> Iterator[None]:
    """``method`` installed on ``model`` for the duration of the block."""
    method.install(model)
    try:
        yield
    finally:
        method.uninstall(model)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so a clock read covers the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``call()``'s result and its wall-clock seconds, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return result, time.perf_counter() - start


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """``items`` starting at ``shift`` (modulo their number): the order of repeat ``shift``."""
    shift %= max(len(items), 1)
    return [*items[shift:], *items[:shift]]


def compile_module(module: torch.nn.Module, backend: str, scope: str = "unet", mode: str | None = None) -> None:
    """``torch.compile`` ``module`` in place, so pipelines and methods still see the same module class:
    ``scope="unet"`` the whole module (`nn.Module.compile`), ``"blocks"`` its repeated blocks only (diffusers'
    ``compile_repeated_blocks``, regional compilation), with torch.compile's ``mode`` (``"reduce-overhead"``: CUDA
    graphs). Compilation happens at the first call after each method is installed, once per method."""
    options = {"backend": backend} if mode is None else {"backend": backend, "mode": mode}
    if scope == "blocks":
        module.compile_repeated_blocks(**options)
    elif scope == "unet":
        module.compile(**options)
    else:
        raise ValueError(f"compile scope must be 'unet' or 'blocks', got {scope!r}")


def eager() -> Any:
    """A context in which compiled modules run eagerly (torch >= 2.6; else nothing changes)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance else nullcontext()


def compile_count() -> int:
    """Graphs torch.compile has made so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def time_interleaved(
    model: Any,
    methods: Sequence[Installable],
    call: Callable[[], Any],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    measure_memory: bool = True,
    progress: Progress | None = None,
    compiled: bool = False,
) -> dict[str, Timing]:
    """Time ``call()`` with each method installed on ``model`` (see the module docstring for the protocol).

    Args:
        model: what methods install on (a pipeline or a UNet).
        methods: the methods; their names must be unique.
        call: one measured unit of work (a UNet step, a generation).
        device: where ``call`` runs (for synchronisation and memory).
        repeats: timed calls per method, in rotating order. More repeats make the minimum more reliable.
        warmup: untimed rounds before timing, at least 1 when ``measure_memory`` (memory comes from the first).
        measure_memory: record each method's peak memory during its first warm-up call.
        progress: called with a short description after every call.
        compiled: ``call`` runs a module compiled with `compile_module`: prime eagerly, then time one compiling
            call per method and count the timed calls that compiled again (``Timing.recompiles``).
    """
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    timings = {name: Timing(name) for name in names}
    report = progress or (lambda _: None)
    limit = nullcontext()
    if compiled:
        from torch._dynamo import config as dynamo_config

        limit = dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT)
    with torch.inference_mode(), limit:
        with installed(model, methods[0]), eager() if compiled else nullcontext():
            call()
        report(f"priming {methods[0].name}")
        for m in methods if compiled else ():
            with installed(model, m):
                timings[m.name].compile_seconds = timed(call, device)[1]
            report(f"compile {m.name}")
        for round_ in range(warmup):
            for m in methods:
                with installed(model, m):
                    if measure_memory and round_ == 0:
                        with peak_memory(device) as timings[m.name].memory:
                            call()
                    else:
                        call()
                report(f"warm-up {m.name}")
        for rep in range(repeats):
            for m in rotated(methods, rep):
                graphs = compile_count() if compiled else 0
                with installed(model, m):
                    timings[m.name].seconds.append(timed(call, device)[1])
                if compiled:
                    timings[m.name].recompiles = (timings[m.name].recompiles or 0) + (compile_count() > graphs)
                report(f"repeat {rep + 1}/{repeats} {m.name}")
    return timings
