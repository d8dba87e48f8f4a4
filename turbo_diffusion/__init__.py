"""turbo-diffusion: Turbo (informativity-driven token merging) for Stable Diffusion in diffusers.

    from turbo_diffusion import apply_turbo
    apply_turbo(pipe, ratio=0.5)        # or pipe.unet.set_attn_processor(TurboProcessor(ratio=0.5))
"""

from .config import TurboConfig
from .hooks import apply_turbo, remove_turbo, turbo_config_of
from .processor import TurboProcessor

__version__ = "0.1.0"

__all__ = ["TurboConfig", "TurboProcessor", "apply_turbo", "remove_turbo", "turbo_config_of", "__version__"]
