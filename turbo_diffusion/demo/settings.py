"""What the demo page asks for, its defaults per model, and the checks that turn bad input into one readable
sentence. No torch here: the command line checks its arguments with it before loading anything."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import model_names
from ..config import DOWNSAMPLES, SEMANTICS, TurboConfig
from ..model_names import GENERIC_PROMPT, SHAPES_PROMPT, default_model  # noqa: F401 (the page's)

SWEEP_RATIOS = (0.0, 0.3, 0.5, 0.7)
MAX_RATIO = 0.75  # 1 - 1/(sx*sy) with the default 2x2 windows: higher ratios are capped to it
SIZE_RANGE = (64, 1024)
MAX_STEPS = 150


@dataclass(frozen=True)
class Settings:
    """One request from the page: the generation and Turbo's main settings.

    ``max_downsample`` is ``None`` for Turbo's default (the finest level with attention).
    """

    prompt: str
    seed: int = 0
    steps: int = 20
    size: int = 512
    guidance: float = 7.5
    ratio: float = 0.5
    alpha: float = 1.0
    semantic: str = "attention"
    max_downsample: int | None = None

    def turbo_config(self, ratio: float | None = None) -> TurboConfig:
        """The `TurboConfig` of these settings (at ``ratio`` when given); ``ValueError`` names a bad field."""
        return TurboConfig(ratio=self.ratio if ratio is None else ratio, alpha=self.alpha, semantic=self.semantic,
                           max_downsample=self.max_downsample)

    def replace(self, **fields: object) -> Settings:
        return dataclasses.replace(self, **fields)


def defaults_for(model: str, native_size: int | None = None) -> Settings:
    """The page's first settings for ``model``: its `model_names.ModelDefaults` (a scene prompt at 128 px, 20 steps
    and guidance 5 for the shapes model), at the model's native size (``native_size``, else 512) where the model
    has no size of its own."""
    d = model_names.defaults_for(model)
    return Settings(prompt=d.prompt, size=native_size or d.size or 512, steps=d.steps, guidance=d.guidance)


def from_page(prompt: str, seed: float, steps: float, size: float, guidance: float, ratio: float, alpha: float,
              semantic: str, max_downsample: object) -> Settings:
    """`Settings` from the page's widgets, which send whole numbers as floats and ``max_downsample`` as text
    (``"auto"`` or a number). Values are not checked here: `check` does that."""
    return Settings(prompt=prompt, seed=_whole_if_whole(seed), steps=_whole_if_whole(steps),
                    size=_whole_if_whole(size), guidance=guidance, ratio=ratio, alpha=alpha, semantic=semantic,
                    max_downsample=parse_downsample(max_downsample))


def parse_downsample(value: object) -> int | None:
    """The page's ``max_downsample`` choice (``"auto"`` or a number, maybe as text) as `Settings` takes it."""
    if value is None or str(value).strip().lower() in ("", "auto", "none"):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"max_downsample must be auto or one of {', '.join(map(str, DOWNSAMPLES))}, "
                         f"got {value!r}.") from None


def check(settings: Settings) -> TurboConfig:
    """Check ``settings`` and return their `TurboConfig`; a bad value raises ``ValueError`` with one sentence a
    person can act on."""
    if not isinstance(settings.prompt, str) or not settings.prompt.strip():
        raise ValueError("Type a prompt first: it is empty.")
    _whole("seed", settings.seed, 0, 2**32 - 1)
    _whole("steps", settings.steps, 1, MAX_STEPS)
    _whole("size", settings.size, *SIZE_RANGE)
    if settings.size % 8:
        raise ValueError(f"size must be a multiple of 8 pixels, got {settings.size}.")
    if not (isinstance(settings.guidance, int | float) and 0 <= settings.guidance <= 50):
        raise ValueError(f"guidance must be between 0 and 50, got {settings.guidance!r}.")
    if settings.semantic not in SEMANTICS:
        raise ValueError(f"semantic must be one of {', '.join(SEMANTICS)}, got {settings.semantic!r}.")
    if isinstance(settings.ratio, int | float) and settings.ratio > MAX_RATIO:
        raise ValueError(f"ratio must be at most {MAX_RATIO} (one destination per 2x2 window), got {settings.ratio}.")
    if not isinstance(settings.alpha, int | float) or not isinstance(settings.ratio, int | float):
        raise ValueError("ratio and alpha must be numbers.")
    return settings.turbo_config()


def _whole_if_whole(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
