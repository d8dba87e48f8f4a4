"""diffusers custom pipeline files, one Turbo pipeline class each, shipped with the package.

``DiffusionPipeline.from_pretrained(model, custom_pipeline=pipeline_file("turbo_stable_diffusion"),
trust_remote_code=True)`` loads `TurboStableDiffusionPipeline` without importing turbo_diffusion in your code. A
relative path such as ``"pipelines/turbo_stable_diffusion.py"`` works only from the repository's root (elsewhere
diffusers reads it as a Hub id); this absolute path works from anywhere, after a plain ``pip install``.
``python -m turbo_diffusion.pipelines_path`` prints the paths.
"""

from __future__ import annotations

from pathlib import Path

PIPELINE_FILES = {
    "turbo_stable_diffusion": "TurboStableDiffusionPipeline",
    "turbo_stable_diffusion_img2img": "TurboStableDiffusionImg2ImgPipeline",
    "turbo_stable_diffusion_xl": "TurboStableDiffusionXLPipeline",
}


def pipeline_file(name: str = "turbo_stable_diffusion") -> str:
    """The absolute path of the custom pipeline file ``name`` (a key of ``PIPELINE_FILES``, with or without
    ``.py``), for ``custom_pipeline=``."""
    stem = name.removesuffix(".py")
    if stem not in PIPELINE_FILES:
        raise ValueError(f"unknown pipeline file {name!r}; choose from {', '.join(PIPELINE_FILES)}")
    return str(Path(__file__).resolve().parent / f"{stem}.py")
