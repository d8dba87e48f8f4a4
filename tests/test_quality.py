"""Quality regression on the committed ``shapes`` weights: Turbo's default at ratio 0.5 must keep what the model
draws. Margins come from benchmarks/QUALITY.md's measurement of these weights (see the constants). A control
run with a deliberately wrong restore (tokens copied back mirrored) must break the margins, so the test can fail.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from turbo_diffusion import apply_turbo, remove_turbo
from turbo_diffusion.compare.metrics import psnr
from turbo_diffusion.core.plan import MergePlan
from turbo_diffusion.model_names import SHAPES_FOLDER
from turbo_diffusion.shapes.evaluate import eval_scenes, generate, judge_all

SCENES = 16
STEPS = 10
# Measured on the committed weights (benchmarks/QUALITY.md, "regression set"): baseline and Turbo at 0.5 on these
# 16 scenes, 10 steps. The margins leave room for CPU-kernel differences, not for a real change.
MAX_ACCURACY_DROP = 0.10  # mean of colour, shape and position accuracy, Turbo below the baseline
MIN_PSNR = 20.0  # dB, Turbo's images against the baseline's, mean over the scenes

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")),
                                reason="the shapes weights are not in the package")


def _accuracy(scores: dict[str, float]) -> float:
    return (scores["colour"] + scores["shape"] + scores["position"]) / 3


@pytest.fixture(scope="module")
def runs():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER)
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(SCENES)
    baseline = generate(pipe, scenes, steps=STEPS)
    apply_turbo(pipe, ratio=0.5)
    turbo = generate(pipe, scenes, steps=STEPS)
    original = MergePlan.restore
    MergePlan.restore = lambda self, y: original(self, y).flip(1)  # every token gets another token's output
    try:
        broken = generate(pipe, scenes, steps=STEPS)
    finally:
        MergePlan.restore = original
        remove_turbo(pipe)
    return scenes, baseline, turbo, broken


def _check(scenes, baseline, images) -> list[str]:
    base = _accuracy(judge_all(baseline, scenes)[0])
    acc = _accuracy(judge_all(images, scenes)[0])
    mean_psnr = sum(min(psnr(a, b), 60.0) for a, b in zip(images, baseline, strict=True)) / len(images)
    problems = []
    if acc < base - MAX_ACCURACY_DROP:
        problems.append(f"accuracy {acc:.3f} vs baseline {base:.3f}")
    if mean_psnr < MIN_PSNR:
        problems.append(f"PSNR {mean_psnr:.1f} dB < {MIN_PSNR}")
    return problems


def test_the_baseline_draws_what_the_prompts_ask(runs):
    scenes, baseline, _, _ = runs
    assert _accuracy(judge_all(baseline, scenes)[0]) >= 0.5  # far above chance (1/8 colour, 1/3 shape, 1/9 cell)


def test_turbo_keeps_the_shapes_model_within_the_margins(runs):
    scenes, baseline, turbo, _ = runs
    assert _check(scenes, baseline, turbo) == []


def test_a_wrong_restore_breaks_the_margins(runs):
    scenes, baseline, _, broken = runs
    assert _check(scenes, baseline, broken) != []


def test_turbo_changed_something(runs):
    _, baseline, turbo, _ = runs
    assert any((np.asarray(a) != np.asarray(b)).any()
               for a, b in zip(turbo, baseline, strict=True))
