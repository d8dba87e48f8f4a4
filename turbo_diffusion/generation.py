"""`turbo_generation`: mark UNet calls you make yourself as the steps of one generation.

Turbo keeps state from one denoising step to the next only inside a generation: ``plan_every > 1`` reuses a
block's plan, ``semantic="text"`` reads the previous step's text mass. A pipeline call is a generation (Turbo
opens one around its denoising loop and closes it when the loop ends, on success or failure); so is the ``with``
block below. Outside one, every UNet call is a generation of its own: it plans afresh and never reads what another
call left, so no input can ever get another input's plan or another prompt's text mass.

    with turbo_generation(unet):
        for t in scheduler.timesteps:
            noise = unet(latents, t, encoder_hidden_states=text).sample
            latents = scheduler.step(noise, t, latents).prev_sample

Inside a generation a call starts it afresh (plans again, forgets the text mass) when its batch, latent size,
device or dtype differ from the previous call's, when the previous call raised, or when its timestep is not
strictly below the previous call's. Timesteps are compared only when they are Python numbers or CPU tensors:
reading a GPU tensor would stall the device at every step, so with GPU timesteps the calls are trusted to be the
loop's steps in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .anatomy import find_unet
from .coexistence import settle
from .context import TurboContext
from .installation import turbo_contexts


@contextmanager
def turbo_generation(model: Any) -> Iterator[None]:
    """Make the UNet calls inside the ``with`` block one generation (see the module docstring).

    Args:
        model: a pipeline or UNet with Turbo on it (`apply_turbo`, a Turbo pipeline, or bare `TurboProcessor` s).

    Raises:
        ValueError: when no Turbo processor is installed on ``model``.
    """
    unet = find_unet(model)
    settle(unet)  # Turbo comes off first where another call replaced its processors
    contexts = turbo_contexts(unet, needed_by="turbo_generation")
    opened = [(context, context.call().open_generation()) for context in contexts]
    # Bare processors have no UNet hook of their own: the clock of this generation needs one.
    bare = [context for context in contexts if not context.hooked]
    handles = []
    if bare:
        handles = [unet.register_forward_pre_hook(_BareCallStart(bare), with_kwargs=True),
                   unet.register_forward_hook(_BareCallEnd(bare))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for context, outer in opened:
            context.call().close_generation(outer)


class _BareCallStart:
    def __init__(self, contexts: list[TurboContext]) -> None:
        self.contexts = contexts

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        key = (sample.shape[0], tuple(sample.shape[-2:]), sample.device, sample.dtype)
        for context in self.contexts:
            context.call().start(key, timestep)


class _BareCallEnd:
    def __init__(self, contexts: list[TurboContext]) -> None:
        self.contexts = contexts

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, output: Any) -> None:
        for context in self.contexts:
            context.call().finish()
