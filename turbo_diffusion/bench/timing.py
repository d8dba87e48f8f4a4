"""The two workloads bench times with `turbo_diffusion.harness.measure.time_interleaved`: one UNet step, or one
whole generation through a pipeline (text encoding, denoising steps, VAE decoding), every variant from the same
noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from diffusers import DiffusionPipeline, UNet2DConditionModel

from ..harness.images import generation
from ..harness.measure import Installable, Progress, Timing, time_interleaved


def unet_step_call(unet: UNet2DConditionModel, inputs: dict[str, Any]) -> Callable[[], Any]:
    """One UNet call on ``inputs`` (from `turbo_diffusion.archs.unet_inputs`). Sample and timestep go positionally,
    as diffusers' pipelines pass them (tomesd's hook reads them from the positional arguments)."""
    rest = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
    args = (inputs["sample"], inputs["timestep"])
    return lambda: unet(*args, **rest)


def time_variants(
    unet: UNet2DConditionModel,
    inputs: dict[str, Any],
    variants: Sequence[Installable],
    repeats: int = 3,
    warmup: int = 1,
    progress: Progress | None = None,
    measure_memory: bool = True,
    compiled: bool = False,
) -> dict[str, Timing]:
    """Time one UNet step per variant (see `time_interleaved`)."""
    device = next(unet.parameters()).device
    return time_interleaved(unet, variants, unet_step_call(unet, inputs), device, repeats, warmup, measure_memory,
                            progress, compiled)


def guidance_for_batch(unet_batch: int, guidance_scale: float) -> tuple[int, float]:
    """Images per prompt and guidance scale that make the pipeline call its UNet with ``unet_batch`` samples:
    an even batch is ``unet_batch / 2`` images with classifier-free guidance (each step runs the negative and the
    positive prompt together), an odd one is ``unet_batch`` images without guidance (scale 1)."""
    if unet_batch % 2 == 0:
        return unet_batch // 2, guidance_scale
    return unet_batch, 1.0


def generation_call(
    pipe: DiffusionPipeline, height: int, width: int, unet_batch: int, steps: int, prompt: str,
    guidance_scale: float = 7.5, seed: int = 0,
) -> Callable[[], Any]:
    """One whole generation (`turbo_diffusion.harness.images.generation`), decoded to a NumPy array: every method
    starts from the same noise. The UNet batch is ``unet_batch`` (see `guidance_for_batch`)."""
    images, scale = guidance_for_batch(unet_batch, guidance_scale)
    pipe.set_progress_bar_config(disable=True)
    return partial(generation, pipe, prompt, seed, steps, scale, height, width, images_per_prompt=images,
                   output_type="np")


def time_generations(
    pipe: DiffusionPipeline,
    variants: Sequence[Installable],
    height: int,
    width: int,
    unet_batch: int,
    steps: int,
    prompt: str,
    guidance_scale: float = 7.5,
    seed: int = 0,
    repeats: int = 3,
    warmup: int = 1,
    progress: Progress | None = None,
    measure_memory: bool = True,
    compiled: bool = False,
) -> dict[str, Timing]:
    """Time one whole generation per variant (see `generation_call` and `time_interleaved`)."""
    call = generation_call(pipe, height, width, unet_batch, steps, prompt, guidance_scale, seed)
    return time_interleaved(pipe, variants, call, pipe.unet.device, repeats, warmup, measure_memory, progress,
                            compiled)
