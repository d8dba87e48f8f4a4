"""The demo's logic without a browser: settings and their errors, the pictures of what Turbo did, the session that
generates, the page's handlers and the ``demo`` subcommand. The browser test is `test_demo_browser.py`."""

import functools
import math
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from turbo_diffusion import apply_turbo, inspect_plans, remove_turbo
from turbo_diffusion.demo import settings as demo_settings
from turbo_diffusion.demo.settings import Settings, check, defaults_for, from_page
from turbo_diffusion.demo.visuals import (
    MERGED_TINT,
    NAN_GRAY,
    colormap,
    finest_plans,
    heat_map,
    merge_overlay,
    pick,
)

from .conftest import unet_args

gr = pytest.importorskip("gradio", reason="the demo needs gradio (pip install 'turbo-diffusion[demo]')")

from turbo_diffusion.demo import app as demo_app  # noqa: E402
from turbo_diffusion.demo.session import DemoSession  # noqa: E402

ROOT = Path(__file__).parents[1]
FAST = dict(steps=2, size=64)  # the tiny model at its native size, two steps: a fraction of a second


@pytest.fixture(scope="module")
def session() -> DemoSession:
    return DemoSession("tiny", device="cpu")


# ---- settings -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "message"), [
    (dict(prompt="  "), "Type a prompt first"),
    (dict(size=100), "size must be a multiple of 8"),
    (dict(size=32), "size must be a whole number from 64 to 1024"),
    (dict(steps=0), "steps must be a whole number from 1 to 150"),
    (dict(seed=-1), "seed must be a whole number"),
    (dict(guidance=-1.0), "guidance must be between 0 and 50"),
    (dict(ratio=0.9), "ratio must be at most 0.75"),
    (dict(ratio=-0.1), "ratio"),
    (dict(alpha=-1.0), "alpha"),
    (dict(semantic="words"), "semantic must be one of attention, text, none"),
    (dict(max_downsample=3), "max_downsample"),
])
def test_bad_settings_are_refused_with_a_sentence_naming_the_setting(changes, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(prompt="a cat").replace(**changes))


def test_settings_from_the_page_take_whole_floats_as_ints_and_auto_downsample_as_none():
    s = from_page("a cat", 3.0, 20.0, 128.0, 5.0, 0.3, 1.0, "attention", "auto")
    assert (s.seed, s.steps, s.size, s.max_downsample) == (3, 20, 128, None)
    assert isinstance(s.steps, int) and from_page("a", 0, 1, 64, 1, 0.5, 1, "none", "2").max_downsample == 2
    with pytest.raises(ValueError, match="steps must be a whole number"):
        check(from_page("a cat", 0, 2.5, 64, 1, 0.5, 1, "none", "auto"))
    with pytest.raises(ValueError, match="max_downsample must be auto or one of 1, 2, 4, 8"):
        from_page("a cat", 0, 2, 64, 1, 0.5, 1, "none", "big")


def test_the_default_model_is_shapes_once_its_weights_exist_else_tiny(tmp_path, monkeypatch):
    from turbo_diffusion import model_names

    monkeypatch.setattr(model_names, "SHAPES_FOLDER", str(tmp_path))
    assert demo_settings.default_model() == "tiny"
    (tmp_path / "model_index.json").write_text("{}")
    assert demo_settings.default_model() == "shapes"


def test_the_shapes_model_gets_a_scene_prompt_at_128_px_20_steps_guidance_5():
    from turbo_diffusion.shapes.scenes import COLOURS, SHAPES

    d = defaults_for("shapes")
    assert (d.size, d.steps, d.guidance) == (128, 20, 5.0)
    assert any(c in d.prompt for c in COLOURS) and any(s in d.prompt for s in SHAPES)
    assert defaults_for("tiny", 64).size == 64 and defaults_for("path/to/sd15", 512).size == 512


