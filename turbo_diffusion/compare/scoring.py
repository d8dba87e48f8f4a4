"""Scoring for `compare`: pluggable per-image scorers, and FID over each method's set of images.

A *scorer* is any callable ``scorer(image, reference, record) -> {name: number}``:

* ``image``: a generated image (PIL, RGB), of any method, the baseline included;
* ``reference``: the baseline image of the same prompt and seed (for the baseline, itself);
* ``record``: a copy of the prompt record, ``{"prompt": text, **metadata}`` (`turbo_diffusion.compare.prompts`),
  so a scorer can judge against ground truth the metadata describes (e.g. a ``scene_seed``).

Its numbers land in each `ImageRecord.scores` and, averaged per method, in `MethodSummary.scores`, the reports'
tables, ``metrics.json`` and ``metrics.csv``. Names must be unique across scorers; a NaN is an error, not a
number. Built in: `fidelity` (PSNR and SSIM, always), LPIPS and CLIP score (when their weights can be loaded;
else reported as skipped with the reason, never made up).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..harness.fidelity import psnr, ssim
from . import metrics as M
from .results import CompareResult, ImageRecord
from .spec import OPTIONAL_METRICS  # noqa: F401 (the compare package exports it from here)

Scorer = Callable[[Image.Image, Image.Image, Mapping[str, Any]], Mapping[str, float]]
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_RECORD_FIELDS = {"method", "prompt_index", "prompt", "seed", "path", "seconds", "peak_memory_bytes", "reused"}


def fidelity(image: Image.Image, reference: Image.Image, record: Mapping[str, Any]) -> dict[str, float]:
    """PSNR (dB, ``inf`` when identical) and SSIM of ``image`` against ``reference`` (`harness.fidelity`)."""
    return {"psnr": psnr(image, reference), "ssim": ssim(image, reference)}


def load_scorers(wanted: Sequence[str], clip_model: str, device: torch.device,
                 skipped: dict[str, str]) -> list[Scorer]:
    """`fidelity`, then the optional per-image metrics of ``wanted`` that can run; the others go into ``skipped``
    with the reason."""
    scorers: list[Scorer] = [fidelity]
    if "lpips" in wanted:
        _try(lambda: M.load_lpips(device), "lpips", lambda lpips: lambda x, ref, _: {"lpips": lpips(x, ref)},
             scorers, skipped)
    else:
        skipped["lpips"] = "not requested"
    if "clip_score" in wanted:
        _try(lambda: M.load_clip_score(clip_model, device), "clip_score",
             lambda clip: lambda x, _, record: {"clip_score": clip(x, record["prompt"])}, scorers, skipped)
    else:
        skipped["clip_score"] = "not requested"
    return scorers


def _try(load: Callable[[], Any], name: str, wrap: Callable[[Any], Scorer], scorers: list[Scorer],
         skipped: dict[str, str]) -> None:
    try:
        scorers.append(wrap(load()))
    except M.MetricUnavailable as err:
        skipped[name] = str(err)


def score_images(records: list[ImageRecord], out: Path, prompts: Sequence[Mapping[str, Any]], baseline: str,
                 scorers: Sequence[Scorer]) -> None:
    """Run every scorer on every image against the ``baseline`` method's image of the same prompt and seed; fill
    the records' ``scores`` in place, one prompt and seed at a time (a few images in memory)."""
    groups: dict[tuple[int, int], list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[(record.prompt_index, record.seed)].append(record)
    for group in groups.values():
        reference = _open(out / next(r for r in group if r.method == baseline).path)
        for record in group:
            image = reference if record.method == baseline else _open(out / record.path)
            for scorer in scorers:
                numbers = scorer(image, reference, dict(prompts[record.prompt_index]))
                record.scores.update(_checked(scorer, numbers, record.scores))


def _checked(scorer: Scorer, numbers: Mapping[str, float], earlier: Mapping[str, float]) -> dict[str, float]:
    who = getattr(scorer, "__name__", type(scorer).__name__)
    checked = {}
    for name, value in numbers.items():
        if not isinstance(name, str) or name in _RECORD_FIELDS or name in earlier:
            raise ValueError(f"scorer {who} returned {name!r}, a name already taken; choose another")
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"scorer {who} returned NaN for {name!r}")
        checked[name] = value
    return checked


def add_fid(result: CompareResult, methods: Sequence[Any], reference_dir: str | Path | None, weights: str | None,
            extractor: torch.nn.Module | None, device: torch.device) -> None:
    """FID of each method's images against ``reference_dir``'s images, or else the baseline's (then the baseline
    itself is not applicable); fills ``result.fid`` and the summaries, or ``result.skipped["fid"]``."""
    try:
        distances = M.load_fid(weights, extractor, device)
    except M.MetricUnavailable as err:
        result.skipped["fid"] = str(err)
        return
    out = result.out_dir
    if reference_dir is None:
        reference_paths = [out / r.path for r in result.images if r.method == methods[0].label]
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
