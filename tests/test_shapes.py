"""The shapes world: scenes, their tokenizer, the judge, the feature metric and the trainer."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from turbo_diffusion.shapes.judge import classify_shape, connected_components, find_blobs, judge
from turbo_diffusion.shapes.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    object_masks,
    object_tokens,
    render,
    sample_scene,
    scene_for_seed,
)
from turbo_diffusion.shapes.scoring import judge_scores, scene_records
from turbo_diffusion.shapes.tokenizer import MAX_LENGTH, learn_merges, scene_tokenizer, scene_words

# -- scenes ------------------------------------------------------------------------------------------------------


def test_a_seed_gives_the_same_scene_and_pixels():
    a, b = scene_for_seed(7), scene_for_seed(7)
    assert a.prompt == b.prompt
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert scene_for_seed(8).prompt != a.prompt


def test_objects_sit_in_distinct_cells_with_distinct_colours():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        assert len({o.colour for o in scene.objects}) == len(scene.objects)


def test_every_object_is_drawn_inside_its_cell():
    for seed in range(50):
        scene = scene_for_seed(seed)
        for obj, mask in zip(scene.objects, object_masks(scene), strict=True):
            ys, xs = np.nonzero(mask)
            row, col = obj.cell
            third = scene.size / 3
            assert col * third <= xs.min() and xs.max() < (col + 1) * third
            assert row * third <= ys.min() and ys.max() < (row + 1) * third


def test_the_prompt_names_every_attribute():
    scene = scene_for_seed(3)
    for obj in scene.objects:
        assert f"{obj.size} {obj.colour} {obj.shape}" in scene.prompt
    assert scene.prompt.endswith("background")


def test_sample_scene_rejects_a_bad_object_count():
    with pytest.raises(ValueError, match="max_objects must be 1, 2 or 3, got 4"):
        sample_scene(random.Random(0), max_objects=4)


# -- tokenizer ---------------------------------------------------------------------------------------------------


def test_every_scene_word_is_one_token():
    tokenizer = scene_tokenizer()
    for word in scene_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_every_prompt_fits_the_tokenizer_length():
    tokenizer = scene_tokenizer()
    longest = max(len(tokenizer(scene_for_seed(s).prompt).input_ids) for s in range(2000))
    assert longest <= MAX_LENGTH


def test_other_text_still_tokenizes_by_character():
    tokenizer = scene_tokenizer()
    ids = tokenizer("zebra", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["z", "e", "b", "r", "a</w>"]


def test_learned_merges_rebuild_each_word():
    merges = learn_merges(["red", "reed"])
    assert merges[-1] in {("re", "d</w>"), ("ree", "d</w>"), ("r", "eed</w>"), ("re", "ed</w>")}


# -- judge -------------------------------------------------------------------------------------------------------


def test_the_judge_scores_renders_at_least_99_percent():
    verdicts = [judge(render(scene_for_seed(s)), scene_for_seed(s)) for s in range(1, 401, 2)]
    assert np.mean([v.prompt_correct for v in verdicts]) >= 0.99


def test_the_judge_holds_on_softened_renders():
    """Decoded images are soft: a light blur and pixel noise must not fool the judge."""
    correct = []
    for s in range(1, 201, 2):
        scene = scene_for_seed(s)
        image = np.asarray(render(scene).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
        image = np.clip(image + np.random.default_rng(s).normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        correct.append(judge(image, scene).prompt_correct)
    assert np.mean(correct) >= 0.95


def _first_object_changed(scene, **changes):
    obj = dataclasses.replace(scene.objects[0], **changes)
    return dataclasses.replace(scene, objects=(obj, *scene.objects[1:]))


def test_the_judge_notices_a_wrong_colour_shape_position_and_size():
    scene = scene_for_seed(11)
    image = render(scene)
    obj = scene.objects[0]
    other_colour = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
    other_shape = next(s for s in SHAPES if s != obj.shape)
    free_cell = next(p for p in POSITIONS if p not in {o.position for o in scene.objects})
    other_size = "small" if obj.size == "large" else "large"
    cases = {"colour": dict(colour=other_colour), "shape": dict(shape=other_shape),
             "position": dict(position=free_cell), "size": dict(size=other_size)}
    for attribute, change in cases.items():
        verdict = judge(image, _first_object_changed(scene, **change))
        assert not getattr(verdict.objects[0], attribute), attribute
        assert not verdict.prompt_correct


def test_the_judge_counts_extra_objects():
    scene = scene_for_seed(5)
    fewer = dataclasses.replace(scene, objects=scene.objects[:1])
    verdict = judge(render(scene), fewer)
    assert verdict.num_blobs == len(scene.objects) > 1
    assert not verdict.count


def test_an_empty_image_finds_nothing():
    scene = scene_for_seed(1)
    verdict = judge(np.full((128, 128, 3), 128, dtype=np.uint8), scene)
    assert verdict.num_blobs == 0
    assert not any(o.found for o in verdict.objects)
    assert verdict.scores()["colour"] == 0


def test_the_compare_scorer_judges_an_image_against_its_records_scene():
    record = scene_records(3)[2]
    scene = scene_for_seed(record["scene_seed"])
    assert record["prompt"] == scene.prompt
    assert judge_scores(render(scene), None, record) == dict.fromkeys(
        ("colour", "shape", "position", "size", "count", "prompt_correct"), 1.0)
    blank = render(dataclasses.replace(scene, objects=()))
    scores = judge_scores(blank, None, record)
    assert scores["colour"] == 0.0 and scores["prompt_correct"] == 0.0
    with pytest.raises(ValueError, match="scene_seed"):
        judge_scores(blank, None, {"prompt": scene.prompt})


def test_the_shapes_presets_hold_held_out_scene_records():
    from turbo_diffusion.compare.prompts import load_prompts

    records, preset = load_prompts("shapes")
    assert len(records) == 200 and preset.seeds == (0, 1) and (preset.height, preset.steps) == (128, 20)
    assert all(r["scene_seed"] % 2 == 1 for r in records)  # odd: never a training scene
    assert load_prompts("shapes-quick")[0] == records[:16]


def test_connected_components_labels_separate_regions():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0:2, 0:2] = True
    mask[4:6, 3:6] = True
    mask[2, 5] = True  # a third region: no 4-neighbour of it is set
    labels = connected_components(mask)
    assert labels.max() == 3
    assert len(np.unique(labels[0:2, 0:2])) == 1 and labels[0, 0] != labels[5, 5]


def test_object_tokens_mark_every_cell_an_object_touches_and_no_other():
    scene = scene_for_seed(3)
    pixels = object_masks(scene).any(0)
    tokens = object_tokens(scene, (32, 16))  # rows and columns of different sizes: the reshape must not swap them
    cell_h, cell_w = scene.size // 32, scene.size // 16
    assert tokens.shape == (32, 16)
    for r in range(32):
        for c in range(16):
            assert tokens[r, c] == pixels[r * cell_h:(r + 1) * cell_h, c * cell_w:(c + 1) * cell_w].any()
    assert 0 < tokens.sum() < tokens.size
    with pytest.raises(ValueError, match=r"grid \(30, 30\) does not divide the 128 px image"):
        object_tokens(scene, (30, 30))


def test_classify_shape_on_drawn_masks():
    for shape in SHAPES:
        scene = scene_for_seed(2)
        obj = dataclasses.replace(scene.objects[0], shape=shape, size="large")
        mask = object_masks(dataclasses.replace(scene, objects=(obj,)))[0]
        ys, xs = np.nonzero(mask)
        assert classify_shape(xs, ys) == shape


def test_blobs_report_their_cell():
    scene = scene_for_seed(9)
    blobs = {b.colour: b for b in find_blobs(np.asarray(render(scene)))}
    for obj in scene.objects:
        assert POSITIONS[blobs[obj.colour].cell] == obj.position


# -- feature metric ----------------------------------------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    from turbo_diffusion.shapes.features import kid

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, _ = kid(a, b, subsets=20)
    shifted, _ = kid(a, b + 1.0, subsets=20)
    assert abs(same) < 0.05 < shifted


def test_kid_needs_two_images_per_set():
    from turbo_diffusion.shapes.features import kid

    with pytest.raises(ValueError, match="at least 2 images"):
        kid(np.zeros((1, 4)), np.zeros((5, 4)))


def test_the_feature_network_gives_one_vector_per_image():
    from turbo_diffusion.shapes.features import SceneFeatures, extract

    features = extract(SceneFeatures().eval(), [render(scene_for_seed(s)) for s in range(3)])
    assert features.shape == (3, 128) and np.isfinite(features).all()


def test_the_committed_feature_network_knows_the_scenes():
    """Trained by benchmarks/train_scene_features.py: 99.9% colour, 100% shape, 98.6% whole scenes on 512 held-out
    renders. A feature space that did not know colours and shapes would make KID blind to what the judge checks."""
    from turbo_diffusion.shapes.features import WEIGHTS, cell_accuracy, load_features

    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 2_000_000
    accuracy = cell_accuracy(load_features(), scenes=96)
    assert accuracy["colour"] > 0.98 and accuracy["shape"] > 0.98 and accuracy["whole_scene"] > 0.9


def test_kid_in_the_scene_feature_space_tells_perfect_drawings_from_colourless_ones():
    from PIL import ImageFilter

    from turbo_diffusion.shapes.evaluate import eval_scenes
    from turbo_diffusion.shapes.features import extract, kid, load_features

    model = load_features()
    reference = extract(model, [render(scene_for_seed(2 * i)) for i in range(200)])  # other scenes than these
    renders = [render(s) for s in eval_scenes(120)]
    grey = [im.convert("L").convert("RGB").filter(ImageFilter.GaussianBlur(2)) for im in renders]
    same_world, spread = kid(extract(model, renders), reference, subsets=20, subset_size=60)
    damaged, _ = kid(extract(model, grey), reference, subsets=20, subset_size=60)
    assert abs(same_world) < 3 * spread + 0.01  # measured 0.018 +- 0.024 (300 reference renders)
    assert damaged > 10 * (abs(same_world) + spread)  # measured 1.10


def test_missing_feature_weights_say_how_to_make_them(tmp_path):
    from turbo_diffusion.shapes.features import load_features

    with pytest.raises(FileNotFoundError, match="train_scene_features.py"):
        load_features(tmp_path / "none.safetensors")


# -- training ----------------------------------------------------------------------------------------------------


def test_training_checkpoints_resumes_and_exports_a_loadable_pipeline(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion.shapes.train import TrainSpec, train_shapes

    spec = TrainSpec(out=str(tmp_path), vae_steps=2, unet_steps=2, batch=2, vae_batch=2, pool_size=4,
                     checkpoint_minutes=60)
    train_shapes(spec)
    with pytest.raises(FileExistsError, match="--resume"):
        train_shapes(spec)
    folder = train_shapes(dataclasses.replace(spec, unet_steps=3, resume=True))
    log = (tmp_path / "loss.jsonl").read_text().splitlines()
    assert any('"stage": "unet", "step": 1' in line for line in log)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert list(pipe.unet.config.block_out_channels) == [32, 64, 128, 128]
    image = pipe("a small red circle in the center, on a white background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (128, 128)


def test_training_can_start_from_trained_weights(tmp_path):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from turbo_diffusion.model_names import SHAPES_FOLDER
    from turbo_diffusion.shapes.train import TrainSpec, train_shapes

    spec = TrainSpec(out=str(tmp_path), unet_steps=1, batch=2, pool_size=4, lr=1e-12, init=SHAPES_FOLDER,
                     checkpoint_minutes=60)
    folder = train_shapes(spec)
    log = (tmp_path / "loss.jsonl").read_text()
    assert '"stage": "vae"' not in log and '"stage": "unet"' in log  # the VAE stage was skipped
    trained, start = (AutoencoderKL.from_pretrained(f, subfolder="vae") for f in (folder, SHAPES_FOLDER))
    assert trained.config.scaling_factor == start.config.scaling_factor
    for a, b in zip(trained.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    trained, start = (UNet2DConditionModel.from_pretrained(f, subfolder="unet") for f in (folder, SHAPES_FOLDER))
    for a, b in zip(trained.parameters(), start.parameters(), strict=True):  # one step at lr 1e-12: no change
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        train_shapes(dataclasses.replace(spec, out=str(tmp_path / "other"), init=str(tmp_path)))


def test_resume_refuses_a_changed_data_order(tmp_path):
    from turbo_diffusion.shapes.train import TrainSpec, train_shapes

    spec = TrainSpec(out=str(tmp_path), vae_steps=1, unet_steps=1, batch=2, vae_batch=2, pool_size=4, minutes=1e-6)
    train_shapes(spec)
    with pytest.raises(ValueError, match="batch=3, but the run was started with batch=2"):
        train_shapes(dataclasses.replace(spec, batch=3, resume=True))


@pytest.mark.parametrize(("args", "message"), [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--lr", "-1"], "--lr must be > 0"),
])
def test_train_shapes_rejects_bad_arguments(tmp_path, capsys, args, message):
    from turbo_diffusion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train-shapes", "--out", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_committed_weights_load_as_the_builtin_model_and_in_plain_diffusers():
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion.model_names import SHAPES_FOLDER
    from turbo_diffusion.models import load_pipeline, uses_random_weights

    pipe = load_pipeline("shapes")
    assert type(pipe) is StableDiffusionPipeline and not uses_random_weights(pipe)
    assert pipe.unet.config.sample_size == 32  # 32x32 latent tokens at the finest attention level
    plain = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER)
    assert plain.unet.config == pipe.unet.config
    size = sum(f.stat().st_size for f in Path(SHAPES_FOLDER).rglob("*") if f.is_file())
    assert size <= 25 * 2**20


def test_the_committed_tokenizer_loads_without_its_tokenizer_json_as_transformers_4_does(tmp_path):
    """transformers 4's CLIPTokenizer reads only vocab.json and merges.txt (transformers 5 saves tokenizer.json
    alone): the committed folder carries both, the same vocabulary and merges, so both read the same tokens."""
    import json
    import shutil

    from transformers import CLIPTokenizer

    from turbo_diffusion.model_names import SHAPES_FOLDER

    folder = Path(SHAPES_FOLDER) / "tokenizer"
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    assert json.loads((folder / "vocab.json").read_text()) == model["vocab"]
    merges = (folder / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and [m.split() for m in merges[1:]] == model["merges"]
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    prompt = "a large red circle at the top left, on a striped gray background; and a zebra"
    assert CLIPTokenizer.from_pretrained(tmp_path)(prompt).input_ids == CLIPTokenizer.from_pretrained(folder)(
        prompt).input_ids


def test_the_committed_text_encoder_loads_every_weight_under_the_names_transformers_4_reads():
    """transformers 5 saves CLIPTextModel's weights without their ``text_model.`` prefix and loads both forms;
    transformers 4 loads only the prefixed form and would silently start from random weights."""
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from turbo_diffusion.model_names import SHAPES_FOLDER

    folder = Path(SHAPES_FOLDER) / "text_encoder"
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert all(key.startswith("text_model.") for key in weights.keys())
    _, info = CLIPTextModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_load_pipeline_names_the_folder_when_the_shapes_weights_are_missing(tmp_path, monkeypatch):
    from turbo_diffusion import models

    monkeypatch.setattr(models, "SHAPES_FOLDER", str(tmp_path))
    with pytest.raises(ValueError, match="the shapes model's weights are missing from"):
        models.load_pipeline("shapes")
