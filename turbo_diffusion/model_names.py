"""Names of the built-in offline models (see `turbo_diffusion.models`), importable without torch, so the command
line can check ``--model`` before loading anything."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UsageError

RANDOM_WEIGHT_MODELS = ("tiny", "tiny-xl", "sd15-arch", "sd21-arch", "sdxl-arch")
RANDOM_WEIGHTS_NOTE = "random weights: the image is noise; only its time and memory mean something"
TRAINED_MODELS = ("shapes",)  # trained here, shipped in the package (see turbo_diffusion.shapes)
SHAPES_FOLDER = os.path.join(os.path.dirname(__file__), "shapes", "weights")
# Prompt sets the built-in models plug into `compare` (``--prompts NAME``), as MODULE:NAME prompt sources.
PROMPT_SOURCES = {
    "shapes": "turbo_diffusion.shapes.scoring:shapes_preset",
    "shapes-quick": "turbo_diffusion.shapes.scoring:shapes_quick_preset",
}


def check_model_name(model: str) -> None:
    """Raise `UsageError` (one line) unless ``model`` is a built-in name, a local folder or a Hub id."""
    if not (model in RANDOM_WEIGHT_MODELS + TRAINED_MODELS or os.path.isdir(model) or "/" in model):
        raise UsageError(f"unknown model {model!r}: use one of {', '.join(RANDOM_WEIGHT_MODELS + TRAINED_MODELS)}, "
                         "a local folder or a Hub id (owner/name)")


SHAPES_PROMPT = ("a large red circle at the top left and a small blue triangle at the bottom, "
                 "on a striped gray background")
GENERIC_PROMPT = "a lighthouse on a cliff at dusk"


@dataclass(frozen=True)
class ModelDefaults:
    """What a model generates best with, used by `generate`, the demo and the README.

    Attributes:
        prompt: a prompt it understands.
        size: image side in pixels, or ``None`` for the model's own (its UNet's sample size times 8).
        steps: denoising steps.
        guidance: classifier-free guidance scale.
        preset: the `compare` prompt preset made for it.
    """

    prompt: str
    size: int | None
    steps: int
    guidance: float
    preset: str = "smoke"


# The shapes model was trained at 128 px and is judged at guidance 5 (at 7.5 it adds objects: benchmarks/QUALITY.md).
_DEFAULTS = {
    "shapes": ModelDefaults(SHAPES_PROMPT, 128, 20, 5.0, "shapes-quick"),
    "tiny": ModelDefaults("a red cat on a blue sofa", 64, 10, 7.5),
    "tiny-xl": ModelDefaults("a red cat on a blue sofa", 64, 10, 7.5),
}
_OTHERS = ModelDefaults(GENERIC_PROMPT, None, 20, 7.5)  # SD architectures, folders, Hub ids: their native size


def defaults_for(model: str) -> ModelDefaults:
    """The defaults of a built-in model (``shapes``, ``tiny``...), or of any other (20 steps, guidance 7.5, its
    native size). The shapes weights' folder counts as ``shapes``."""
    if os.path.abspath(model) == os.path.abspath(SHAPES_FOLDER):
        model = "shapes"
    return _DEFAULTS.get(model, _OTHERS)


def default_model() -> str:
    """``"shapes"`` when its weights are in the package (the trained model: real pictures), else ``"tiny"``
    (random weights, instant). Random-weight architectures are used only when asked for."""
    return "shapes" if os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")) else "tiny"
