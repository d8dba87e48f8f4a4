"""UNet anatomy, in one place: find the UNet of a model, which transformer blocks run at which latent level, and
the finest level with attention. The grid of tokens at a level is `turbo_diffusion.levels`'s (pure sizes).

Down block ``i`` of a `UNet2DConditionModel` runs at latent downsampling ``2**i``, the mid block at ``2**(n-1)``
and up block ``j`` at ``2**(n-1-j)`` (``n`` down blocks; each but the last down-samples at its end). The finest
level with attention is 1 on SD 1.x/2.x and 2 on SDXL: where Turbo merges by default and where ToDo and the bound
act.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

SUPPORTED = "UNet2DConditionModel models: SD 1.x, SD 2.x, SDXL and the pipelines built on them " \
            "(text-to-image, img2img, inpainting, ControlNet, ...)"


def find_unet(model: Any) -> UNet2DConditionModel:
    """The `UNet2DConditionModel` of a pipeline (or the model itself, compiled or not); ``TypeError`` for
    anything else."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(model, UNet2DConditionModel):
        return model
    unet = getattr(getattr(model, "unet", None), "_orig_mod", getattr(model, "unet", None))
    if isinstance(unet, UNet2DConditionModel):
        return unet
    what = type(model).__name__
    if getattr(model, "transformer", None) is not None:
        raise TypeError(f"{what} is a transformer-based model (SD3, Flux, PixArt, ...); Turbo supports {SUPPORTED}")
    raise TypeError(f"Turbo supports {SUPPORTED}; got {what}")


def unet_or_none(model: Any) -> UNet2DConditionModel | None:
    """`find_unet`, or ``None`` for a pipeline whose ``unet`` is ``None`` (built without one)."""
    if not isinstance(model, torch.nn.Module) and getattr(model, "unet", False) is None:
        return None
    return find_unet(model)


def transformer_block_levels(unet: UNet2DConditionModel) -> dict[str, tuple[BasicTransformerBlock, int]]:
    """Every transformer block of the UNet, by module name, with the downsampling factor of its level."""
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    levels = {}
    for name, module in unet.named_modules():
        if not isinstance(module, BasicTransformerBlock):
            continue
        if m := re.match(r"down_blocks\.(\d+)\.", name):
            factor = 2 ** int(m.group(1))
        elif m := re.match(r"up_blocks\.(\d+)\.", name):
            factor = 2 ** (n_up - 1 - int(m.group(1)))
        elif name.startswith("mid_block."):
            factor = 2 ** (n_down - 1)
        else:
            continue
        levels[name] = (module, factor)
    return levels


def attention_level(unet: UNet2DConditionModel) -> int:
    """The downsampling factor of the finest level with transformer blocks (1 on SD 1.x/2.x, 2 on SDXL);
    ``TypeError`` for a UNet without any."""
    return _finest(transformer_block_levels(unet))


def merge_depth(max_downsample: int | None, levels: dict[str, tuple[BasicTransformerBlock, int]]) -> int:
    """The largest downsampling factor to merge at: ``max_downsample``, or the finest level with attention
    (``None``). ``ValueError`` when ``max_downsample`` is finer than every level with attention."""
    finest = _finest(levels)
    if max_downsample is None:
        return finest
    if max_downsample < finest:
        raise ValueError(
            f"max_downsample={max_downsample} merges nothing on this UNet: its highest-resolution attention "
            f"runs at downsample {finest}; use None (the default), or a value in "
            f"{[f for f in (1, 2, 4, 8) if f >= finest]}"
        )
    return max_downsample


def _finest(levels: dict[str, tuple[BasicTransformerBlock, int]]) -> int:
    if not levels:
        raise TypeError(f"this UNet has no transformer blocks, nothing to merge; Turbo supports {SUPPORTED}")
    return min(factor for _, factor in levels.values())
