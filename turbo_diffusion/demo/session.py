"""One pipeline, loaded once, generating for the demo page: a baseline and a Turbo image on the same seed, and a
ratio sweep. Each request holds a lock for its whole run, since Turbo is installed on the shared pipeline in the
middle of it: two browser tabs take turns and never see each other's state."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from ..config import TurboConfig
from ..harness.fidelity import psnr, ssim
from ..harness.images import make_image
from ..harness.loading import load_model, resolve_device, resolve_dtype
from ..harness.measure import QUICK_REPEATS, Timing, busy_warning, installed, time_in_turns, timed
from ..harness.methods import Method, make_method
from ..inspection import inspect_plans
from ..models import RANDOM_WEIGHTS_NOTE, uses_random_weights
from .settings import SWEEP_RATIOS, Settings, check, defaults_for
from .visuals import PlanMaps, finest_plans

# Called with (done, total, what) after every denoising step.
Progress = Callable[[int, int, str], None]


@dataclass
class Comparison:
    """A baseline and a Turbo image on the same seed, their timings (runs taking turns), the Turbo image's distance
    to the baseline, and the finest level's merge plans (from an untimed rerun of the Turbo generation: recording
    slows it). ``busy`` is the warning said before timing when other work was running, else ``None``."""

    settings: Settings
    baseline: Image.Image
    turbo: Image.Image
    baseline_timing: Timing
    turbo_timing: Timing
    psnr: float
    ssim: float
    plans: list[PlanMaps] = field(default_factory=list)
    busy: str | None = None

    @property
    def baseline_seconds(self) -> float:
        """Median seconds of the baseline's runs."""
        return self.baseline_timing.median

    @property
    def turbo_seconds(self) -> float:
        """Median seconds of Turbo's runs."""
        return self.turbo_timing.median

    @property
    def repeats(self) -> int:
        return len(self.turbo_timing.seconds)

    @property
    def speedup(self) -> float:
        """The ratio of the medians: above 1, Turbo is faster."""
        return self.baseline_seconds / self.turbo_seconds


@dataclass
class SweepImage:
    """One image of a ratio sweep; ratio 0 is the baseline (no Turbo), the reference of the others. ``timing``
    holds its runs, taken in turns with the other ratios'."""

    ratio: float
    image: Image.Image
    timing: Timing
    psnr: float
    ssim: float

    @property
    def seconds(self) -> float:
        """Median seconds of its runs."""
        return self.timing.median


