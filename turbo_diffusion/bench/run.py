"""One benchmark run: what to measure (`BenchSpec`), measuring it (`run_bench`), the numbers (`BenchResult`).

For every image size and UNet batch, all variants run interleaved on one model in one process: diffusers'
default processor, then for each ratio Turbo (default config and each extra setting), tomesd, ToDo-style key/value
downsampling and the zero-overhead bound. All of them attend with torch SDPA, as the default processor does (Turbo's
``backend`` is pinned to ``"sdpa"`` unless a setting names another), so a speed-up measures token reduction, not a
kernel change. Measured per variant:

* one UNet step: min, median and max seconds over the repeats, speed-up over the default processor (ratio of
  minima) and share of the bound's speed-up at the same ratio (ratio of the two speed-ups);
* with ``steps > 0``, a whole generation of that many steps through the pipeline, the same way;
* peak memory of the first warm-up call of each measure (`turbo_diffusion.bench.memory`);
* for Turbo, the share of a step spent planning, merging, attending and restoring
  (`turbo_diffusion.bench.profile`), from one extra profiled step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from ..archs import ARCHITECTURES, build_unet, unet_inputs
from ..config import TurboConfig, parse_fields, split_top_level
from ..models import RANDOM_WEIGHT_MODELS, load_pipeline, uses_random_weights
from .profile import variant_breakdown
from .timing import Progress, Timing, time_generations, time_variants, unet_step_call
from .variants import (
    TODO_MODES,
    Variant,
    attention_level,
    bound_variant,
    default_variant,
    level_grid,
    todo_variant,
    tomesd_variant,
    turbo_variant,
    variant_name,
)

FAMILIES = ("turbo", "tomesd", "todo", "bound")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon"


@dataclass(frozen=True)
class BenchSpec:
    """What one run measures. `validate` checks it; every problem is a one-line ``ValueError``.

    Attributes:
        model: a built-in name (``sd15-arch``, ``sd21-arch``, ``sdxl-arch``: real architectures with random weights;
            ``tiny``, ``tiny-xl`` for tests), a local folder or a Hub id.
        sizes: image sizes ``(height, width)`` in pixels, multiples of 8. Larger sizes make attention, and so
            merging, matter more.
        batches: UNet batch sizes; 2 is one image with classifier-free guidance.
        ratios: share of tokens removed at the accelerated level, each in ``(0, 1)``; every variant but the default
            runs at each.
        turbo: extra Turbo settings, each ``"field=value,..."`` of `TurboConfig` fields (values are Python literals,
            bare words are strings); each runs at every ratio next to Turbo's default config.
        variants: which of ``turbo``, ``tomesd``, ``todo``, ``bound`` to run (the default processor always runs).
        todo_mode: ``"nearest"`` or ``"avg"`` pooling of the ToDo variant's keys and values.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        repeats: timed calls per variant and measure; more makes the minima more reliable and the run longer.
        warmup: untimed calls per variant before timing (at least 1; the first one measures memory).
        steps: denoising steps of the whole-generation measure; 0 times UNet steps only.
        prompt, guidance_scale, seed: of the generations (guidance applies to even batches), and the weights' seed.
        profile: profile one extra step per Turbo variant for the phase breakdown.
    """

    model: str = "sd15-arch"
    sizes: tuple[tuple[int, int], ...] = ((512, 512),)
    batches: tuple[int, ...] = (1,)
    ratios: tuple[float, ...] = (0.5,)
    turbo: tuple[str, ...] = ()
    variants: tuple[str, ...] = FAMILIES
    todo_mode: str = "nearest"
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    steps: int = 0
    prompt: str = DEFAULT_PROMPT
    guidance_scale: float = 7.5
    seed: int = 0
    profile: bool = True

    def validate(self) -> BenchSpec:
        """Raise ``ValueError`` (one line) for the first bad value; return ``self``."""
        if not (self.model in RANDOM_WEIGHT_MODELS or os.path.isdir(self.model) or "/" in self.model):
            raise ValueError(f"unknown model {self.model!r}: use one of {', '.join(RANDOM_WEIGHT_MODELS)}, "
                             "a local folder or a Hub id (owner/name)")
        for height, width in self.sizes:
            if height < 8 or width < 8 or height % 8 or width % 8:
                raise ValueError(f"image size {height}x{width}: height and width must be positive multiples of 8 "
                                 "(latent = pixels / 8)")
        _check_all("batch", self.batches, lambda b: isinstance(b, int) and b >= 1, "an integer >= 1")
        _check_all("ratio", self.ratios, lambda r: isinstance(r, float | int) and 0 < r < 1, "a number in (0, 1)")
        unknown = sorted(set(self.variants) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
        if self.turbo and "turbo" not in self.variants:
            raise ValueError("extra Turbo settings given but the turbo variant is not selected")
        for spec in self.turbo:
            parse_turbo_setting(spec)
        if self.todo_mode not in TODO_MODES:
            raise ValueError(f"todo mode must be one of {', '.join(TODO_MODES)}, got {self.todo_mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_device(self.device)
        _check_all("repeats", [self.repeats], lambda n: n >= 1, "at least 1")
        _check_all("warmup", [self.warmup], lambda n: n >= 1, "at least 1 (the first warm-up call measures memory)")
        _check_all("steps", [self.steps], lambda n: n >= 0, "0 (UNet steps only) or more")
        _check_all("guidance scale", [self.guidance_scale], lambda g: math.isfinite(g) and g >= 0, "a number >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(s) for s in v] if k == "sizes" else (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclass
class BenchResult:
    """A finished run: its spec, the environment it ran in (`report.environment`), one row per variant and case
    (see `report` for the keys), and notes (variants skipped and why)."""

    spec: BenchSpec
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


# -- Turbo settings ---------------------------------------------------------------------------------------------
def parse_turbo_setting(spec: str) -> dict[str, Any]:
    """``"semantic=none,alpha=0"`` -> ``{"semantic": "none", "alpha": 0}``, checked against `TurboConfig`.

    Values are Python literals (``None``, ``0.5``, ``True``, ``'text'``); a bare word is a string. Field names
    come from `TurboConfig` itself, so fields added later work unchanged. ``ratio`` is not allowed here: ratios
    are the benchmark's axis. Raises ``ValueError`` with a one-line message.
    """
    try:
        fields = parse_fields(spec)
    except ValueError as err:
        raise ValueError(f"Turbo setting {spec!r}: {err}") from None
    if not fields:
        raise ValueError(f"Turbo setting {spec!r} is empty")
    known = {f.name for f in dataclasses.fields(TurboConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"Turbo setting {spec!r}: unknown field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known - {'ratio'}))}")
    if "ratio" in fields:
        raise ValueError(f"Turbo setting {spec!r}: set ratios with --ratios, not in a Turbo setting")
    try:
        TurboConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Turbo setting {spec!r}: {err}") from None
    return fields


def turbo_series(spec: str) -> str:
    """The label of an extra Turbo setting, e.g. ``"turbo[semantic=none,alpha=0]"`` (spaces removed)."""
    items = [re.sub(r"\s+", "", item) for item in split_top_level(spec)]
    return f"turbo[{','.join(items)}]"


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedVariant:
    """A variant before the model is known: which family, its series label, ratio and Turbo fields."""

    family: str
    series: str
    ratio: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def plan_variants(spec: BenchSpec) -> tuple[list[PlannedVariant], list[str]]:
    """The variants ``spec`` asks for, in run order, and notes about any that cannot run (tomesd missing)."""
    planned, notes = [PlannedVariant("default", "default")], []
    tomesd_missing = "tomesd" in spec.variants and tomesd_variant(0.5) is None
    if tomesd_missing:
        notes.append("tomesd is not installed (pip install tomesd): its variant was skipped")
    # Turbo's attention kernel is pinned to torch SDPA, the default processor's, so that on CUDA with xformers
    # installed a speed-up is not a kernel comparison; a --turbo setting may still ask for backend=xformers.
    kernel = {"backend": "sdpa"} if "backend" in {f.name for f in dataclasses.fields(TurboConfig)} else {}
    settings = {"turbo": kernel}
    for setting in spec.turbo:  # keyed by label: "alpha=0" and "alpha = 0" are one variant
        settings.setdefault(turbo_series(setting), {**kernel, **parse_turbo_setting(setting)})
    for ratio in spec.ratios:
        if "turbo" in spec.variants:
            planned += [PlannedVariant("turbo", series, ratio, fields) for series, fields in settings.items()]
        if "tomesd" in spec.variants and not tomesd_missing:
            planned.append(PlannedVariant("tomesd", "tomesd", ratio))
        if "todo" in spec.variants:
            planned.append(PlannedVariant("todo", f"todo-{spec.todo_mode}", ratio))
        if "bound" in spec.variants:
            planned.append(PlannedVariant("bound", "bound", ratio))
    return planned, notes


def build_variants(spec: BenchSpec, planned: list[PlannedVariant], grid: tuple[int, int]) -> list[Variant]:
    """Materialize ``planned`` for a case whose accelerated level has the token grid ``grid``."""
    variants = []
    for p in planned:
        if p.family == "default":
            variants.append(default_variant())
        elif p.family == "turbo":
            variants.append(turbo_variant(p.ratio, p.series, **p.fields))
        elif p.family == "tomesd":
            variants.append(tomesd_variant(p.ratio))
        elif p.family == "todo":
            variants.append(todo_variant(p.ratio, grid, spec.todo_mode))
        else:
            variants.append(bound_variant(p.ratio, grid[0] * grid[1]))
    return variants


def planned_calls(spec: BenchSpec, planned: list[PlannedVariant]) -> int:
    """How many model calls ``run_bench`` makes (for a progress bar)."""
    per_measure = 1 + len(planned) * (spec.warmup + spec.repeats)  # 1: the priming call
    profiled = sum(p.family == "turbo" for p in planned) if spec.profile else 0
    cases = len(spec.sizes) * len(spec.batches)
    return cases * (per_measure * (2 if spec.steps else 1) + profiled)


class ModelLoadError(ValueError):
    """The model named in a `BenchSpec` could not be loaded (missing folder, unreachable Hub, not a UNet pipeline)."""


def load_model(spec: BenchSpec) -> tuple[DiffusionPipeline | None, UNet2DConditionModel, bool]:
    """The pipeline (``None`` when only UNet steps are timed on a built-in architecture: the UNet alone is built),
    its UNet on ``spec.device`` in ``spec.dtype``, and whether the weights are random."""
    dtype = getattr(torch, spec.dtype)
    if spec.steps == 0 and spec.model in ARCHITECTURES:
        return None, build_unet(spec.model, seed=spec.seed, dtype=dtype).to(spec.device), True
    try:
        # float32 is what the built-in pipelines are made in; casting them to it again only makes diffusers warn.
        pipe = load_pipeline(spec.model, torch_dtype=None if dtype == torch.float32 else dtype, seed=spec.seed)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load model {spec.model!r}: {first_line}") from err
    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
        raise ModelLoadError(f"model {spec.model!r} has no UNet2DConditionModel (SD 1.x/2.x/SDXL) to benchmark")
    pipe = pipe.to(spec.device)
    return pipe, pipe.unet, uses_random_weights(pipe)


def run_bench(
    spec: BenchSpec,
    progress: Progress | None = None,
    environment: Callable[[BenchSpec, bool], dict[str, Any]] | None = None,
) -> BenchResult:
    """Measure everything ``spec`` asks for (see the module docstring).

    Args:
        spec: the run; validated here.
        progress: called with a short description after every model call (`planned_calls` of them).
        environment: builds the result's ``meta`` from the spec and whether the weights are random; defaults to
            `turbo_diffusion.bench.report.environment`.
    """
    spec.validate()
    if environment is None:
        from .report import environment
    planned, notes = plan_variants(spec)
    pipe, unet, random_weights = load_model(spec)
    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype)
    level = attention_level(unet)
    if level > 1 and any(p.family == "tomesd" for p in planned):
        notes.append(f"tomesd runs at its defaults (max_downsample=1); this UNet's finest attention is at "
                     f"{level}x downsampling, so tomesd merges nothing here")
    rows: list[dict[str, Any]] = []
    for height, width in spec.sizes:
        grid = level_grid(height, width, level)
        for batch in spec.batches:
            variants = build_variants(spec, planned, grid)
            inputs = unet_inputs(unet, height, width, batch, dtype=dtype, device=device, seed=spec.seed)
            step = time_variants(unet, inputs, variants, spec.repeats, spec.warmup, progress)
            profiles = {}
            if spec.profile:
                for v in (v for v in variants if v.family == "turbo"):
                    profiles[v.name] = variant_breakdown(unet, v, unet_step_call(unet, inputs), device).to_dict()
                    if progress:
                        progress(f"profile {v.name}")
            generation = None
            if spec.steps:
                generation = time_generations(pipe, variants, height, width, batch, spec.steps, spec.prompt,
                                              spec.guidance_scale, spec.seed, spec.repeats, spec.warmup, progress)
            rows += case_rows(height, width, batch, level, grid, variants, step, generation, profiles)
    return BenchResult(spec, environment(spec, random_weights), rows, notes)


def case_rows(
    height: int, width: int, batch: int, level: int, grid: tuple[int, int], variants: list[Variant],
    step: dict[str, Timing], generation: dict[str, Timing] | None, profiles: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One JSON-ready row per variant of one case (keys documented in `turbo_diffusion.bench.report`)."""
    return [
        {
            "height": height, "width": width, "batch": batch, "level": level, "grid": list(grid),
            "variant": v.name, "series": v.series, "family": v.family, "ratio": v.ratio, "settings": v.settings,
            "step": summarize(v, step),
            "generation": summarize(v, generation) if generation is not None else None,
            "profile": profiles.get(v.name),
        }
        for v in variants
    ]


def summarize(variant: Variant, timings: dict[str, Timing]) -> dict[str, Any]:
    """Seconds, min/median/max, speed-up over the default (ratio of minima), share of the bound's speed-up at the
    same ratio (``None`` when there is no bound at that ratio, and for the default itself) and peak memory."""
    t = timings[variant.name]
    speedup = timings["default"].best / t.best
    bound = timings.get(variant_name("bound", variant.ratio)) if variant.ratio is not None else None
    of_bound = speedup / (timings["default"].best / bound.best) if bound is not None else None
    memory = t.memory
    return {
        "seconds": t.seconds, "min": t.best, "median": t.median, "max": t.worst, "speedup": speedup,
        "of_bound": of_bound,
        "peak_mib": memory.peak_mib if memory else None, "peak_total_mib": memory.total_mib if memory else None,
    }


def _check_all(what: str, values: Any, ok: Callable[[Any], bool], allowed: str) -> None:
    for value in values:
        if isinstance(value, bool) or not ok(value):
            raise ValueError(f"{what} must be {allowed}, got {value!r}")


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available in this torch build/machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
