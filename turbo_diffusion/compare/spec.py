"""What a comparison generates (`CompareSpec`), built from a preset, defaults and the caller's settings
(`make_spec`). Everything here decides the images, so it all goes into the folder's fingerprint. No torch."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..harness.loading import DTYPES
from ..harness.methods import Method, parse_methods
from ..model_names import defaults_for
from .prompts import load_prompts

DEFAULT_METHODS = "baseline,turbo@0.3,turbo@0.5"
OPTIONAL_METRICS = ("lpips", "clip_score", "fid")  # PSNR and SSIM always run
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


class CompareError(UsageError):
    """A comparison that cannot run as asked (bad settings, or a folder holding another configuration)."""


@dataclass(frozen=True)
class CompareSpec:
    """What to generate: every prompt record x seed with every method (the baseline first).

    ``height``/``width`` ``None`` mean the pipeline's default size; ``dtype`` and ``device_type`` are resolved
    (no ``auto``); ``scheduler="pndm"`` swaps in the PLMS sampler for the run; ``preset`` names the prompt set.
    """

    model: str
    prompts: tuple[Mapping[str, Any], ...]
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]
    steps: int
    guidance: float
    height: int | None
    width: int | None
    dtype: str
    device_type: str
    scheduler: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise CompareError("no prompts")
        if not self.seeds:
            raise CompareError("no seeds")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise CompareError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise CompareError(f"seeds given twice: {list(self.seeds)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise CompareError(f"steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, int | float) or not (
                0 <= self.guidance < math.inf):
            raise CompareError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise CompareError(f"{name} must be a multiple of 8 (at least 8), got {value!r}")
        if not self.methods or self.methods[0].kind != "baseline":
            raise CompareError("the first method must be the baseline")

    @property
    def texts(self) -> list[str]:
        """The prompts' texts, in order."""
        return [record["prompt"] for record in self.prompts]

    def configuration(self) -> dict[str, Any]:
        """The settings that decide the images, JSON-ready (prompts as texts when they carry no metadata)."""
        plain = all(set(record) == {"prompt"} for record in self.prompts)
        return {
            "model": self.model,
            "preset": self.preset,
            "prompts": self.texts if plain else [dict(record) for record in self.prompts],
            "seeds": list(self.seeds),
            "methods": [{**m.to_dict(), "settings": m.settings()} for m in self.methods],
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "device_type": self.device_type,
            "scheduler": self.scheduler,
        }

    def fingerprint(self) -> str:
        """A short hash of `configuration`."""
        return _short_hash(self.configuration())


GROWABLE = ("preset", "prompts", "seeds", "methods")
"""The settings a comparison folder may change from run to run: each image is kept under its own `image_key`, so a
rerun with more prompts, seeds or methods (or fewer) reuses every image it shares with the earlier runs. The other
settings (model, steps, guidance, size, dtype, device, scheduler) change every image."""


ADDED_LATER = {"proportional_attn": False, "fused_plan": False}
"""Method settings added after per-image keys, with the value that reproduces the behaviour from before: left out
of `image_key`, so images made before the setting existed keep their keys."""


def image_key(configuration: Mapping[str, Any], prompt_index: int, seed: int, method_label: str) -> str:
    """A short hash of what decides one image: the shared settings of a `CompareSpec.configuration` (this run's
    or one recorded in a folder), the image's prompt record, seed and method; raises `KeyError` when the
    configuration has no such method."""
    method = next((m for m in configuration["methods"] if m["label"] == method_label), None)
    if method is None:
        raise KeyError(method_label)
    method = {**method, "settings": {k: v for k, v in method.get("settings", {}).items()
                                     if k not in ADDED_LATER or ADDED_LATER[k] != v}}
    prompt = configuration["prompts"][prompt_index]
    shared = {k: v for k, v in configuration.items() if k not in GROWABLE}
    return _short_hash({**shared, "prompt": {"prompt": prompt} if isinstance(prompt, str) else prompt,
                        "seed": seed, "method": method})


def _short_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_spec(
    model: str,
    prompts: str | Sequence[str | Mapping[str, Any]] = "smoke",
    seeds: Sequence[int] | None = None,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str = "auto",
    device_type: str = "cpu",
    max_prompts: int | None = None,
) -> CompareSpec:
    """The `CompareSpec` of these settings (see `turbo_diffusion.compare.compare` for each); unset ones come from
    the prompt preset, else the model's own (`model_names.defaults_for`: steps, guidance, size; 20 steps and
    guidance 7.5 at its native size for models that are not built in), and seed 0. Raises `CompareError`
    (one line) for any bad setting, before anything is loaded."""
    try:
        method_list = parse_methods(methods)
        records, preset = load_prompts(prompts)
    except ValueError as err:
        raise CompareError(" ".join(str(err).split())) from None
    if max_prompts is not None:
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise CompareError(f"max_prompts must be an integer >= 1, got {max_prompts!r}")
        records = records[:max_prompts]
    if dtype not in DTYPES:
        raise CompareError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_defaults = defaults_for(model)
    return CompareSpec(
        model=model,
        prompts=tuple(records),
        seeds=tuple(seeds) if seeds is not None else (preset.seeds if preset and preset.seeds else (0,)),
        methods=tuple(method_list),
        steps=_pick(steps, preset and preset.steps, model_defaults.steps),
        guidance=_pick(guidance, preset and preset.guidance, model_defaults.guidance),
        height=_pick(height, preset and preset.height, model_defaults.size),
        width=_pick(width, preset and preset.width, model_defaults.size),
        dtype=("float16" if device_type == "cuda" else "float32") if dtype == "auto" else dtype,
        device_type=device_type,
        scheduler=preset.scheduler if preset else None,
        preset=preset.name if preset else None,
    )


def _pick(given: Any, preset_value: Any, default: Any) -> Any:
    """The value given, else the preset's, else the default."""
    if given is not None:
        return given
    return preset_value if preset_value is not None else default
