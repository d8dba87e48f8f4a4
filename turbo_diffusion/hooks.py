"""`apply_turbo` / `remove_turbo`: install Turbo on a UNet or a pipeline through diffusers hooks.

What gets installed, and nothing else:

* a `TurboProcessor` on the self-attention (``attn1``) of every transformer block at the merged levels, and on
  their cross-attention (``attn2``) when ``merge_crossattn`` or ``semantic="text"`` needs it;
* a UNet hook (diffusers ``HookRegistry``) that hands the processor the latent size and the timestep;
* with ``merge_mlp``, a hook on those blocks' feed-forward that merges its input and restores its output;
* with ``semantic="text"`` on a pipeline, a hook on the text encoder that records the prompt's token ids.

Module classes are never renamed or swapped, so ``unet.compile_repeated_blocks()`` and LoRA loading see the
model they expect (both tested). `remove_turbo` puts back exactly the processors that were there before.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    XFormersAttnProcessor,
)

from .config import TurboConfig, resolve_config
from .context import TurboContext
from .processor import TurboProcessor

_UNET_HOOK = "turbo_diffusion_unet"
_FEED_FORWARD_HOOK = "turbo_diffusion_feed_forward"
_TEXT_ENCODER_HOOK = "turbo_diffusion_text_encoder"

# Processors Turbo may replace: plain attention. Anything else (IP-Adapter, custom) is left in place, with a warning.
_REPLACEABLE = (AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0, XFormersAttnProcessor, TurboProcessor)

SUPPORTED = "UNet2DConditionModel models: SD 1.x, SD 2.x, SDXL and the pipelines built on them " \
            "(text-to-image, img2img, inpainting, ControlNet, ...)"


class _UNetHook(ModelHook):
    """Before each UNet call: tell the context the latent size, the timestep and the batch."""

    def __init__(self, context: TurboContext, saved_processors: dict[str, Any], hooked: list) -> None:
        super().__init__()
        self.context = context
        self.saved_processors = saved_processors
        self.hooked = hooked  # (module, hook name) pairs to remove with this one

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        self.context.start_call(tuple(sample.shape[-2:]), timestep, batch=sample.shape[0])
        return args, kwargs


class _FeedForwardHook(ModelHook):
    """Merge the feed-forward's input with the block's plan, restore its output."""

    def __init__(self, context: TurboContext) -> None:
        super().__init__()
        self.context = context

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        forward = self.fn_ref.original_forward
        plan = self.context.plan_for(hidden_states)
        if plan is None:
            return forward(hidden_states, *args, **kwargs)
        return plan.restore(forward(plan.merge(hidden_states), *args, **kwargs))


class _TextEncoderHook(ModelHook):
    """Record the token ids the pipeline encodes, so ``semantic="text"`` knows the prompt's content tokens."""

    def __init__(self, context: TurboContext) -> None:
        super().__init__()
        self.context = context

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        ids = args[0] if args else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.context.record_prompt_ids(ids)
        return args, kwargs


