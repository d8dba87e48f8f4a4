"""`compare`: generate with every method, measure speed and fidelity, write the report."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..models import RANDOM_WEIGHTS_NOTE, load_pipeline, uses_random_weights
from . import metrics as M
from . import report
from .methods import Method, parse_methods
from .prompts import resolve_prompts
from .results import CompareResult, ImageRecord, summarize
from .runner import CompareError, CompareSpec, check_output_dir, generate, write_config

DEFAULT_METHODS = "baseline,turbo@0.3,turbo@0.5"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
OPTIONAL_METRICS = ("lpips", "clip_score", "fid")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def compare(
    model: str,
    prompts: str | Sequence[str] = "smoke",
    seeds: Sequence[int] | None = None,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    out_dir: str | os.PathLike = "compare-out",
    force: bool = False,
    dtype: str = "auto",
    max_prompts: int | None = None,
    metrics: Sequence[str] = OPTIONAL_METRICS,
    clip_model: str = M.DEFAULT_CLIP_MODEL,
    fid_reference: str | os.PathLike | None = None,
    fid_weights: str | None = None,
    fid_feature_extractor: torch.nn.Module | None = None,
    pipeline: Any = None,
    progress: bool = True,
) -> CompareResult | None:
    """Generate every prompt x seed with every method and compare them with the baseline.

    Args:
        model: a built-in name (``tiny``, ``sd15-arch``, ...), a local folder or a Hub id (see
            `turbo_diffusion.models.load_pipeline`); with ``pipeline`` given, only its name in the report.
        prompts: a preset (``"paper"``, ``"smoke"``), a text file with one prompt per line, or a list of prompts.
        seeds: seeds, one image per prompt and seed; default: the preset's, else ``[0]``.
        methods: ``"baseline,turbo@0.3,turbo@0.5:alpha=2,tome@0.5"`` or a list of such strings; the baseline is
            added when missing.
        steps, guidance, height, width: generation settings; default: the preset's, else 50 steps, guidance 7.5
            and the model's default size.
        out_dir: output folder. Existing images of the same configuration are reused; a folder holding another
            configuration is refused unless ``force``.
        force: regenerate every image and overwrite a report of another configuration.
        dtype: ``"auto"`` (float16 on CUDA, else float32), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        max_prompts: keep only the first prompts (e.g. a quick run of the ``paper`` preset).
        metrics: optional metrics to try, among ``"lpips"``, ``"clip_score"``, ``"fid"``; PSNR and SSIM always run.
        clip_model: CLIP model for the CLIP score: a local folder or a Hub id (cache or download).
        fid_reference: folder of reference images for FID; default: the baseline's images.
        fid_weights: local path of torch-fidelity's InceptionV3 weights.
        fid_feature_extractor: a feature module to use instead of InceptionV3 (not the standard FID; named in the
            report).
        pipeline: an already loaded pipeline to use instead of loading ``model`` (its scheduler is swapped for the
            run when the preset asks for another, then put back).
        progress: show progress bars.

    Returns:
        The `CompareResult` (also written to ``out_dir``) on the main process; ``None`` on the others under
        ``accelerate launch``.

    Raises:
        CompareError: bad settings or an occupied folder (one-line message), before anything is generated.
    """
    from accelerate import PartialState

    method_list = _methods(methods)
    prompt_list, preset = _prompts(prompts)
    if max_prompts is not None:
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise CompareError(f"max_prompts must be an integer >= 1, got {max_prompts!r}")
        prompt_list = prompt_list[:max_prompts]
    unknown = sorted(set(metrics) - set(OPTIONAL_METRICS))
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; optional metrics: {', '.join(OPTIONAL_METRICS)}")
    if fid_reference is not None and not Path(fid_reference).is_dir():
        raise CompareError(f"FID reference folder {str(fid_reference)!r} does not exist")

    state = PartialState()
    device = pipeline.device if pipeline is not None else state.device
    spec = CompareSpec(
        model=model,
        prompts=tuple(prompt_list),
        seeds=tuple(seeds) if seeds is not None else (preset.seeds if preset and preset.seeds else (0,)),
        methods=tuple(method_list),
        steps=_pick(steps, preset.steps if preset else None, DEFAULT_STEPS),
        guidance=_pick(guidance, preset.guidance if preset else None, DEFAULT_GUIDANCE),
        height=_pick(height, preset.height if preset else None, None),
        width=_pick(width, preset.width if preset else None, None),
        dtype=_dtype_name(dtype, device),
        device_type=device.type,
        scheduler=preset.scheduler if preset else None,
        preset=preset.name if preset else None,
    )
    out = Path(out_dir)
    check_output_dir(out, spec, force)
    state.wait_for_everyone()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, spec)
    state.wait_for_everyone()

    pipe = pipeline if pipeline is not None else _load(model, spec.dtype, device)
    random_note = RANDOM_WEIGHTS_NOTE if uses_random_weights(pipe) else None
    saved_scheduler = pipe.scheduler
    if spec.scheduler == "pndm":
        from diffusers import PNDMScheduler

        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    scheduler_name = type(pipe.scheduler).__name__
    try:
        with state.split_between_processes(list(range(len(spec.prompts)))) as mine:
            records = generate(pipe, spec, out, mine, force=force, progress=progress,
                               position=state.process_index, random_note=random_note)
    finally:
        pipe.scheduler = saved_scheduler

    skipped: dict[str, str] = {}
    scorers = _load_pair_metrics(metrics, clip_model, device, skipped)
    _score_pairs(records, out, scorers)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
    if not state.is_main_process:
        state.wait_for_everyone()
        return None

    records.sort(key=lambda r: (r.prompt_index, spec.seeds.index(r.seed),
                                [m.label for m in method_list].index(r.method)))
    result = CompareResult(
        out_dir=out,
        configuration={**spec.configuration(), "scheduler": scheduler_name},
        fingerprint=spec.fingerprint(),
        random_weights=random_note is not None,
        device=str(device),
        methods=summarize(records, method_list),
        images=records,
        skipped=skipped,
    )
    if device.type != "cuda":
        result.notes.append("Peak memory is measured on CUDA only (torch.cuda.max_memory_allocated).")
    reused = sum(r.reused for r in records)
    if reused:
        result.notes.append(f"{reused} of {len(records)} images were reused from an earlier run in this folder; "
                            "their timings are from that run.")
    if "fid" in metrics:
        _fid(result, method_list, fid_reference, fid_weights, fid_feature_extractor, device)
    else:
        skipped["fid"] = "not requested"
    _write_outputs(result, random_note)
    state.wait_for_everyone()
    return result


def _methods(methods: str | Sequence[str]) -> list[Method]:
    try:
        return parse_methods(methods)
    except ValueError as err:
        raise CompareError(str(err)) from None


def _prompts(prompts: str | Sequence[str]):
    if isinstance(prompts, str):
        try:
            return resolve_prompts(prompts)
        except ValueError as err:
            raise CompareError(str(err)) from None
    prompt_list = [str(p) for p in prompts]
    if not prompt_list or not all(p.strip() for p in prompt_list):
        raise CompareError("prompts must be a non-empty list of non-empty strings")
    return prompt_list, None


def _pick(given: Any, preset_value: Any, default: Any) -> Any:
    """The value given, else the preset's, else the default."""
    if given is not None:
        return given
    return preset_value if preset_value is not None else default


