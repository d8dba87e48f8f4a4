"""One pipeline, loaded once, generating for the demo page: a baseline and a Turbo image on the same seed, and a
ratio sweep. Each request holds a lock for its whole run, since Turbo is installed on the shared pipeline in the
middle of it: two browser tabs take turns and never see each other's state."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .. import apply_turbo, inspect_plans, remove_turbo
from ..compare.metrics import psnr, ssim
from ..harness.loading import load_model, resolve_device, resolve_dtype
from ..harness.measure import timed
from ..models import RANDOM_WEIGHTS_NOTE, uses_random_weights
from .settings import SWEEP_RATIOS, Settings, check, defaults_for
from .visuals import PlanMaps, finest_plans

# Called with (done, total, what) after every denoising step.
Progress = Callable[[int, int, str], None]


@dataclass
class Comparison:
    """A baseline and a Turbo image on the same seed, their times, the Turbo image's distance to the baseline,
    and the finest level's merge plans (from an untimed rerun of the Turbo generation: recording slows it)."""

    settings: Settings
    baseline: Image.Image
    turbo: Image.Image
    baseline_seconds: float
    turbo_seconds: float
    psnr: float
    ssim: float
    plans: list[PlanMaps] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.baseline_seconds / self.turbo_seconds


@dataclass
class SweepImage:
    """One image of a ratio sweep; ratio 0 is the baseline (no Turbo), the reference of the others."""

    ratio: float
    image: Image.Image
    seconds: float
    psnr: float
    ssim: float


class DemoSession:
    """The demo's pipeline and the requests run on it, one at a time.

    Args:
        model: a built-in name, a local folder or a Hub id (see `turbo_diffusion.models`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (float16 on CUDA, float32 on the CPU) or a dtype name.
    """

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto") -> None:
        self.model = model
        self.device = resolve_device(device)
        self.pipe = load_model(model, resolve_dtype(dtype, self.device), self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.random_weights = uses_random_weights(self.pipe)
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        self.defaults = defaults_for(model, int(self.pipe.unet.config.sample_size) * scale)
        self._lock = threading.Lock()

    @property
    def note(self) -> str:
        """What the page says about the model: its name, and that its images are noise when they are."""
        text = f"Model: **{self.model}** on {self.device.type}."
        return text + (f" **Warning: it has {RANDOM_WEIGHTS_NOTE}.**" if self.random_weights else "")

    def warm_up(self) -> None:
        """One 1-step generation with and without Turbo, so the first request pays no first-call set-up."""
        settings = self.defaults.replace(steps=1)
        with self._lock:
            self._generate(settings, None)
            with self._turbo(settings.turbo_config()):
                self._generate(settings, None)

    def compare(self, settings: Settings, progress: Progress | None = None) -> Comparison:
        """Generate ``settings`` without and with Turbo on the same seed, timing each, then once more with Turbo
        under `inspect_plans` for the finest level's plans. ``ValueError`` for bad settings, before any work."""
        config = check(settings)
        report = _Counter(progress, 3 * settings.steps)
        with self._lock:
            baseline, baseline_seconds = self._generate(settings, report.phase("baseline"))
            with self._turbo(config):
                turbo, turbo_seconds = self._generate(settings, report.phase("Turbo"))
                with inspect_plans(self.pipe) as records:
                    self._generate(settings, report.phase("recording Turbo's merges"))
        return Comparison(settings, baseline, turbo, baseline_seconds, turbo_seconds, psnr(turbo, baseline),
                          ssim(turbo, baseline), finest_plans(records))

    def sweep(self, settings: Settings, ratios: tuple[float, ...] = SWEEP_RATIOS,
              progress: Progress | None = None) -> list[SweepImage]:
        """``settings`` at each of ``ratios`` (0: the baseline, without Turbo), each timed, with PSNR and SSIM to
        the ratio-0 image. ``ValueError`` for bad settings or ratios, before any work."""
        if 0 not in ratios:
            raise ValueError("a sweep needs ratio 0, the reference of the others")
        configs = {ratio: check(settings.replace(ratio=ratio)) for ratio in ratios}
        report = _Counter(progress, len(ratios) * settings.steps)
        generated: dict[float, tuple[Image.Image, float]] = {}
        with self._lock:
            for ratio in ratios:
                what = report.phase("baseline" if ratio == 0 else f"ratio {ratio:g}")
                if ratio == 0:
                    generated[ratio] = self._generate(settings, what)
                else:
                    with self._turbo(configs[ratio]):
                        generated[ratio] = self._generate(settings, what)
        reference = generated[0][0]
        return [SweepImage(ratio, image, seconds, psnr(image, reference), ssim(image, reference))
                for ratio, (image, seconds) in generated.items()]

    @contextmanager
    def _turbo(self, config: Any) -> Iterator[None]:
        apply_turbo(self.pipe, config)
        try:
            yield
        finally:
            remove_turbo(self.pipe)

    def _generate(self, settings: Settings, on_step: Callable[[], None] | None) -> tuple[Image.Image, float]:
        """One image of ``settings`` and its seconds; ``on_step`` is called after every denoising step."""

        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step()
            return callback_kwargs

        def call() -> Image.Image:
            generator = torch.Generator(device="cpu").manual_seed(settings.seed)
            return self.pipe(settings.prompt, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                             height=settings.size, width=settings.size, generator=generator,
                             callback_on_step_end=step_end).images[0]

        with torch.inference_mode():
            return timed(call, self.device)


class _Counter:
    """Counts denoising steps across the phases of one request and reports them to a `Progress`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def phase(self, what: str) -> Callable[[], None]:
        def step() -> None:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total, what)

        return step


def format_psnr(value: float) -> str:
    """PSNR as the page shows it: ``"31.2 dB"``, or ``"identical"`` for infinity."""
    return "identical" if math.isinf(value) else f"{value:.1f} dB"
