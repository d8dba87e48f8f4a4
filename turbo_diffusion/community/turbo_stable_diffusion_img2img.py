"""diffusers custom pipeline: `StableDiffusionImg2ImgPipeline` with Turbo token merging.

Needs `pip install turbo-diffusion`.

    pipe = DiffusionPipeline.from_pretrained(
        model, custom_pipeline="pipelines/turbo_stable_diffusion_img2img.py", trust_remote_code=True,
        turbo={"ratio": 0.5},  # optional: a TurboConfig or dict; default config when left out
    )

diffusers picks the one pipeline class this file exposes.
"""

from turbo_diffusion.pipelines import TurboStableDiffusionImg2ImgPipeline

__all__ = ["TurboStableDiffusionImg2ImgPipeline"]
