"""``turbo-diffusion bench``: time diffusers' default processor, Turbo, tomesd, ToDo and the bound, interleaved.

    turbo-diffusion bench --model sd15-arch --sizes 512 768 --batches 1 2 --ratios 0.5 0.7
    turbo-diffusion bench --model sdxl-arch --sizes 1024 --ratios 0.5 --turbo "match_radius=None" --json sdxl.json
    turbo-diffusion bench --model sd15-arch --methods turbo@0.5 turbo@0.5:alpha=0 todo@0.75 bound@0.5 --compile

Prints a header (date, machine, commit, versions, command, "random weights" for built-in models) and Markdown
tables; ``--json`` and ``--plot`` write the same results as JSON and as a PNG of speed-up against ratio. The
measurement itself lives in `turbo_diffusion.bench` and `turbo_diffusion.harness`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys

from ..bench.spec import (
    ATTENTION_KERNELS,
    COMPILE_MODES,
    COMPILE_SCOPES,
    DEFAULT_PROMPT,
    VARIANTS,
    BenchSpec,
    command_for,
    flag_methods,
)
from ..harness.methods import SYNTAX, TODO_MODES
from ..harness.output import check_writable
from .common import UsageError, add_device, add_guidance, add_model, add_progress, loading_message, stage

_SIZE = re.compile(r"(\d+)(?:x(\d+))?")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="time a UNet step / a generation with and without token merging",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="Speed-ups are ratios of minima over interleaved repeats; a spread (max/min) above 1.5x is flagged "
               "noisy. Built-in models have random weights: their timings and memory are the real architectures', "
               "their images are noise.",
    )
    what = parser.add_argument_group("what to run")
    add_model(what, "sd15-arch")
    what.add_argument("--sizes", nargs="+", default=["512"], metavar="SIZE",
                      help="image sizes in pixels: 512 (square) or HxW such as 768x512 (default: 512)")
    what.add_argument("--batches", nargs="+", type=int, default=[1], metavar="N",
                      help="UNet batch sizes; 2 = one image with classifier-free guidance (default: 1)")
    what.add_argument("--ratios", nargs="+", type=float, default=None, metavar="R",
                      help="shares of tokens removed, each in (0, 1); every variant runs at each (default: 0.5)")
    what.add_argument("--turbo", action="append", default=[], metavar="FIELD=VALUE,...",
                      help="an extra Turbo setting of TurboConfig fields, run at every ratio next to the default "
                           "config, e.g. --turbo match_radius=None --turbo semantic=none,alpha=0 (repeatable)")
    what.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                      help="variants besides the default processor (default: all; tomesd only when installed)")
    what.add_argument("--todo-mode", choices=TODO_MODES, default="nearest",
                      help="how the ToDo variant downsamples keys/values (default: %(default)s)")
    what.add_argument("--methods", nargs="+", default=[], metavar="METHOD",
                      help=f"instead of --ratios/--variants/--turbo, exactly these methods: {SYNTAX} "
                           "(the baseline is added), as compare takes them")
    add_device(what, device="cpu", dtype="float32")

    how = parser.add_argument_group("how to measure")
    how.add_argument("--repeats", type=int, default=3, help="timed calls per variant (default: %(default)s)")
    how.add_argument("--warmup", type=int, default=1,
                     help="untimed calls per variant first; the first measures peak memory (default: %(default)s)")
    how.add_argument("--steps", type=int, default=0,
                     help="also time whole generations of this many steps through the pipeline; 0 = UNet steps "
                          "only (default)")
    how.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the generations")
    add_guidance(how, 7.5, dest="guidance_scale")
    how.add_argument("--seed", type=int, default=0, help="seed of the random weights, inputs and generations")
    how.add_argument("--no-profile", action="store_true",
                     help="skip the profiled step that splits Turbo's time into plan/merge/attention/restore")
    how.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                     help="torch.compile the UNet after installing each variant (backend inductor, or the one "
                          "named); compile time is reported on its own and the warm-up runs compiled")
    how.add_argument("--compile-scope", choices=COMPILE_SCOPES, default="unet",
                     help="with --compile: the whole UNet, or only its transformer blocks (diffusers' "
                          "compile_repeated_blocks: far shorter compiles) (default: %(default)s)")
    how.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                     help="with --compile: torch.compile's mode; reduce-overhead replays CUDA graphs (GPU), which "
                          "removes the per-operation launch cost (default: torch's default mode)")
    how.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa",
                     help="attention kernel of every variant, the baseline included: torch's SDPA, or xformers "
                          "(CUDA only, pip install 'turbo-diffusion[xformers]') (default: %(default)s)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write every number, the settings and the environment as JSON")
    out.add_argument("--plot", metavar="FILE", help="write a PNG of speed-up against ratio (needs matplotlib)")
    add_progress(out)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    spec, chosen_by, notes = spec_from_args(args)
    outputs = _check_outputs(args)
    stage("bench", "importing torch, diffusers and transformers")
    from tqdm.auto import tqdm

    from ..bench.report import format_report, plot, write_json
    from ..bench.run import environment, planned_calls, run_bench

    stage("bench", loading_message(spec.model) + "; then every variant is primed, warmed up and timed")

    command = command_for(spec, outputs, chosen_by)
    with tqdm(total=planned_calls(spec), desc="bench", unit="call", file=sys.stderr,
              disable=args.no_progress, dynamic_ncols=True) as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message, refresh=False)
            bar.update()

        result = run_bench(spec, progress, lambda s, random: environment(s, random, command=command), notes=notes)
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: bench writes its report at the end."""
    return "nothing was written (the report and --json are written when every variant is timed)"


def spec_from_args(args: argparse.Namespace) -> tuple[BenchSpec, list[str], list[str]]:
    """The `BenchSpec` the arguments ask for, the options that chose its methods when they are the older flags
    (for the command that repeats the run), and notes on what was left out. A bad value is a `UsageError`."""
    if args.methods and (args.ratios or args.variants or args.turbo):
        raise UsageError("give either --methods or --ratios/--variants/--turbo, not both")
    methods, chosen_by, notes = args.methods, [], []
    if not methods:  # the older flags, spelled as methods here and nowhere else
        ratios, variants = args.ratios or [0.5], list(dict.fromkeys(args.variants or VARIANTS))
        methods, notes = flag_methods(ratios, args.turbo, variants, args.todo_mode,
                                      tomesd_installed=importlib.util.find_spec("tomesd") is not None)
        chosen_by = ["--ratios", *(f"{r:g}" for r in ratios), *(x for t in args.turbo for x in ("--turbo", t)),
                     "--variants", *variants, "--todo-mode", args.todo_mode]
    spec = BenchSpec(
        model=args.model, sizes=tuple(parse_size(s) for s in args.sizes), batches=tuple(args.batches),
        methods=tuple(methods), dtype=args.dtype, device=args.device, repeats=args.repeats, warmup=args.warmup,
        steps=args.steps, prompt=args.prompt, guidance_scale=args.guidance_scale, seed=args.seed,
        profile=not args.no_profile, compile=args.compile, compile_scope=args.compile_scope,
        compile_mode=args.compile_mode, attention=args.attention,
    )
    return spec.validate(), chosen_by, notes


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
        if path is not None:
            check_writable(path, f"--{option}")
            outputs += [f"--{option}", path]
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'turbo-diffusion[metrics]'")
    return outputs
