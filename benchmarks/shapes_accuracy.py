"""Baseline accuracy of shapes pipelines, side by side: the judge's scores on the same evaluation scenes and seeds.

    python benchmarks/shapes_accuracy.py turbo_diffusion/shapes/weights runs/shapes-gpu/pipeline --scenes 200

The issue's targets for a learned model are colour >= 0.90, position >= 0.80 and shape >= 0.70 of objects with 20
steps. Prints one JSON line per folder (and writes them all with --json).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import StableDiffusionPipeline

from turbo_diffusion.shapes.evaluate import eval_scenes, evaluate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="pipeline folders")
    parser.add_argument("--scenes", type=int, default=200, help="evaluation scenes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=50, help="images per pipeline call (default: %(default)s)")
    parser.add_argument("--json", help="write the scores of every folder to this file")
    args = parser.parse_args()
    scenes = eval_scenes(args.scenes)
    results = []
    for folder in args.folders:
        pipe = StableDiffusionPipeline.from_pretrained(folder).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        clock = time.monotonic()
        scores = evaluate(pipe, scenes, seed=args.seed, steps=args.steps, batch=args.batch)
        results.append({"folder": folder, "scenes": args.scenes, "steps": args.steps, "device": args.device,
                        "seconds": round(time.monotonic() - clock, 1), **{k: round(v, 4) for k, v in scores.items()}})
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
