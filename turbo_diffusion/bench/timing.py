"""Interleaved timing of variants in one process: one UNet step, or a whole generation through a pipeline.

Each variant installs itself on the shared model (weights are loaded once) and uninstalls after each call.
One priming call with the first variant comes first, so one-time initialisation (kernel selection, library
workspaces, allocator pools) is charged to no variant. Warm-up calls follow, one round per variant; the first of
them also measures the variant's peak memory (see `memory`), so the timed calls run without a sampling thread.
Repeats then visit the variants in rotating order, so drift on a shared machine hits them all alike. The minimum
over repeats is the least-disturbed run (noise only adds time) and ratios of minima are the speed-ups. On CUDA
the device is synchronized before starting and before stopping each clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from .memory import PeakMemory, peak_memory
from .variants import Variant

Progress = Callable[[str], None]


@dataclass
class Timing:
    """Wall-clock seconds of one variant's timed calls, and the peak memory of its first warm-up call."""

    name: str
    seconds: list[float] = field(default_factory=list)
    memory: PeakMemory | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)


@contextmanager
def installed(model: Any, variant: Variant) -> Iterator[None]:
    """``variant`` installed on ``model`` for the duration of the block."""
    variant.install(model)
    try:
        yield
    finally:
        variant.uninstall(model)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so a clock read covers the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    model: Any,
    variants: list[Variant],
    call: Callable[[], Any],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    measure_memory: bool = True,
    progress: Progress | None = None,
) -> dict[str, Timing]:
    """Time ``call()`` with each variant installed on ``model``: one priming call, ``warmup`` rounds, then
    ``repeats`` rotating rounds.

    Args:
        model: what variants install on (a pipeline or a UNet).
        variants: the variants; their names must be unique.
        call: one measured unit of work (a UNet step, a generation).
        device: where ``call`` runs (for synchronization and memory).
        repeats: timed calls per variant, in rotating order. More repeats make the minimum more reliable.
        warmup: untimed rounds before timing, at least 1 when ``measure_memory`` (memory comes from the first).
        measure_memory: record each variant's peak memory during its first warm-up call.
        progress: called with a short description after every call.
    """
    if len({v.name for v in variants}) != len(variants):
        raise ValueError(f"variant names must be unique, got {[v.name for v in variants]}")
    timings = {v.name: Timing(v.name) for v in variants}
    with torch.inference_mode():
        with installed(model, variants[0]):
            call()
        if progress:
            progress(f"priming {variants[0].name}")
        for round_ in range(warmup):
            for v in variants:
                with installed(model, v):
                    if measure_memory and round_ == 0:
                        with peak_memory(device) as reading:
                            call()
                        timings[v.name].memory = reading
                    else:
                        call()
                if progress:
                    progress(f"warm-up {v.name}")
        for rep in range(repeats):
            shift = rep % len(variants)
            for v in variants[shift:] + variants[:shift]:
                with installed(model, v):
                    synchronize(device)
                    start = time.perf_counter()
                    call()
                    synchronize(device)
                    timings[v.name].seconds.append(time.perf_counter() - start)
                if progress:
                    progress(f"repeat {rep + 1}/{repeats} {v.name}")
    return timings


def unet_step_call(unet: UNet2DConditionModel, inputs: dict[str, Any]) -> Callable[[], Any]:
    """One UNet call on ``inputs`` (from `turbo_diffusion.archs.unet_inputs`). Sample and timestep go positionally,
    as diffusers' pipelines pass them (tomesd's hook reads them from the positional arguments)."""
    rest = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
    args = (inputs["sample"], inputs["timestep"])
    return lambda: unet(*args, **rest)


def time_variants(
    unet: UNet2DConditionModel,
    inputs: dict[str, Any],
    variants: list[Variant],
    repeats: int = 3,
    warmup: int = 1,
    progress: Progress | None = None,
    measure_memory: bool = True,
) -> dict[str, Timing]:
    """Time one UNet step per variant (see `time_interleaved`)."""
    device = next(unet.parameters()).device
    return time_interleaved(unet, variants, unet_step_call(unet, inputs), device, repeats, warmup, measure_memory,
                            progress)


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
    """One whole generation: text encoding, ``steps`` denoising steps, VAE decoding to a NumPy array. The latent
    noise comes from a CPU generator seeded with ``seed`` at every call, so every variant starts from the same
    noise. The UNet batch is ``unet_batch`` (see `guidance_for_batch`)."""
    images, scale = guidance_for_batch(unet_batch, guidance_scale)
    pipe.set_progress_bar_config(disable=True)

    def call() -> Any:
        return pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=scale,
                    num_images_per_prompt=images, generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="np")

    return call


def time_generations(
    pipe: DiffusionPipeline,
    variants: list[Variant],
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
) -> dict[str, Timing]:
    """Time one whole generation per variant (see `generation_call` and `time_interleaved`)."""
    call = generation_call(pipe, height, width, unet_batch, steps, prompt, guidance_scale, seed)
    return time_interleaved(pipe, variants, call, pipe.unet.device, repeats, warmup, measure_memory, progress)