# ---- pictures -----------------------------------------------------------------------------------------------------
def test_the_overlay_tints_exactly_the_merged_tokens():
    image = Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8))
    merged = np.zeros((4, 4), dtype=bool)
    merged[1, 2] = merged[3, 0] = True
    overlay = np.asarray(merge_overlay(image, merged))
    assert overlay.shape == (256, 256, 3)  # enlarged x8, token edges sharp
    tinted = np.round(0.4 * 100 + 0.6 * np.array(MERGED_TINT))
    token = 64  # one token of the 4x4 grid covers 64 x 64 displayed pixels
    assert (overlay[token:2 * token, 2 * token:3 * token] == tinted).all()
    assert (overlay[3 * token:, :token] == tinted).all()
    untouched = np.ones((4, 4), dtype=bool)
    untouched[1, 2] = untouched[3, 0] = False
    assert (overlay.reshape(4, token, 4, token, 3).transpose(0, 2, 1, 3, 4)[untouched] == 100).all()


def test_heat_maps_run_from_dark_blue_to_yellow_with_nan_in_gray():
    values = np.array([[0.0, 1.0], [np.nan, 0.5]], dtype=np.float32)
    rgb = np.asarray(heat_map(values))[::128, ::128]  # one pixel per cell
    assert tuple(rgb[0, 0]) == (68, 1, 84) and tuple(rgb[0, 1]) == (253, 231, 37)
    assert tuple(rgb[1, 0]) == NAN_GRAY and tuple(rgb[1, 1]) == tuple(np.round(colormap(np.array(0.5))))
    all_nan = np.asarray(heat_map(np.full((2, 2), np.nan)))
    assert (all_nan == NAN_GRAY).all()


def test_finest_plans_keep_the_largest_grid_of_the_conditional_image_and_pick_by_step_and_block(sd15_unet):
    apply_turbo(sd15_unet, ratio=0.5, max_downsample=2)
    args, kwargs = unet_args(sd15_unet)
    with inspect_plans(sd15_unet) as records, torch.no_grad():
        for t in (900, 500):
            sd15_unet(args[0], torch.tensor(t), **kwargs)
    plans = finest_plans(records)
    assert {r.grid for r in records} == {(32, 32), (16, 16)} and {p.grid for p in plans} == {(32, 32)}
    first = next(r for r in records if r.grid == (32, 32))
    assert np.array_equal(plans[0].merged, first.merged[-1].numpy())
    assert pick(plans, 1, plans[-1].block).step == 1 and pick(plans, 1, plans[-1].block).block == plans[-1].block
    assert pick(plans, 99, "no such block").block == plans[0].block and pick([], 0) is None


# ---- the session --------------------------------------------------------------------------------------------------
def test_compare_gives_both_images_times_fidelity_and_the_finest_plans(session):
    calls = []
    settings = session.defaults.replace(prompt="a red cat", ratio=0.5, **FAST)
    result = session.compare(settings, lambda done, total, what: calls.append((done, total, what)))
    assert result.baseline.size == result.turbo.size == (64, 64)
    assert result.baseline_seconds > 0 and result.turbo_seconds > 0 and result.speedup > 0
    assert 0 < result.psnr < math.inf and -1 <= result.ssim < 1  # Turbo changed the image, a little
    assert [p.step for p in result.plans[::3]] == [0, 1] and result.plans[0].grid == (8, 8)
    assert all(p.merged_count == 32 for p in result.plans)  # floor(0.5 * 64)
    # A run of the tiny model takes far under 10 s: 3 runs each, taking turns (baseline first, then Turbo first,
    # then baseline), then the recording run: 7 runs of 2 steps.
    assert result.repeats == 3 and len(result.baseline_timing.seconds) == 3
    assert result.speedup == pytest.approx(result.baseline_timing.median / result.turbo_timing.median)
    assert [c[0] for c in calls] == list(range(1, 15)) and {c[1] for c in calls} == {14}
    assert [c[2] for c in calls[::2]] == ["baseline", "Turbo", "Turbo", "baseline", "baseline", "Turbo",
                                          "recording Turbo's merges"]


def test_a_slow_run_is_timed_once_and_the_page_says_what_one_run_means(session, monkeypatch):
    from turbo_diffusion.harness import measure

    monkeypatch.setattr(measure, "QUICK_RUN", 0.0)  # every run counts as slow
    result = session.compare(session.defaults.replace(prompt="a red cat", **FAST))
    assert result.repeats == 1
    assert "one run each: noise cannot be seen" in demo_app.summarize(result)


