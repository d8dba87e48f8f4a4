"""Where a self-attention layer sits in the UNet: pure functions from sizes to a token grid.

A UNet halves its latent at every level (rounding up, as its stride-2 convolutions do), so a self-attention
layer's token count says which level it runs at. No state, no diffusers import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_LEVELS = 8  # downsampling factors 1 .. 128


@dataclass(frozen=True)
class Level:
    """A self-attention layer's token grid, window size and latent downsampling factor.

    ``one_dimensional`` marks the bare-processor fallback for non-square latents: the tokens form one row and each
    window is ``sx * sy`` consecutive tokens.
    """

    height: int
    width: int
    downsample: int
    sx: int
    sy: int
    one_dimensional: bool = False


def grid_at(latent_hw: tuple[int, int], downsample: int) -> tuple[int, int]:
    """``(h, w)`` of the token grid at ``downsample`` for a latent of ``latent_hw``."""
    return -(-latent_hw[0] // downsample), -(-latent_hw[1] // downsample)


def pixel_grid(height: int, width: int, downsample: int) -> tuple[int, int]:
    """``(rows, cols)`` of the token grid at ``downsample`` for an image of ``height x width`` pixels (the latent
    is the image / 8)."""
    return grid_at((height // 8, width // 8), downsample)


def locate_level(
    latent_hw: tuple[int, int], num_tokens: int, max_downsample: int, sx: int, sy: int
) -> Level | None:
    """The merged level whose grid has ``num_tokens`` tokens, or ``None`` (another level, or none at all).

    Args:
        latent_hw: the UNet input's latent size, as the UNet hook saw it.
        num_tokens: ``N`` of the self-attention input.
        max_downsample: merge at levels downsampled at most this much.
        sx, sy: window size.
    """
    for k in range(MAX_LEVELS):
        factor = 2**k
        h, w = grid_at(latent_hw, factor)
        if h * w == num_tokens:
            return Level(h, w, factor, sx, sy) if factor <= max_downsample else None
    return None


def locate_from_reference(
    reference_tokens: int, num_tokens: int, max_downsample: int, sx: int, sy: int
) -> Level | None:
    """The bare-processor route's guess, from the token count of the UNet's first self-attention layer.

    A square reference gives every level's square grid. A non-square one cannot be factored from a count: its own
    level gets one row of ``sx * sy``-token windows (``one_dimensional``), and the other levels are not merged.
    """
    side = math.isqrt(reference_tokens)
    if side * side == reference_tokens:
        for k in range(MAX_LEVELS):
            factor = 2**k
            s = -(-side // factor)
            if s * s == num_tokens:
                return Level(s, s, factor, sx, sy) if factor <= max_downsample else None
        return None
    if num_tokens != reference_tokens:
        return None
    return Level(1, num_tokens, 1, sx * sy, 1, one_dimensional=True)
