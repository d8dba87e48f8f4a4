"""Turbo beside other code that replaces attention processors, behind one explicit `settle`.

diffusers calls replace a UNet's processors: ``enable_attention_slicing()``, ``fuse_qkv_projections()``,
``set_attn_processor(...)``, ``set_default_attn_processor()``, ``load_ip_adapter()``... `settle(unet)` looks at
what one `apply_turbo` installation left and settles it: where diffusers only re-created Turbo's processors by
calling their class (``load_ip_adapter()``, ``unload_ip_adapter()``), Turbo's own go back and it stays on; where
anything else replaced them, Turbo takes itself off completely, with one warning naming the call, so it never
reports itself on while merging nothing. `turbo_config_of`, `inspect_plans`, `turbo_generation` and the UNet's
pre-hook call it openly, before they read. ``set_default_attn_processor()`` is overridden on Turbo UNets
(`SetDefaultAttnProcessor`), and deep copies carry hooks this module strips (`strip_copied_hooks`).
docs/DESIGN.md ("Processors replaced by other calls") lists what each call does.

This module owns the registry of installations (`INSTALLATIONS`, UNet -> installation) and taking one off
(`take_off`); `turbo_diffusion.installation` builds and commits them.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)

from .kernels import default_processor
from .module_hooks import remove_hook
from .processor import TurboProcessor

logger = logging.getLogger("turbo_diffusion")

FEED_FORWARD_HOOK = "turbo_diffusion_feed_forward"
SET_DEFAULT = "set_default_attn_processor"  # the UNet method apply_turbo overrides on the instance
INSTALLATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # UNet -> its apply_turbo installation

# Processors Turbo may wrap: plain, fused, sliced and xformers attention (it keeps them for what it does not
# merge). Anything else (IP-Adapter, custom) is left in place, with a warning.
WRAPPABLE = (AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor)

# The diffusers calls that install each processor class, to say which one switched Turbo off.
INSTALLED_BY = {
    "SlicedAttnProcessor": "enable_attention_slicing() / set_attention_slice()",
    "FusedAttnProcessor2_0": "fuse_qkv_projections()",
    "XFormersAttnProcessor": "enable_xformers_memory_efficient_attention()",
    "AttnProcessor": "set_default_attn_processor() / set_attn_processor(AttnProcessor())",
    "AttnProcessor2_0": "set_attn_processor(AttnProcessor2_0()) / unfuse_qkv_projections()",
    "IPAdapterAttnProcessor": "load_ip_adapter()",
    "IPAdapterAttnProcessor2_0": "load_ip_adapter()",
    "IPAdapterXFormersAttnProcessor": "load_ip_adapter()",
}

# Why Turbo cannot stay on a UNet whose cross-attention another processor (IP-Adapter's, a custom one) runs.
CROSS_ATTENTION_TAKEN = (
    "merge_crossattn and semantic='text' need Turbo's processor on cross-attention, but {what}; Turbo merges "
    "self-attention alongside it with merge_crossattn=False and semantic='attention' (or 'none')"
)


def settle(unet: torch.nn.Module) -> Any:
    """The installation merging on ``unet`` after settling what other calls did to its processors (see the module
    docstring): re-created processors are Turbo's again; replaced ones take Turbo off (one warning) and give
    ``None``. ``None`` also when `apply_turbo` never ran on it."""
    installation = INSTALLATIONS.get(unet)
    if installation is None or _retire_if_replaced(unet, installation):
        return None
    return installation


def replacement_of(installation: Any) -> Any:
    """The processor that replaced one of ``installation``'s, or ``None`` while all of them are in place.

    A layer where diffusers re-created Turbo's processor by calling its class with no arguments, as
    ``load_ip_adapter()`` and ``unload_ip_adapter()`` do for every processor they keep, gets Turbo's own
    processor back first: that call meant to keep the layer's processor, and a bare ``TurboProcessor()`` would
    merge with the default config, detached from this installation.
    """
    current = [module.processor for module, _ in installation.layers]
    replacement = None
    for (module, processor), now in zip(installation.layers, current, strict=True):
        if now is processor:
            continue
        # diffusers makes one per layer; one instance on several layers is someone's set_attn_processor(...).
        if is_recreation(now) and sum(p is now for p in current) == 1:
            module.set_processor(processor)
        elif replacement is None:
            replacement = now
    return replacement


def take_off(unet: UNet2DConditionModel, installation: Any) -> None:
    """Undo one installation: its hooks, and its processors where they still are (others are left alone)."""
    INSTALLATIONS.pop(unet, None)
    installation.unhook(unet)
    set_processors(unet, lambda name, p: installation.originals[name] if _is_ours(p, installation) else p)


def _retire_if_replaced(unet: torch.nn.Module, installation: Any) -> bool:
    """Take Turbo off when another call replaced its processors, with one warning naming the call. Layers that
    still hold a Turbo processor get back the processor it wrapped: Turbo is then off everywhere."""
    replacement = replacement_of(installation)
    if replacement is None:
        return False
    take_off(unet, installation)
    kind = type(replacement).__name__
    call = INSTALLED_BY.get(kind, f"set_attn_processor({kind}(...))")
    if kind.startswith("IPAdapter"):
        advice = CROSS_ATTENTION_TAKEN.format(what=f"{call} put {kind} there")
    else:
        advice = "Call apply_turbo(...) again afterwards to merge on top of it (Turbo pipelines do this for you)."
    logger.warning(f"Turbo is off: {call} replaced its attention processors with {kind}. {advice}")
    return True


def strip_copied_hooks(unet: torch.nn.Module) -> None:
    """Remove the Turbo hooks a UNet carries without an installation of its own (a deep copy's)."""
    for hooks in (unet._forward_pre_hooks, unet._forward_hooks):
        for hook_id, hook in list(hooks.items()):
            if getattr(hook, "turbo_unet_hook", False):
                del hooks[hook_id]
                unet._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    if isinstance(unet.__dict__.get(SET_DEFAULT), SetDefaultAttnProcessor):
        del unet.__dict__[SET_DEFAULT]
    for module in unet.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(FEED_FORWARD_HOOK) is not None:
            remove_hook(module, FEED_FORWARD_HOOK)


class SetDefaultAttnProcessor:
    """``unet.set_default_attn_processor()`` on a UNet with Turbo: Turbo off, then diffusers' method.

    diffusers' method raises on processor classes it does not list, `TurboProcessor` among them. What it promises
    is to disable custom processors and set the default attention, so that is what it does here: Turbo comes off
    (one warning naming the call), every layer gets diffusers' default and `turbo_config_of` returns ``None``.
    Set on the UNet instance by `apply_turbo` (the class is untouched) and removed with Turbo.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = weakref.ref(unet)

    def __deepcopy__(self, memo: dict) -> SetDefaultAttnProcessor:
        """The copy of a UNet's method acts on the copied UNet (``copy.deepcopy`` puts it in ``memo`` first)."""
        unet = self.unet()
        copied = memo.get(id(unet)) if unet is not None else None
        return SetDefaultAttnProcessor(copied if copied is not None else unet)

    def __call__(self) -> None:
        unet = self.unet()
        installation = INSTALLATIONS.get(unet)
        if installation is None:  # a copy that has not run yet: its copied Turbo pieces come off
            strip_copied_hooks(unet)
            set_processors(unet, lambda name, processor: original(processor))
        elif not _retire_if_replaced(unet, installation):
            take_off(unet, installation)
            logger.warning("Turbo is off: set_default_attn_processor() replaced its attention processors with "
                           "diffusers' default. Call apply_turbo(...) again afterwards to merge on top of it.")
        type(unet).set_default_attn_processor(unet)


def original(processor: Any) -> Any:
    """The processor a Turbo processor stands in for (diffusers' default for a bare one); others unchanged."""
    if isinstance(processor, TurboProcessor):
        return processor.inner if processor.inner is not None else default_processor()
    return processor


def is_recreation(processor: Any) -> bool:
    """A bare `TurboProcessor` made with no arguments: how diffusers re-creates a processor it keeps."""
    return type(processor) is TurboProcessor and processor.made_without_arguments


def _is_ours(processor: Any, installation: Any) -> bool:
    return isinstance(processor, TurboProcessor) and processor.context is installation.context


def set_processors(unet: UNet2DConditionModel, choose) -> None:
    """Replace each layer's processor by ``choose(name, processor)``, touching the UNet only if one changes."""
    current = unet.attn_processors
    chosen = {name: choose(name, processor) for name, processor in current.items()}
    if any(chosen[name] is not current[name] for name in current):
        unet.set_attn_processor(chosen)
