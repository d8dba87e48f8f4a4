"""`TurboContext`: what one Turbo installation's processors and hooks share.

It holds no step-to-step state itself; it only points at it:

* the configuration and the merge depth (fixed at installation);
* this thread's `CallState` (see :mod:`turbo_diffusion.state`): a `HookedCall` when `apply_turbo`'s UNet hook
  reports each call, a `BareCall` for a bare ``unet.set_attn_processor(TurboProcessor(...))``. The processor asks
  both the same questions and never needs to know which it has;
* whether feed-forward hooks merge with the block's plan (``merge_mlp`` under `apply_turbo`);
* one-time warnings, and the plan recorder of `inspect_plans` (``None`` unless inspecting).

The bare route cannot see the latent size. It takes the first self-attention layer it ever sees (the
highest-resolution attention layer of a UNet) as the reference: each time that layer runs, its token count gives
the reference grid, assumed square, and levels count from there (:func:`~turbo_diffusion.levels.
locate_from_reference`). Non-square latents are merged in 1-D windows at the reference level, with a warning.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from .config import TurboConfig
from .state import BareCall, CallState, HookedCall, ThreadLocal

logger = logging.getLogger("turbo_diffusion")


class TurboContext:
    """Shared parts of one Turbo installation (one UNet).

    Args:
        config: the installation's configuration.
        max_downsample: resolved merge depth when `apply_turbo` installed it (its UNet hook then reports every
            call); ``None`` for the bare-processor route.
    """

    def __init__(self, config: TurboConfig, max_downsample: int | None = None) -> None:
        self.config = config
        self.hooked = max_downsample is not None
        depth = max_downsample if max_downsample is not None else (config.max_downsample or 1)
        self.max_downsample = depth
        kind = HookedCall if self.hooked else BareCall
        self.calls: ThreadLocal[CallState] = ThreadLocal(functools.partial(kind, config, depth))
        self.feed_forward_merges = False  # set by apply_turbo when it hooks the feed-forwards (merge_mlp)
        self.recorder: Any = None  # set by inspect_plans
        self._warned: set[str] = set()

    def call(self) -> CallState:
        """This thread's current UNet call."""
        return self.calls.get()

    def warn_once(self, key: str, message: str) -> None:
        """Log ``message`` the first time ``key`` is used. One key per kind of warning."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
