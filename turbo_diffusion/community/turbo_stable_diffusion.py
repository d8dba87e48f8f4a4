"""diffusers custom pipeline: `StableDiffusionPipeline` with Turbo token merging.

Ships inside the package (`pip install turbo-diffusion`); `python -m turbo_diffusion.pipelines_path` prints
where this file is.

    from turbo_diffusion.community import pipeline_file

    pipe = DiffusionPipeline.from_pretrained(
        model, custom_pipeline=pipeline_file("turbo_stable_diffusion"), trust_remote_code=True,
        turbo={"ratio": 0.5},  # optional: a TurboConfig or dict; default config when left out
    )

diffusers picks the one pipeline class this file exposes.
"""

from turbo_diffusion.pipelines import TurboStableDiffusionPipeline

__all__ = ["TurboStableDiffusionPipeline"]
