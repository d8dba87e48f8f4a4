"""``turbo-diffusion generate``: one image with Turbo, optionally timed against the unaccelerated pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import TurboConfig, parse_fields
from ..harness.output import check_writable
from ..model_names import check_model_name, default_model, defaults_for
from .common import (
    OUTPUTS,
    UsageError,
    about,
    add_device,
    add_guidance,
    add_model,
    add_progress,
    add_repeats,
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
    add_model(p, None, default_help=f"{default_model()}, the model trained here: real pictures in seconds")
    p.add_argument("--ratio", type=float, default=0.5, help="share of tokens merged, in [0, 1) (default: 0.5)")
    p.add_argument("--turbo", default="", metavar="FIELD=VALUE,...",
                   help="other TurboConfig fields, e.g. 'alpha=2,semantic=\"text\"'")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's: 20 for shapes, 10 for tiny, else 20)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the model's)")
    add_guidance(p, None, default_help="the model's: 5 for shapes, else 7.5")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--baseline", action="store_true",
                   help="also generate without Turbo and print the speed-up: the median of interleaved runs")
    add_repeats(p, "with --baseline: timed runs per method")
    p.add_argument("--out", default=f"{OUTPUTS}/turbo.png",
                   help=f"output image (.png, .jpg, .webp; default: {OUTPUTS}/turbo.png); --baseline also writes "
                        "NAME.baseline.png next to it")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config, fields = _check_args(args)
    out = Path(args.out)
    baseline_out = out.with_name(f"{out.stem}.baseline{out.suffix}")
    # Heavy imports (torch, diffusers, transformers) only once the arguments are known to be good.
    stage("generate", "importing torch, diffusers and transformers")
    from ..harness.loading import load_model, resolve_device, resolve_dtype
    from ..harness.measure import (
        Timing,
        busy_warning,
        choose_threads,
        default_repeats,
        generation_cost,
        installed,
        noisy_advice,
        take_turns,
        timed,
    )
    from ..harness.methods import make_method
    from ..models import RANDOM_WEIGHTS_NOTE, uses_random_weights

    device = resolve_device(args.device)
    threads = choose_threads() if device.type == "cpu" else None
    if threads:
        stage("generate", threads)
    stage("generate", loading_message(args.model))
    pipe = load_model(args.model, resolve_dtype(args.dtype, device), device)
    turbo, baseline = make_method("turbo", config.ratio, **fields), make_method("baseline")
    settings = dict(seed=args.seed, guidance=args.guidance, height=args.height, width=args.width,
                    negative_prompt=args.negative_prompt)

    def generate(steps: int) -> Any:
        return _generate(pipe, args.prompt, steps, settings)

    # One untimed 2-step generation each way first, so no timed run pays for first-call set-up. They also split a
    # generation's time into its once-per-image work and its steps, which gives the estimate.
    stage("generate", "warming up: one 2-step generation with Turbo" + (" and one without" if args.baseline else ""))
    pipe.set_progress_bar_config(disable=True)
    costs = {}
    for method in [turbo] + ([baseline] if args.baseline else []):
        with installed(pipe, method):
            costs[method.name] = generation_cost(pipe, generate, device)
    per_run = [cost.estimate(args.steps) for cost in costs.values()]
    one_each = sum(per_run)
    repeats = args.repeats or default_repeats(max(per_run))
    if not args.baseline and baseline_out.exists():  # an earlier run's, not this one's
        baseline_out.unlink()
        stage("generate", f"removed {baseline_out}: an earlier run left it, this run makes no baseline")
    runs = f"{repeats} runs each, taking turns" if args.baseline and repeats > 1 else "one run" + \
        (" each" if args.baseline else "")
    rounds = (repeats + (1 if one_each < 5 else 0)) if args.baseline else 1
    stage("generate", f"generating {args.steps} steps with Turbo" + (" and without" if args.baseline else "")
          + f" ({runs}): expected about {about(one_each * rounds)}")
    busy = busy_warning()
    if busy and args.baseline:
        stage("generate", busy)

    if not args.baseline:
        pipe.set_progress_bar_config(desc="turbo", disable=args.no_progress)
        with installed(pipe, turbo):
            image, seconds = timed(lambda: generate(args.steps), device)
        images, timings = {turbo.name: image}, None
    else:
        images, timings = {}, {m.name: Timing(m.name) for m in (turbo, baseline)}

        def make(round_: int, method: Any) -> Any:
            pipe.set_progress_bar_config(desc=method.name, disable=args.no_progress)
            return generate(args.steps)

        # A first full-length run is slower than the next ones on the CPU (allocator, threads): where it is cheap,
        # one untimed round keeps it out of the spread.
        warmup = 1 if one_each < 5 else 0
        for round_, method, image, seconds in take_turns(pipe, [[turbo, baseline]] * (warmup + repeats), make,
                                                         device):
            images[method.name] = image
            if round_ >= warmup:
                timings[method.name].seconds.append(seconds)
        seconds = timings[turbo.name].median

    random_weights = uses_random_weights(pipe)
    saved = [_save(images[turbo.name], out, args, config, random_weights)]
    image = images[turbo.name]
    detail = "" if timings is None else f" (median of {repeats})" if repeats > 1 else ""
    print(f"saved {saved[0][0]} ({image.width}x{image.height}, {args.steps} steps, seed {args.seed}) in "
          f"{seconds:.2f} s{detail} with Turbo (ratio {config.ratio})")
    if timings is not None:
        base = timings[baseline.name]
        saved.append(_save(images[baseline.name], baseline_out, args, None, random_weights))
        print(f"saved {saved[1][0]} without Turbo in {base.median:.2f} s{detail}")
        print(speed_up_line(timings[turbo.name], base, repeats))
        advice = noisy_advice([t.name for t in (timings[turbo.name], base) if t.noisy], repeats, "--repeats")
        if advice:
            print(f"warning: {advice}")
    if random_weights:
        print(f"note: {args.model} has {RANDOM_WEIGHTS_NOTE}")
    return 0 if all(as_asked for _, as_asked in saved) else 1


def speed_up_line(turbo: Any, baseline: Any, repeats: int) -> str:
    """``speed-up 1.04x on the same seed (...)``: the ratio of medians, and what it rests on."""
    ratio = baseline.median / turbo.median
    if repeats == 1:
        return (f"speed-up {ratio:.2f}x on the same seed (one run each: noise cannot be seen; use --repeats 3, or "
                "`turbo-diffusion bench`)")
    return (f"speed-up {ratio:.2f}x on the same seed (medians of {repeats} interleaved runs each; spread "
            f"{turbo.spread:.2f}x with Turbo, {baseline.spread:.2f}x without)")


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: images are written only at the end, so none of this run."""
    return ("nothing was written (the images are saved when every run is done); run the command again to make "
            f"{args.out}")


