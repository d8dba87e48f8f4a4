"""The numbers behind tests/test_quality.py's margins ("The regression set" in benchmarks/QUALITY.md).

    python benchmarks/regression_set.py            # about 3 minutes on a 2-core CPU

On the committed ``shapes`` weights, the test's 16 held-out scenes and 10 steps: the baseline's attribute
accuracy; then for Turbo's default at ratio 0.5, Turbo with ToMe's selection (alpha=0), and three deliberately
wrong restores (tokens copied back mirrored, shifted by one row, shifted by 32 rows), the accuracy, the mean PSNR
of the images to the baseline's, and the one-step noise-prediction deviation (worst of t = 200, 500, 800). The
test's margins must pass the first two and fail every wrong restore.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from unittest import mock


def main() -> None:
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion import apply_turbo, remove_turbo
    from turbo_diffusion.core.plan import MergePlan
    from turbo_diffusion.harness.fidelity import psnr
    from turbo_diffusion.model_names import SHAPES_FOLDER
    from turbo_diffusion.shapes.evaluate import (
        eval_scenes,
        generate,
        judge_all,
        noise_predictions,
        prediction_deviation,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER)
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(args.scenes)
    original = MergePlan.restore

    def wrong(damage):
        return mock.patch.object(MergePlan, "restore", lambda plan, y: damage(original(plan, y)))

    runs = {  # name: (apply_turbo settings or None for the baseline, restore patch)
        "baseline": (None, nullcontext()),
        "turbo 0.5 (default)": ({"ratio": 0.5}, nullcontext()),
        "turbo 0.5, alpha=0": ({"ratio": 0.5, "alpha": 0.0}, nullcontext()),
        "mirrored restore": ({"ratio": 0.5}, wrong(lambda y: y.flip(1))),
        "restore shifted 1 row": ({"ratio": 0.5}, wrong(lambda y: y.roll(1, 1))),
        "restore shifted 32 rows": ({"ratio": 0.5}, wrong(lambda y: y.roll(32, 1))),
    }
    table, reference = [], None
    for name, (settings, patch) in runs.items():
        if settings is not None:
            apply_turbo(pipe, **settings)
        try:
            with patch:
                images = generate(pipe, scenes, steps=args.steps)
                predictions = noise_predictions(pipe, scenes)
        finally:
            if settings is not None:
                remove_turbo(pipe)
        scores = judge_all(images, scenes)[0]
        accuracy = (scores["colour"] + scores["shape"] + scores["position"]) / 3
        if reference is None:
            reference = (images, predictions)
        row = {"run": name, "accuracy": round(accuracy, 3),
               "psnr_db": round(sum(min(psnr(a, b), 60.0) for a, b in zip(images, reference[0], strict=True))
                                / len(images), 1),
               "deviation": round(prediction_deviation(reference[1], predictions), 3)}
        table.append(row)
        print(json.dumps(row), flush=True)
    print("\n| run | accuracy | PSNR to baseline (dB) | one-step deviation |\n|---|---|---|---|")
    for r in table:
        print(f"| {r['run']} | {r['accuracy']:.3f} | {r['psnr_db']:.1f} | {r['deviation']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenes": args.scenes, "steps": args.steps, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
