"""`turbo-diffusion compare`: metrics on hand-checked cases, method parsing, presets, and end-to-end runs on the
tiny random-weight pipeline (2 steps, 64 x 64 px)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from turbo_diffusion.cli import main
from turbo_diffusion.compare import CompareError, MethodError, compare, parse_method, parse_methods, psnr, runner, ssim
from turbo_diffusion.compare import prompts as prompts_module
from turbo_diffusion.compare import report as compare_report
from turbo_diffusion.compare.prompts import Preset, load_prompts, presets
from turbo_diffusion.errors import SavedElsewhere
from turbo_diffusion.harness.fidelity import gaussian_window
from turbo_diffusion.models import RANDOM_WEIGHTS_NOTE, load_pipeline

SIZE = 64
FAST = dict(steps=2, height=SIZE, width=SIZE, progress=False)
PROMPTS = ["a photo of a tench", "a red apple on a table"]
METHODS = "baseline,turbo@0,turbo@0.5"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline mode: the CLIP loader gives up at once instead of retrying a download for most of a minute."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny")


class MeanStd(torch.nn.Module):
    """A toy FID feature extractor: per-channel mean and standard deviation of a uint8 image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.double() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def full(pipe, tmp_path_factory):
    """2 prompts x 2 seeds x (baseline, turbo@0, turbo@0.5), with FID on the toy extractor."""
    out = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = compare("tiny", prompts=PROMPTS, seeds=[0, 1], methods=METHODS, out_dir=out, pipeline=pipe,
                         fid_feature_extractor=MeanStd(), **FAST)
    return result


def small(pipe, out, **kwargs):
    """1 prompt x 1 seed x (baseline, turbo@0.5)."""
    settings = dict(prompts=PROMPTS[:1], seeds=[0], methods="baseline,turbo@0.5", out_dir=out, pipeline=pipe,
                    repeats=1, **FAST)
    settings.update(kwargs)
    return compare("tiny", **settings)


@pytest.fixture
def count_generations(monkeypatch):
    calls = []
    original = runner._generate_one

    def spy(pipe, spec, prompt, seed, steps):
        calls.append((prompt, seed, steps))
        return original(pipe, spec, prompt, seed, steps)

    monkeypatch.setattr(runner, "_generate_one", spy)
    return calls


# ---- PSNR and SSIM on hand-checked cases ---------------------------------------------------------------------


def test_psnr_of_identical_images_is_infinite():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert psnr(x, x.clone()) == math.inf


def test_psnr_of_a_constant_offset_of_a_tenth_is_20_db():
    x = torch.rand(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8
    # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-9)


def test_psnr_of_uint8_images_one_level_apart_is_20_log10_255():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(Image.fromarray(a + 1), Image.fromarray(a)) == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # No variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = 0.01^2.
    a, b, c1 = 0.5, 0.25, 1e-4
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(torch.full((1, 20, 20), a), torch.full((1, 20, 20), b)) == pytest.approx(expected, abs=1e-12)


def test_ssim_on_one_11x11_window_matches_the_formula_written_out():
    rng = np.random.default_rng(0)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(gaussian_window(), torch.from_numpy(w))


def test_ssim_of_an_inverted_image_is_negative():
    x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(2))
    assert ssim(1 - x, x) < -0.5


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 10, 10), torch.zeros(1, 10, 10))


# ---- methods and presets ---------------------------------------------------------------------------------------


def test_turbo_method_passes_any_field_to_turbo_config():
    config = parse_method("turbo@0.5:alpha=2,semantic=none,match_radius=None").turbo_config
    assert (config.ratio, config.alpha, config.semantic, config.match_radius) == (0.5, 2, "none", None)


def test_method_list_keeps_field_settings_with_their_method_and_adds_the_baseline():
    labels = [m.label for m in parse_methods("turbo@0.3,turbo@0.5:alpha=2,semantic=none,tome@0.5")]
    assert labels == ["baseline", "turbo@0.3", "turbo@0.5:alpha=2,semantic=none", "tome@0.5"]