def _check_args(args: argparse.Namespace) -> tuple[TurboConfig, dict[str, Any]]:
    """The Turbo settings; every bad argument is a one-line `UsageError`, found before anything heavy runs. Fills
    the model and its own defaults (size, steps, guidance) where the arguments leave them open."""
    try:
        fields = parse_fields(args.turbo)
        config = TurboConfig(ratio=args.ratio).replace(**fields)
        args.model = args.model or default_model()
        check_model_name(args.model)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    defaults = defaults_for(args.model)
    args.steps = defaults.steps if args.steps is None else args.steps
    args.guidance = defaults.guidance if args.guidance is None else args.guidance
    if defaults.size is not None and args.height is None and args.width is None:
        args.height = args.width = defaults.size
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


def _generate(pipe: Any, prompt: str, steps: int, settings: dict[str, Any]) -> Any:
    from ..harness.images import make_image

    return make_image(pipe, prompt, steps=steps, **settings)


def _save(image: Any, path: Path, args: argparse.Namespace, config: Any, random_weights: bool) -> tuple[Path, bool]:
    """Write ``image`` to ``path``; if that fails now, to a safe place, saying where on stderr. Returns where it
    went and whether that is ``path``."""
    from ..harness.images import save_image
    from ..harness.output import fallback_path

    text = {"prompt": args.prompt, "model": args.model, "seed": str(args.seed),
            "turbo": "off" if config is None else repr(config)}
    if random_weights:
        text["warning"] = "random weights: this image is noise"
    try:
        save_image(image, path, text)
        return path, True
    except OSError as err:
        safe = fallback_path(path)
        save_image(image, safe, text)
        stage("generate", f"could not write {path} ({err.strerror or err}); saved the image to {safe} instead")
        return safe, False
