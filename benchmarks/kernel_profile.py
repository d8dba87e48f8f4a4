"""Where the GPU time of one compiled Turbo step goes: the top kernels by device time (CUDA only).

    python benchmarks/kernel_profile.py --arch sd15-arch --size 512 --out outputs/gpu/kernel_profile.txt

SD 1.5 (or SDXL) with random weights in fp16, batch 2, Turbo at its default config, the transformer blocks compiled
with inductor (``compile_repeated_blocks``; ``--mode reduce-overhead`` for CUDA graphs), one step profiled after
warm-up. The table lists kernels by total CUDA time with their call counts, and the total: with it a GPU lease can
tell whether a step is launch-bound (many short kernels) or compute-bound (attention and matmuls on top).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from turbo_diffusion import apply_turbo
from turbo_diffusion.archs import build_unet, unet_inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sd15-arch", choices=["sd15-arch", "sd21-arch", "sdxl-arch"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mode", default=None, choices=[None, "reduce-overhead"])
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this profile is for a GPU machine")
    torch.set_grad_enabled(False)
    unet = build_unet(args.arch, dtype=torch.float16).cuda()
    inputs = unet_inputs(unet, args.size, args.size, 2, dtype=torch.float16, device="cuda")
    apply_turbo(unet)
    unet.compile_repeated_blocks(**({"mode": args.mode} if args.mode else {}))
    for _ in range(3):
        unet(**inputs)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        unet(**inputs)
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows)
    header = (f"{args.arch} {args.size} px, fp16, batch 2, random weights, Turbo default, compiled blocks"
              f"{' (' + args.mode + ')' if args.mode else ''}, {torch.cuda.get_device_name()}, torch "
              f"{torch.__version__}\n")
    print(header + table)
    if args.out:
        Path(args.out).write_text(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