def test_the_repeats_asked_for_are_the_repeats_run(session, monkeypatch):
    monkeypatch.setattr(session, "repeats", 2)
    result = session.compare(session.defaults.replace(prompt="a red cat", **FAST))
    assert len(result.turbo_timing.seconds) == len(result.baseline_timing.seconds) == 2
    assert "medians of 2 runs each, taking turns; spread" in demo_app.summarize(result)
    with pytest.raises(ValueError, match="repeats must be a whole number >= 1"):
        DemoSession("tiny", device="cpu", repeats=0)


def test_noisy_runs_and_a_busy_machine_are_said_on_the_page(session, monkeypatch):
    from turbo_diffusion.demo import session as demo_session
    from turbo_diffusion.harness.measure import Timing

    busy = "the machine is busy (load average 3.0 on 2 CPUs): timings will vary"
    monkeypatch.setattr(demo_session, "busy_warning", lambda: busy)
    result = session.compare(session.defaults.replace(prompt="a red cat", **FAST))
    result.turbo_timing = Timing("Turbo", [1.0, 2.0, 1.1])  # spread 2x
    result.baseline_timing = Timing("baseline", [1.2, 1.25, 1.3])  # quiet, whatever the machine did
    text = demo_app.summarize(result)
    assert f"Note: {busy}." in text
    assert "**Warning:** noisy: Turbo: slowest over fastest call above 1.5x" in text
    assert "`turbo-diffusion demo --repeats` 10" in text
    result.turbo_timing = Timing("Turbo", [1.0, 1.1, 1.05])
    result.busy = None
    assert "Warning" not in demo_app.summarize(result) and "Note" not in demo_app.summarize(result)


def test_the_recorded_rerun_makes_the_same_image_as_the_timed_turbo_run(session):
    settings = session.defaults.replace(prompt="a red cat", seed=5, ratio=0.6, **FAST)
    result = session.compare(settings)
    apply_turbo(session.pipe, settings.turbo_config())
    try:
        with inspect_plans(session.pipe) as records:
            again = session.pipe(settings.prompt, num_inference_steps=2, guidance_scale=settings.guidance,
                                 height=64, width=64, generator=torch.Generator().manual_seed(5)).images[0]
    finally:
        remove_turbo(session.pipe)
    assert np.array_equal(np.asarray(again), np.asarray(result.turbo))
    assert all(np.array_equal(a.merged, b.merged) for a, b in zip(finest_plans(records), result.plans, strict=True))


def test_the_session_leaves_no_turbo_on_the_pipeline(session):
    from turbo_diffusion import turbo_config_of

    session.compare(session.defaults.replace(**FAST))
    session.sweep(session.defaults.replace(**FAST), (0.0, 0.5))
    assert turbo_config_of(session.pipe) is None


