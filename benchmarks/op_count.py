"""Count the aten operations of one UNet step, with and without Turbo: on a GPU each is (at least) one kernel
launch, so where a step is launch-bound (small images, fast GPUs, eager mode) the extra operations are the cost.

    python benchmarks/op_count.py                      # SD 1.5 at 512 px and SDXL at 1024 px, random weights

Counts do not depend on the image size or the device, so the step runs at half the size on the CPU.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from turbo_diffusion import apply_turbo, processor, remove_turbo
from turbo_diffusion.archs import build_unet, unet_inputs


class CountOps(TorchDispatchMode):
    """Counts every aten operation dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def step_ops(unet, inputs) -> collections.Counter[str]:
    with torch.no_grad(), CountOps() as mode:
        unet(**inputs)
    return mode.counts


def seeding_ops(unet, inputs) -> tuple[int, int]:
    """(calls, aten ops) of the partition's seeding hash (`seeded_offsets`) in one step of a Turbo UNet."""
    original, counts = processor.seeded_offsets, []

    def counted(*args, **kwargs):
        with CountOps() as mode:
            out = original(*args, **kwargs)
        counts.append(sum(mode.counts.values()))
        return out

    processor.seeded_offsets = counted
    try:
        with torch.no_grad():
            unet(**inputs)
    finally:
        processor.seeded_offsets = original
    return len(counts), sum(counts)


def main() -> int:
    for arch, pixels in (("sd15-arch", 512), ("sdxl-arch", 1024)):
        unet = build_unet(arch)
        inputs = unet_inputs(unet, pixels // 2, pixels // 2, 1)
        baseline = step_ops(unet, inputs)
        apply_turbo(unet, ratio=0.5)
        turbo = step_ops(unet, inputs)
        calls, seeding = seeding_ops(unet, inputs)
        remove_turbo(unet)
        added = turbo - baseline
        print(f"{arch}: aten ops per UNet step: baseline {sum(baseline.values())}, Turbo {sum(turbo.values())} "
              f"(+{sum(turbo.values()) - sum(baseline.values())})")
        print(f"  of which the partition's seeding hash: {seeding} in {calls} calls (one per merging block)")
        print("  most added: " + ", ".join(f"{name} {n}" for name, n in added.most_common(10)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
