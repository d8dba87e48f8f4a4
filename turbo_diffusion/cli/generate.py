"""``turbo-diffusion generate``: one image with Turbo, optionally timed against the unaccelerated pipeline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from ..config import TurboConfig, parse_fields
from . import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate an image with Turbo (and with --baseline, without it, to print the speed-up)",
        description="Generate one image with Turbo token merging. With --baseline, also generate it without Turbo "
        "on the same seed and print the speed-up.",
    )
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--model", default="sd15-arch",
                   help="tiny | tiny-xl | sd15-arch | sd21-arch | sdxl-arch (random weights, offline), a local folder "
                        "or a Hub id (default: sd15-arch)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of tokens merged, in [0, 1) (default: 0.5)")
    p.add_argument("--turbo", default="", metavar="FIELD=VALUE,...",
                   help="other TurboConfig fields, e.g. 'alpha=2,semantic=\"text\"'")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: 7.5)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--baseline", action="store_true", help="also generate without Turbo and print the speed-up")
    p.add_argument("--out", default="turbo.png", help="output image (.png, .jpg, .webp; default: turbo.png)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="default: float16 on CUDA, float32 on CPU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = TurboConfig(ratio=args.ratio).replace(**parse_fields(args.turbo))
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    _check_args(args)
    # Heavy imports (diffusers pipelines, transformers) only once the arguments are known to be good.
    from ..hooks import apply_turbo, find_unet, remove_turbo
    from ..models import RANDOM_WEIGHTS_NOTE, load_pipeline, uses_random_weights

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.float16 if device.type == "cuda" else torch.float32)

    try:
        pipe = load_pipeline(args.model, torch_dtype=None if dtype == torch.float32 else dtype)
        find_unet(pipe)
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(f"--model {args.model}: {err}".splitlines()[0]) from None
    pipe = pipe.to(device)
    call = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                guidance_scale=args.guidance, height=args.height, width=args.width)

    # One untimed step each way first, so neither timed run pays for first-call set-up.
    pipe.set_progress_bar_config(disable=True)
    _generate(pipe, call | {"num_inference_steps": 1}, args.seed, device)
    apply_turbo(pipe, config)
    _generate(pipe, call | {"num_inference_steps": 1}, args.seed, device)
    pipe.set_progress_bar_config(desc="turbo")
    image, seconds = _generate(pipe, call, args.seed, device)

    random_weights = uses_random_weights(pipe)
    out = Path(args.out)
    _save(image, out, args, config, random_weights)
    print(f"saved {out} ({image.width}x{image.height}, {args.steps} steps, seed {args.seed}) in {seconds:.2f} s "
          f"with Turbo (ratio {config.ratio})")
    if args.baseline:
        remove_turbo(pipe)
        pipe.set_progress_bar_config(desc="baseline")
        base_image, base_seconds = _generate(pipe, call, args.seed, device)
        base_out = out.with_name(f"{out.stem}.baseline{out.suffix}")
        _save(base_image, base_out, args, None, random_weights)
        print(f"saved {base_out} without Turbo in {base_seconds:.2f} s")
        print(f"speed-up {base_seconds / seconds:.2f}x on the same seed (one run each; "
              "`turbo-diffusion bench` times interleaved repeats)")
    if random_weights:
        print(f"note: {args.model} has {RANDOM_WEIGHTS_NOTE}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
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


def _generate(pipe: Any, call: dict[str, Any], seed: int, device: torch.device):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    image = pipe(**call, generator=generator).images[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return image, time.perf_counter() - start


def _save(image: Any, path: Path, args: argparse.Namespace, config: Any, random_weights: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".png":
        image.save(path)
        return
    info = PngInfo()
    info.add_text("prompt", args.prompt)
    info.add_text("model", args.model)
    info.add_text("seed", str(args.seed))
    info.add_text("turbo", "off" if config is None else repr(config))
    if random_weights:
        info.add_text("warning", "random weights: this image is noise")
    image.save(path, pnginfo=info)
