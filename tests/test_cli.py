"""The ``turbo-diffusion`` command, end to end on the tiny model."""

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
