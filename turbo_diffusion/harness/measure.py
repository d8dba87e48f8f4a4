"""The measurement layer shared by `bench`, `compare` and `generate`: methods installed in turn on one model,
timed with the device synchronised, peak memory (`memory`), optionally under ``torch.compile``.

`time_interleaved` is the protocol: one priming call with the first method, so one-time initialisation (kernel
selection, library workspaces, allocator pools) is charged to no method; with ``compile_backend``, one compiling
call per method, timed on its own (``Timing.compile_seconds``); warm-up rounds, one call per method each, the first
of which measures peak memory, so the timed calls run without a sampling thread; then repeats that visit the
methods in rotating order, so drift on a shared machine hits them all alike. The minimum over repeats is the
least-disturbed run (noise only adds time); ``Timing.spread`` (max / min) says how disturbed the run was.

A method is anything with a ``name`` and ``install(model)`` / ``uninstall(model)``: a `methods.Method` bound to
its grid, or anything shaped like one (`Installable`).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch

from .memory import PeakMemory, peak_memory

Progress = Callable[[str], None]
NOISY_SPREAD = 1.5  # max / min above this flags a measurement as noisy
QUICK_RUN = 10.0  # seconds: a run shorter than this is timed QUICK_REPEATS times per method by default
QUICK_REPEATS = 3
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


@dataclass(frozen=True)
class GenerationCost:
    """What one generation costs, split so that other step counts can be estimated: ``once`` is the work done
    once per image (text encoding, latents, decoding, the pipeline's own overhead), ``per_step`` one denoising
    step (the UNet calls of a step, guidance included)."""

    once: float
    per_step: float

    def estimate(self, steps: int) -> float:
        """Seconds of a generation of ``steps`` steps."""
        return self.once + steps * self.per_step


def generation_cost(pipe: Any, generate: Callable[[int], Any], device: torch.device, steps: int = 2) -> GenerationCost:
    """Run ``generate(steps)`` once, timing it whole and its UNet calls apart (a UNet hook synchronises the device
    around each), and split the time into `GenerationCost`: a step is the fastest UNet call (the first call of a
    process pays one-time set-up), the rest of the generation is the once-per-image work. A 1-step generation's
    whole time times the step count would count the text encoder and the decoder at every step: 2.5-4x too long
    on the CPU for 20 steps."""
    unet_seconds: list[float] = []
    started: list[float] = []

    def before(module: Any, args: Any) -> None:
        synchronize(device)
        started.append(time.perf_counter())

    def after(module: Any, args: Any, output: Any) -> None:
        synchronize(device)
        unet_seconds.append(time.perf_counter() - started.pop())

    handles = [pipe.unet.register_forward_pre_hook(before), pipe.unet.register_forward_hook(after)]
    try:
        _, total = timed(lambda: generate(steps), device)
    finally:
        for handle in handles:
            handle.remove()
    per_step = min(unet_seconds) * len(unet_seconds) / steps  # UNet calls per step: 1 with batched guidance
    return GenerationCost(once=max(total - sum(unet_seconds), 0.0), per_step=per_step)


def default_repeats(seconds_per_run: float) -> int:
    """Timed runs per method where the user did not say: `QUICK_REPEATS` where one run takes under `QUICK_RUN`
    seconds, else 1. One run each is no measurement on a shared machine: the README's first command once read
    0.18x (Turbo 29.4 s, baseline 5.4 s) where quiet runs read 1.04-1.07x."""
    return QUICK_REPEATS if seconds_per_run < QUICK_RUN else 1


def time_in_turns(model: Any, methods: Sequence[Installable], call: Callable[[Any], Any], device: torch.device,
                  repeats: int | None = None, on_repeats: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time ``call(method)`` with each method installed, the methods taking turns (`take_turns`), with no priming
    or warm-up call (the caller has warmed up): a first round, each method once, which is timed too and says how
    long a run takes; then rounds up to ``repeats`` in all (``None``: `default_repeats` of the slowest first run).
    ``on_repeats`` is told the number of rounds once it is known."""
    timings = {m.name: Timing(m.name) for m in methods}
    turns = take_turns(model, itertools.repeat(list(methods)), lambda _, m: call(m), device)
    for _, m, _, seconds in itertools.islice(turns, len(methods)):
        timings[m.name].seconds.append(seconds)
    rounds = repeats or default_repeats(max(t.best for t in timings.values()))
    if on_repeats is not None:
        on_repeats(rounds)
    for _, m, _, seconds in itertools.islice(turns, (rounds - 1) * len(methods)):
        timings[m.name].seconds.append(seconds)
    return timings


def noisy_advice(names: Sequence[str], repeats: int, flag: str = "--repeats") -> str | None:
    """The sentence every tool prints for measurements whose spread is above `NOISY_SPREAD` (``names``), or
    ``None`` when there are none."""
    if not names:
        return None
    return (f"noisy: {', '.join(names)}: slowest over fastest call above {NOISY_SPREAD:g}x, the machine was busy, so "
            "these speed-ups are not reliable. For a clean number, rerun with the machine otherwise idle and more "
            f"repeats ({flag} {max(10, 2 * repeats)}): the minimum over more repeats is the least disturbed call.")


def machine_load() -> tuple[float, int] | None:
    """``(load average over the last minute, logical CPUs)``, or ``None`` where the system does not say."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):
        return None


def other_work() -> tuple[float, int] | None:
    """``(CPUs busy with other work right now, logical CPUs)``: CPU use sampled over a quarter of a second while
    this process waits, so it counts the others only (the load average would count this process's own last minute
    too). ``None`` where it cannot be read."""
    try:
        import psutil
    except ImportError:
        return None
    cpus = os.cpu_count() or 1
    return psutil.cpu_percent(interval=0.25) / 100 * cpus, cpus


def choose_threads() -> str | None:
    """Give torch one thread per CPU that other work leaves free (`other_work`), at least one; say so when that is
    fewer than torch's default. Nothing changes when ``OMP_NUM_THREADS`` is set.

    Why: torch's default of one thread per CPU thrashes beside any other job. On the 2-core CPU this was built on,
    the `shapes` model's 20-step generation took 1.83-3.19 s with 1 thread but 5.36-8.18 s with 2 (up to 39.9 s)
    next to one other job, while on an idle machine 2 threads were 9% faster (benchmarks/RESULTS.md, run 14)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    busy = other_work()
    if busy is None:
        return None
    current = torch.get_num_threads()
    threads = max(1, min(current, busy[1] - round(busy[0])))
    if threads >= current:
        return None
    torch.set_num_threads(threads)
    return (f"other work is running ({busy[0]:.1f} of {busy[1]} CPUs busy): torch uses {threads} thread"
            f"{'s' if threads > 1 else ''} instead of {current}, which runs faster beside it (set OMP_NUM_THREADS to "
            "choose)")


def busy_warning() -> str | None:
    """A sentence for the user when other work is running (the load average is above the CPU count), which makes
    a single timing unreliable; ``None`` on a quiet machine."""
    load = machine_load()
    if load is None or load[0] <= load[1]:
        return None
    return (f"the machine is busy (load average {load[0]:.1f} on {load[1]} CPUs): timings will vary from run to "
            "run; the speed-up is the median of interleaved runs, and a rerun on an idle machine is more reliable")


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
    prime: bool = True,
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
        prime: make the priming call (skip it when the caller has already run each method once).
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
        if prime:
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
        graphs = compile_count() if compiled else 0
        for rep, m, _, seconds in take_turns(model, [methods] * repeats, lambda rep, m: call(), device):
            timings[m.name].seconds.append(seconds)
            if compiled:
                graphs, before = compile_count(), graphs
                timings[m.name].recompiles = (timings[m.name].recompiles or 0) + (graphs > before)
            report(f"repeat {rep + 1}/{repeats} {m.name}")
    return timings


def take_turns(model: Any, rounds: Iterable[Sequence[Installable]], call: Callable[[int, Any], Any],
               device: torch.device) -> Iterator[tuple[int, Any, Any, float]]:
    """The timed part of the protocol: round ``r`` visits its methods in rotating order (`rotated` by ``r``), each
    installed around one timed ``call(r, method)``; yields ``(r, method, result, seconds)`` after each call.
    `time_interleaved` and `time_in_turns` repeat one call so, `generate` keeps the images, `compare` gives each
    round a prompt and seed of its own. ``rounds`` may be endless: the caller stops taking turns."""
    for r, methods in enumerate(rounds):
        for m in rotated(methods, r):
            with installed(model, m):
                result, seconds = timed(partial(call, r, m), device)
            yield r, m, result, seconds
