"""One-step fidelity of Turbo's selections on the ``shapes`` model, and what their merge plans look like.

    python benchmarks/one_step_sweep.py --json benchmarks/results/DATE-one_step_sweep.json    # minutes on a CPU

For each ratio x alpha, with and without ``proportional_attn``: the UNet's noise prediction on 16 held-out scenes'
renders noised at t = 200, 500, 800 (`turbo_diffusion.shapes.evaluate.noise_predictions`), as the relative
deviation from the unmerged UNet's; and, from the plans of the first denoising step of 8 scenes (finest level,
prompt-conditioned half), the share of the merged tokens that ToMe's selection (alpha=0) also merges, the mean
mutual redundancy R of merged tokens, and the share of 2x2 windows whose three sources all merged (how evenly the
merges spread: 1.0 would be plain 2x downsampling).
"""

from __future__ import annotations

import argparse
import json


def plan_stats(pipe, scenes, ratio: float, alpha: float) -> list:
    """The finest level's `PlanRecord`s of the first UNet call of a one-step generation per scene."""
    import torch

    from turbo_diffusion import apply_turbo, inspect_plans, remove_turbo

    apply_turbo(pipe, ratio=ratio, alpha=alpha)
    records = []
    try:
        for i, scene in enumerate(scenes):
            with inspect_plans(pipe) as plans:
                pipe(scene.prompt, num_inference_steps=1, guidance_scale=5.0, height=scene.size, width=scene.size,
                     generator=torch.Generator().manual_seed(i))
            finest = max(r.grid[0] * r.grid[1] for r in plans)
            records += [r for r in plans if r.grid[0] * r.grid[1] == finest]
    finally:
        remove_turbo(pipe)
    return records


def main() -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion import apply_turbo, remove_turbo
    from turbo_diffusion.model_names import SHAPES_FOLDER
    from turbo_diffusion.shapes.evaluate import eval_scenes, noise_predictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER)
    pipe.set_progress_bar_config(disable=True)
    scenes, plan_scenes = eval_scenes(16), eval_scenes(8)
    baseline = noise_predictions(pipe, scenes)
    rows = []
    print("| ratio | alpha | deviation t=200/500/800 | with proportional_attn | overlap with ToMe | R of merged | "
          "windows fully merged |\n|---|---|---|---|---|---|---|")
    for ratio in args.ratios:
        tome = None
        for alpha in args.alphas:
            deviations = {}
            for proportional in (False, True):
                apply_turbo(pipe, ratio=ratio, alpha=alpha, proportional_attn=proportional)
                try:
                    out = noise_predictions(pipe, scenes)
                finally:
                    remove_turbo(pipe)
                deviations[proportional] = [float((p - b).norm() / b.norm()) for p, b in zip(out, baseline,
                                                                                             strict=True)]
            records = plan_stats(pipe, plan_scenes, ratio, alpha)
            merged = [r.merged[-1] for r in records]  # (h, w) bool, the prompt-conditioned half
            tome = merged if alpha == 0 else tome
            overlap = (float(np.mean([(m & t).sum().item() / max(t.sum().item(), 1) for m, t in zip(merged, tome,
                                                                                                    strict=True)]))
                       if tome is not None else float("nan"))
            redundancy = float(np.mean([r.redundancy[-1][r.merged[-1]].mean().item() for r in records]))
            full = float(np.mean([(m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2).sum((1, 3)) == 3)
                                  .float().mean().item() for m in merged]))
            row = {"ratio": ratio, "alpha": alpha, "deviation": deviations[False],
                   "deviation_proportional": deviations[True], "overlap_with_tome": overlap,
                   "redundancy_merged": redundancy, "windows_fully_merged": full}
            rows.append(row)
            fmt = "/".join(f"{d:.3f}" for d in deviations[False]), "/".join(f"{d:.3f}" for d in deviations[True])
            print(f"| {ratio} | {alpha:g} | {fmt[0]} | {fmt[1]} | {overlap:.2f} | {redundancy:.3f} | {full:.2f} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenes": len(scenes), "plan_scenes": len(plan_scenes), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
