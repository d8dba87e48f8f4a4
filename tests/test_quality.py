"""Quality regression on the committed ``shapes`` weights: Turbo's default at ratio 0.5 must keep what the model
draws. Margins come from a measurement of these weights (benchmarks/QUALITY.md, "The regression set"). Controls
with a deliberately wrong restore (tokens copied back mirrored, or shifted by one row) must break the margins, so
the test can fail.

Two levels, because on this small model the finest self-attention carries little of the image: over 10 steps a
wrong restore moves the images only a few dB further than Turbo does. The one-step check isolates the UNet: on
noised latents of the rendered scenes, Turbo's noise prediction must stay close to the baseline's, where a wrong
restore lands more than twice as far.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest

from turbo_diffusion import apply_turbo, remove_turbo
from turbo_diffusion.core.plan import MergePlan
from turbo_diffusion.harness.fidelity import psnr
from turbo_diffusion.model_names import SHAPES_FOLDER
from turbo_diffusion.shapes.evaluate import eval_scenes, generate, judge_all, prediction_deviation
from turbo_diffusion.shapes.evaluate import noise_predictions as one_step

SCENES = 16
STEPS = 10
TIMESTEPS = (200, 500, 800)
# Measured on the committed weights, these 16 scenes, 10 steps (python benchmarks/regression_set.py; QUALITY.md):
# baseline accuracy 0.583; Turbo 0.5 accuracy 0.521, PSNR 34.4 dB, one-step deviation 0.047; mirrored restore
# PSNR 30.7 dB, deviation 0.136; restore shifted by one row 31.0 dB, 0.116; shifted by 32 rows 32.0 dB, 0.093.
MAX_ACCURACY_DROP = 0.12  # mean of colour, shape and position accuracy, Turbo below the baseline
MIN_PSNR = 32.5  # dB, Turbo's images against the baseline's, mean over the scenes
MAX_DEVIATION = 0.065  # |eps_turbo - eps_baseline| / |eps_baseline| over the batch, worst of TIMESTEPS
WRONG_RESTORES = {"mirrored": lambda y: y.flip(1), "shifted by one row": lambda y: y.roll(1, 1)}

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")),
                                reason="the shapes weights are not in the package")


def _accuracy(scores: dict[str, float]) -> float:
    return (scores["colour"] + scores["shape"] + scores["position"]) / 3


def _wrong_restore(damage):
    """Patch `MergePlan.restore` so that its output goes through ``damage``."""
    original = MergePlan.restore
    return mock.patch.object(MergePlan, "restore", lambda plan, y: damage(original(plan, y)))


def _each_run(pipe, produce) -> dict:
    """``produce()`` for the baseline, Turbo at 0.5, and Turbo with each of WRONG_RESTORES, by run name."""
    out = {"baseline": produce()}
    apply_turbo(pipe, ratio=0.5)
    try:
        out["turbo"] = produce()
        for name, damage in WRONG_RESTORES.items():
            with _wrong_restore(damage):
                out[name] = produce()
    finally:
        remove_turbo(pipe)
    return out


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def runs(pipe):
    scenes = eval_scenes(SCENES)
    return scenes, _each_run(pipe, lambda: generate(pipe, scenes, steps=STEPS))


@pytest.fixture(scope="module")
def noise_predictions(pipe):
    """The UNet's noise prediction for each rendered scene, noised at each of TIMESTEPS, per run."""
    scenes = eval_scenes(SCENES)
    return _each_run(pipe, lambda: one_step(pipe, scenes, TIMESTEPS))


def test_the_one_step_check_does_not_depend_on_what_ran_before(pipe, noise_predictions):
    """A generation in between sets the scheduler's timesteps; the check must feed the UNet the same inputs."""
    generate(pipe, eval_scenes(2), steps=2)
    again = one_step(pipe, eval_scenes(SCENES), TIMESTEPS)
    assert prediction_deviation(noise_predictions["baseline"], again) < 1e-6


def _image_problems(scenes, baseline, images) -> list[str]:
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
    scenes, images = runs
    # far above chance: about 1/8 for colour, 1/3 for shape, 1/9 for the cell
    assert _accuracy(judge_all(images["baseline"], scenes)[0]) >= 0.45


def test_turbo_keeps_the_shapes_model_within_the_margins(runs):
    scenes, images = runs
    assert _image_problems(scenes, images["baseline"], images["turbo"]) == []


def test_turbo_keeps_the_noise_prediction_close(noise_predictions):
    assert prediction_deviation(noise_predictions["baseline"], noise_predictions["turbo"]) <= MAX_DEVIATION


@pytest.mark.parametrize("wrong", sorted(WRONG_RESTORES))
def test_a_wrong_restore_breaks_the_margins(runs, noise_predictions, wrong):
    scenes, images = runs
    assert _image_problems(scenes, images["baseline"], images[wrong]) != []
    assert prediction_deviation(noise_predictions["baseline"], noise_predictions[wrong]) > MAX_DEVIATION


def test_turbo_changed_something(runs):
    _, images = runs
    assert any((np.asarray(a) != np.asarray(b)).any()
               for a, b in zip(images["turbo"], images["baseline"], strict=True))
