"""diffusers custom pipeline: `StableDiffusionXLPipeline` with Turbo token merging.

Needs `pip install turbo-diffusion`.

    pipe = DiffusionPipeline.from_pretrained(
        model, custom_pipeline="pipelines/turbo_stable_diffusion_xl.py", trust_remote_code=True,
        turbo={"ratio": 0.5},  # optional: a TurboConfig or dict; default config when left out
    )

diffusers picks the one pipeline class this file exposes.
"""

from turbo_diffusion.pipelines import TurboStableDiffusionXLPipeline

__all__ = ["TurboStableDiffusionXLPipeline"]
