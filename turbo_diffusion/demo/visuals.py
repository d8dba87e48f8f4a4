"""Pictures of what Turbo did, made from `inspect_plans` records: the merged tokens over the image, and heat maps
of mutual redundancy R, semantic value S and information degree E. numpy and Pillow only, on plain arrays."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

MERGED_TINT = (255, 0, 170)  # magenta: far from every colour a scene or a photo is mostly made of
TINT_ALPHA = 0.6
NAN_GRAY = (190, 190, 190)  # destinations (never merged) and unmeasured S
DISPLAY_SIZE = 256  # small maps are enlarged to at least this many pixels, token edges kept sharp
# Viridis at five stops: dark blue (low) to yellow (high), readable in gray too.
_STOPS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


@dataclass(frozen=True)
class PlanMaps:
    """One `PlanRecord` of one image of the batch, as numpy arrays of shape ``grid``.

    With classifier-free guidance the UNet's batch is ``[unconditional, conditional]``; the demo keeps the last
    image, the conditional one (the only one without guidance).
    """

    block: str
    step: int
    grid: tuple[int, int]
    merged: np.ndarray  # bool
    redundancy: np.ndarray  # float32, NaN on destinations
    semantic: np.ndarray  # float32, NaN when not measured
    degree: np.ndarray  # float32, NaN on destinations

    @property
    def merged_count(self) -> int:
        return int(self.merged.sum())


def finest_plans(records: Iterable[Any], batch_index: int = -1) -> list[PlanMaps]:
    """The records of the finest token grid merged (the largest ``h * w``), as `PlanMaps` of image
    ``batch_index``; in call order. Empty when nothing was recorded (e.g. ratio 0)."""
    records = list(records)
    if not records:
        return []
    finest = max(r.grid[0] * r.grid[1] for r in records)
    return [
        PlanMaps(r.block, r.step, tuple(r.grid), r.merged[batch_index].numpy().copy(),
                 r.redundancy[batch_index].float().numpy().copy(), r.semantic[batch_index].float().numpy().copy(),
                 r.degree[batch_index].float().numpy().copy())
        for r in records if r.grid[0] * r.grid[1] == finest
    ]


def blocks_of(plans: Iterable[PlanMaps]) -> list[str]:
    """The blocks among ``plans``, in first-seen order."""
    return list(dict.fromkeys(p.block for p in plans))


def pick(plans: list[PlanMaps], step: int, block: str | None = None) -> PlanMaps | None:
    """The plan of ``block`` (the first block when ``None`` or unknown) at UNet call ``step`` (the last one
    recorded when ``step`` is past it); ``None`` when there is none."""
    blocks = blocks_of(plans)
    if not blocks:
        return None
    chosen = [p for p in plans if p.block == (block if block in blocks else blocks[0])]
    at_step = [p for p in chosen if p.step == step]
    return at_step[0] if at_step else chosen[-1]


def merge_overlay(image: Image.Image, merged: np.ndarray) -> Image.Image:
    """``image`` with the tokens merged away tinted magenta: ``merged`` is the ``(h, w)`` token grid, stretched
    over the image. Enlarged by a whole factor to at least `DISPLAY_SIZE` pixels."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    mask = _stretch(np.asarray(merged, dtype=bool), rgb.shape[0], rgb.shape[1])
    tinted = rgb.copy()
    tinted[mask] = (1 - TINT_ALPHA) * rgb[mask] + TINT_ALPHA * np.array(MERGED_TINT)
    return _enlarge(Image.fromarray(np.round(tinted).astype(np.uint8)))


def heat_map(values: np.ndarray) -> Image.Image:
    """``(h, w)`` values as a viridis heat map, low dark blue to high yellow over their own finite range; NaN
    (destinations, or S not measured) light gray. Enlarged by a whole factor to at least `DISPLAY_SIZE` pixels."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    rgb = np.empty((*values.shape, 3), dtype=np.float64)
    rgb[...] = NAN_GRAY
    if finite.any():
        low, high = values[finite].min(), values[finite].max()
        scaled = (values[finite] - low) / (high - low) if high > low else np.full(int(finite.sum()), 0.5)
        rgb[finite] = colormap(scaled)
    return _enlarge(Image.fromarray(np.round(rgb).astype(np.uint8)))


def colormap(t: np.ndarray) -> np.ndarray:
    """Viridis colours (float RGB in ``[0, 255]``, shape ``t.shape + (3,)``) of values ``t`` in ``[0, 1]``."""
    position = np.clip(np.asarray(t, dtype=np.float64), 0, 1) * (len(_STOPS) - 1)
    index = np.minimum(position.astype(int), len(_STOPS) - 2)
    frac = (position - index)[..., None]
    return (1 - frac) * _STOPS[index] + frac * _STOPS[index + 1]


def value_range(values: np.ndarray) -> str:
    """``"0.12 to 0.98"`` over the finite values, or ``"not measured"``."""
    finite = np.asarray(values)[np.isfinite(values)]
    return f"{finite.min():.3g} to {finite.max():.3g}" if finite.size else "not measured"


def describe(plan: PlanMaps, steps: int) -> str:
    """One Markdown paragraph on ``plan``: where, when, how much was merged, and the maps' ranges."""
    total = plan.grid[0] * plan.grid[1]
    return (f"`{plan.block}`, denoising step {plan.step + 1} of {steps}, token grid {plan.grid[0]}x{plan.grid[1]}: "
            f"**{plan.merged_count} of {total} tokens merged** ({plan.merged_count / total:.0%}, magenta). "
            f"R {value_range(plan.redundancy)}; S {value_range(plan.semantic)}; E {value_range(plan.degree)}. "
            "Maps run from dark blue (low) to yellow (high); gray marks destinations, which are never merged "
            "(and all of S when Turbo measures no semantics).")


def _stretch(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour stretch of a ``(h, w)`` grid to ``(height, width)``."""
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    return grid[rows[:, None], cols[None, :]]


def _enlarge(image: Image.Image) -> Image.Image:
    factor = max(1, math.ceil(DISPLAY_SIZE / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
