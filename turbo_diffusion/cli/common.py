"""What every subcommand shares: the same flags for the same things, stage messages, and the errors that end a
command in one line. Nothing here imports torch: arguments are parsed and checked before any heavy import."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator

from ..errors import UsageError  # noqa: F401 (the subcommands' one error)
from ..harness.loading import DTYPES, about, loading_message  # noqa: F401 (the subcommands' stage messages)
from ..model_names import RANDOM_WEIGHT_MODELS, TRAINED_MODELS

OUTPUTS = "outputs"  # default folder of every file a command writes (covered by .gitignore)




def add_model(parser: argparse.ArgumentParser, default: str | None, default_help: str | None = None) -> None:
    """``--model``; required unless ``default`` or ``default_help`` (a default the command fills in itself)."""
    shown = default_help or default
    parser.add_argument("--model", default=default, required=shown is None,
                        help=f"{' | '.join(TRAINED_MODELS)} (built-in, trained here on drawn scenes), "
                             f"{' | '.join(RANDOM_WEIGHT_MODELS)} (built-in, random weights: noise, for timing), a "
                             "local folder or a Hub id" + (f" (default: {shown})" if shown else ""))


def device_name(value: str) -> str:
    """argparse type of ``--device``: checked by its form here, against the machine once torch is loaded."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from auto, cpu, cuda, cuda:N)")
    return value


def add_device(parser: argparse.ArgumentParser, device: str = "auto", dtype: str = "auto") -> None:
    parser.add_argument("--device", default=device, type=device_name,
                        help=f"auto (CUDA when available), cpu, cuda or cuda:N (default: {device})")
    parser.add_argument("--dtype", default=dtype, choices=DTYPES,
                        help=f"weights' dtype; auto: float16 on CUDA, float32 on the CPU (default: {dtype})")


def add_guidance(parser: argparse.ArgumentParser, default: float | None, dest: str = "guidance",
                 default_help: str = "the preset's, else 7.5") -> None:
    parser.add_argument("--guidance", "--guidance-scale", dest=dest, type=float, default=default, metavar="SCALE",
                        help="classifier-free guidance scale (default: " + (f"{default:g})" if default is not None
                                                                             else f"{default_help})"))


class _AtLeastOne(argparse.Action):
    """Store a whole number, refusing one below 1 while the arguments are parsed (one line, exit code 2)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: int,
                 option_string: str | None = None) -> None:
        if value < 1:
            parser.error(f"{option_string} must be at least 1, got {value}")
        setattr(namespace, self.dest, value)


def add_repeats(parser: argparse.ArgumentParser, what: str) -> None:
    """``--repeats``: timed runs per method, ``what`` saying of what; ``None`` lets the tool choose
    (`turbo_diffusion.harness.measure.default_repeats`)."""
    parser.add_argument("--repeats", type=int, default=None, action=_AtLeastOne,
                        help=f"{what}, taking turns (default: 3 where a run takes under 10 s, else 1)")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, the libraries' (model loading) included")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the progress bars huggingface_hub, transformers and diffusers draw while loading (``--no-progress``
    promises no bars at all), for the ``with`` block. Only sets ``HF_HUB_DISABLE_PROGRESS_BARS``, which the first
    two read when imported; `harness.loading.load_model` turns diffusers' bars off on seeing it (importing diffusers
    here would import torch before the arguments are checked)."""
    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HF_HUB_DISABLE_PROGRESS_BARS"]
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous


def stage(command: str, message: str) -> None:
    """Say on stderr what the command is doing now (stdout keeps the results)."""
    print(f"turbo-diffusion {command}: {message}", file=sys.stderr, flush=True)
