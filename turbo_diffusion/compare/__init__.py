"""Image-quality comparison of acceleration methods against the unaccelerated baseline (``turbo-diffusion compare``).

    from turbo_diffusion.compare import compare
    result = compare("path/to/sd15", prompts="smoke", seeds=[0, 1], methods="baseline,turbo@0.3,turbo@0.5",
                     out_dir="cmp")
    result.method("turbo@0.5").psnr

Modules: `spec` (what to generate: `make_spec` -> `CompareSpec`), `prompts` (prompt sets of records with
metadata), `runner` (generation, resume, the folder's configuration), `scoring` (pluggable scorers and FID),
`metrics` (PSNR, SSIM, optional LPIPS/CLIP score/FID), `results` (records, summaries, the result), `report`
(grids, plot, tables), `api` (`run_compare` and `compare`, which tie them together). Methods
(``baseline|turbo@R[:k=v,...]|tome@R|todo@R|bound@R``) are `turbo_diffusion.harness.methods`'.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["DEFAULT_METHODS", "Scoring", "compare", "run_compare"], ".api"),
    **dict.fromkeys(["Method", "MethodError", "parse_method", "parse_methods"], "..harness.methods"),
    "MetricUnavailable": ".metrics",
    **dict.fromkeys(["psnr", "ssim"], "..harness.fidelity"),
    **dict.fromkeys(["CompareResult", "ImageRecord", "MethodSummary"], ".results"),
    "Scorer": ".scoring",
    **dict.fromkeys(["CompareError", "CompareSpec", "OPTIONAL_METRICS", "make_spec"], ".spec"),
    "load_prompts": ".prompts",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