@pytest.mark.parametrize("spec, message", [
    ("foo", "unknown method"),
    ("turbo@1.5", "ratio"),
    ("turbo@x", "must be a number"),
    ("turbo@0.5:nope=1", "unknown TurboConfig field"),
    ("turbo@0.5:alpha=-1", "alpha"),
    ("tome@1.5", "ratio"),
    ("baseline,turbo@0.5,turbo@0.5", "given twice"),
])
def test_bad_methods_are_refused_in_one_line(spec, message):
    with pytest.raises(MethodError, match=message) as err:
        parse_methods(spec)
    assert "\n" not in str(err.value)


def test_paper_preset_is_the_1000_imagenet_classes_in_index_order_at_512_px_50_steps_guidance_7_5():
    paper = presets()["paper"]
    assert len(paper.prompts) == 1000
    assert paper.prompts[0] == "a photo of a tench"
    assert paper.prompts[1] == "a photo of a goldfish"
    assert paper.prompts[999] == "a photo of a toilet tissue"
    assert (paper.steps, paper.guidance, paper.height, paper.width) == (50, 7.5, 512, 512)


def test_imagenet_class_file_has_exactly_1000_non_empty_lines():
    path = Path(__file__).parents[1] / "turbo_diffusion" / "data" / "imagenet_classes.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 1000 and all(line.strip() for line in lines[:-1])


# ---- end to end ------------------------------------------------------------------------------------------------


