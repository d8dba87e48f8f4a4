"""The two processors that exist to be measured: ToDo-style downsampling and the zero-overhead bound.

Every method but the baseline acts at one *attention level*: the highest-resolution latent level that has
transformer blocks (1x on SD 1.x/2.x, 2x on SDXL), see `turbo_diffusion.anatomy.attention_level`. tomesd is the
exception, kept at its own defaults (``max_downsample=1``), which on SDXL merge nothing: that is part of what the
benchmark shows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..kernels import default_processor

# ToDo's ways of downsampling a (B, C, h, w) grid to a size (the grammar's `methods.TODO_MODES`).
_POOLS = {
    "nearest": lambda image, size: F.interpolate(image, size=size, mode="nearest-exact"),
    "avg": F.adaptive_avg_pool2d,
}


class ZeroOverheadBoundProcessor:
    """The zero-overhead bound: full-resolution self-attention run on the first ``N - floor(ratio * N)`` tokens
    (a free slice), its output padded back to ``N`` tokens by one copy. No plan, no real gather/scatter: no merge
    can be faster at the same ratio. Its output is meaningless; it exists to be timed."""

    def __init__(self, ratio: float, num_tokens: int, kernel: str = "sdpa") -> None:
        self.ratio, self.num_tokens = ratio, num_tokens
        self._inner = default_processor(kernel)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        n = hidden_states.shape[1] if hidden_states.dim() == 3 else -1
        if encoder_hidden_states is None and n == self.num_tokens:
            removed = int(self.ratio * n)
            out = self._inner(attn, hidden_states[:, : n - removed], None, *args, **kwargs)
            # Pad with a broadcast view of one token: one copy whatever the ratio (above 0.5 fewer tokens are kept
            # than removed, so the kept ones cannot fill the gap).
            return torch.cat([out, out[:, :1].expand(-1, removed, -1)], dim=1)
        return self._inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


class TokenDownsamplingProcessor:
    """Our implementation of the idea of ToDo (Smith et al. 2024, "ToDo: Token Downsampling for Efficient
    Generation of High-Resolution Images"): at one level, self-attention computes its keys and values from a
    downsampled token grid while the queries stay full, so every token keeps its own output and nothing needs
    restoring.

    The ``(B, h*w, C)`` hidden states are seen as an ``h x w`` grid and resized to ``round(h * s) x round(w * s)``
    with ``s = sqrt(1 - ratio)``, so ``ratio`` is the share of key/value tokens removed: 0.75 is ToDo's 2x2
    downsampling, 0.5 about 1.41x per side. ``mode="nearest"`` keeps one token per cell (``nearest-exact``
    interpolation, as in ToDo's reference code; in a 2x2 cell, the bottom-right token), ``"avg"`` averages each
    cell (adaptive average pooling). Attention then costs ``(1 - ratio)`` of the full ``N x N`` score matrix,
    against ``(1 - ratio)^2`` when queries are merged too; in exchange no token's query is approximated. The
    key/value projections see the downsampled tokens only.

    Args:
        ratio: share of key/value tokens removed, in ``(0, 1)``. Higher is faster and coarser.
        grid: ``(rows, cols)`` of the level it acts at; other layers and cross-attention run unchanged.
        mode: ``"nearest"`` or ``"avg"``.
        kernel: the attention kernel inside, ``"sdpa"`` or ``"xformers"`` (`turbo_diffusion.kernels.default_processor`).
    """

    def __init__(self, ratio: float, grid: tuple[int, int], mode: str = "nearest", kernel: str = "sdpa") -> None:
        if mode not in _POOLS:
            raise ValueError(f"mode must be one of {', '.join(_POOLS)}, got {mode!r}")
        if not 0 < ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
        self.ratio, self.grid, self.mode = ratio, grid, mode
        keep = math.sqrt(1 - ratio)
        self.kv_grid = (max(1, round(grid[0] * keep)), max(1, round(grid[1] * keep)))
        self._inner = default_processor(kernel)

    def downsample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, rows*cols, C)`` tokens -> ``(B, kv_rows*kv_cols, C)`` tokens of the downsampled grid."""
        batch, _, channels = hidden_states.shape
        image = hidden_states.transpose(1, 2).reshape(batch, channels, *self.grid)
        small = _POOLS[self.mode](image, self.kv_grid)
        return small.flatten(2).transpose(1, 2)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        at_level = (
            encoder_hidden_states is None
            and attention_mask is None
            and hidden_states.dim() == 3
            and hidden_states.shape[1] == self.grid[0] * self.grid[1]
            and not attn.norm_cross
            and getattr(attn, "group_norm", None) is None
            and getattr(attn, "spatial_norm", None) is None
        )
        if at_level:
            # diffusers' processor computes keys and values from `encoder_hidden_states` and queries (and the
            # residual) from `hidden_states`: handing it the downsampled tokens there is all ToDo needs.
            encoder_hidden_states = self.downsample(hidden_states)
        return self._inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
