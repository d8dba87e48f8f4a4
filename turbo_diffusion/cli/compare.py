"""``turbo-diffusion compare``: image quality and speed of each method against the unaccelerated baseline.

    turbo-diffusion compare --model path/to/sd15 --prompts smoke --seeds 0 1 \\
        --methods baseline,turbo@0.3,turbo@0.5,tome@0.5,todo@0.5 --out outputs/cmp
    accelerate launch -m turbo_diffusion.cli compare --model path/to/sd15 --prompts paper --out outputs/paper
"""

from __future__ import annotations

import argparse
from typing import Any

from ..compare.spec import DEFAULT_CLIP_MODEL, DEFAULT_METHODS, OPTIONAL_METRICS, make_spec
from ..harness.loading import PLUGIN_SOURCE, load_plugin
from ..harness.methods import SYNTAX
from ..harness.output import check_writable
from ..model_names import check_model_name, default_model, defaults_for
from .common import (
    OUTPUTS,
    UsageError,
    add_device,
    add_guidance,
    add_model,
    add_progress,
    add_repeats,
    stage,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="compare image quality and speed of methods against the baseline",
        description="Generate every prompt x seed with every method (same pipeline, scheduler and seeds), then "
                    "measure seconds per image, speed-up and peak memory, PSNR/SSIM (and LPIPS) against the "
                    "baseline image, CLIP score and FID where their weights can be loaded. Writes images, a grid "
                    "per prompt, metrics.json/.csv, a speed-vs-quality plot and report.md/.html to --out.",
    )
    add_model(parser, None, default_help=f"{default_model()}, the model trained here")
    parser.add_argument("--prompts", default=None, metavar="FILE|PRESET|MODULE:NAME",
                        help="a preset (paper: ImageNet-1k classes, 512 px, 50 PLMS steps, guidance 7.5, seeds 0 1; "
                             "smoke: 4 prompts; shapes: 200 scenes for the shapes model, 2 seeds; shapes-quick: 16 of "
                             "them, 1 seed), a prompt source MODULE:NAME (a preset, its fields or a callable "
                             "returning them), a .jsonl file of records {\"prompt\": ..., ...metadata} or a text "
                             "file with one prompt per line (default: shapes-quick for the shapes model, else smoke)")
    parser.add_argument("--seeds", "--seed", nargs="+", default=None, metavar="SEED",
                        help="seeds, e.g. '0 1 2' or '0,1,2' (default: the preset's, else 0)")
    parser.add_argument("--methods", nargs="+", default=[DEFAULT_METHODS], metavar="METHODS",
                        help=f"comma-separated: {SYNTAX}, e.g. baseline,turbo@0.5:alpha=2,tome@0.5 "
                             f"(default: {DEFAULT_METHODS}; baseline is always included)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: the preset's, else the model's: 20 for shapes and SD, 10 for "
                             "tiny)")
    add_guidance(parser, None)
    parser.add_argument("--height", type=int, default=None, help="image height, a multiple of 8")
    parser.add_argument("--width", type=int, default=None, help="image width, a multiple of 8")
    parser.add_argument("--out", default=f"{OUTPUTS}/compare", metavar="DIR",
                        help=f"output folder (default: {OUTPUTS}/compare)")
    add_repeats(parser, "timed runs per method at least; beyond the images, the first prompt is generated again, "
                        "not kept")
    parser.add_argument("--force", action="store_true",
                        help="regenerate every image and overwrite a comparison of other settings in DIR")
    add_device(parser)
    parser.add_argument("--max-prompts", type=int, default=None, metavar="N", help="use only the first N prompts")
    parser.add_argument("--skip-metrics", default="", metavar="NAMES",
                        help=f"optional metrics not to try, comma-separated: {','.join(OPTIONAL_METRICS)}")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, metavar="PATH|ID",
                        help=f"CLIP model for the CLIP score: a local folder or a Hub id "
                             f"(default: {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--fid-reference", default=None, metavar="DIR",
                        help="folder of reference images for FID (default: the baseline's images)")
    parser.add_argument("--fid-weights", default=None, metavar="PATH",
                        help="local InceptionV3 weights for FID (torch-fidelity's pt_inception-2015-12-05 file)")
    parser.add_argument("--scorer", action="append", default=[], metavar="MODULE:NAME",
                        help="a custom scorer, scorer(image, baseline_image, prompt_record) -> {name: number}, "
                             "imported from MODULE (repeatable)")
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: every image made so far, each under its own key."""
    return (f"the images made so far are kept in {args.out}; run the same command again to resume (it makes only "
            "the images it lacks)")


def run(args: argparse.Namespace) -> int:
    skip = {name.strip() for name in args.skip_metrics.split(",") if name.strip()}
    unknown = sorted(skip - set(OPTIONAL_METRICS))
    if unknown:
        raise UsageError(f"--skip-metrics: unknown metric(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(OPTIONAL_METRICS)}")
    args.model = args.model or default_model()
    args.prompts = args.prompts or defaults_for(args.model).preset
    settings = dict(prompts=args.prompts, seeds=_seeds(args.seeds), methods=args.methods, steps=args.steps,
                    guidance=args.guidance, height=args.height, width=args.width, dtype=args.dtype,
                    max_prompts=args.max_prompts)
    check_model_name(args.model)
    make_spec(args.model, **settings)  # every setting checked before anything heavy is imported
    check_writable(args.out, "--out", folder=True)
    for name in args.scorer:
        if not PLUGIN_SOURCE.fullmatch(name):
            raise UsageError(f"--scorer {name!r}: write MODULE:NAME, e.g. mypackage.scoring:scene_iou")
    stage("compare", "importing torch, diffusers and transformers")
    from ..compare.api import compare
    from ..harness.measure import choose_threads

    threads = choose_threads() if args.device != "cuda" and not args.device.startswith("cuda:") else None
    if threads:
        stage("compare", threads)

    result = compare(args.model, **settings, out_dir=args.out, force=args.force,
                     metrics=[m for m in OPTIONAL_METRICS if m not in skip], clip_model=args.clip_model,
                     fid_reference=args.fid_reference, fid_weights=args.fid_weights, progress=not args.no_progress,
                     device=args.device, log=lambda line: stage("compare", line),
                     scorers=[_import_scorer(name) for name in args.scorer], repeats=args.repeats)
    if result is not None:  # main process
        _print_summary(result)
    return 0


def _import_scorer(name: str) -> Any:
    scorer = load_plugin(name, "--scorer")
    if not callable(scorer):
        raise UsageError(f"--scorer {name}: not callable")
    return scorer


def _seeds(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    seeds = []
    for value in values:
        for piece in value.split(","):
            if not piece.strip():
                continue
            try:
                seeds.append(int(piece))
            except ValueError:
                raise UsageError(f"--seeds: {piece!r} is not an integer") from None
    return seeds


def _print_summary(result: Any) -> None:
    from ..compare.report import table_header, table_rows
    from ..model_names import RANDOM_WEIGHTS_NOTE

    rows = [table_header(result)] + table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for name, reason in result.skipped.items():
        print(f"{name}: skipped. {reason}")
    if result.random_weights:
        print(f"note: {RANDOM_WEIGHTS_NOTE}; the fidelity numbers above are not image quality")
    print(f"report: {result.out_dir / 'report.html'}")