def test_two_requests_at_once_get_the_results_they_would_get_alone(session):
    a = session.defaults.replace(prompt="a red cat", seed=1, ratio=0.3, **FAST)
    b = session.defaults.replace(prompt="a blue dog", seed=2, ratio=0.7, **FAST)
    alone = {s: session.compare(s) for s in (a, b)}
    together = {}
    threads = [threading.Thread(target=lambda s=s: together.__setitem__(s, session.compare(s))) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (a, b):
        assert np.array_equal(np.asarray(together[s].baseline), np.asarray(alone[s].baseline))
        assert np.array_equal(np.asarray(together[s].turbo), np.asarray(alone[s].turbo))


def test_sweep_measures_each_ratio_against_ratio_0_without_turbo(session):
    images = session.sweep(session.defaults.replace(**FAST))
    assert [i.ratio for i in images] == [0.0, 0.3, 0.5, 0.7]
    assert images[0].psnr == math.inf and images[0].ssim == pytest.approx(1.0)
    assert all(0 < i.psnr < math.inf for i in images[1:])
    with pytest.raises(ValueError, match="ratio 0"):
        session.sweep(session.defaults, (0.3, 0.5))


# ---- the page's handlers ------------------------------------------------------------------------------------------
def page_values(settings: Settings) -> list:
    """The settings as the page's widgets send them."""
    return [settings.prompt, float(settings.seed), float(settings.steps), float(settings.size), settings.guidance,
            settings.ratio, settings.alpha, settings.semantic, "auto"]


def test_the_compare_handler_fills_every_output_and_the_panel_redraws_per_step(session):
    settings = session.defaults.replace(steps=4, size=64)
    result, baseline, turbo, summary, step, block, overlay, r, s, e, detail = demo_app.on_compare(session, settings)
    assert baseline is result.baseline and turbo is result.turbo
    assert "speed-up" in summary and "PSNR" in summary and "SSIM" in summary
    assert step.value == 2 and step.maximum == 4 and block.value == result.plans[0].block
    assert all(isinstance(i, Image.Image) and i.size == (256, 256) for i in (overlay, r, s, e))
    assert "denoising step 2 of 4" in detail and "tokens merged" in detail
    later = demo_app.on_inspect(result, 4, block.value)
    assert "denoising step 4 of 4" in later[4]
    assert not np.array_equal(np.asarray(later[0]), np.asarray(overlay))  # another step, other tokens


def test_ratio_0_shows_that_nothing_was_merged(session):
    settings = session.defaults.replace(ratio=0.0, **FAST)
    outputs = demo_app.on_compare(session, settings)
    assert outputs[6] is None and "merged nothing" in outputs[10]


def test_the_sweep_handler_captions_each_image_with_time_and_psnr(session):
    gallery, table = demo_app.on_sweep(session, session.defaults.replace(**FAST))
    assert [caption.split(":")[0] for _, caption in gallery] == ["ratio 0 (baseline)", "ratio 0.3", "ratio 0.5",
                                                                  "ratio 0.7"]
    assert gallery[0][1].endswith(" s") and re.fullmatch(r"ratio 0\.5: \d+\.\d\dx, \d+\.\d dB", gallery[2][1])
    assert max(len(caption) for _, caption in gallery) <= 28  # a gallery tile's width: Gradio cuts longer ones
    assert table.count("\n| ") == 4 and "| 0.7 |" in table and "spread" in table  # a row per ratio
    assert "Medians of 3 runs per ratio, the ratios taking turns" in table


def test_bad_input_becomes_a_readable_page_error_and_the_session_keeps_working(session, monkeypatch):
    progress = []
    handler = demo_app.page_event(lambda settings, report: demo_app.on_compare(session, settings, report), "compare")
    handler = functools.partial(handler, progress=lambda fraction, desc: progress.append((fraction, desc)))
    with pytest.raises(gr.Error, match="Type a prompt first"):
        handler(*page_values(session.defaults.replace(prompt="")))
    with pytest.raises(gr.Error, match="size must be a multiple of 8") as bad:
        handler(*page_values(session.defaults.replace(size=68)))
    assert bad.value.print_exception is False  # a user's bad setting prints no server traceback

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(session, "_generate", broken)
        with pytest.raises(gr.Error, match="Generation failed: RuntimeError: out of memory") as failed:
            handler(*page_values(session.defaults.replace(**FAST)))
    assert failed.value.print_exception is False  # printed once, by the handler, not again by Gradio
    assert "speed-up" in handler(*page_values(session.defaults.replace(**FAST)))[3]
    assert not session._lock.locked()
    assert progress[-1] == ((14, 14), "recording Turbo's merges: step 14 of 14")  # 3 runs each, then the recording


def test_the_page_builds_with_both_tabs_and_generating_events_share_one_queue_slot(session):
    app = demo_app.build_app(session)
    events = [fn for fn in app.fns.values() if fn.concurrency_id == "pipeline"]
    assert sorted(fn.api_name for fn in events) == ["compare", "sweep"]
    assert all(fn.concurrency_limit == 1 and fn.tracks_progress for fn in events)
    labels = {c.get("props", {}).get("label") for c in app.config["components"]}
    assert {"Compare", "Sweep", "Mutual redundancy R", "Semantic value S"} <= labels
    assert "random weights" in session.note


# ---- the command --------------------------------------------------------------------------------------------------
def demo_cli(*args: str) -> subprocess.CompletedProcess:
    script = ("import sys\nfrom turbo_diffusion.cli import main\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'gradio')))\n"
              "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", script, "demo", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "0"], "--port must be from 1 to 65535, got 0"),
    (["--model", "nosuch"], "unknown model 'nosuch'"),
])
def test_demo_refuses_bad_arguments_in_one_line_before_importing_anything_heavy(args, message):
    done = demo_cli(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_demo_refuses_a_busy_port_before_loading_the_model():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = demo_cli("--port", str(busy.getsockname()[1]), "--model", "tiny")
    assert done.returncode == 2 and "is in use: pick another with --port" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_launcher_script_is_the_demo_subcommand():
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "app.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: turbo-diffusion demo")
