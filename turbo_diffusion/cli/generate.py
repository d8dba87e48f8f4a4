"""``turbo-diffusion generate``: one image with Turbo, optionally timed against the unaccelerated pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import TurboConfig, parse_fields
from ..harness.output import check_writable
from ..model_names import check_model_name
from .common import (
    OUTPUTS,
    UsageError,
    about,
    add_device,
    add_guidance,
    add_model,
    add_progress,
    loading_message,
    stage,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate an image with Turbo (and with --baseline, without it, to print the speed-up)",
        description="Generate one image with Turbo token merging. With --baseline, also generate it without Turbo "
        "on the same seed and print the speed-up.",
    )
    p.add_argument("prompt", help="the text prompt")
    add_model(p, "sd15-arch")
    p.add_argument("--ratio", type=float, default=0.5, help="share of tokens merged, in [0, 1) (default: 0.5)")
    p.add_argument("--turbo", default="", metavar="FIELD=VALUE,...",
                   help="other TurboConfig fields, e.g. 'alpha=2,semantic=\"text\"'")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the model's)")
    add_guidance(p, 7.5)
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--baseline", action="store_true", help="also generate without Turbo and print the speed-up")
    p.add_argument("--out", default=f"{OUTPUTS}/turbo.png",
                   help=f"output image (.png, .jpg, .webp; default: {OUTPUTS}/turbo.png); --baseline also writes "
                        "NAME.baseline.png next to it")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config, fields = _check_args(args)
    out = Path(args.out)
    # Heavy imports (torch, diffusers, transformers) only once the arguments are known to be good.
    stage("generate", "importing torch, diffusers and transformers")
    from ..harness.loading import load_model, resolve_device, resolve_dtype
    from ..harness.measure import installed, timed
    from ..harness.methods import make_method
    from ..models import RANDOM_WEIGHTS_NOTE, uses_random_weights

    device = resolve_device(args.device)
    stage("generate", loading_message(args.model))
    pipe = load_model(args.model, resolve_dtype(args.dtype, device), device)
    turbo = make_method("turbo", config.ratio, **fields)
    call = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                guidance_scale=args.guidance, height=args.height, width=args.width)

    # One untimed step each way first, so neither timed run pays for first-call set-up; they also give the estimate.
    stage("generate", "warming up: one 1-step generation with Turbo" + (" and one without" if args.baseline else ""))
    pipe.set_progress_bar_config(disable=True)
    one_step = call | {"num_inference_steps": 1}
    base_step = timed(lambda: _generate(pipe, one_step, args.seed), device)[1] if args.baseline else 0.0
    with installed(pipe, turbo):
        turbo_step = timed(lambda: _generate(pipe, one_step, args.seed), device)[1]
        expected = args.steps * (turbo_step + base_step)
        stage("generate", f"generating {args.steps} steps with Turbo" + (", then without" if args.baseline else "")
              + f": expected about {about(expected)} (from the warm-up)")
        pipe.set_progress_bar_config(desc="turbo", disable=args.no_progress)
        image, seconds = timed(lambda: _generate(pipe, call, args.seed), device)

    random_weights = uses_random_weights(pipe)
    saved = [_save(image, out, args, config, random_weights)]
    print(f"saved {saved[0][0]} ({image.width}x{image.height}, {args.steps} steps, seed {args.seed}) in "
          f"{seconds:.2f} s with Turbo (ratio {config.ratio})")
    if args.baseline:
        pipe.set_progress_bar_config(desc="baseline", disable=args.no_progress)
        base_image, base_seconds = timed(lambda: _generate(pipe, call, args.seed), device)
        saved.append(_save(base_image, out.with_name(f"{out.stem}.baseline{out.suffix}"), args, None, random_weights))
        print(f"saved {saved[1][0]} without Turbo in {base_seconds:.2f} s")
        print(f"speed-up {base_seconds / seconds:.2f}x on the same seed (one run each; "
              "`turbo-diffusion bench` times interleaved repeats)")
    if random_weights:
        print(f"note: {args.model} has {RANDOM_WEIGHTS_NOTE}")
    return 0 if all(as_asked for _, as_asked in saved) else 1


def _check_args(args: argparse.Namespace) -> tuple[TurboConfig, dict[str, Any]]:
    """The Turbo settings; every bad argument is a one-line `UsageError`, found before anything heavy runs."""
    try:
        fields = parse_fields(args.turbo)
        config = TurboConfig(ratio=args.ratio).replace(**fields)
        check_model_name(args.model)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"--{name} must be a positive multiple of 8, got {value}")
    if args.guidance < 0:
        raise UsageError(f"--guidance must be >= 0, got {args.guidance}")
    if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--out must end in one of {', '.join(IMAGE_SUFFIXES)}, got {args.out!r}")
    check_writable(args.out, "--out")
    return config, fields


def _generate(pipe: Any, call: dict[str, Any], seed: int) -> Any:
    import torch

    return pipe(**call, generator=torch.Generator(device="cpu").manual_seed(seed)).images[0]


def _save(image: Any, path: Path, args: argparse.Namespace, config: Any, random_weights: bool) -> tuple[Path, bool]:
    """Write ``image`` to ``path``; if that fails now, to a safe place, saying where on stderr. Returns where it
    went and whether that is ``path``."""
    from PIL.PngImagePlugin import PngInfo

    from ..harness.output import fallback_path

    info = PngInfo()
    info.add_text("prompt", args.prompt)
    info.add_text("model", args.model)
    info.add_text("seed", str(args.seed))
    info.add_text("turbo", "off" if config is None else repr(config))
    if random_weights:
        info.add_text("warning", "random weights: this image is noise")
    options = {"pnginfo": info} if path.suffix.lower() == ".png" else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **options)
        return path, True
    except OSError as err:
        safe = fallback_path(path)
        image.save(safe, **options)
        stage("generate", f"could not write {path} ({err.strerror or err}); saved the image to {safe} instead")
        return safe, False
