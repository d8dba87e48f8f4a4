"""turbo-diffusion: Turbo (informativity-driven token merging) for Stable Diffusion in diffusers.

    from turbo_diffusion import apply_turbo
    apply_turbo(pipe, ratio=0.5)        # or pipe.unet.set_attn_processor(TurboProcessor(ratio=0.5))

Everything but `TurboConfig` is imported on first use, so ``import turbo_diffusion`` (and the command line's
``--help`` and argument checks) does not import torch, diffusers or transformers.
"""

from ._lazy import lazy_exports
from .config import TurboConfig

__version__ = "0.1.0"

_PIPELINES = ("TurboStableDiffusionPipeline", "TurboStableDiffusionImg2ImgPipeline", "TurboStableDiffusionXLPipeline")
_EXPORTS = {
    **dict.fromkeys(["apply_turbo", "remove_turbo", "turbo_config_of"], ".installation"),
    "TurboProcessor": ".processor",
    "turbo_generation": ".generation",
    **dict.fromkeys(["PlanRecord", "inspect_plans"], ".inspection"),
    **dict.fromkeys(_PIPELINES, ".pipelines"),
}

__all__ = ["PlanRecord", "TurboConfig", "TurboProcessor", "apply_turbo", "inspect_plans", "remove_turbo",
           "turbo_config_of", "turbo_generation", "__version__", *_PIPELINES]
__getattr__ = lazy_exports(__name__, _EXPORTS)
