"""``turbo-diffusion demo``: the browser demo (baseline and Turbo side by side, what Turbo merged, a ratio sweep)
on 127.0.0.1. Needs Gradio: ``pip install "turbo-diffusion[demo]"``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
from typing import Any

from ..demo.settings import default_model
from ..model_names import SHAPES_FOLDER, check_model_name
from .common import UsageError, add_device, add_model, add_repeats, loading_message, stage

DEFAULT_PORT = 7860


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open the browser demo: baseline and Turbo side by side, what Turbo merged, a ratio sweep",
        description="Serve the demo page on 127.0.0.1: one model loaded once; the same prompt and seed generated "
        "without and with Turbo, timed, with PSNR/SSIM, the tokens merged and the R, S and E maps; and a ratio "
        "sweep. Needs Gradio (pip install 'turbo-diffusion[demo]').",
    )
    default = default_model()
    add_model(p, default)
    add_repeats(p, "timed runs per method for each speed-up")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default: {DEFAULT_PORT})")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    stage("demo", "importing torch, diffusers, transformers and gradio")
    from ..demo.app import HOST, build_app, serve
    from ..demo.session import DemoSession
    from ..harness.measure import choose_threads

    threads = choose_threads() if args.device != "cuda" and not args.device.startswith("cuda:") else None
    if threads:
        stage("demo", threads)

    stage("demo", loading_message(args.model) + ", then warming up")
    session = DemoSession(args.model, args.device, args.dtype, args.repeats)
    session.warm_up()
    stage("demo", f"serving on http://{HOST}:{args.port} (Ctrl+C stops)")
    serve(build_app(session), args.port, quiet=True)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Every bad argument is a one-line `UsageError`, found before anything heavy is imported."""
    check_model_name(args.model)
    if args.model == "shapes" and not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")):
        raise UsageError(f"the shapes model's weights are missing from {SHAPES_FOLDER}; use --model tiny, or train "
                         "them with `turbo-diffusion train-shapes --out DIR` and pass --model DIR/pipeline")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
    with socket.socket() as probe:  # refuse a busy port now, not after loading the model
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError:
            raise UsageError(f"port {args.port} on 127.0.0.1 is in use: pick another with --port") from None
    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the demo needs Gradio: pip install 'turbo-diffusion[demo]'")
