"""``turbo-diffusion bench``: time diffusers' default processor, Turbo, tomesd, ToDo and the bound, interleaved.

    turbo-diffusion bench --model sd15-arch --sizes 512 768 --batches 1 2 --ratios 0.5 0.7
    turbo-diffusion bench --model sdxl-arch --sizes 1024 --ratios 0.5 --turbo "match_radius=None" --json sdxl.json
    turbo-diffusion bench --model sd15-arch --sizes 512 --batches 2 --steps 20 --plot speedup.png

Prints a header (date, machine, commit, versions, command, "random weights" for built-in models) and Markdown
tables; ``--json`` and ``--plot`` write the same results as JSON and as a PNG of speed-up against ratio. The
measurement itself lives in `turbo_diffusion.bench`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..bench.report import command_for, environment, format_report, plot, write_json
from ..bench.run import DEFAULT_PROMPT, DTYPES, FAMILIES, BenchSpec, ModelLoadError, plan_variants, planned_calls
from ..bench.run import run_bench as run_benchmark
from ..bench.variants import TODO_MODES
from . import UsageError

_SIZE = re.compile(r"(\d+)(?:x(\d+))?")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="time a UNet step / a generation with and without token merging",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="Speed-ups are ratios of minima over interleaved repeats. Built-in models have random weights: "
               "their timings and memory are the real architectures', their images are noise.",
    )
    what = parser.add_argument_group("what to run")
    what.add_argument("--model", default="sd15-arch",
                      help="sd15-arch, sd21-arch, sdxl-arch (real architectures, random weights), tiny, tiny-xl, "
                           "a local folder or a Hub id (default: %(default)s)")
    what.add_argument("--sizes", nargs="+", default=["512"], metavar="SIZE",
                      help="image sizes in pixels: 512 (square) or HxW such as 768x512 (default: 512)")
    what.add_argument("--batches", nargs="+", type=int, default=[1], metavar="N",
                      help="UNet batch sizes; 2 = one image with classifier-free guidance (default: 1)")
    what.add_argument("--ratios", nargs="+", type=float, default=[0.5], metavar="R",
                      help="shares of tokens removed, each in (0, 1); every variant runs at each (default: 0.5)")
    what.add_argument("--turbo", action="append", default=[], metavar="FIELD=VALUE,...",
                      help="an extra Turbo setting of TurboConfig fields, run at every ratio next to the default "
                           "config, e.g. --turbo match_radius=None --turbo semantic=none,alpha=0 (repeatable)")
    what.add_argument("--variants", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                      help="variants besides the default processor (default: all; tomesd only when installed)")
    what.add_argument("--todo-mode", choices=TODO_MODES, default="nearest",
                      help="how the ToDo variant downsamples keys/values (default: %(default)s)")
    what.add_argument("--dtype", choices=DTYPES, default="float32")
    what.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")

    how = parser.add_argument_group("how to measure")
    how.add_argument("--repeats", type=int, default=3, help="timed calls per variant (default: %(default)s)")
    how.add_argument("--warmup", type=int, default=1,
                     help="untimed calls per variant first; the first measures peak memory (default: %(default)s)")
    how.add_argument("--steps", type=int, default=0,
                     help="also time whole generations of this many steps through the pipeline; 0 = UNet steps "
                          "only (default)")
    how.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the generations")
    how.add_argument("--guidance-scale", type=float, default=7.5,
                     help="classifier-free guidance of the generations with an even batch (default: %(default)s)")
    how.add_argument("--seed", type=int, default=0, help="seed of the random weights, inputs and generations")
    how.add_argument("--no-profile", action="store_true",
                     help="skip the profiled step that splits Turbo's time into plan/merge/attention/restore")

    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write every number, the settings and the environment as JSON")
    out.add_argument("--plot", metavar="FILE", help="write a PNG of speed-up against ratio (needs matplotlib)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    outputs = _check_outputs(args)
    planned, _ = plan_variants(spec)
    command = command_for(spec, outputs)
    with tqdm(total=planned_calls(spec, planned), desc="bench", unit="call", file=sys.stderr,
              disable=args.no_progress, dynamic_ncols=True) as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message, refresh=False)
            bar.update()

        try:
            result = run_benchmark(spec, progress, lambda s, random: environment(s, random, command=command))
        except ModelLoadError as err:
            raise UsageError(str(err)) from None
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """The `BenchSpec` the arguments ask for; a bad value is a one-line `UsageError`."""
    spec = BenchSpec(
        model=args.model, sizes=tuple(parse_size(s) for s in args.sizes), batches=tuple(args.batches),
        ratios=tuple(args.ratios), turbo=tuple(args.turbo), variants=tuple(dict.fromkeys(args.variants)),
        todo_mode=args.todo_mode, dtype=args.dtype, device=args.device, repeats=args.repeats, warmup=args.warmup,
        steps=args.steps, prompt=args.prompt, guidance_scale=args.guidance_scale, seed=args.seed,
        profile=not args.no_profile,
    )
    try:
        return spec.validate()
    except ValueError as err:
        raise UsageError(str(err)) from None


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` -> ``(512, 512)``; ``"768x512"`` -> ``(768, 512)`` (height x width)."""
    match = _SIZE.fullmatch(text.strip().lower())
    if not match:
        raise UsageError(f"image size {text!r}: use a number of pixels (512) or HEIGHTxWIDTH (768x512)")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _check_outputs(args: argparse.Namespace) -> list[str]:
    """Check the output paths before a long run, not after; return them as command-line options."""
    outputs = []
    for option in ("json", "plot"):
        path = getattr(args, option)
        if path is None:
            continue
        if not Path(path).resolve().parent.is_dir():
            raise UsageError(f"--{option} {path}: folder {Path(path).resolve().parent} does not exist")
        outputs += [f"--{option}", path]
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'turbo-diffusion[metrics]'")
    return outputs
