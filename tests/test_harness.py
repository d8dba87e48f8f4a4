"""The shared harness: one method grammar with its aliases, install/uninstall, the measurement protocol under
torch.compile, noise flags, the JSON policy, output checks and the loader's one error."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from turbo_diffusion.anatomy import attention_level
from turbo_diffusion.errors import ModelLoadError, OutputError
from turbo_diffusion.harness.loading import load_model, loading_message
from turbo_diffusion.harness.measure import NOISY_SPREAD, Timing, compile_module, time_interleaved
from turbo_diffusion.harness.methods import MethodError, make_method, parse_method, parse_methods
from turbo_diffusion.harness.output import check_writable, write_json
from turbo_diffusion.levels import pixel_grid

from .conftest import run, tiny_sd15_unet, unet_args

PACKAGE = Path(__file__).parents[1] / "turbo_diffusion"


# -- one grammar, old spellings as aliases ----------------------------------------------------------------------
@pytest.mark.parametrize(("alias", "canonical"), [
    ("default", "baseline"),
    ("tomesd@0.5", "tome@0.5"),
    ("todo-avg@0.5", "todo@0.5:mode=avg"),
    ("todo-nearest@0.7", "todo@0.7:mode=nearest"),
    ("turbo[semantic=none,alpha=0]@0.5", "turbo@0.5:alpha=0,semantic=none"),
])
def test_old_spellings_mean_the_same_method(alias, canonical):
    assert parse_method(alias).meaning == parse_method(canonical).meaning


def test_every_kind_parses_with_its_ratio_and_settings():
    methods = parse_methods("turbo@0.5:alpha=2,tome@0.3:max_downsample=2,todo@0.75,bound@0.6")
    assert [(m.kind, m.ratio, m.options) for m in methods] == [
        ("baseline", None, {}), ("turbo", 0.5, {"alpha": 2}), ("tome", 0.3, {"max_downsample": 2}),
        ("todo", 0.75, {}), ("bound", 0.6, {}),
    ]


def test_the_baseline_comes_first_wherever_it_is_written():
    assert [m.label for m in parse_methods("turbo@0.5,default")] == ["default", "turbo@0.5"]


def test_two_spellings_of_one_method_are_refused():
    with pytest.raises(MethodError, match="baseline and default mean the same"):
        parse_methods("baseline,default")


@pytest.mark.parametrize(("text", "message"), [
    ("todo@0", r"ratio must be a number in \(0, 1\)"),
    ("bound@1", r"ratio must be a number in \[0, 1\)"),
    ("todo@0.5:mode=max", "mode must be one of nearest, avg"),
    ("bound@0.5:alpha=1", "unknown bound setting"),
    ("baseline@0.5", "takes no ratio"),
    ("turbo", "give the share of tokens removed after '@'"),
    ("todo-avg@0.5:mode=nearest", "mode given twice"),
])
def test_bad_methods_name_the_value_and_the_allowed_range(text, message):
    with pytest.raises(MethodError, match=message) as err:
        parse_method(text)
    assert "\n" not in str(err.value)


def test_make_method_spells_the_method_it_makes():
    method = make_method("turbo", 0.5, semantic="none", match_radius=None)
    assert method.label == "turbo@0.5:semantic=none,match_radius=None"
    assert parse_method(method.label) == method


# -- install and uninstall --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["todo@0.5", "bound@0.5", "todo@0.75:mode=avg"])
def test_level_methods_change_the_output_and_uninstall_to_the_same_processors(text):
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet, 32, 32)
    baseline, processors = run(unet, args, kwargs), unet.attn_processors
    method = parse_method(text).at_grid(pixel_grid(256, 256, attention_level(unet)))
    method.install(unet)
    assert (run(unet, args, kwargs) - baseline).abs().max() > 1e-4
    method.uninstall(unet)
    assert all(unet.attn_processors[k] is p for k, p in processors.items())
    assert torch.equal(run(unet, args, kwargs), baseline)


def test_a_level_method_without_its_grid_says_so():
    with pytest.raises(ValueError, match="bind its token grid"):
        parse_method("bound@0.5").install(tiny_sd15_unet())


# -- measurement ------------------------------------------------------------------------------------------------
class Tagged(torch.nn.Module):
    """A module whose graph depends on a tag that methods set: a stand-in for a UNet under torch.compile."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.tag = torch.nn.Linear(8, 8), "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * len(self.tag)


class SetTag:
    def __init__(self, name: str, tag) -> None:
        self.name, self.tag = name, tag

    def install(self, model: Tagged) -> None:
        model.tag = self.tag() if callable(self.tag) else self.tag

    def uninstall(self, model: Tagged) -> None:
        model.tag = "none"


def test_compiled_timing_times_compilation_apart_and_warm_up_absorbs_it():
    model, x = Tagged(), torch.randn(2, 8)
    compile_module(model, "eager")
    methods = [SetTag("one", "a"), SetTag("two", "bb")]
    timings = time_interleaved(model, methods, lambda: model(x), torch.device("cpu"), repeats=3, compiled=True)
    assert all(t.compile_seconds > 0 and t.recompiles == 0 for t in timings.values())


