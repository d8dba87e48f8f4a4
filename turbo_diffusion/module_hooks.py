"""Add and remove diffusers hooks (`diffusers.hooks.HookRegistry`) so that removal leaves the module as it was.

diffusers' registry, once its last hook is removed, leaves an empty registry (``module._diffusers_hook``) and an
instance attribute ``forward`` (the bound method it had wrapped) on the module; code that later patches the
module's class ``forward`` would be bypassed by that attribute. `remove_hook` takes both away when Turbo's hook was
the last one.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` under ``name`` on ``module``'s diffusers hook registry (made if missing)."""
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module``; if no hook is left, the registry and the ``forward`` attribute it
    left behind go too."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(name, recurse=False)
    if registry.hooks:
        return
    del module._diffusers_hook
    forward = module.__dict__.get("forward")
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
        del module.forward
