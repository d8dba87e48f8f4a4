"""Loading the model a tool runs on, with one error for every way it can fail (`ModelLoadError`), the
``auto`` device and dtype every subcommand understands, and plug-ins named ``MODULE:NAME``. Imports torch only
when called."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from ..errors import ModelLoadError, UsageError

DTYPES = ("auto", "float32", "float16", "bfloat16")
# Seconds to build each built-in model on the 2-core CPU this was developed on (imports not included).
BUILD_SECONDS = {"tiny": 1, "tiny-xl": 1, "sd15-arch": 40, "sd21-arch": 50, "sdxl-arch": 160}
PLUGIN_SOURCE = re.compile(r"[\w.]+:\w+")  # MODULE:NAME, as `load_plugin` takes it


def load_plugin(source: str, flag: str) -> Any:
    """The object a plug-in source ``MODULE:NAME`` names (a `compare` scorer, a prompt source); `UsageError`
    naming ``flag`` when it cannot be imported."""
    module, _, attribute = source.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"{flag} {source}: cannot import it ({err})") from None


def loading_message(model: str) -> str:
    """What loading ``model`` does and how long it takes: ``"building sd15-arch (random weights; about 40 s on a
    2-core CPU)"``, or ``"loading path/to/model"``."""
    if model in BUILD_SECONDS:
        return f"building {model} (random weights; about {about(BUILD_SECONDS[model])} on a 2-core CPU)"
    if model == "shapes":
        return "loading shapes (a miniature SD trained here on drawn scenes; about 1 s)"
    return f"loading {model}"


def about(seconds: float) -> str:
    """A duration as a person says it: ``"40 s"``, ``"2 min 10 s"`` (to 10 s below 10 minutes), ``"14 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    return f"{seconds / 60:.0f} min"


def resolve_device(name: str) -> Any:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a `torch.device`;
    `UsageError` for anything else or for CUDA on a machine without it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asked for, but CUDA is not available in this torch build/machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_dtype(name: str, device: Any) -> str:
    """``"auto"`` is float16 on CUDA and float32 elsewhere; other names of ``DTYPES`` are kept."""
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return name


def load_model(model: str, dtype: str = "float32", device: Any = "cpu", seed: int = 0) -> Any:
    """The pipeline of ``model`` (a built-in name, a local folder or a Hub id; see `turbo_diffusion.models`) in
    ``dtype`` (a name of ``DTYPES`` but ``auto``) on ``device``. ``seed`` seeds built-in models' random weights.

    Raises `ModelLoadError` with the first line of the reason when the model cannot be loaded or has no
    `UNet2DConditionModel` (SD 1.x/2.x/SDXL).
    """
    import torch
    from diffusers import UNet2DConditionModel

    from ..models import load_pipeline

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # the command line's --no-progress
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()

    try:
        # float32 is what pipelines load in; casting them to it again only makes diffusers warn.
        pipe = load_pipeline(model, torch_dtype=None if dtype == "float32" else getattr(torch, dtype), seed=seed)
    except (OSError, ValueError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load model {model!r}: {reason[:300]}") from err
    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
        raise ModelLoadError(f"model {model!r} has no UNet2DConditionModel (SD 1.x/2.x/SDXL) to accelerate")
    return pipe.to(device)
