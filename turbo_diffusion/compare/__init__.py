"""Image-quality comparison of acceleration methods against the unaccelerated baseline (``turbo-diffusion compare``).

    from turbo_diffusion.compare import compare
    result = compare("path/to/sd15", prompts="smoke", seeds=[0, 1], methods="baseline,turbo@0.3,turbo@0.5",
                     out_dir="cmp")
    result.method("turbo@0.5").psnr

Modules: `methods` (parsing ``baseline|turbo@R[:k=v,...]|tome@R``), `prompts` (presets), `metrics` (PSNR, SSIM,
optional LPIPS/CLIP score/FID), `runner` (generation, resume, configuration check), `report` (grids, plot, tables),
`api` (the `compare` function that ties them together).
"""

from .api import DEFAULT_METHODS, OPTIONAL_METRICS, compare
from .methods import Method, MethodError, parse_method, parse_methods
from .metrics import MetricUnavailable, psnr, ssim
from .results import CompareResult, ImageRecord, MethodSummary
from .runner import CompareError

__all__ = [
    "compare", "CompareError", "CompareResult", "ImageRecord", "MethodSummary", "Method", "MethodError",
    "MetricUnavailable", "parse_method", "parse_methods", "psnr", "ssim", "DEFAULT_METHODS", "OPTIONAL_METRICS",
]