def test_every_output_file_exists_and_parses(full):
    out = full.out_dir
    data = json.loads((out / "metrics.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["baseline", "turbo@0", "turbo@0.5"]
    assert len(data["images"]) == 2 * 2 * 3
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["baseline", "turbo@0", "turbo@0.5"]
    assert all(float(r["seconds_per_image"]) > 0 for r in rows)
    for record in data["images"]:
        with Image.open(out / record["path"]) as image:
            assert image.size == (SIZE, SIZE)
    for name in ("speed_vs_quality.png", "grids/0000.png", "grids/0001.png"):
        with Image.open(out / name) as image:
            image.verify()
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "s / image (median)" in text and "PSNR (dB)" in text and "turbo@0.5" in text
        assert "grids/0000.png" in text and "grids/0001.png" in text and "speed_vs_quality.png" in text


def test_grid_is_one_labelled_cell_per_method_and_seed(full):
    out = full.out_dir
    with Image.open(out / "grids/0001.png") as grid:
        meta = json.loads(grid.text[runner._PNG_KEY])
        grid = grid.convert("RGB")
    assert meta["columns"] == ["baseline", "turbo@0", "turbo@0.5"] and meta["rows"] == [0, 1]
    width, height = grid.size
    left, top = width - 3 * SIZE, height - 2 * SIZE  # cells fill the bottom-right corner; labels sit left and above
    assert left > 0 and top > 0
    paths = {(r.method, r.seed): r.path for r in full.images if r.prompt_index == 1}
    for row, seed in enumerate([0, 1]):
        for column, method in enumerate(meta["columns"]):
            box = (left + column * SIZE, top + row * SIZE, left + (column + 1) * SIZE, top + (row + 1) * SIZE)
            with Image.open(out / paths[(method, seed)]) as image:
                assert np.array_equal(np.asarray(grid.crop(box)), np.asarray(image.convert("RGB")))
    # the label areas are not blank: text was drawn there
    assert np.asarray(grid.crop((0, top, left, height))).min() < 255
    assert np.asarray(grid.crop((left, 0, width, top))).min() < 255


def test_baseline_against_itself_is_identical_and_turbo_at_ratio_0_equals_the_baseline(full):
    for name in ("baseline", "turbo@0"):
        summary = full.method(name)
        assert summary.psnr == math.inf and summary.identical == 4 and summary.ssim == pytest.approx(1.0, abs=1e-12)
    base = {(r.prompt_index, r.seed): r.path for r in full.images if r.method == "baseline"}
    for record in (r for r in full.images if r.method == "turbo@0"):
        a = np.asarray(Image.open(full.out_dir / record.path))
        b = np.asarray(Image.open(full.out_dir / base[(record.prompt_index, record.seed)]))
        assert np.array_equal(a, b)
    data = json.loads((full.out_dir / "metrics.json").read_text())
    assert data["methods"][0]["psnr"] == "inf"


def test_turbo_at_ratio_half_changes_the_image(full):
    summary = full.method("turbo@0.5")
    assert math.isfinite(summary.psnr) and summary.identical == 0 and summary.ssim < 1


def test_fid_states_its_image_counts_and_is_zero_for_an_identical_set(full):
    assert full.fid["images_per_method"] == 4 and full.fid["reference_images"] == 4
    assert "not comparable" in full.fid["description"] and "4 reference images" in full.fid["description"]
    assert full.method("turbo@0").fid == pytest.approx(0.0, abs=1e-6)
    assert full.method("turbo@0.5").fid > 0
    assert full.method("baseline").fid is None and "baseline" in full.fid["not_applicable"]


def test_random_weight_outputs_say_so(full):
    assert full.random_weights
    for name in ("report.md", "report.html"):
        assert RANDOM_WEIGHTS_NOTE in (full.out_dir / name).read_text()
        assert "not image quality" in (full.out_dir / name).read_text()
    with Image.open(full.out_dir / "grids/0000.png") as grid:
        assert grid.text["Comment"] == RANDOM_WEIGHTS_NOTE
    assert json.loads((full.out_dir / "metrics.json").read_text())["random_weights"] is True


def test_metrics_without_weights_are_skipped_with_a_reason(pipe, tmp_path):
    result = small(pipe, tmp_path)  # all optional metrics requested, offline, no FID extractor
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("lpips", "clip_score", "fid"):
        values = [r[key] for r in data["images"]] if key != "fid" else [m["fid"] for m in data["methods"]]
        if key in data["skipped"]:
            assert len(data["skipped"][key]) > 20 and all(v is None for v in values)
        else:
            assert key == "lpips" and all(isinstance(v, float) for v in values)
    assert "clip_score" in data["skipped"] and "huggingface.co" in data["skipped"]["clip_score"]
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision" in data["skipped"]["lpips"]
    if importlib.util.find_spec("torch_fidelity") is None:
        assert "torch-fidelity" in data["skipped"]["fid"]
    report = (tmp_path / "report.md").read_text()
    assert "CLIP score: skipped." in report and "| skipped |" in report
    assert result.method("turbo@0.5").clip_score is None


def test_clip_score_runs_from_a_local_model_folder(pipe, tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from turbo_diffusion.models import byte_level_tokenizer

    torch.manual_seed(0)
    text = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              byte_level_tokenizer())
    clip.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")

    result = small(pipe, tmp_path / "out", metrics=["clip_score"], clip_model=str(tmp_path / "clip"))
    assert "clip_score" not in result.skipped
    for record in result.images:
        with Image.open(result.out_dir / record.path) as image:
            inputs = processor(text=[record.prompt], images=[image.convert("RGB")], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = clip(**inputs)
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert record.clip_score == pytest.approx(100 * max(cosine, 0.0), abs=1e-4)


def test_rerun_reuses_existing_images(pipe, tmp_path, count_generations):
    small(pipe, tmp_path, metrics=())
    assert len(count_generations) == 2 + 2  # one warm-up per method, then the two images
    files = sorted((tmp_path / "images").rglob("*.png"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    count_generations.clear()
    result = small(pipe, tmp_path, metrics=())
    assert count_generations == []
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert all(r.reused for r in result.images) and result.method("turbo@0.5").seconds_per_image > 0


def test_force_regenerates_every_image(pipe, tmp_path, count_generations):
    small(pipe, tmp_path, metrics=())
    files = sorted((tmp_path / "images").rglob("*.png"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    count_generations.clear()
    result = small(pipe, tmp_path, metrics=(), force=True)
    assert len(count_generations) == 4
    assert all(f.stat().st_mtime_ns != m for f, m in zip(files, mtimes, strict=True))
    assert not any(r.reused for r in result.images)


def test_another_configuration_in_the_same_folder_is_refused_without_force(pipe, tmp_path, count_generations):
    small(pipe, tmp_path, metrics=())
    count_generations.clear()
    with pytest.raises(CompareError, match=r"differs in: steps.*--force"):
        small(pipe, tmp_path, metrics=(), steps=3)
    assert count_generations == []
    result = small(pipe, tmp_path, metrics=(), steps=3, force=True)
    assert result.configuration["steps"] == 3
    assert json.loads((tmp_path / "compare.json").read_text())["configuration"]["steps"] == 3


def test_a_rerun_with_more_prompts_seeds_and_methods_generates_only_what_is_new(pipe, tmp_path, count_generations):
    small(pipe, tmp_path, metrics=())
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    count_generations.clear()
    result = small(pipe, tmp_path, metrics=(), prompts=PROMPTS, seeds=[0, 1], methods=METHODS)
    assert len(count_generations) == 3 + (2 * 2 * 3 - 2)  # a warm-up per method, then 12 images less the 2 kept
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert sum(r.reused for r in result.images) == 2 and len(result.images) == 12
    count_generations.clear()
    subset = small(pipe, tmp_path, metrics=(), prompts=PROMPTS[:1], seeds=[1], methods="baseline,turbo@0")
    assert count_generations == [] and all(r.reused for r in subset.images)


def test_an_image_of_another_seed_or_method_is_not_taken_for_this_one(pipe, tmp_path, count_generations):
    small(pipe, tmp_path, metrics=())
    baseline = next((tmp_path / "images").rglob("baseline/*.png"))
    turbo = next((tmp_path / "images").rglob("turbo-0.5/*.png"))
    baseline.write_bytes(turbo.read_bytes())  # the turbo image under the baseline's name
    count_generations.clear()
    result = small(pipe, tmp_path, metrics=())
    assert [r.method for r in result.images if not r.reused] == ["baseline"]
    assert runner.read_png_meta(baseline)["method"] == "baseline"


def test_a_setting_added_later_at_its_old_behaviour_keeps_the_image_keys():
    from turbo_diffusion.compare.spec import image_key, make_spec

    configuration = make_spec("tiny", PROMPTS, [0], "baseline,turbo@0.5").configuration()
    settings = configuration["methods"][1]["settings"]
    assert settings["proportional_attn"] is False
    key = image_key(configuration, 0, 0, "turbo@0.5")
    del settings["proportional_attn"]  # as recorded before the setting existed
    assert image_key(configuration, 0, 0, "turbo@0.5") == key
    settings["proportional_attn"] = True
    assert image_key(configuration, 0, 0, "turbo@0.5") != key


def test_images_from_before_per_image_keys_are_reused_through_the_recorded_configuration(pipe, tmp_path,
                                                                                        count_generations):
    small(pipe, tmp_path, metrics=())
    for path in (tmp_path / "images").rglob("*.png"):  # as an older version wrote them: no key
        meta = runner.read_png_meta(path)
        del meta["key"]
        with Image.open(path) as image:
            runner.save_png(image.copy(), path, meta)
    count_generations.clear()
    small(pipe, tmp_path, metrics=(), seeds=[0, 1])  # a new configuration: the old one is kept as "earlier"
    assert len(count_generations) == 2 + 2  # only the new seed's images
    count_generations.clear()
    result = small(pipe, tmp_path, metrics=())
    assert count_generations == [] and all(r.reused for r in result.images)
    (tmp_path / "compare.json").unlink()  # without the record the old images cannot be told apart: made again
    small(pipe, tmp_path, metrics=())
    assert len(count_generations) == 2 + 2


SPLIT_SCRIPT = """
import torch
from turbo_diffusion.compare.api import process_share, process_state
state = process_state(torch.device("cpu"))
print(f"rank {state.process_index} of {state.num_processes}: {process_share(state, 6)}", flush=True)
"""


def test_two_cpu_processes_split_the_prompts_between_them(tmp_path):
    """Under torchrun / accelerate launch on a machine without an accelerator, accelerate needs ``cpu=True`` to see
    the other processes; without it each process generated every image."""
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # found anywhere in the output: the two processes share one pipe, so one's line can land inside the other's
    lines = sorted(re.findall(r"rank \d+ of \d+: \[[\d, ]*\]", done.stdout))
    assert lines == ["rank 0 of 2: [0, 2, 4]", "rank 1 of 2: [1, 3, 5]"]  # in turn: a stopped run has a prefix


# ---- command line ----------------------------------------------------------------------------------------------


CLI_FAST = ["compare", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "64", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--methods", "baseline,foo"], "unknown method"),
    (["--methods", "turbo@1.5"], "ratio must be"),
    (["--prompts", "no-such-preset"], "neither a preset"),
    (["--steps", "0"], "steps must be"),
    (["--seeds", "x"], "not an integer"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(CLI_FAST + ["--out", str(tmp_path)] + args)
    assert err.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert "\n" not in stderr and message in stderr and stderr.startswith("turbo-diffusion compare: error:")


def test_cli_writes_the_report_and_refuses_another_configuration(tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = CLI_FAST + ["--prompts", "smoke", "--max-prompts", "1", "--seeds", "0", "--methods", "baseline,turbo@0.5",
                       "--skip-metrics", "lpips,clip_score,fid", "--out", out]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "turbo@0.5" in printed and "report.html" in printed and "not image quality" in printed
    assert (Path(out) / "report.html").exists()
    with pytest.raises(SystemExit) as err:
        main(args[:-2] + ["--guidance", "2", "--out", out])
    assert err.value.code == 2 and "--force" in capsys.readouterr().err


# ---- every method, scorers, prompt records, memory, resumability ---------------------------------------------


def test_compare_runs_todo_and_the_bound(pipe, tmp_path):
    result = small(pipe, tmp_path, methods="baseline,todo@0.5,bound@0.5", metrics=())
    assert [m.method for m in result.methods] == ["baseline", "todo@0.5", "bound@0.5"]
    assert math.isfinite(result.method("todo@0.5").psnr) and result.method("todo@0.5").identical == 0
    assert any("bound@0.5" in note and "meaningless" in note for note in result.notes)


def test_compare_takes_the_old_spellings_of_methods(pipe, tmp_path):
    result = small(pipe, tmp_path, methods="default,tomesd@0.5", metrics=())
    assert [(m.method, m.kind) for m in result.methods] == [("default", "baseline"), ("tomesd@0.5", "tome")]


def test_a_custom_scorer_sees_the_prompt_record_and_is_averaged_per_method(pipe, tmp_path):
    seen = []

    def scene(image, reference, record):
        seen.append((record["prompt"], record["scene_seed"], image is reference))
        return {"scene_match": float(record["scene_seed"])}

    prompts = [{"prompt": "a red circle", "scene_seed": 3}, {"prompt": "a blue square", "scene_seed": 5}]
    result = small(pipe, tmp_path, prompts=prompts, metrics=(), scorers=[scene])
    assert sorted(seen) == [("a blue square", 5, False), ("a blue square", 5, True),
                            ("a red circle", 3, False), ("a red circle", 3, True)]
    assert result.method("turbo@0.5").scores["scene_match"] == 4.0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["methods"][1]["scene_match"] == 4.0 and data["images"][0]["scene_match"] == 3.0
    assert data["configuration"]["prompts"] == prompts
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [row["scene_match"] for row in csv.DictReader(f)] == ["4.0000", "4.0000"]
    assert "scene_match" in (tmp_path / "report.md").read_text()


def test_a_scorer_returning_nan_is_an_error(pipe, tmp_path):
    def broken(image, reference, record):
        return {"x": math.nan}

    with pytest.raises(ValueError, match="scorer broken returned NaN for 'x'"):
        small(pipe, tmp_path, metrics=(), scorers=[broken])


def test_jsonl_prompt_records_keep_their_metadata_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "set.jsonl"
    good.write_text('{"prompt": "a red circle", "scene_seed": 7}\n\n{"prompt": "a square"}\n')
    assert load_prompts(str(good))[0] == [{"prompt": "a red circle", "scene_seed": 7}, {"prompt": "a square"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"scene_seed": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl', line 2: a prompt record needs a non-empty \"prompt\""):
        load_prompts(str(bad))


def test_peak_memory_is_measured_on_the_cpu_too(pipe, tmp_path):
    result = small(pipe, tmp_path, metrics=())
    assert all(r.peak_memory_bytes > 0 for r in result.images)
    assert all(m.peak_memory_bytes > 0 for m in result.methods)


def test_a_record_left_without_images_does_not_block_the_next_run(pipe, tmp_path, count_generations):
    (tmp_path / runner.CONFIG_FILE).write_text(json.dumps({"fingerprint": "another run", "configuration": {}}))
    small(pipe, tmp_path, metrics=())
    assert len(count_generations) == 4
    assert json.loads((tmp_path / runner.CONFIG_FILE).read_text())["fingerprint"] != "another run"


def test_report_html_shows_code_and_the_size_in_pixels(full):
    text = (full.out_dir / "report.html").read_text()
    assert "<code>turbo-diffusion bench</code>" in text and "`" not in text
    assert f"{SIZE}x{SIZE} px" in text and "default size" not in text


def test_the_documented_image_path_pattern_matches_what_compare_writes(full):
    readme = (Path(__file__).parents[1] / "docs" / "COMPARE.md").read_text()
    pattern = re.search(r"`(images/[^`]+\.png)`", readme).group(1)
    fields = {"method slug": r"[A-Za-z0-9.=_-]+", "index": r"\d{4,}", "prompt words": r"[a-z0-9-]+", "seed": r"\d+"}
    pieces = re.split(r"<([^>]+)>", pattern)  # literal, field, literal, field, ...
    regex = "".join(fields[p] if i % 2 else re.escape(p) for i, p in enumerate(pieces))
    assert all(re.fullmatch(regex, r.path) for r in full.images), (pattern, full.images[0].path)


def test_compare_says_what_it_does_with_the_time_it_expects(pipe, tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(runner, "busy_warning", lambda: None)  # a quiet machine
    small(pipe, tmp_path, metrics=(), log=lines.append)
    assert lines[0] == "warming up: one 2-step generation for each of 2 methods"
    assert re.fullmatch(r"generating 2 images of 2 steps: expected about \d+ (s|min) \(from the warm-up\)", lines[1])
    assert lines[2] == "scoring 2 images"
    monkeypatch.setattr(runner, "busy_warning", lambda: "the machine is busy (load average 3.0 on 2 CPUs): ...")
    lines.clear()
    small(pipe, tmp_path / "busy", metrics=(), log=lines.append)
    assert lines[2].startswith("the machine is busy") and lines[3] == "scoring 2 images"  # said before timing


def test_a_report_that_cannot_be_written_is_saved_elsewhere_and_says_where(pipe, tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(compare_report, "write_grids", refuse)
    (tmp_path / "safe").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "safe"))
    with pytest.raises(SavedElsewhere, match=r"could not write the report in .* \(Permission denied\); saved "
                                             r"metrics.json to .*safe/turbo-diffusion/.*-metrics.json") as err:
        small(pipe, tmp_path / "out", metrics=())
    saved = Path(str(err.value).rsplit(" to ", 1)[1])
    assert json.loads(saved.read_text())["methods"][1]["method"] == "turbo@0.5"


def prompt_length(image, reference, record):
    """A scorer for the command-line test: the length of the prompt."""
    return {"prompt_length": float(len(record["prompt"]))}


def test_the_command_line_takes_custom_scorers_by_module_and_name(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(CLI_FAST + ["--max-prompts", "1", "--seeds", "0", "--methods", "turbo@0.5", "--skip-metrics",
                            "lpips,clip_score,fid", "--scorer", "tests.test_compare:prompt_length", "--out", out]) == 0
    assert "prompt_length" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(CLI_FAST + ["--scorer", "tests.test_compare:nosuch", "--out", out])
    assert err.value.code == 2 and "--scorer tests.test_compare:nosuch: cannot import it" in capsys.readouterr().err


def test_a_preset_may_carry_prompt_records(monkeypatch):
    scenes = Preset("scenes", "records with metadata", ({"prompt": "a red circle", "scene_seed": 1}, "a square"))
    monkeypatch.setattr(prompts_module, "presets", lambda: {"scenes": scenes})
    assert load_prompts("scenes") == ([{"prompt": "a red circle", "scene_seed": 1}, {"prompt": "a square"}], scenes)


# ---- speed: runs taking turns, spread, noisy ---------------------------------------------------------------------


def test_a_quick_run_is_timed_three_times_per_method_and_the_extra_images_are_not_kept(pipe, tmp_path,
                                                                                        count_generations):
    lines = []
    result = small(pipe, tmp_path, metrics=(), repeats=None, log=lines.append)  # the tiny model: far under 10 s
    # one 2-step warm-up per method, the two images, then two more rounds of the first prompt, methods taking turns
    assert [steps for *_, steps in count_generations] == [2, 2] + [FAST["steps"]] * (2 + 2 * 2)
    assert re.fullmatch(r"generating 2 images of 2 steps, then 2 more timed runs of each method for the speed-up "
                        r"\(images not kept\): expected about \d+ s \(from the warm-up\)", lines[1])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.png")) == sorted(
        r.path for r in result.images)
    for m in result.methods:
        assert m.timed_runs == 3 and m.spread >= 1 and m.noisy == (m.spread > 1.5)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["timed_runs"] for m in data["methods"]] == [3, 3] and "spread" in data["methods"][0]
    assert any("timed on 2 more generations of the first prompt and seed" in n for n in result.notes)
    assert "spread (runs)" in (tmp_path / "report.md").read_text()


def test_the_speed_up_is_over_every_timed_run_and_a_wide_spread_is_flagged_noisy():
    from turbo_diffusion.compare.api import _notes
    from turbo_diffusion.compare.results import ImageRecord, summarize
    from turbo_diffusion.compare.spec import make_spec

    spec = make_spec("tiny", ["a"], [0], "baseline,turbo@0.5", 2, 7.5, 64, 64, "float32", "cpu")
    records = [ImageRecord("baseline", 0, "a", 0, "b.png", 2.0), ImageRecord("turbo@0.5", 0, "a", 0, "t.png", 1.0)]
    extra = {"baseline": [2.2, 2.1], "turbo@0.5": [1.1, 3.0]}
    base, turbo = summarize(records, spec.methods, extra)
    assert base.seconds_per_image == 2.1 and turbo.seconds_per_image == 1.1 and turbo.speedup == 2.1 / 1.1
    assert base.timed_runs == turbo.timed_runs == 3
    assert not base.noisy and turbo.noisy and turbo.spread == 3.0
    notes = _notes(spec, records, extra, [base, turbo])
    assert any(n.startswith("Warning: noisy: turbo@0.5: slowest over fastest call above 1.5x") for n in notes)
    assert not any("noisy" in n for n in _notes(spec, records, {}, summarize(records, spec.methods)))


def test_repeats_below_one_are_refused(pipe, tmp_path):
    with pytest.raises(CompareError, match="repeats must be a whole number >= 1"):
        small(pipe, tmp_path, repeats=0)


def test_settings_come_from_the_arguments_then_the_preset_then_the_models_own_defaults():
    from turbo_diffusion.compare.spec import make_spec

    tiny = make_spec("tiny", "smoke")
    assert (tiny.steps, tiny.guidance, tiny.height, tiny.width) == (10, 7.5, 64, 64)
    sd = make_spec("sd15-arch", "smoke")
    assert (sd.steps, sd.guidance, sd.height, sd.width) == (20, 7.5, None, None)  # its native size
    quick = make_spec("tiny", "shapes-quick")
    assert (quick.steps, quick.guidance, quick.height) == (20, 5.0, 128)
    asked = make_spec("tiny", "shapes-quick", steps=3, guidance=2.0, height=96)
    assert (asked.steps, asked.guidance, asked.height, asked.width) == (3, 2.0, 96, 128)


def test_a_model_plugs_its_prompt_set_in_as_a_source_and_compare_knows_no_model():
    """``--prompts shapes`` is the shapes model's prompt source, named in model_names; compare imports no model."""
    source = "turbo_diffusion.shapes.scoring:shapes_quick_preset"
    assert load_prompts(source) == load_prompts("shapes-quick")
    assert load_prompts(source)[1].seeds == (0,)
    text = (Path(prompts_module.__file__)).read_text()
    assert "shapes" not in re.sub(r'""".*?"""', "", text, flags=re.S)  # outside docstrings
    with pytest.raises(ValueError, match="cannot import it"):
        load_prompts("tests.nosuch:preset")