def test_a_method_that_recompiles_at_every_install_is_counted():
    model, x = Tagged(), torch.randn(2, 8)
    compile_module(model, "eager")
    fresh = iter(range(1000))  # a new tag at every install: the compiled graph's guards never match
    methods = [SetTag("steady", "a"), SetTag("fickle", lambda: f"tag{next(fresh)}")]
    timings = time_interleaved(model, methods, lambda: model(x), torch.device("cpu"), repeats=2, compiled=True)
    assert timings["steady"].recompiles == 0 and timings["fickle"].recompiles == 2


def test_a_spread_above_the_threshold_is_noisy():
    assert Timing("t", [1.0, NOISY_SPREAD * 1.01]).noisy
    assert not Timing("t", [1.0, NOISY_SPREAD * 0.99]).noisy


# -- output -----------------------------------------------------------------------------------------------------
def test_json_writes_infinities_and_nan_as_strings_and_none_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"psnr": math.inf, "low": -math.inf, "bad": math.nan, "none": None,
                                     "rows": [(1.5, math.inf)]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"psnr": "inf", "low": "-inf", "bad": "nan",
                                                             "none": None, "rows": [[1.5, "inf"]]}


@pytest.mark.parametrize(("path", "message"), [
    ("/proc/nope/x.png", "cannot write in /proc/nope"),
    ("/etc/hostname/x.png", "/etc/hostname is a file, not a folder"),
])
def test_unwritable_outputs_are_refused_in_one_line(path, message):
    with pytest.raises(OutputError, match=message) as err:
        check_writable(path, "--out")
    assert str(err.value).startswith(f"--out {path}: ") and "\n" not in str(err.value)


def test_checking_an_output_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "a" / "b" / "x.png", "--out")
    check_writable(tmp_path / "c", "--out", folder=True)
    assert list(tmp_path.iterdir()) == []


# -- loading ----------------------------------------------------------------------------------------------------
def test_every_way_a_model_fails_to_load_is_one_error(tmp_path):
    for model in ("nosuch", str(tmp_path)):
        with pytest.raises(ModelLoadError, match=f"cannot load model '{model}'") as err:
            load_model(model)
        assert "\n" not in str(err.value)


def test_a_saved_model_folder_loads_without_the_torch_dtype_deprecation(tmp_path, recwarn):
    load_model("tiny").save_pretrained(tmp_path)
    load_model(str(tmp_path), dtype="bfloat16")
    assert not [w for w in recwarn if "torch_dtype" in str(w.message)]


# -- structure --------------------------------------------------------------------------------------------------
def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {("." * node.level) + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_bench_run_does_not_import_its_report():
    assert ".report" not in imported_modules(PACKAGE / "bench" / "run.py")


def test_the_loading_message_says_which_models_have_random_weights():
    assert "random weights" in loading_message("sd15-arch")
    assert "random weights" not in loading_message("shapes") and "trained" in loading_message("shapes")
    assert loading_message("some/folder") == "loading some/folder"


def test_tomesd_settings_name_its_installed_version():
    """tomesd has no ``__version__``: the version in a compare folder's settings must come from its metadata, so
    that images made under another tomesd release get other keys."""
    from importlib import metadata

    assert parse_method("tome@0.5").settings()["version"] == metadata.version("tomesd")


def test_tomesd_images_do_not_depend_on_what_the_process_ran_before():
    """tomesd forks torch's global generator when a patched block first runs: without a seeded generator of its
    own, the same prompt, seed and method would give another image after anything that drew from that generator,
    and a compare folder's images would not be a function of their keys."""
    from turbo_diffusion.harness.measure import installed
    from turbo_diffusion.models import load_pipeline

    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    method = parse_method("tome@0.5").at_grid(pixel_grid(64, 64, attention_level(pipe.unet)))
    images = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with installed(pipe, method), torch.no_grad():
            images.append(pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="pt",
                               generator=torch.Generator().manual_seed(0)).images)
    assert torch.equal(images[0], images[1])


class _Noting:
    """A method that notes in ``log`` when it is installed."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def install(self, model) -> None:
        self.log.append(self.name)

    def uninstall(self, model) -> None:
        pass


def test_quick_runs_are_taken_three_times_in_turns_and_slow_ones_once(monkeypatch):
    from turbo_diffusion.harness import measure

    assert measure.default_repeats(9.9) == 3 and measure.default_repeats(10.0) == 1
    order: list[str] = []
    told: list[int] = []
    methods = [_Noting("a", order), _Noting("b", order), _Noting("c", order)]
    timings = measure.time_in_turns(None, methods, lambda method: None, torch.device("cpu"), on_repeats=told.append)
    assert told == [3] and all(len(t.seconds) == 3 for t in timings.values())
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts with another method
    order.clear()
    timings = measure.time_in_turns(None, methods, lambda method: None, torch.device("cpu"), repeats=2)
    assert len(timings["a"].seconds) == 2
    monkeypatch.setattr(measure, "QUICK_RUN", 0.0)  # every run counts as slow: the first round is all
    order.clear()
    timings = measure.time_in_turns(None, methods, lambda method: None, torch.device("cpu"), on_repeats=told.append)
    assert told[-1] == 1 and order == ["a", "b", "c"] and all(len(t.seconds) == 1 for t in timings.values())
