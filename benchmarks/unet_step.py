"""Time one UNet step of a real SD architecture (random weights): default processor, Turbo, tomesd, bound.

    python benchmarks/unet_step.py --arch sd15-arch --sizes 512 768 --batches 1 2 --ratio 0.5 --repeats 3

All variants run in one process on one UNet, interleaved; speed-ups are ratios of minima over the repeats.
Prints a Markdown table (paste it into benchmarks/RESULTS.md) and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import subprocess
import sys
from datetime import date

import torch
from tqdm.auto import tqdm

from turbo_diffusion.archs import ARCHITECTURES, build_unet, unet_inputs
from turbo_diffusion.bench import bound_variant, default_variant, time_variants, tomesd_variant, turbo_variant


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
    parser.add_argument("--json", help="write the raw timings here")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    unet = build_unet(args.arch, dtype=dtype).to(args.device)
    # The highest-resolution level with attention: where Turbo (default), tomesd (when it merges) and the bound act.
    top = 2 if args.arch == "sdxl-arch" else 1
    rows, raw = [], []
    cases = [(s, b) for s in args.sizes for b in args.batches]
    for size, batch in tqdm(cases, desc="cases"):
        inputs = unet_inputs(unet, size, size, batch, dtype=dtype, device=args.device)
        tokens = (size // 8 // top) ** 2
        variants = [default_variant(), turbo_variant(ratio=args.ratio)]
        for spec in args.turbo:
            variants.append(turbo_variant(f"turbo[{spec}]", ratio=args.ratio, **_fields(spec)))
        tome = tomesd_variant(args.ratio)
        if tome is not None:
            variants.append(tome)
        variants.append(bound_variant(args.ratio, tokens))
        bar = tqdm(total=len(variants) * (args.repeats + 1), desc=f"{size}px batch {batch}", leave=False)
        timings = time_variants(unet, inputs, variants, repeats=args.repeats, progress=lambda _, bar=bar: bar.update())
        bar.close()
        base = timings["default"].best
        bound = base / timings["bound"].best
        for t in timings.values():
            speedup = base / t.best
            rows.append(f"| {size} | {batch} | {t.name} | {t.best:.2f} | {t.median:.2f} | {speedup:.3f}x | "
                        f"{speedup / bound:.1%} |")
            raw.append({"size": size, "batch": batch, "variant": t.name, "seconds": t.seconds})

    print(f"\n{date.today()} · {_machine(args.device)} · commit {_commit()} · {args.arch} (random weights) · "
          f"{args.dtype} · ratio {args.ratio} · {args.repeats} interleaved repeats")
    print(f"command: python benchmarks/unet_step.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print("| px | batch | variant | min s | median s | speed-up (min) | of bound |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            record = {"args": vars(args), "commit": _commit(), "machine": _machine(args.device), "runs": raw}
            json.dump(record, f, indent=1)
    return 0


def _fields(spec: str) -> dict:
    """``"a=1,b=None,c=text"`` -> ``{"a": 1, "b": None, "c": "text"}``."""
    fields = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        try:
            fields[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            fields[key] = value
    return fields


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