def _dtype_name(dtype: str, device: torch.device) -> str:
    if dtype == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CompareError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return dtype


def _load(model: str, dtype: str, device: torch.device) -> Any:
    try:
        # float32 is how pipelines load by default; casting to it anyway only makes diffusers warn
        pipe = load_pipeline(model, torch_dtype=None if dtype == "float32" else getattr(torch, dtype))
    except (ValueError, OSError) as err:
        raise CompareError(f"cannot load model {model!r}: {' '.join(str(err).split())[:300]}") from None
    return pipe.to(device)


def _load_pair_metrics(wanted: Sequence[str], clip_model: str, device: torch.device,
                       skipped: dict[str, str]) -> dict[str, Any]:
    """The optional per-image metrics that can run; the others go into ``skipped`` with the reason."""
    loaders = {"lpips": lambda: M.load_lpips(device), "clip_score": lambda: M.load_clip_score(clip_model, device)}
    scorers = {}
    for name, load in loaders.items():
        if name not in wanted:
            skipped[name] = "not requested"
            continue
        try:
            scorers[name] = load()
        except M.MetricUnavailable as err:
            skipped[name] = str(err)
    return scorers


def _score_pairs(records: list[ImageRecord], out: Path, scorers: dict[str, Any]) -> None:
    """PSNR, SSIM (and LPIPS) against the baseline image of the same prompt and seed; CLIP score against the
    prompt. Fills the records in place, one prompt and seed at a time (a few images in memory)."""
    groups: dict[tuple[int, int], list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[(record.prompt_index, record.seed)].append(record)
    for group in groups.values():
        reference = _open(out / next(r for r in group if r.method == "baseline").path)
        for record in group:
            image = reference if record.method == "baseline" else _open(out / record.path)
            record.psnr = M.psnr(image, reference)
            record.ssim = M.ssim(image, reference)
            if "lpips" in scorers:
                record.lpips = scorers["lpips"](image, reference)
            if "clip_score" in scorers:
                record.clip_score = scorers["clip_score"](image, record.prompt)


def _fid(result: CompareResult, methods: list[Method], reference_dir: Any, weights: str | None,
         extractor: torch.nn.Module | None, device: torch.device) -> None:
    try:
        distances = M.load_fid(weights, extractor, device)
    except M.MetricUnavailable as err:
        result.skipped["fid"] = str(err)
        return
    out = result.out_dir
    if reference_dir is None:
        reference_paths = [out / r.path for r in result.images if r.method == "baseline"]
        reference_name = "the baseline's images"
        targets = [m for m in methods if m.kind != "baseline"]
    else:
        reference_paths = sorted(p for p in Path(reference_dir).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        reference_name = f"the images in {reference_dir}"
        targets = list(methods)
    sets = {m.label: [out / r.path for r in result.images if r.method == m.label] for m in targets}
    try:
        values = distances(_open_each(reference_paths), {k: _open_each(v) for k, v in sets.items()})
    except M.MetricUnavailable as err:
        result.skipped["fid"] = str(err)
        return
    for summary in result.methods:
        summary.fid = values.get(summary.method)
    counts = sorted({len(v) for v in sets.values()})
    features = "InceptionV3 pool features" if extractor is None else f"features of {type(extractor).__name__} " \
        "(not InceptionV3: not comparable with published FIDs)"
    result.fid = {
        "reference": str(reference_dir) if reference_dir is not None else "baseline",
        "reference_images": len(reference_paths),
        "images_per_method": counts[0] if len(counts) == 1 else counts,
        "features": features,
        "not_applicable": [m.label for m in methods if m not in targets],
        "description": f"each method's {'/'.join(map(str, counts))} images against {len(reference_paths)} reference "
                       f"images ({reference_name}), on {features}. FID is biased upwards for small sets: compare "
                       "values only at equal counts, and expect thousands of images to be needed for stable values",
    }


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _open_each(paths: Sequence[Path]) -> Iterator[Image.Image]:
    for path in paths:
        yield _open(path)


def _write_outputs(result: CompareResult, random_note: str | None) -> None:
    grids = report.write_grids(result, random_note)
    try:
        plot = report.write_plot(result, random_note)
    except ImportError:
        plot = None
        result.skipped["plot"] = "matplotlib is not installed (pip install 'turbo-diffusion[metrics]')"
    report.write_json(result)
    report.write_csv(result)
    report.write_markdown(result, grids, plot, random_note)
    report.write_html(result, grids, plot, random_note)

