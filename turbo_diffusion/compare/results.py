"""What `compare` measures: one record per image, one summary per method, and the whole result."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness.measure import NOISY_SPREAD
from ..harness.output import json_safe

SPEED_NOTE = ("Speed in `compare` is indicative: each image is timed end to end (text encoder, UNet, VAE) one at a "
              "time, the methods taking turns per prompt and seed after one warm-up each, at least 3 runs per "
              "method where a run takes under 10 s (--repeats); medians are reported, with the spread (slowest "
              "over fastest run). Use `turbo-diffusion bench` to measure speed.")
BUILTIN_SCORES = ("psnr", "ssim", "lpips", "clip_score")  # always in the JSON, null when they did not run


class _Scores:
    """Named numbers of the built-in scorers as attributes (``record.psnr``), ``None`` when they did not run."""

    scores: dict[str, float]

    psnr = property(lambda self: self.scores.get("psnr"))
    ssim = property(lambda self: self.scores.get("ssim"))
    lpips = property(lambda self: self.scores.get("lpips"))
    clip_score = property(lambda self: self.scores.get("clip_score"))


@dataclass
class ImageRecord(_Scores):
    """One generated image and what was measured on it.

    ``seconds`` comes from the run that generated it (an earlier one when ``reused``); ``peak_memory_bytes`` is the
    peak memory of its method's warm-up generation (`turbo_diffusion.harness.memory`: CUDA allocator, or process
    RSS on the CPU). ``scores`` holds every scorer's numbers (`turbo_diffusion.compare.scoring`): PSNR, SSIM and
    LPIPS against the baseline image of the same prompt and seed, CLIP score against the prompt, and any custom
    scorer's.
    """

    method: str
    prompt_index: int
    prompt: str
    seed: int
    path: str  # relative to the output folder
    seconds: float | None = None
    peak_memory_bytes: int | None = None
    reused: bool = False
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        base = {k: getattr(self, k) for k in ("method", "prompt_index", "prompt", "seed", "path", "seconds",
                                              "peak_memory_bytes", "reused")}
        return base | dict.fromkeys(BUILTIN_SCORES) | self.scores


@dataclass
class MethodSummary(_Scores):
    """Aggregates over a method's images.

    Attributes:
        seconds_per_image: median seconds per image, over its images' runs and any extra timed runs.
        speedup: the baseline's median over this method's median (above 1 is faster than the baseline).
        timed_runs: how many runs the median is over.
        spread: slowest over fastest of those runs (``None`` below two); above `NOISY_SPREAD`, ``noisy``.
        peak_memory_bytes: the largest peak memory over its images (see `ImageRecord`).
        identical: how many images are pixel-identical to the baseline image (infinite PSNR).
        scores: the mean of each scorer number over the images: over its finite values, or infinite when every
            value is (PSNR of identical images). ``psnr``, ``ssim``, ``lpips``, ``clip_score`` read from it.
        fid: FID of the method's images against the FID reference; ``None`` when not computed.
    """

    method: str
    kind: str
    images: int
    seconds_per_image: float | None = None
    speedup: float | None = None
    timed_runs: int = 0
    spread: float | None = None
    peak_memory_bytes: int | None = None
    identical: int = 0
    fid: float | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        base = {k: getattr(self, k) for k in ("method", "kind", "images", "seconds_per_image", "speedup",
                                              "timed_runs", "spread", "noisy", "peak_memory_bytes", "identical",
                                              "fid")}
        return base | dict.fromkeys(BUILTIN_SCORES) | self.scores

    @property
    def noisy(self) -> bool:
        """Its runs varied more than `NOISY_SPREAD` (slowest over fastest): the machine was busy."""
        return self.spread is not None and self.spread > NOISY_SPREAD


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
    environment: dict[str, Any] | None = None

    def method(self, label: str) -> MethodSummary:
        """The summary of the method called ``label``."""
        for summary in self.methods:
            if summary.method == label:
                return summary
        raise KeyError(f"no method {label!r}; methods: {', '.join(m.method for m in self.methods)}")

    @property
    def score_names(self) -> list[str]:
        """Every scorer number measured, built-in ones first."""
        names = dict.fromkeys(n for m in self.methods for n in m.scores)
        return [n for n in BUILTIN_SCORES if n in names] + [n for n in names if n not in BUILTIN_SCORES]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; infinite PSNR is written as the string ``"inf"`` (JSON has no infinity)."""
        return json_safe({
            "configuration": self.configuration,
            "fingerprint": self.fingerprint,
            "random_weights": self.random_weights,
            "device": self.device,
            "environment": self.environment,
            "notes": self.notes,
            "skipped": self.skipped,
            "fid": self.fid,
            "methods": [m.to_dict() for m in self.methods],
            "images": [r.to_dict() for r in self.images],
        })


def summarize(records: list[ImageRecord], methods: Sequence[Any],
              extra_seconds: Mapping[str, list[float]] | None = None) -> list[MethodSummary]:
    """One `MethodSummary` per method, in the order of ``methods`` (objects with ``label`` and ``kind``); its time
    is over its images and its ``extra_seconds`` (timed runs that made no image); speed-ups are over the method of
    kind ``baseline``."""
    by_method: dict[str, list[ImageRecord]] = {m.label: [] for m in methods}
    for record in records:
        by_method[record.method].append(record)
    summaries = []
    for method in methods:
        rows = by_method[method.label]
        seconds = [r.seconds for r in rows if r.seconds is not None] + list((extra_seconds or {}).get(method.label,
                                                                                                     []))
        memory = [r.peak_memory_bytes for r in rows if r.peak_memory_bytes is not None]
        names = dict.fromkeys(name for r in rows for name in r.scores)
        summaries.append(MethodSummary(
            method=method.label,
            kind=method.kind,
            images=len(rows),
            seconds_per_image=statistics.median(seconds) if seconds else None,
            timed_runs=len(seconds),
            spread=max(seconds) / min(seconds) if len(seconds) > 1 else None,
            peak_memory_bytes=max(memory) if memory else None,
            identical=sum(r.psnr == math.inf for r in rows),
            scores={name: _mean([r.scores[name] for r in rows if r.scores.get(name) is not None]) for name in names},
        ))
    base = next((s for s in summaries if s.kind == "baseline"), None)
    if base is not None and base.seconds_per_image:
        for summary in summaries:
            if summary.seconds_per_image:
                summary.speedup = base.seconds_per_image / summary.seconds_per_image
    return summaries


def _mean(values: list[float]) -> float | None:
    """Mean of the finite values; infinite when every value is (identical images); ``None`` for none."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return statistics.fmean(finite)
    return values[0] if values else None