def apply_turbo(model: Any, config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> Any:
    """Install Turbo token merging on a pipeline or a `UNet2DConditionModel`, in place.

    Args:
        model: a diffusers pipeline with a ``unet`` (SD 1.x/2.x, SDXL, img2img, inpainting, ControlNet, ...) or
            the UNet itself. Anything else raises ``TypeError``.
        config: a `TurboConfig`, a dict of its fields, or ``None`` for the defaults.
        **fields: `TurboConfig` fields overriding ``config``.

    Returns:
        ``model``, for chaining. Calling it again replaces the previous installation.
    """
    unet = find_unet(model)
    config = resolve_config(config, **fields)
    remove_turbo(unet)
    levels = transformer_block_levels(unet)
    depth = merge_depth(config, levels)
    context = TurboContext(config, max_downsample=depth)
    processor = TurboProcessor._for_context(context)

    saved = dict(unet.attn_processors)
    wanted = dict(saved)
    hooked: list[tuple[torch.nn.Module, str]] = []
    need_cross = config.merge_crossattn or (config.semantic == "text" and config.alpha > 0)
    kept = []
    for name, (block, downsample) in levels.items():
        if downsample > depth:
            continue
        layers = ["attn1"] + (["attn2"] if need_cross and block.attn2 is not None else [])
        for key in (f"{name}.{layer}.processor" for layer in layers):
            if isinstance(saved[key], _REPLACEABLE):
                wanted[key] = processor
            else:
                kept.append(f"{key} ({type(saved[key]).__name__})")
        if config.merge_mlp:
            registry = HookRegistry.check_if_exists_or_initialize(block.ff)
            registry.register_hook(_FeedForwardHook(context), _FEED_FORWARD_HOOK)
            hooked.append((block.ff, _FEED_FORWARD_HOOK))
    if kept:
        context.warn_once("kept", f"Turbo left {len(kept)} custom attention processor(s) in place: {', '.join(kept)}")
    unet.set_attn_processor(wanted)

    if config.semantic == "text" and unet is not model:
        _hook_text_encoder(model, context, hooked)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(_UNetHook(context, saved, hooked), _UNET_HOOK)
    return model


def remove_turbo(model: Any) -> Any:
    """Undo `apply_turbo`: restore the processors that were installed before it and remove its hooks.

    A model without Turbo is returned unchanged.
    """
    unet = find_unet(model)
    registry = getattr(unet, "_diffusers_hook", None)
    hook = registry.get_hook(_UNET_HOOK) if registry is not None else None
    if hook is None:
        return model
    for module, name in hook.hooked:
        module._diffusers_hook.remove_hook(name, recurse=False)
    registry.remove_hook(_UNET_HOOK, recurse=False)
    unet.set_attn_processor(dict(hook.saved_processors))
    return model


def turbo_config_of(model: Any) -> TurboConfig | None:
    """The `TurboConfig` installed on ``model`` by `apply_turbo`, or ``None``."""
    registry = getattr(find_unet(model), "_diffusers_hook", None)
    hook = registry.get_hook(_UNET_HOOK) if registry is not None else None
    return hook.context.config if hook is not None else None


def find_unet(model: Any) -> UNet2DConditionModel:
    """The `UNet2DConditionModel` of a pipeline (or the model itself); ``TypeError`` for anything else."""
    if isinstance(model, UNet2DConditionModel):
        return model
    unet = getattr(model, "unet", None)
    if isinstance(unet, UNet2DConditionModel):
        return unet
    what = type(model).__name__
    if getattr(model, "transformer", None) is not None:
        raise TypeError(f"{what} is a transformer-based model (SD3, Flux, PixArt, ...); Turbo supports {SUPPORTED}")
    raise TypeError(f"Turbo supports {SUPPORTED}; got {what}")


def transformer_block_levels(unet: UNet2DConditionModel) -> dict[str, tuple[BasicTransformerBlock, int]]:
    """Every transformer block of the UNet with the latent downsampling factor of the level it runs at.

    Down block ``i`` runs at ``2**i``, the mid block at ``2**(n-1)``, up block ``j`` at ``2**(n-1-j)`` (``n`` down
    blocks; each but the last down-samples at its end).
    """
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


def merge_depth(config: TurboConfig, levels: dict[str, tuple[BasicTransformerBlock, int]]) -> int:
    """The largest downsampling factor to merge at: ``max_downsample``, or the finest level with attention."""
    factors = sorted({factor for _, factor in levels.values()})
    if not factors:
        raise TypeError(f"this UNet has no transformer blocks, nothing to merge; Turbo supports {SUPPORTED}")
    if config.max_downsample is None:
        return factors[0]
    if config.max_downsample < factors[0]:
        raise ValueError(
            f"max_downsample={config.max_downsample} merges nothing on this UNet: its highest-resolution attention "
            f"runs at downsample {factors[0]}; use None (the default), or a value in "
            f"{[f for f in (1, 2, 4, 8) if f >= factors[0]]}"
        )
    return config.max_downsample


def _hook_text_encoder(pipe: Any, context: TurboContext, hooked: list) -> None:
    encoder = getattr(pipe, "text_encoder", None) or getattr(pipe, "text_encoder_2", None)
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if encoder is None or tokenizer is None:
        context.warn_once("text", "semantic='text': no text encoder to watch; counting every prompt token "
                                  "but the start token")
        return
    special = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    context.special_token_ids = tuple(int(i) for i in special if i is not None)
    HookRegistry.check_if_exists_or_initialize(encoder).register_hook(_TextEncoderHook(context), _TEXT_ENCODER_HOOK)
    hooked.append((encoder, _TEXT_ENCODER_HOOK))