class DemoSession:
    """The demo's pipeline and the requests run on it, one at a time.

    Args:
        model: a built-in name, a local folder or a Hub id (see `turbo_diffusion.models`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (float16 on CUDA, float32 on the CPU) or a dtype name.
        repeats: timed runs per method and request, taking turns; ``None``: 3 where a run takes under 10 s, else
            1 (`turbo_diffusion.harness.measure.default_repeats`). More runs: a steadier speed-up, a longer wait.
    """

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", repeats: int | None = None) -> None:
        if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
            raise ValueError(f"repeats must be a whole number >= 1 or None, got {repeats!r}")
        self.model = model
        self.repeats = repeats
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
            with installed(self.pipe, _turbo_method(settings.turbo_config())):
                self._generate(settings, None)

    def compare(self, settings: Settings, progress: Progress | None = None) -> Comparison:
        """Generate ``settings`` without and with Turbo on the same seed, the two taking turns (`time_in_turns`:
        `repeats` runs each), then once more with Turbo under `inspect_plans` for the finest level's plans.
        ``ValueError`` for bad settings, before any work."""
        turbo = _turbo_method(check(settings))
        report = _Counter(progress, settings.steps, 2, extra_runs=1)
        with self._lock:
            busy = busy_warning()
            images, timings = self._in_turns(settings, {"baseline": make_method("baseline"), "Turbo": turbo}, report)
            with installed(self.pipe, turbo), inspect_plans(self.pipe) as records:
                self._generate(settings, report.phase("recording Turbo's merges"))
        return Comparison(settings, images["baseline"], images["Turbo"], timings["baseline"], timings["Turbo"],
                          psnr(images["Turbo"], images["baseline"]), ssim(images["Turbo"], images["baseline"]),
                          finest_plans(records), busy)

    def sweep(self, settings: Settings, ratios: tuple[float, ...] = SWEEP_RATIOS,
              progress: Progress | None = None) -> list[SweepImage]:
        """``settings`` at each of ``ratios`` (0: the baseline, without Turbo), the ratios taking turns
        (`time_in_turns`), with PSNR and SSIM to the ratio-0 image. ``ValueError`` for bad settings or ratios,
        before any work."""
        if 0 not in ratios:
            raise ValueError("a sweep needs ratio 0, the reference of the others")
        methods = {_ratio_name(r): make_method("baseline") if r == 0 else _turbo_method(check(settings.replace(
            ratio=r))) for r in ratios}
        report = _Counter(progress, settings.steps, len(ratios))
        with self._lock:
            images, timings = self._in_turns(settings, methods, report)
        reference = images[_ratio_name(0)]
        return [SweepImage(r, images[_ratio_name(r)], timings[_ratio_name(r)], psnr(images[_ratio_name(r)], reference),
                           ssim(images[_ratio_name(r)], reference)) for r in ratios]

    def _in_turns(self, settings: Settings, methods: dict[str, Method],
                  report: _Counter) -> tuple[dict[str, Image.Image], dict[str, Timing]]:
        """Each of ``methods`` (by the name the page shows) generating ``settings``, taking turns: the image of
        each (the same at every run: same seed) and its `Timing`."""
        images: dict[str, Image.Image] = {}
        shown = {method.name: name for name, method in methods.items()}

        def call(method: Method) -> None:
            images[shown[method.name]], _ = self._generate(settings, report.phase(shown[method.name]))

        timings = time_in_turns(self.pipe, list(methods.values()), call, self.device, self.repeats,
                                on_repeats=report.set_rounds)
        return images, {shown[name]: timing for name, timing in timings.items()}

    def _generate(self, settings: Settings, on_step: Callable[[], None] | None) -> tuple[Image.Image, float]:
        """One image of ``settings`` and its seconds; ``on_step`` is called after every denoising step."""
        return timed(lambda: make_image(self.pipe, settings.prompt, seed=settings.seed, steps=settings.steps,
                                        guidance=settings.guidance, height=settings.size, width=settings.size,
                                        on_step=on_step), self.device)


def _turbo_method(config: TurboConfig) -> Method:
    """The harness's method for the page's Turbo settings."""
    return make_method("turbo", config.ratio, alpha=config.alpha, semantic=config.semantic,
                       max_downsample=config.max_downsample)


def _ratio_name(ratio: float) -> str:
    return "baseline" if ratio == 0 else f"ratio {ratio:g}"


class _Counter:
    """Counts denoising steps across the phases of one request and reports them to a `Progress`. The total is
    ``steps`` x (``methods`` x rounds + ``extra_runs``); rounds are taken to be `QUICK_REPEATS` until
    `set_rounds` says how many there are (after the first round)."""

    def __init__(self, progress: Progress | None, steps: int, methods: int, extra_runs: int = 0) -> None:
        self.progress, self.done = progress, 0
        self.steps, self.methods, self.extra_runs = steps, methods, extra_runs
        self.set_rounds(QUICK_REPEATS)

    def set_rounds(self, rounds: int) -> None:
        self.total = self.steps * (self.methods * rounds + self.extra_runs)

    def phase(self, what: str) -> Callable[[], None]:
        def step() -> None:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total, what)

        return step


def format_psnr(value: float) -> str:
    """PSNR as the page shows it: ``"31.2 dB"``, or ``"identical"`` for infinity."""
    return "identical" if math.isinf(value) else f"{value:.1f} dB"
