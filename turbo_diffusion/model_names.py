"""Names of the built-in offline models (see `turbo_diffusion.models`), importable without torch, so the command
line can check ``--model`` before loading anything."""

from __future__ import annotations

import os

RANDOM_WEIGHT_MODELS = ("tiny", "tiny-xl", "sd15-arch", "sd21-arch", "sdxl-arch")
RANDOM_WEIGHTS_NOTE = "random weights: the image is noise; only its time and memory mean something"
TRAINED_MODELS = ("shapes",)  # trained here, shipped in the package (see turbo_diffusion.shapes)
SHAPES_FOLDER = os.path.join(os.path.dirname(__file__), "shapes", "weights")


def check_model_name(model: str) -> None:
    """Raise ``ValueError`` (one line) unless ``model`` is a built-in name, a local folder or a Hub id."""
    if not (model in RANDOM_WEIGHT_MODELS + TRAINED_MODELS or os.path.isdir(model) or "/" in model):
        raise ValueError(f"unknown model {model!r}: use one of {', '.join(RANDOM_WEIGHT_MODELS + TRAINED_MODELS)}, "
                         "a local folder or a Hub id (owner/name)")
