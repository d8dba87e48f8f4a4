"""Count the aten operations of one UNet step, with and without each method: on a GPU each is a host dispatch and
most are a kernel launch, so where a step is launch-bound (small images, fast GPUs, eager mode) the added
operations are the cost.

    python benchmarks/op_count.py                    # SD 1.5 and SDXL, random weights; add --json FILE to keep it

Rows: the baseline, Turbo (default, alpha=0, mode=kv, semantic=text, plan_every=3 at a planning step and at a
reuse step), tomesd, the ToDo-style variant and the zero-overhead bound, all at ratio 0.5. Columns: operations per
step and added over the baseline, added per merging block (transformer blocks the method acts on), added
launching operations (not views or allocations), and host syncs (reads of a device value: none is allowed).

Counts do not depend on the image size, the device or the machine's load, so the step runs at half the size
(SD 1.5 at 256 px, SDXL at 512 px), batch 2 (one image with classifier-free guidance), on the CPU; each is the
second call of a generation (the first also fills caches).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch

from turbo_diffusion import apply_turbo, remove_turbo, turbo_config_of, turbo_generation
from turbo_diffusion.anatomy import attention_level, transformer_block_levels
from turbo_diffusion.archs import build_unet, unet_inputs
from turbo_diffusion.bench.ops import count_ops
from turbo_diffusion.harness.methods import parse_method
from turbo_diffusion.harness.output import write_json
from turbo_diffusion.levels import pixel_grid

ARCHITECTURES = {"sd15-arch": 256, "sdxl-arch": 512}
TURBO_ROWS = {
    "turbo (default)": {},
    "turbo alpha=0": {"alpha": 0.0},
    "turbo mode=kv": {"mode": "kv"},
    "turbo semantic=text": {"semantic": "text"},
}
OTHER_ROWS = {"tomesd": "tome@0.5", "todo-style": "todo@0.5", "bound": "bound@0.5"}


def step_counts(unet, inputs, timesteps=(900, 800)):
    """The counter of the last of ``timesteps``' calls, made as one generation."""
    rest = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
    with turbo_generation(unet) if turbo_config_of(unet) is not None else nullcontext():
        for t in timesteps:  # positional sample and timestep: tomesd's hook reads them so
            counter = count_ops(unet, inputs["sample"], torch.tensor(t), **rest)
    return counter


def merging_blocks(unet, max_factor: int) -> int:
    return sum(factor <= max_factor for _, factor in transformer_block_levels(unet).values())


def rows_for(arch: str) -> list[dict]:
    pixels = ARCHITECTURES[arch]
    unet = build_unet(arch)
    inputs = unet_inputs(unet, pixels, pixels, 2)
    level = attention_level(unet)
    baseline = step_counts(unet, inputs)
    rows = [_row("baseline", baseline, baseline, 0)]
    for name, fields in TURBO_ROWS.items():
        apply_turbo(unet, ratio=0.5, **fields)
        rows.append(_row(name, step_counts(unet, inputs), baseline, merging_blocks(unet, level)))
    apply_turbo(unet, ratio=0.5, plan_every=3)
    rows.append(_row("turbo plan_every=3, planning step", step_counts(unet, inputs, (900, 800, 700, 600)), baseline,
                     merging_blocks(unet, level)))
    rows.append(_row("turbo plan_every=3, reuse step", step_counts(unet, inputs, (900, 800)), baseline,
                     merging_blocks(unet, level)))
    remove_turbo(unet)
    for name, text in OTHER_ROWS.items():
        method = parse_method(text).at_grid(pixel_grid(pixels, pixels, level))
        method.install(unet)
        try:
            blocks = merging_blocks(unet, 1 if method.kind == "tome" else level)
            rows.append(_row(name, step_counts(unet, inputs), baseline, blocks))
        finally:
            method.uninstall(unet)
    return rows


def _row(name: str, counter, baseline, blocks: int) -> dict:
    added = counter.total - baseline.total
    return {"method": name, "ops": counter.total, "added": added, "blocks": blocks,
            "added_per_block": round(added / blocks, 1) if blocks else None,
            "added_launching": counter.launching - baseline.launching, "host_syncs": counter.syncs}


def table(arch: str, rows: list[dict]) -> str:
    lines = [f"{arch} (batch 2, random weights): aten operations per UNet step",
             "| method | ops | added | merging blocks | added per block | added launching | host syncs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_block = "-" if r["added_per_block"] is None else r["added_per_block"]
        lines.append(f"| {r['method']} | {r['ops']} | {r['added']:+d} | {r['blocks']} | {per_block} | "
                     f"{r['added_launching']:+d} | {r['host_syncs']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="*", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = {}
    for arch in args.arch:
        results[arch] = rows_for(arch)
        print(table(arch, results[arch]) + "\n", flush=True)
    if args.json:
        write_json(args.json, {"torch": torch.__version__, "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
