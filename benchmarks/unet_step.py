"""Time one UNet step of a real SD architecture (random weights): default processor, Turbo, tomesd, bound.

    python benchmarks/unet_step.py --arch sd15-arch --sizes 512 768 --batches 1 2 --ratio 0.5 --repeats 3

A thin wrapper over `turbo_diffusion.bench` (the harness behind ``turbo-diffusion bench``) that keeps this script's
original options and table, the one in benchmarks/RESULTS.md: all variants run in one process on one UNet,
interleaved; speed-ups are ratios of minima over the repeats. ``--json`` writes the harness's JSON.
"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from turbo_diffusion.archs import ARCHITECTURES
from turbo_diffusion.bench import BenchSpec, run_bench, table, write_json
from turbo_diffusion.bench.report import header
from turbo_diffusion.bench.run import plan_variants, planned_calls

COLUMNS = ("px", "batch", "variant", "min s", "median s", "speed-up", "of bound")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sd15-arch", choices=sorted(ARCHITECTURES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768], help="square image sizes in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--turbo", action="append", default=[], metavar="FIELD=VALUE,...",
                        help="an extra Turbo variant, e.g. --turbo match_radius=None (repeatable)")
    parser.add_argument("--todo", action="store_true", help="also time ToDo-style key/value downsampling")
    parser.add_argument("--json", help="write the results here (turbo-diffusion bench's JSON)")
    args = parser.parse_args(argv)

    spec = BenchSpec(
        model=args.arch, sizes=tuple((s, s) for s in args.sizes), batches=tuple(args.batches), ratios=(args.ratio,),
        turbo=tuple(args.turbo), variants=("turbo", "tomesd", "todo", "bound") if args.todo else
        ("turbo", "tomesd", "bound"), dtype=args.dtype, device=args.device, repeats=args.repeats, profile=False,
    )
    try:
        spec.validate()
    except ValueError as err:
        parser.error(str(err))
    with tqdm(total=planned_calls(spec, plan_variants(spec)[0]), desc="unet step", unit="call") as bar:
        result = run_bench(spec, lambda _: bar.update())
    print(f"\n{header(result)}\n")
    print(table(result, "step", COLUMNS))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
