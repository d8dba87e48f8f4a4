"""Host time of one merging block's plan, merge and restore, without the attention in between: the plan before
this change, the lean plan (eager, and fused with ``fused_plan``), tomesd's matching and the zero-overhead bound.

    python benchmarks/plan_time.py                   # SD 1.5 at 512 px and SDXL at 1024 px block shapes, CPU

Each variant takes one merging block's self-attention input ``(2, 4096, C)`` (batch 2: classifier-free guidance)
with random features and random projection weights, and does what Turbo (or tomesd, or the bound) does around
the attention: plan, merge, restore. The lean plan's per-call work (seeded destinations, partition tables) is
shared by the blocks of a grid; it is timed on its own and its share per block (over 5 blocks, SD 1.5's count at
the full-resolution level) is added to the lean rows. Variants take turns call by call (rotating order), so drift
on a shared machine hits them all alike; medians of the repeats are reported, with their ratio to the bound.
On the CPU this measures compute and dispatch together; on a GPU the dispatch part is what the operation counts
of benchmarks/op_count.py predict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/reference_plan.py: the plan before

from tests.reference_plan import reference_plan  # noqa: E402
from turbo_diffusion.core import (  # noqa: E402
    merged_count,
    partition_tokens,
    plan_merge,
    seeded_offsets,
    window_count,
    window_grid,
)
from turbo_diffusion.core.fused import compiled_block_plan, fused_plan  # noqa: E402
from turbo_diffusion.processor import _attention_received  # noqa: E402

SHAPES = {"sd15-512": (64, 64, 320, 8), "sdxl-1024": (64, 64, 640, 10)}  # grid h, w, channels, heads
BLOCKS_PER_GRID = 5


def variants(h: int, w: int, channels: int, heads: int):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads).eval()
    x = torch.randn(2, h * w, channels)
    r = merged_count(h * w, window_count(h, w), 0.5)
    timestep = torch.tensor([500.0])
    grid = window_grid(h, w, 2, 2, 1)
    weights = dict(query_weight=attn.to_q.weight, query_bias=attn.to_q.bias, key_weight=attn.to_k.weight,
                   heads=heads, scale=attn.scale)

    def old():
        plan = reference_plan(attn, x, h, w, r, alpha=1.0, semantic=True, timestep=timestep)
        return plan.restore(plan.merge(x))

    partition = partition_tokens(grid, seeded_offsets(grid, 0, timestep))

    def per_call():
        return partition_tokens(grid, seeded_offsets(grid, 0, timestep))

    def lean():
        plan = plan_merge(x, partition, r, _attention_received(attn, x), 1.0)
        return plan.restore(plan.merge(x))

    def lean_fused():
        plan = fused_plan(x, partition, r, 1.0, **weights)
        return plan.restore(plan.merge(x))

    out = {"plan before": old, "lean per call (shared)": per_call, "lean": lean, "lean fused": lean_fused}
    try:
        from tomesd.merge import bipartite_soft_matching_random2d

        generator = torch.Generator().manual_seed(0)

        def tomesd():
            merge, unmerge = bipartite_soft_matching_random2d(x, w, h, 2, 2, r, no_rand=False, generator=generator)
            return unmerge(merge(x))

        out["tomesd matching"] = tomesd
    except ImportError:
        pass

    def bound():
        kept = x[:, : h * w - r]
        return torch.cat([kept, kept[:, :1].expand(-1, r, -1)], dim=1)

    out["bound"] = bound
    return out


def measure(functions: dict, repeats: int) -> dict[str, list[float]]:
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = {}
    for name, shape in SHAPES.items():
        functions = variants(*shape)
        start = time.perf_counter()
        functions["lean fused"]()  # compiles
        compile_seconds = time.perf_counter() - start
        for function in functions.values():
            function()  # warm-up
        times = measure(functions, args.repeats)
        medians = {k: statistics.median(v) for k, v in times.items()}
        shared = medians.pop("lean per call (shared)") / BLOCKS_PER_GRID
        medians["lean"] += shared
        medians["lean fused"] += shared
        bound = medians["bound"]
        print(f"{name}: one block's plan + merge + restore, median of {args.repeats} (ms; ratio to the bound)")
        for k, v in medians.items():
            print(f"  {k:18s} {1000 * v:8.2f} ms  {v / bound:6.1f}x")
        print(f"  (lean per-call tables: {1000 * shared * BLOCKS_PER_GRID:.2f} ms per call, {1000 * shared:.2f} "
              f"ms per block; fused plan compile: {compile_seconds:.1f} s)")
        results[name] = {"median_ms": {k: 1000 * v for k, v in medians.items()},
                         "per_call_tables_ms": 1000 * shared * BLOCKS_PER_GRID, "compile_seconds": compile_seconds,
                         "raw_seconds": times}
        compiled_block_plan.cache_clear()
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
