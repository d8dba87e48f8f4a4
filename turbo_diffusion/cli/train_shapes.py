"""``turbo-diffusion train-shapes``: train the offline ``shapes`` model (VAE, then text encoder + UNet)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import UsageError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-shapes",
        help="train the offline shapes model (a miniature SD 1.5 on scenes that code draws)",
        description="Train the shapes model: the VAE on renders, then the text encoder and UNet on encoded scenes. "
        "Checkpoints every few minutes; stop any time and continue with --resume. On a 2-core CPU a useful model "
        "takes a few hours; on a GPU, minutes.",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoint, loss curve, samples, exported pipeline")
    p.add_argument("--minutes", type=float, help="wall-clock budget of this run; checkpoint and stop when spent")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--export", action="store_true",
                   help="only export the latest checkpoint's weights to OUT/pipeline (e.g. while the run goes on)")
    p.add_argument("--vae-steps", type=int, default=5000, help="VAE optimisation steps (default: 5000)")
    p.add_argument("--steps", type=int, default=12000, help="text encoder + UNet steps (default: 12000)")
    p.add_argument("--batch", type=int, default=32, help="UNet batch size (default: 32)")
    p.add_argument("--lr", type=float, default=5e-4, help="UNet learning rate (default: 5e-4)")
    p.add_argument("--pool-size", type=int, default=48_000, help="training scenes encoded once (default: 48000)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default: 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--init", metavar="FOLDER",
                   help="start from a trained pipeline folder (e.g. turbo_diffusion/shapes/weights): keep its VAE, "
                        "train its text encoder and UNet further")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="minutes between checkpoints and sample grids (default: 10)")
    p.set_defaults(func=run)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: the last checkpoint."""
    return f"the last checkpoint in {args.out} is kept; add --resume to the same command to continue from it"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from ..shapes.train import TrainSpec, export_run, train_shapes

    if args.export:
        try:
            folder = export_run(args.out)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
        print(f"exported {folder}")
        return 0

    spec = TrainSpec(out=args.out, minutes=args.minutes, vae_steps=args.vae_steps, unet_steps=args.steps,
                     batch=args.batch, lr=args.lr, pool_size=args.pool_size, seed=args.seed, device=args.device,
                     checkpoint_minutes=args.checkpoint_minutes, resume=args.resume, init=args.init)
    try:
        folder = train_shapes(spec)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"load it with load_pipeline({str(folder)!r}) or --model {folder}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    for name in ("vae_steps", "steps", "batch", "pool_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if not args.checkpoint_minutes > 0:
        raise UsageError(f"--checkpoint-minutes must be > 0, got {args.checkpoint_minutes}")
