"""The ways a benchmark runs the UNet: diffusers' default, Turbo, tomesd, ToDo-style K/V downsampling, the bound.

A `Variant` installs itself on a model (a pipeline or its UNet) and uninstalls afterwards, restoring the exact
processor objects that were there, so all variants share one set of weights and a run leaves the model as it
found it. Every variant but the default acts at one *attention level*: the highest-resolution latent level that
has transformer blocks (1x on SD 1.x/2.x, 2x on SDXL), see `attention_level`. tomesd is the exception, kept at its
own defaults (``max_downsample=1``), which on SDXL merge nothing: that is part of what the benchmark shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..hooks import apply_turbo, find_unet, remove_turbo, transformer_block_levels

TODO_MODES = ("nearest", "avg")


@dataclass
class Variant:
    """A way to run the UNet.

    Attributes:
        name: unique within a run, e.g. ``"turbo[alpha=0]@0.5"``; keys the timings.
        install: changes the model (a pipeline or a `UNet2DConditionModel`) in place.
        uninstall: restores it exactly.
        series: the name without the ratio (one line of the speed-up plot); defaults to ``name``.
        ratio: share of tokens the variant removes at its level, ``None`` for the default processor.
        family: ``"default"``, ``"turbo"``, ``"tomesd"``, ``"todo"`` or ``"bound"``.
        settings: the variant's own parameters, as recorded in the JSON (Turbo: its `TurboConfig` fields).
    """

    name: str
    install: Callable[[Any], None]
    uninstall: Callable[[Any], None]
    series: str = ""
    ratio: float | None = None
    family: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.series = self.series or self.name
        self.family = self.family or self.series


def variant_name(series: str, ratio: float | None) -> str:
    """``"turbo"``, 0.5 -> ``"turbo@0.5"``; no ratio -> the series alone."""
    return series if ratio is None else f"{series}@{ratio:g}"


def attention_level(unet: UNet2DConditionModel) -> int:
    """Latent downsampling factor of the highest-resolution level with transformer blocks (1 on SD 1.x/2.x, 2 on
    SDXL): where Turbo (by default), ToDo and the bound act."""
    factors = [factor for _, factor in transformer_block_levels(unet).values()]
    if not factors:
        raise TypeError("this UNet has no transformer blocks: there is no attention to accelerate")
    return min(factors)


def level_grid(height: int, width: int, level: int) -> tuple[int, int]:
    """Token grid ``(rows, cols)`` of latent level ``level`` for an image of ``height x width`` pixels (latent =
    pixels / 8; each level halves it, rounding up as the UNet's stride-2 convolutions do)."""
    rows, cols = height // 8, width // 8
    return -(-rows // level), -(-cols // level)


# -- processors that exist only to be measured ------------------------------------------------------------------
class ZeroOverheadBoundProcessor:
    """The zero-overhead bound: full-resolution self-attention run on the first ``N - floor(ratio * N)`` tokens
    (a free slice), its output padded back to ``N`` tokens by one copy. No plan, no real gather/scatter: no merge
    can be faster at the same ratio. Its output is meaningless; it exists to be timed."""

    def __init__(self, ratio: float, num_tokens: int) -> None:
        self.ratio, self.num_tokens = ratio, num_tokens
        self._sdpa = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        n = hidden_states.shape[1] if hidden_states.dim() == 3 else -1
        if encoder_hidden_states is None and n == self.num_tokens:
            removed = int(self.ratio * n)
            out = self._sdpa(attn, hidden_states[:, : n - removed], None, *args, **kwargs)
            # Pad with a broadcast view of one token: one copy whatever the ratio (above 0.5 fewer tokens are kept
            # than removed, so the kept ones cannot fill the gap).
            return torch.cat([out, out[:, :1].expand(-1, removed, -1)], dim=1)
        return self._sdpa(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


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
    """

    def __init__(self, ratio: float, grid: tuple[int, int], mode: str = "nearest") -> None:
        if mode not in TODO_MODES:
            raise ValueError(f"mode must be one of {', '.join(TODO_MODES)}, got {mode!r}")
        if not 0 < ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
        self.ratio, self.grid, self.mode = ratio, grid, mode
        keep = math.sqrt(1 - ratio)
        self.kv_grid = (max(1, round(grid[0] * keep)), max(1, round(grid[1] * keep)))
        self._sdpa = AttnProcessor2_0()

    def downsample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, rows*cols, C)`` tokens -> ``(B, kv_rows*kv_cols, C)`` tokens of the downsampled grid."""
        batch, _, channels = hidden_states.shape
        image = hidden_states.transpose(1, 2).reshape(batch, channels, *self.grid)
        if self.mode == "avg":
            small = F.adaptive_avg_pool2d(image, self.kv_grid)
        else:
            small = F.interpolate(image, size=self.kv_grid, mode="nearest-exact")
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
        return self._sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


# -- variants ---------------------------------------------------------------------------------------------------
def processor_variant(
    name: str, make_processor: Callable[[], Any], series: str = "", ratio: float | None = None, family: str = "",
    settings: dict[str, Any] | None = None,
) -> Variant:
    """A variant that sets ``make_processor()`` on every attention layer and restores the previous processors."""
    saved: list[dict[str, Any]] = []

    def install(model: Any) -> None:
        unet = find_unet(model)
        saved.append(unet.attn_processors)
        unet.set_attn_processor(make_processor())

    def uninstall(model: Any) -> None:
        find_unet(model).set_attn_processor(saved.pop())

    return Variant(name, install, uninstall, series, ratio, family, dict(settings or {}))


def default_variant() -> Variant:
    """diffusers' default processor (`AttnProcessor2_0`, torch SDPA) on every layer: the speed-up baseline."""
    return processor_variant("default", AttnProcessor2_0, family="default")


def turbo_variant(ratio: float, series: str = "turbo", **fields: Any) -> Variant:
    """Turbo through `apply_turbo` at ``ratio`` with any other `TurboConfig` ``fields``. On a pipeline it is
    installed on the pipeline (so ``semantic="text"`` sees the prompt), else on the UNet."""
    settings = {"ratio": ratio, **fields}
    return Variant(variant_name(series, ratio), lambda m: apply_turbo(m, **settings), remove_turbo, series, ratio,
                   "turbo", settings)


def tomesd_variant(ratio: float, series: str = "tomesd") -> Variant | None:
    """tomesd with its defaults at ``ratio``, or ``None`` when tomesd is not installed."""
    try:
        import tomesd
    except ImportError:
        return None
    return Variant(
        variant_name(series, ratio),
        lambda m: tomesd.apply_patch(find_unet(m), ratio=ratio),
        lambda m: tomesd.remove_patch(find_unet(m)),
        series, ratio, "tomesd", {"ratio": ratio, "version": getattr(tomesd, "__version__", "unknown")},
    )


def todo_variant(ratio: float, grid: tuple[int, int], mode: str = "nearest", series: str = "") -> Variant:
    """ToDo-style key/value downsampling (`TokenDownsamplingProcessor`) at the level whose token grid is ``grid``."""
    series = series or f"todo-{mode}"
    probe = TokenDownsamplingProcessor(ratio, grid, mode)  # validates the arguments now, not at install
    return processor_variant(
        variant_name(series, ratio), lambda: TokenDownsamplingProcessor(ratio, grid, mode), series, ratio, "todo",
        {"ratio": ratio, "mode": mode, "grid": list(grid), "kv_grid": list(probe.kv_grid)},
    )


def bound_variant(ratio: float, latent_tokens: int, series: str = "bound") -> Variant:
    """The zero-overhead bound at the level with ``latent_tokens`` tokens (`ZeroOverheadBoundProcessor`)."""
    return processor_variant(
        variant_name(series, ratio), lambda: ZeroOverheadBoundProcessor(ratio, latent_tokens), series, ratio,
        "bound", {"ratio": ratio, "tokens": latent_tokens},
    )
