"""The ``turbo-diffusion`` command, end to end on the tiny model."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from turbo_diffusion.cli import main


def test_generate_with_baseline_prints_path_time_and_speed_up(tmp_path, capsys):
    out = tmp_path / "cat.png"
    code = main(["generate", "a red cat", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "96",
                 "--baseline", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"saved {out} (96x64, 2 steps, seed 0)" in printed
    assert "speed-up" in printed and "x on the same seed" in printed
    assert "random weights" in printed
    with Image.open(out) as image:
        assert image.size == (96, 64)
        assert "random weights" in image.text["warning"] and "ratio=0.5" in image.text["turbo"]
    with Image.open(tmp_path / "cat.baseline.png") as image:
        assert image.text["turbo"] == "off"


def test_generate_sdxl_shaped_model_with_extra_turbo_fields(tmp_path, capsys):
    out = tmp_path / "xl.png"
    assert main(["generate", "a lighthouse", "--model", "tiny-xl", "--steps", "1", "--height", "64", "--width", "64",
                 "--turbo", "alpha=2,semantic=text", "--out", str(out)]) == 0
    assert "speed-up" not in capsys.readouterr().out
    with Image.open(out) as image:
        assert "alpha=2" in image.text["turbo"] and "semantic='text'" in image.text["turbo"]


@pytest.mark.parametrize(("args", "message"), [
    (["--ratio", "1.5"], "ratio must be a number in [0, 1)"),
    (["--ratio", "abc"], "invalid float value"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--height", "60"], "--height must be a positive multiple of 8"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--out", "image.gif"], "--out must end in one of"),
    (["--turbo", "ratios=0.2"], "unknown TurboConfig field(s) ratios"),
    (["--turbo", "alpha"], "expected field=value, got 'alpha'"),
    (["--turbo", "alpha=2..5"], "cannot read value '2..5'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--device", "tpu"], "invalid choice"),
])
def test_generate_rejects_bad_arguments_with_one_line_and_exit_code_2(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red cat", "--model", "tiny", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert err[-1].startswith("turbo-diffusion")
    assert len([line for line in err if "error" in line]) == 1


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


# ---- first run: nothing silent, nothing lost, nothing left behind (issue 13) ------------------------------------
HEAVY = ("torch", "diffusers", "transformers")


def cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``turbo-diffusion ARGS`` in a fresh process, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "turbo_diffusion.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_help_and_argument_errors_import_no_heavy_package(tmp_path):
    calls = [["--help"], ["generate", "--help"], ["bench", "--help"], ["compare", "--help"],
             ["generate", "x", "--ratio", "1.5"], ["generate", "x", "--ratio", "abc"], ["bench", "--ratios", "1.5"],
             ["bench", "--methods", "todo@0"], ["compare", "--model", "tiny", "--methods", "turbo@1.5"],
             ["generate", "x", "--out", "/proc/nope/x.png"], ["compare", "--model", "nosuch", "--out", "c"]]
    script = (f"import sys\nfrom turbo_diffusion.cli import main\nfor argv in {calls!r}:\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr[-2000:]


@pytest.mark.parametrize(("args", "message"), [
    (["generate", "a cat", "--out", "/proc/nope/x.png"], "--out /proc/nope/x.png: cannot write in /proc/nope"),
    (["generate", "a cat", "--out", "/etc/hostname/x.png"], "/etc/hostname is a file, not a folder"),
    (["compare", "--model", "tiny", "--out", "/proc/nope"], "--out /proc/nope: cannot write in /proc/nope"),
    (["bench", "--model", "tiny", "--plot", "/proc/nope/x.png"], "--plot /proc/nope/x.png: cannot write"),
])
def test_an_unwritable_output_is_refused_before_any_work_in_one_line(tmp_path, args, message):
    done = cli(*args, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_argument_error_is_one_line_without_the_usage_block():
    done = cli("generate", "a cat", "--ratio", "abc", timeout=120)
    assert done.returncode == 2 and "usage:" not in done.stderr
    assert done.stderr == ("turbo-diffusion generate: error: argument --ratio: invalid float value: 'abc' "
                           "(see turbo-diffusion generate --help)\n")


def test_a_failed_compare_leaves_nothing_and_its_corrected_rerun_goes_ahead(tmp_path, capsys):
    done = cli("compare", "--model", "nosuch", "--out", "c6", cwd=tmp_path)  # refused by name, at once
    assert done.returncode == 2 and done.stderr.startswith("turbo-diffusion compare: error: unknown model 'nosuch'")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = str(tmp_path / "c6")
    with pytest.raises(SystemExit) as exit_info:  # refused when loading
        main(["compare", "--model", str(empty), "--out", out])
    assert exit_info.value.code == 2 and "cannot load model" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model"]
    assert main(["compare", "--model", "tiny", "--steps", "1", "--height", "64", "--width", "64", "--max-prompts",
                 "1", "--skip-metrics", "lpips,clip_score,fid", "--no-progress", "--out", out]) == 0
    assert (Path(out) / "report.html").exists()


def test_generate_says_what_it_does_and_writes_to_outputs_by_default(tmp_path):
    done = cli("generate", "a red cat", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "64",
               "--baseline", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = [line for line in done.stderr.splitlines()  # what a busy machine adds is said only when it is busy
              if line.startswith("turbo-diffusion generate: ") and "busy" not in line and "other work" not in line]
    assert [line.split(": ", 1)[1].split(" ")[0] for line in stages] == ["importing", "building", "warming",
                                                                          "generating"]
    assert "about 1 s" in stages[1] and re.search(r"expected about \d+ (s|min)", stages[3])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outputs", "outputs/turbo.baseline.png", "outputs/turbo.png"]


def test_outputs_are_ignored_by_git():
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().splitlines()
    assert "/outputs/" in ignored


def test_a_late_write_failure_saves_the_image_elsewhere_and_says_where(tmp_path, monkeypatch, capsys):
    target = tmp_path / "gone" / "cat.png"
    original = Image.Image.save

    def save(image, path, *args, **kwargs):
        if Path(path).parent == target.parent:  # any write into the target's folder (images are written atomically)
            raise PermissionError(13, "Permission denied")
        return original(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    (tmp_path / "safe").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "safe"))
    code = main(["generate", "a red cat", "--model", "tiny", "--steps", "1", "--height", "64", "--width", "64",
                 "--out", str(target), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and f"could not write {target} (Permission denied); saved the image to" in err
    saved = list((tmp_path / "safe" / "turbo-diffusion").glob("*-cat.png"))
    assert len(saved) == 1 and str(saved[0]) in err and not target.exists()


def test_pipelines_path_prints_the_files_shipped_in_the_package():
    done = subprocess.run([sys.executable, "-m", "turbo_diffusion.pipelines_path"], capture_output=True, text=True,
                          timeout=120)
    paths = [Path(line.split("  ")[0]) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(paths) == 3
    assert all(p.is_file() and p.parent.name == "community" and p.parent.parent.name == "turbo_diffusion"
               for p in paths)


@pytest.mark.parametrize("command", [["generate", "a cat"], ["bench"], ["compare", "--model", "tiny"]])
def test_every_subcommand_takes_the_same_flags_for_the_same_things(command):
    from turbo_diffusion.cli import build_parser

    for spelling in ("--guidance", "--guidance-scale"):
        args = build_parser().parse_args([*command, spelling, "2", "--device", "cpu", "--dtype", "float32",
                                          "--no-progress", "--model", "tiny"])
        assert vars(args).get("guidance", vars(args).get("guidance_scale")) == 2.0
        assert (args.device, args.dtype, args.no_progress) == ("cpu", "float32", True)


def test_files_go_to_the_outputs_folder_by_default():
    from turbo_diffusion.cli import build_parser

    assert build_parser().parse_args(["generate", "a cat"]).out == "outputs/turbo.png"
    assert build_parser().parse_args(["compare", "--model", "tiny"]).out == "outputs/compare"


# -- issue 24: the first minute -------------------------------------------------------------------------------------
def test_generate_defaults_to_the_trained_model_with_its_own_size_steps_and_guidance():
    from turbo_diffusion.cli import build_parser
    from turbo_diffusion.cli.generate import _check_args
    from turbo_diffusion.model_names import default_model

    args = build_parser().parse_args(["generate", "a red circle"])
    _check_args(args)
    assert args.model == default_model() == "shapes"
    assert (args.height, args.width, args.steps, args.guidance) == (128, 128, 20, 5.0)
    args = build_parser().parse_args(["generate", "a cat", "--model", "sd15-arch", "--steps", "3"])
    _check_args(args)
    assert (args.height, args.width, args.steps, args.guidance) == (None, None, 3, 7.5)  # its native size


def test_the_estimate_is_per_step_unet_time_plus_once_per_image_work(monkeypatch):
    """A fake clock: the UNet calls take 2 s each (the first 3 s: set-up), the rest of the generation 5 s."""
    import torch

    from turbo_diffusion.harness import measure

    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])

    class UNet(torch.nn.Module):
        calls = 0

        def forward(self, x):
            UNet.calls += 1
            clock[0] += 3.0 if UNet.calls == 1 else 2.0
            return x

    class Pipe:
        unet = UNet()

    def generate(steps):
        clock[0] += 2.5
        for _ in range(steps):
            Pipe.unet(torch.zeros(1))
        clock[0] += 2.5

    cost = measure.generation_cost(Pipe, generate, torch.device("cpu"))
    assert (cost.once, cost.per_step) == (5.0, 2.0)
    assert cost.estimate(20) == 45.0  # not 20 whole 1-step generations (20 * 10 s)


def test_a_speed_up_says_what_it_rests_on_and_flags_noise_as_bench_does():
    from turbo_diffusion.cli.generate import speed_up_line
    from turbo_diffusion.harness.measure import Timing, noisy_advice

    turbo, base = Timing("turbo", [1.0, 1.1, 1.05]), Timing("baseline", [1.2, 2.4, 1.3])
    line = speed_up_line(turbo, base, 3)
    assert line.startswith("speed-up 1.24x on the same seed (medians of 3 interleaved runs each")
    assert "spread 1.10x with Turbo, 2.00x without" in line
    assert not turbo.noisy and base.noisy
    advice = noisy_advice([t.name for t in (turbo, base) if t.noisy], 3)
    assert advice.startswith("noisy: baseline: slowest over fastest call above 1.5x") and "--repeats 10" in advice
    assert noisy_advice([], 3) is None
    assert "one run each: noise cannot be seen" in speed_up_line(turbo, base, 1)


def test_a_busy_machine_is_said_before_timing(monkeypatch):
    from turbo_diffusion.harness import measure

    monkeypatch.setattr(measure.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    monkeypatch.setattr(measure.os, "cpu_count", lambda: 2)
    assert "busy (load average 3.5 on 2 CPUs)" in measure.busy_warning()
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (0.4, 0.3, 0.2))
    assert measure.busy_warning() is None


def test_beside_other_work_torch_gets_the_cpus_left_free(monkeypatch):
    import torch

    from turbo_diffusion.harness import measure

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(measure, "other_work", lambda: (1.1, 2))
    try:
        torch.set_num_threads(2)
        assert "torch uses 1 thread instead of 2" in measure.choose_threads()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr(measure, "other_work", lambda: (0.2, 2))
        assert measure.choose_threads() is None and torch.get_num_threads() == 2  # idle: torch's default
        monkeypatch.setattr(measure, "other_work", lambda: (1.1, 2))
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert measure.choose_threads() is None and torch.get_num_threads() == 2  # the user's choice stands
    finally:
        torch.set_num_threads(before)


def test_generate_without_baseline_removes_an_earlier_runs_baseline_image(tmp_path, capsys):
    out = tmp_path / "cat.png"
    stale = tmp_path / "cat.baseline.png"
    Image.new("RGB", (8, 8)).save(stale)
    assert main(["generate", "a red cat", "--model", "tiny", "--steps", "1", "--height", "64", "--width", "64",
                 "--out", str(out), "--no-progress"]) == 0
    assert out.exists() and not stale.exists()
    assert f"removed {stale}: an earlier run left it" in capsys.readouterr().err


def test_no_progress_silences_every_bar_the_libraries_included(tmp_path):
    done = cli("generate", "a red cat", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "64",
               "--baseline", "--repeats", "1", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "%|" not in done.stderr and "it/s" not in done.stderr  # no tqdm bar of any library


def test_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red cat", "--model", "tiny", "--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats must be at least 1" in capsys.readouterr().err


def test_compare_defaults_to_the_trained_model_and_its_own_prompt_preset(monkeypatch, tmp_path):
    from turbo_diffusion.compare import api

    asked = {}
    monkeypatch.setattr(api, "compare", lambda model, **kwargs: asked.update(model=model, **kwargs))
    assert main(["compare", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert asked["model"] == "shapes" and asked["prompts"] == "shapes-quick" and asked["repeats"] is None
    assert main(["compare", "--model", "tiny", "--repeats", "5", "--out", str(tmp_path / "d")]) == 0
    assert asked["model"] == "tiny" and asked["prompts"] == "smoke" and asked["repeats"] == 5
    with pytest.raises(SystemExit) as refused:
        main(["compare", "--repeats", "0", "--out", str(tmp_path / "e")])
    assert refused.value.code == 2


def test_ctrl_c_says_on_its_own_line_what_was_kept_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    from turbo_diffusion.cli import generate as generate_cli
    from turbo_diffusion.compare import runner

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_cli, "_generate", stop)
    out = tmp_path / "cat.png"
    assert main(["generate", "a red cat", "--model", "tiny", "--steps", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert (f"\nturbo-diffusion generate: interrupted: nothing was written (the images are saved when every run is "
            f"done); run the command again to make {out}") in err
    monkeypatch.setattr(runner, "_generate_one", stop)
    assert main(["compare", "--model", "tiny", "--steps", "1", "--out", str(tmp_path / "c"), "--no-progress"]) == 130
    assert (f"\nturbo-diffusion compare: interrupted: the images made so far are kept in {tmp_path / 'c'}; run the "
            "same command again to resume (it makes only the images it lacks)") in capsys.readouterr().err


def test_the_library_needs_no_tool_package_and_the_command_names_its_extra(monkeypatch, capsys):
    """tqdm and psutil are the [cli] extra: the engine and pipelines import neither; the command says how to get
    them instead of failing deep inside a run."""
    import importlib.util

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "tqdm" not in core and "psutil" not in core
    assert {"tqdm>=4.60", "psutil>=5.8"} <= set(project["optional-dependencies"]["cli"])
    package = Path(__file__).parents[1] / "turbo_diffusion"
    engine = [*package.glob("*.py"), *package.glob("core/*.py"), *package.glob("archs/*.py")]
    assert [p.name for p in engine if re.search(r"^\s*(import|from) (tqdm|psutil)", p.read_text(), re.M)] == []

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a cat", "--model", "tiny", "--steps", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pip install 'turbo-diffusion[cli]'" in err and "psutil" in err
