"""What `compare` measures: one record per image, one summary per method, and the whole result."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEED_NOTE = ("Speed in `compare` is indicative: each image is timed end to end (text encoder, UNet, VAE) one at a "
              "time, methods interleaved per prompt and seed after one warm-up each, and medians are reported. "
              "Use `turbo-diffusion bench` to measure speed.")


@dataclass
class ImageRecord:
    """One generated image and what was measured on it.

    ``seconds`` and ``peak_memory_bytes`` come from the run that generated it (an earlier one when ``reused``);
    ``peak_memory_bytes`` is ``None`` off CUDA. Fidelity fields compare with the baseline image of the same prompt
    and seed; a metric that did not run is ``None``.
    """

    method: str
    prompt_index: int
    prompt: str
    seed: int
    path: str  # relative to the output folder
    seconds: float | None = None
    peak_memory_bytes: int | None = None
    reused: bool = False
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    clip_score: float | None = None


@dataclass
class MethodSummary:
    """Aggregates over a method's images.

    Attributes:
        seconds_per_image: median seconds per image.
        speedup: the baseline's median over this method's median (above 1 is faster than the baseline).
        peak_memory_bytes: largest peak of allocated CUDA memory over its images (``None`` off CUDA).
        psnr: mean PSNR (dB) over the images that differ from the baseline; ``inf`` when all are identical.
        identical: how many images are pixel-identical to the baseline image.
        ssim, lpips, clip_score: means over the images; ``None`` when the metric did not run.
        fid: FID of the method's images against the FID reference; ``None`` when not computed.
    """

    method: str
    kind: str
    images: int
    seconds_per_image: float | None = None
    speedup: float | None = None
    peak_memory_bytes: int | None = None
    psnr: float | None = None
    identical: int = 0
    ssim: float | None = None
    lpips: float | None = None
    clip_score: float | None = None
    fid: float | None = None


@dataclass
class CompareResult:
    """Everything `compare` measured, as written to ``metrics.json``."""

    out_dir: Path
    configuration: dict[str, Any]
    fingerprint: str
    random_weights: bool
    device: str
    methods: list[MethodSummary]
    images: list[ImageRecord]
    skipped: dict[str, str] = field(default_factory=dict)
    fid: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def method(self, label: str) -> MethodSummary:
        """The summary of the method called ``label``."""
        for summary in self.methods:
            if summary.method == label:
                return summary
        raise KeyError(f"no method {label!r}; methods: {', '.join(m.method for m in self.methods)}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; infinite PSNR is written as the string ``"inf"`` (JSON has no infinity)."""
        data = {
            "configuration": self.configuration,
            "fingerprint": self.fingerprint,
            "random_weights": self.random_weights,
            "device": self.device,
            "notes": self.notes,
            "skipped": self.skipped,
            "fid": self.fid,
            "methods": [dataclasses.asdict(m) for m in self.methods],
            "images": [dataclasses.asdict(r) for r in self.images],
        }
        return _json_safe(data)


def summarize(records: list[ImageRecord], methods: list[Any], baseline: str = "baseline") -> list[MethodSummary]:
    """One `MethodSummary` per method, in the order of ``methods`` (objects with ``label`` and ``kind``)."""
    by_method: dict[str, list[ImageRecord]] = {m.label: [] for m in methods}
    for record in records:
        by_method[record.method].append(record)
    summaries = []
    for method in methods:
        rows = by_method[method.label]
        seconds = [r.seconds for r in rows if r.seconds is not None]
        memory = [r.peak_memory_bytes for r in rows if r.peak_memory_bytes is not None]
        psnrs = [r.psnr for r in rows if r.psnr is not None]
        finite = [p for p in psnrs if math.isfinite(p)]
        summaries.append(MethodSummary(
            method=method.label,
            kind=method.kind,
            images=len(rows),
            seconds_per_image=statistics.median(seconds) if seconds else None,
            peak_memory_bytes=max(memory) if memory else None,
            psnr=(statistics.fmean(finite) if finite else math.inf) if psnrs else None,
            identical=len(psnrs) - len(finite),
            ssim=_mean(r.ssim for r in rows),
            lpips=_mean(r.lpips for r in rows),
            clip_score=_mean(r.clip_score for r in rows),
        ))
    base = next((s for s in summaries if s.method == baseline), None)
    if base is not None and base.seconds_per_image:
        for summary in summaries:
            if summary.seconds_per_image:
                summary.speedup = base.seconds_per_image / summary.seconds_per_image
    return summaries


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
