"""Making one image and writing one: the one way `generate`, `compare`, the demo and `bench` call a pipeline, and
the one way a tool saves an image.

Every generation starts from the same noise for the same seed, on any device and in any process: the latent noise
comes from a CPU generator seeded at every call. Images are written atomically (to a temporary name, then
renamed), so a half-written file is never taken for a finished one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin


def generation(
    pipe: Any,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    images_per_prompt: int = 1,
    on_step: Callable[[], None] | None = None,
    output_type: str = "pil",
) -> Any:
    """One pipeline call (text encoding, ``steps`` denoising steps, decoding) and its output (``.images``).

    Args:
        pipe: a diffusers text-to-image pipeline.
        prompt, negative_prompt: the texts; guidance: the classifier-free guidance scale (1 turns it off).
        seed: seeds the CPU generator of the latent noise.
        height, width: in pixels; ``None``: the pipeline's default.
        images_per_prompt: images in one call (a larger UNet batch).
        on_step: called after every denoising step (a progress bar).
        output_type: ``"pil"``, ``"np"``...: as the pipeline takes it.
    """
    kwargs: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=guidance, output_type=output_type,
                                  num_images_per_prompt=images_per_prompt,
                                  generator=torch.Generator("cpu").manual_seed(seed))
    for name, value in (("height", height), ("width", width), ("negative_prompt", negative_prompt)):
        if value is not None:
            kwargs[name] = value
    if on_step is not None:
        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step()
            return callback_kwargs

        kwargs["callback_on_step_end"] = step_end
    with torch.inference_mode():
        return pipe(prompt, **kwargs)


def make_image(pipe: Any, prompt: str, **settings: Any) -> Image.Image:
    """The first image of `generation` (same arguments)."""
    return generation(pipe, prompt, **settings).images[0]


def save_image(image: Image.Image, path: str | os.PathLike, text: Mapping[str, str] | None = None) -> None:
    """Write ``image`` to ``path`` atomically, its parent folder made if needed; a PNG gets ``text`` as text chunks
    (what made it), other formats get the pixels only."""
    path = Path(path)
    png = path.suffix.lower() == ".png"
    options: dict[str, Any] = {"format": Image.registered_extensions().get(path.suffix.lower(), "PNG")}
    if png and text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        image.save(tmp, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
