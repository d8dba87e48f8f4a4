"""turbo-diffusion: Turbo (informativity-driven token merging) for Stable Diffusion in diffusers.

    from turbo_diffusion import apply_turbo
    apply_turbo(pipe, ratio=0.5)        # or pipe.unet.set_attn_processor(TurboProcessor(ratio=0.5))

The Turbo pipeline classes are imported on first use, so ``import turbo_diffusion`` stays light.
"""

from typing import Any

from .config import TurboConfig
from .hooks import apply_turbo, remove_turbo, turbo_config_of
from .inspection import PlanRecord, inspect_plans
from .processor import TurboProcessor

__version__ = "0.1.0"

_PIPELINES = ("TurboStableDiffusionPipeline", "TurboStableDiffusionImg2ImgPipeline", "TurboStableDiffusionXLPipeline")

__all__ = ["PlanRecord", "TurboConfig", "TurboProcessor", "apply_turbo", "inspect_plans", "remove_turbo",
           "turbo_config_of", "__version__", *_PIPELINES]


def __getattr__(name: str) -> Any:
    if name in _PIPELINES:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'turbo_diffusion' has no attribute {name!r}")
