"""One benchmark run: measuring a `BenchSpec` (`run_bench`) into a `BenchResult`.

For every image size and UNet batch, the spec's methods run interleaved on one model in one process, diffusers'
default processor first, each a row named as bench has always named it (`row_name`). All of them attend with torch
SDPA, as the default processor does (Turbo's ``backend`` is pinned to ``"sdpa"`` unless a setting names another),
so a speed-up measures token reduction, not a kernel change. Measured per variant, with the protocol of
`turbo_diffusion.harness.measure.time_interleaved`:

* one UNet step: min, median and max seconds over the repeats, their spread (max / min, flagged noisy above
  ``NOISY_SPREAD``), speed-up over the default processor (ratio of minima) and share of the bound's speed-up at
  the same ratio (ratio of the two speed-ups);
* with ``steps > 0``, a whole generation of that many steps through the pipeline, the same way;
* peak memory of the first warm-up call of each measure (`turbo_diffusion.harness.memory`);
* with ``compile``, the seconds of each variant's compiling call and the timed calls that compiled again;
* for Turbo, the share of a step spent planning, merging, attending and restoring
  (`turbo_diffusion.bench.profile`), from one extra profiled step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from ..anatomy import attention_level
from ..archs import ARCHITECTURES, build_unet, unet_inputs
from ..errors import UsageError
from ..harness import environment as env
from ..harness.loading import load_model as load_pipeline_model
from ..harness.loading import resolve_device, resolve_dtype
from ..harness.measure import NOISY_SPREAD, Progress, Timing, compile_module
from ..harness.memory import CPU_METHOD, CUDA_METHOD
from ..harness.methods import Method
from ..kernels import check_kernel, default_processor
from ..levels import pixel_grid
from ..models import uses_random_weights
from .profile import variant_breakdown
from .spec import FAMILIES, BenchSpec, command_for
from .timing import time_generations, time_variants, unet_step_call

METHODS = {
    "speedup": "default processor's minimum seconds / the variant's minimum, over interleaved repeats",
    "of_bound": "variant's speed-up / the zero-overhead bound's speed-up at the same ratio",
    "spread": f"variant's maximum seconds / its minimum; above {NOISY_SPREAD:g} the measure is flagged noisy",
    "memory": "first warm-up call of each variant: " + CUDA_METHOD + " (CUDA); " + CPU_METHOD.format(ms=1) + " (CPU)",
    "profile": "one extra torch.profiler step per Turbo variant: time inside the turbo::plan/merge/attention/restore "
               "labels / time of the whole step (CPU wall clock; on CUDA, GPU time of the kernels launched inside)",
    "compile": "with --compile: seconds of each variant's first call after compiling (one per variant, before the "
               "warm-up); recompiles: timed calls that compiled again (their times include compilation)",
}


@dataclass
class BenchResult:
    """A finished run: its spec, the environment it ran in (`environment`), one row per variant and case (see
    `turbo_diffusion.bench.report` for the keys), and notes (variants skipped and why)."""

    spec: BenchSpec
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def environment(spec: BenchSpec, random_weights: bool, command: str | None = None) -> dict[str, Any]:
    """The ``meta`` block of a run (`turbo_diffusion.harness.environment.environment` and how each number is
    measured). ``command`` defaults to `command_for`."""
    return env.environment(resolve_device(spec.device), random_weights, command or command_for(spec)) | {
        "methods": METHODS}


def run_methods(spec: BenchSpec) -> list[Method]:
    """The methods ``spec`` runs, the baseline first. Turbo's attention kernel is pinned to the baseline's (torch
    SDPA unless ``spec.attention`` says xformers), so that a speed-up is not a kernel comparison; a method may
    still ask for another backend."""
    return [m.with_defaults(backend=spec.attention) if m.kind == "turbo" else m for m in spec.parsed_methods]


def series_of(method: Method) -> str:
    """Bench's name of ``method`` without the ratio: ``default``, ``turbo``, ``turbo[alpha=0]``, ``tomesd``,
    ``todo-nearest``, ``bound``... (settings as written in the method's label)."""
    if method.kind == "todo":
        return f"todo-{method.options.get('mode', 'nearest')}"
    if method.kind == "turbo" and method.written_settings:
        return f"turbo[{method.written_settings}]"
    return FAMILIES[method.kind]


def row_name(method: Method) -> str:
    """A row's unique name: ``"turbo@0.5"``, ``"turbo[alpha=0]@0.5"``, ``"default"``..."""
    return series_of(method) if method.ratio is None else f"{series_of(method)}@{method.ratio:g}"


def planned_calls(spec: BenchSpec) -> int:
    """How many model calls ``run_bench`` makes (for a progress bar)."""
    methods = run_methods(spec)
    rounds = spec.warmup + spec.repeats + (1 if spec.compile else 0)
    per_measure = 1 + len(methods) * rounds  # 1: the priming call
    profiled = sum(m.kind == "turbo" for m in methods) if spec.profile else 0
    cases = len(spec.sizes) * len(spec.batches)
    return cases * (per_measure * (2 if spec.steps else 1) + profiled)


def load_model(spec: BenchSpec) -> tuple[DiffusionPipeline | None, UNet2DConditionModel, bool]:
    """The pipeline (``None`` when only UNet steps are timed on a built-in architecture: the UNet alone is built),
    its UNet on ``spec.device`` in ``spec.dtype``, and whether the weights are random. Raises
    `turbo_diffusion.errors.ModelLoadError`."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.steps == 0 and spec.model in ARCHITECTURES:
        return None, build_unet(spec.model, seed=spec.seed, dtype=getattr(torch, dtype)).to(device), True
    pipe = load_pipeline_model(spec.model, dtype, device, spec.seed)
    return pipe, pipe.unet, uses_random_weights(pipe)


def set_attention_kernel(unet: UNet2DConditionModel, kernel: str) -> None:
    """Give every attention layer diffusers' default processor of ``kernel``, the baseline every method is timed
    against; `UsageError` when the kernel cannot run on the UNet's device."""
    try:
        check_kernel(kernel, unet.device, what="attention")
    except (ImportError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    unet.set_attn_processor(default_processor(kernel))


def run_bench(
    spec: BenchSpec,
    progress: Progress | None = None,
    environment: Callable[[BenchSpec, bool], dict[str, Any]] = environment,
    loaded: tuple[DiffusionPipeline | None, UNet2DConditionModel, bool] | None = None,
    notes: Sequence[str] = (),
) -> BenchResult:
    """Measure everything ``spec`` asks for (see the module docstring).

    Args:
        spec: the run; validated here.
        progress: called with a short description after every model call (`planned_calls` of them).
        environment: builds the result's ``meta`` from the spec and whether the weights are random.
        loaded: `load_model`'s result for ``spec``, to time several specs on one model without loading it again
            (its attention processors are replaced by ``spec.attention``'s; a compiled UNet stays compiled).
        notes: what the caller left out of the spec and why, first among the result's notes.
    """
    spec.validate()
    methods, notes = run_methods(spec), list(notes)
    pipe, unet, random_weights = loaded if loaded is not None else load_model(spec)
    device = unet.device
    set_attention_kernel(unet, spec.attention)
    level = attention_level(unet)
    if level > 1 and any(m.kind == "tome" for m in methods):
        notes.append(f"tomesd runs at its defaults (max_downsample=1); this UNet's finest attention is at "
                     f"{level}x downsampling, so tomesd merges nothing here")
    if spec.attention != "sdpa":
        notes.append(f"every variant runs {spec.attention} attention (the baseline diffusers' processor for it)")
    if spec.compile:
        compile_module(unet, spec.compile, spec.compile_scope, spec.compile_mode)
        what = "UNet" if spec.compile_scope == "unet" else "UNet's transformer blocks (compile_repeated_blocks)"
        mode = f", mode={spec.compile_mode!r}" if spec.compile_mode else ""
        notes.append(f"{what} compiled with torch.compile(backend={spec.compile!r}{mode}) after installing each "
                     "variant; the profiled steps run eagerly")
    rows: list[dict[str, Any]] = []
    for height, width in spec.sizes:
        grid = pixel_grid(height, width, level)
        for batch in spec.batches:
            variants = [m.at_grid(grid) for m in methods]
            inputs = unet_inputs(unet, height, width, batch, dtype=unet.dtype, device=device, seed=spec.seed)
            step = time_variants(unet, inputs, variants, spec.repeats, spec.warmup, progress,
                                 compiled=bool(spec.compile))
            profiles = {}
            for v in (v for v in variants if v.kind == "turbo" and spec.profile):
                profiles[v.name] = variant_breakdown(unet, v, unet_step_call(unet, inputs), device).to_dict()
                if progress:
                    progress(f"profile {row_name(v)}")
            generation = None
            if spec.steps:
                generation = time_generations(pipe, variants, height, width, batch, spec.steps, spec.prompt,
                                              spec.guidance_scale, spec.seed, spec.repeats, spec.warmup, progress,
                                              compiled=bool(spec.compile))
            rows += case_rows(height, width, batch, level, grid, variants, step, generation, profiles)
    return BenchResult(spec, environment(spec, random_weights), rows, notes)


def case_rows(
    height: int, width: int, batch: int, level: int, grid: tuple[int, int], variants: list[Method],
    step: dict[str, Timing], generation: dict[str, Timing] | None, profiles: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One JSON-ready row per variant of one case (keys documented in `turbo_diffusion.bench.report`)."""
    return [
        {
            "height": height, "width": width, "batch": batch, "level": level, "grid": list(grid),
            "variant": row_name(v), "series": series_of(v), "family": FAMILIES[v.kind], "ratio": v.ratio,
            "settings": v.settings(), "step": summarize(v, variants, step),
            "generation": summarize(v, variants, generation) if generation is not None else None,
            "profile": profiles.get(v.name),
        }
        for v in variants
    ]


def summarize(variant: Method, methods: list[Method], timings: dict[str, Timing]) -> dict[str, Any]:
    """Seconds, min/median/max, spread and whether it is noisy, speed-up over the default (ratio of minima), share
    of the bound's speed-up at the same ratio (``None`` without a bound at that ratio, and for the default itself),
    peak memory, and under ``--compile`` the compiling call's seconds and the recompiles while timing."""
    t = timings[variant.name]
    default = timings[methods[0].name]  # the baseline
    speedup = default.best / t.best
    bound = next((timings[m.name] for m in methods if m.kind == "bound" and m.ratio == variant.ratio), None)
    memory = t.memory
    return {
        "seconds": t.seconds, "min": t.best, "median": t.median, "max": t.worst, "spread": t.spread,
        "noisy": t.noisy, "speedup": speedup,
        "of_bound": speedup / (default.best / bound.best) if bound is not None else None,
        "peak_mib": memory.peak_mib if memory else None, "peak_total_mib": memory.total_mib if memory else None,
        "compile_s": t.compile_seconds, "recompiles": t.recompiles,
    }
