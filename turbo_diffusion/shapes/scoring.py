"""The judge as a `compare` scorer: attribute accuracy of every generated image against its scene.

    turbo-diffusion compare --model shapes --prompts shapes --methods baseline turbo@0.5 tome@0.5 \
        --scorer turbo_diffusion.shapes.scoring:judge_scores

Prompt records of the ``shapes`` presets carry the ``scene_seed`` their prompt was drawn from
(`scene_records`), so the scorer rebuilds the exact scene, ground truth included, and judges the image against
it, whichever method made the image. The baseline image (``reference``) is not used: the judge compares with
the scene, not with another generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .judge import ATTRIBUTES, judge
from .scenes import scene_for_seed


def scene_records(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Prompt records ``{"prompt", "scene_seed"}`` of the first ``count`` held-out evaluation scenes (odd seeds,
    never trained on: `turbo_diffusion.shapes.evaluate.eval_scene_seed`)."""
    from .evaluate import eval_scene_seed

    seeds = [eval_scene_seed(i, seed) for i in range(count)]
    return [{"prompt": scene_for_seed(s).prompt, "scene_seed": s} for s in seeds]


def shapes_preset(count: int = 200, seeds: tuple[int, ...] = (0, 1), name: str = "shapes",
                  description: str = "") -> dict[str, Any]:
    """The ``shapes`` prompt set as `compare` takes a prompt source: held-out scenes at the model's own settings
    (`turbo_diffusion.model_names.PROMPT_SOURCES` names it)."""
    return {"name": name, "prompts": tuple(scene_records(count)), "steps": 20, "guidance": 5.0, "height": 128,
            "width": 128, "seeds": seeds, "description": description or (
                f"{count} held-out scenes of the shapes model (records carry scene_seed for the judge scorer), "
                f"128x128, 20 steps, guidance 5, {len(seeds)} seeds per scene ({count * len(seeds)} images)")}


def shapes_quick_preset() -> dict[str, Any]:
    """The first 16 scenes of `shapes_preset`, one seed: a quick look."""
    return shapes_preset(16, (0,), "shapes-quick", "the first 16 scenes of the shapes preset, 1 seed: a quick look")


def judge_scores(image: Any, reference: Any, record: Mapping[str, Any]) -> dict[str, float]:
    """Per image: the share of its objects with the right colour, shape, position and size, whether the number
    of objects is right (0 or 1) and whether the whole prompt is right (0 or 1). Raises ``ValueError`` when the
    record has no ``scene_seed`` (a prompt set that is not a shapes preset)."""
    if "scene_seed" not in record:
        raise ValueError("judge_scores needs prompt records with a 'scene_seed' (use --prompts shapes or "
                         "shapes-quick, or records from turbo_diffusion.shapes.scoring.scene_records)")
    scene = scene_for_seed(int(record["scene_seed"]), size=image.size[0])
    verdict = judge(image, scene)
    scores = {name: sum(getattr(o, name) for o in verdict.objects) / len(verdict.objects) for name in ATTRIBUTES}
    scores["count"] = float(verdict.count)
    scores["prompt_correct"] = float(verdict.prompt_correct)
    return scores
