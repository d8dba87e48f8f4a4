"""`turbo-diffusion bench`: variants, ToDo, timing protocol, memory, profiler breakdown, CLI output and errors.

Tiny models on the CPU; no timing is asserted (speed belongs in benchmarks, not tests).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import time
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from turbo_diffusion.anatomy import attention_level
from turbo_diffusion.bench import (
    BenchSpec,
    flag_methods,
    peak_memory,
    phase_breakdown,
    row_name,
    run_bench,
    time_interleaved,
    variant_breakdown,
)
from turbo_diffusion.bench.report import format_report, plot, read_json, write_json
from turbo_diffusion.bench.run import run_methods
from turbo_diffusion.bench.spec import FAMILIES
from turbo_diffusion.bench.timing import generation_call, unet_step_call
from turbo_diffusion.cli import main
from turbo_diffusion.harness.methods import BASELINE, Method, parse_method
from turbo_diffusion.harness.processors import TokenDownsamplingProcessor
from turbo_diffusion.levels import pixel_grid
from turbo_diffusion.models import load_pipeline

from .conftest import run, tiny_sd15_unet, tiny_sdxl_unet, unet_args

tomesd = pytest.importorskip("tomesd")

LATENT = 32  # conftest's unet_args: 32 x 32 latent = 256 x 256 px


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared CPU run faster on one thread (no OpenMP spinning against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def every_variant(unet) -> list[Method]:
    grid = pixel_grid(LATENT * 8, LATENT * 8, attention_level(unet))
    texts = ["baseline", "turbo@0.5", "turbo@0.5:semantic=none,alpha=0", "tomesd@0.5", "todo@0.75:mode=nearest",
             "todo@0.5:mode=avg", "bound@0.7"]
    return [parse_method(text).at_grid(grid) for text in texts]


# -- variants ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_unet", [tiny_sd15_unet, tiny_sdxl_unet])
def test_every_variant_uninstalls_to_the_same_processors_classes_and_output(make_unet):
    unet = make_unet()
    args, kwargs = unet_args(unet)
    baseline = run(unet, args, kwargs)
    processors = unet.attn_processors
    classes = [type(m) for m in unet.modules()]
    for variant in every_variant(unet):
        variant.install(unet)
        out = run(unet, args, kwargs)
        assert out.shape == baseline.shape and torch.isfinite(out).all(), variant.name
        variant.uninstall(unet)
        after = unet.attn_processors
        assert after.keys() == processors.keys()
        assert all(after[k] is processors[k] for k in processors), variant.name
        assert [type(m) for m in unet.modules()] == classes, variant.name
        assert torch.equal(run(unet, args, kwargs), baseline), variant.name


def test_todo_keys_and_values_come_from_the_downsampled_grid_queries_stay_full(sd15_unet):
    args, kwargs = unet_args(sd15_unet, LATENT, LATENT, batch=2)
    baseline = run(sd15_unet, args, kwargs)
    seen = {"to_q": [], "to_k": [], "to_v": []}
    top = sd15_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1  # full-resolution self-attention
    for name, tokens in seen.items():
        getattr(top, name).register_forward_pre_hook(lambda _, inputs, t=tokens: t.append(inputs[0].shape[1]))

    variant = parse_method("todo@0.75:mode=nearest").at_grid((LATENT, LATENT))
    variant.install(sd15_unet)
    out = run(sd15_unet, args, kwargs)
    variant.uninstall(sd15_unet)

    assert seen == {"to_q": [LATENT * LATENT], "to_k": [LATENT * LATENT // 4], "to_v": [LATENT * LATENT // 4]}
    assert out.shape == baseline.shape
    assert (out - baseline).abs().max() > 1e-4


def test_todo_ratio_sets_the_key_value_grid():
    assert TokenDownsamplingProcessor(0.75, (64, 64)).kv_grid == (32, 32)  # ToDo's 2x2
    assert TokenDownsamplingProcessor(0.5, (64, 48)).kv_grid == (45, 34)  # sqrt(0.5) per side
    with pytest.raises(ValueError, match="ratio"):
        TokenDownsamplingProcessor(1.0, (8, 8))


@pytest.mark.parametrize("mode", ["nearest", "avg"])
def test_todo_pooling_keeps_one_token_per_cell_or_averages_the_cell(mode):
    grid = torch.arange(16.0).reshape(1, 4, 4)  # one channel, 4 x 4 tokens numbered row-major
    tokens = grid.flatten(1).unsqueeze(-1)  # (B=1, N=16, C=1)
    small = TokenDownsamplingProcessor(0.75, (4, 4), mode).downsample(tokens).flatten().tolist()
    # nearest-exact samples each 2 x 2 cell at pixel-centre rounding: its bottom-right token.
    expected = [5.0, 7.0, 13.0, 15.0] if mode == "nearest" else [2.5, 4.5, 10.5, 12.5]
    assert small == expected


def test_sdxl_variants_act_at_the_2x_level_and_tomesd_defaults_merge_nothing(sdxl_unet):
    assert attention_level(sdxl_unet) == 2
    args, kwargs = unet_args(sdxl_unet)
    baseline = run(sdxl_unet, args, kwargs)
    tome = parse_method("tomesd@0.5")
    tome.install(sdxl_unet)
    assert torch.equal(run(sdxl_unet, args, kwargs), baseline)
    tome.uninstall(sdxl_unet)
    todo = parse_method("todo@0.75").at_grid(pixel_grid(LATENT * 8, LATENT * 8, 2))
    todo.install(sdxl_unet)
    assert (run(sdxl_unet, args, kwargs) - baseline).abs().max() > 1e-4
    todo.uninstall(sdxl_unet)


# -- timing protocol --------------------------------------------------------------------------------------------
def test_timing_warms_up_each_variant_then_rotates_the_order_of_repeats():
    log = []
    variants = [SimpleNamespace(name=n, install=lambda m, n=n: log.append(f"+{n}"),
                                uninstall=lambda m, n=n: log.append(f"-{n}")) for n in "abc"]
    timings = time_interleaved(None, variants, lambda: log.append("call"), torch.device("cpu"), repeats=3,
                               warmup=1, measure_memory=True)
    installs = [entry[1] for entry in log if entry.startswith("+")]
    assert installs == list("a" "abc" "abc" "bca" "cab")  # priming, warm-up, 3 rotating repeats
    assert log.count("call") == 13 and all(entry.startswith("-") for entry in log[2::3])
    assert all(len(t.seconds) == 3 and t.memory is not None for t in timings.values())


def test_generation_runs_the_unet_at_the_asked_batch_guidance_when_even():
    pipe = load_pipeline("tiny")
    batches = []
    pipe.unet.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    for unet_batch in (1, 2, 4):
        generation_call(pipe, 64, 64, unet_batch, steps=1, prompt="a cat")()
    assert batches == [1, 2, 4]


def test_generations_of_all_variants_start_from_the_same_noise():
    pipe = load_pipeline("tiny")
    call = generation_call(pipe, 64, 64, 1, steps=2, prompt="a cat", seed=3)
    first, second = call().images, call().images
    assert (first == second).all()
    other = generation_call(pipe, 64, 64, 1, steps=2, prompt="a cat", seed=4)().images
    assert not (other == first).all()


# -- memory and profiler ----------------------------------------------------------------------------------------
def test_cpu_peak_memory_sees_an_allocation_held_inside_the_block():
    with peak_memory("cpu") as reading:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, pages touched
        time.sleep(0.05)
        del block
    assert reading.peak_mib >= 48
    assert reading.total_mib >= reading.peak_mib
    assert "RSS" in reading.method


def test_profiler_breakdown_finds_the_turbo_phases(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    inputs = {"sample": args[0], "timestep": args[1], **kwargs}
    call = unet_step_call(sd15_unet, inputs)
    turbo = variant_breakdown(sd15_unet, parse_method("turbo@0.5"), call, torch.device("cpu"))
    assert set(turbo.shares) == {"plan", "merge", "attention", "restore"}
    assert all(share > 0 for share in turbo.shares.values())
    assert sum(turbo.shares.values()) <= 1
    assert turbo.total_ms > 0
    default = variant_breakdown(sd15_unet, BASELINE, call, torch.device("cpu"))
    assert all(share == 0 for share in default.shares.values())


# -- settings ---------------------------------------------------------------------------------------------------
def test_turbo_settings_are_parsed_as_literals_or_bare_words():
    def parse_turbo_setting(setting):
        return parse_method(flag_methods(turbo=[setting])[0][1]).options

    assert parse_turbo_setting("semantic=none,alpha=0") == {"semantic": "none", "alpha": 0}
    assert parse_turbo_setting("match_radius=None") == {"match_radius": None}
    assert parse_turbo_setting(" semantic='text' , alpha=2.5 ") == {"semantic": "text", "alpha": 2.5}


def test_missing_tomesd_is_skipped_with_a_note():
    methods, notes = flag_methods(ratios=(0.5, 0.7), tomesd_installed=False)
    planned = run_methods(BenchSpec(model="tiny", methods=tuple(methods)))
    assert [FAMILIES[p.kind] for p in planned] == ["default"] + ["turbo", "todo", "bound"] * 2
    assert any("tomesd is not installed" in note for note in notes)


# -- the command ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One small run of the CLI with every output: (stdout, JSON record, plot path)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--model", "tiny", "--sizes", "48x64", "--batches", "2", "--ratios", "0.5", "0.7",
            "--turbo", "semantic=none,alpha=0", "--repeats", "2", "--steps", "2", "--json", str(out / "run.json"),
            "--plot", str(out / "run.png"), "--no-progress"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return stdout.getvalue(), json.loads((out / "run.json").read_text()), out / "run.png"


def test_json_has_the_documented_keys(bench_run):
    _, record, _ = bench_run
    assert set(record) == {"schema", "meta", "spec", "notes", "rows"}
    assert record["schema"] == "turbo-diffusion-bench/1"
    assert set(record["meta"]) == {"date", "machine", "cpu", "gpu", "commit", "versions", "command", "invoked",
                                   "weights", "methods"}
    assert set(record["meta"]["versions"]) == {"turbo_diffusion", "diffusers", "torch", "transformers", "tomesd",
                                               "python"}
    measure_keys = {"seconds", "min", "median", "max", "spread", "noisy", "speedup", "of_bound", "peak_mib",
                    "peak_total_mib", "compile_s", "recompiles"}
    for row in record["rows"]:
        assert set(row) == {"height", "width", "batch", "level", "grid", "variant", "series", "family", "ratio",
                            "settings", "step", "generation", "profile"}
        assert set(row["step"]) == measure_keys and set(row["generation"]) == measure_keys
        assert len(row["step"]["seconds"]) == 2 and len(row["generation"]["seconds"]) == 2
        if row["family"] == "turbo":
            assert set(row["profile"]) == {"plan", "merge", "attention", "restore", "total_ms", "clock"}
        else:
            assert row["profile"] is None


def test_json_rows_cover_every_variant_at_every_ratio(bench_run):
    _, record, _ = bench_run
    names = [row["variant"] for row in record["rows"]]
    per_ratio = ["turbo", "turbo[semantic=none,alpha=0]", "tomesd", "todo-nearest", "bound"]
    assert names == ["default"] + [f"{s}@{r}" for r in ("0.5", "0.7") for s in per_ratio]
    assert {(row["height"], row["width"], row["batch"]) for row in record["rows"]} == {(48, 64, 2)}


def test_json_speedups_are_ratios_of_minima_and_bound_shares(bench_run):
    _, record, _ = bench_run
    rows = {row["variant"]: row for row in record["rows"]}
    default_min = rows["default"]["step"]["min"]
    for name, row in rows.items():
        step = row["step"]
        assert step["min"] == min(step["seconds"]) and step["max"] == max(step["seconds"])
        assert step["speedup"] == pytest.approx(default_min / step["min"])
        if row["ratio"] is not None:
            bound = rows[f"bound@{row['ratio']:g}"]["step"]["speedup"]
            assert step["of_bound"] == pytest.approx(step["speedup"] / bound), name
    assert rows["default"]["step"]["of_bound"] is None


def test_json_meta_records_the_environment(bench_run):
    _, record, _ = bench_run
    meta = record["meta"]
    datetime.fromisoformat(meta["date"])
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["weights"] == "random weights"
    assert re.fullmatch(r"CPU .+, \d+ torch threads? of \d+ logical CPUs", meta["machine"])
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", meta["commit"])
    assert meta["command"].startswith("turbo-diffusion bench --model tiny --sizes 48x64 --batches 2 --ratios 0.5 0.7")
    assert "--turbo semantic=none,alpha=0" in meta["command"] and "--steps 2" in meta["command"]


def test_plot_is_a_png(bench_run):
    _, _, png = bench_run
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.width > 200 and image.height > 200


def test_saved_run_reads_back_into_the_same_report(bench_run, tmp_path):
    stdout, record, png = bench_run
    result = read_json(png.with_suffix(".json"))
    assert result.spec.sizes == ((48, 64),) and result.spec.ratios == (0.5, 0.7)
    assert result.rows == record["rows"] and result.meta == record["meta"]
    assert format_report(result) in stdout  # the same tables as the run printed
    plot(result, tmp_path / "lines.png")
    # One ratio: a bar per variant instead of lines.
    result.rows = [r for r in result.rows if r["ratio"] in (None, 0.5)]
    plot(result, tmp_path / "bars.png")
    for name in ("lines.png", "bars.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 200


def test_reading_another_schema_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something-else/1"}))
    with pytest.raises(ValueError, match="something-else/1"):
        read_json(path)


def test_printed_report_shows_header_speedup_share_of_bound_and_planning(bench_run):
    stdout, record, _ = bench_run
    assert "random weights" in stdout and "commit " in stdout and record["meta"]["command"] in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("| px |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert {"speed-up", "of bound", "plan", "peak MiB"} <= set(columns)
    turbo = next(line for line in stdout.splitlines() if line.startswith("| 48x64 | 2 | turbo | 0.5 |"))
    cells = dict(zip(columns, (cell.strip() for cell in turbo.strip("|").split("|")), strict=True))
    assert re.fullmatch(r"\d+\.\d{3}x", cells["speed-up"])
    assert re.fullmatch(r"\d+\.\d%", cells["of bound"]) and re.fullmatch(r"\d+\.\d%", cells["plan"])
    assert "### Whole generation, 2 steps" in stdout


BAD_ARGUMENTS = [
    (["--turbo", "bogus=1"], "unknown TurboConfig field(s) bogus"),
    (["--turbo", "alpha=-1"], "alpha must be"),
    (["--turbo", "ratio=0.3"], "--ratios"),
    (["--turbo", "semantic=none,alpha"], "expected field=value"),
    (["--ratios", "1.5"], "ratio must be"),
    (["--sizes", "63"], "multiples of 8"),
    (["--sizes", "12x"], "HEIGHTxWIDTH"),
    (["--batches", "0"], "batch must be"),
    (["--repeats", "0"], "repeats must be"),
    (["--model", "nope"], "unknown model"),
    (["--json", "/proc/nonexistent-folder/run.json"], "cannot write in /proc/nonexistent-folder"),
    (["--attention", "xformers"], "attention='xformers' runs on CUDA only"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "tiny", "--no-progress", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo-diffusion bench: error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "tiny", "--device", "cuda"])
    assert exit_info.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_a_folder_without_a_pipeline_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.splitlines()  # stage messages, then the error
    assert exit_info.value.code == 2 and "cannot load model" in err[-1]
    assert [line for line in err if "error" in line] == err[-1:] and "Traceback" not in "".join(err)


# -- one grammar, compile, noise, profiler chatter ---------------------------------------------------------------
def test_every_name_bench_prints_parses_back_to_its_method():
    methods, _ = flag_methods((0.5, 0.7), ("semantic=none,alpha=0",), todo_mode="avg")
    for planned in run_methods(BenchSpec(model="tiny", methods=tuple(methods))):
        name = row_name(planned)
        pinned = {k: v for k, v in planned.options.items() if k != "backend"}  # bench pins the kernel
        assert (parse_method(name).kind, parse_method(name).ratio, parse_method(name).options) == (
            planned.kind, planned.ratio, pinned), name


def test_bench_runs_the_methods_written_in_the_grammar():
    spec = BenchSpec(model="tiny", sizes=((32, 32),), methods=("tomesd@0.5", "todo@0.5:mode=avg", "bound@0.5"),
                     repeats=1, profile=False)
    result = run_bench(spec)
    assert [row["variant"] for row in result.rows] == ["default", "tomesd@0.5", "todo-avg@0.5", "bound@0.5"]
    assert "--methods tomesd@0.5 todo@0.5:mode=avg bound@0.5" in result.meta["command"]


def test_methods_and_ratios_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "tiny", "--methods", "turbo@0.5", "--ratios", "0.7"])
    assert exit_info.value.code == 2 and "either --methods or --ratios" in capsys.readouterr().err


def test_compile_times_compilation_apart_from_the_steps_on_the_tiny_model():
    spec = BenchSpec(model="tiny", sizes=((32, 32),), methods=("bound@0.5",), repeats=2, profile=False,
                     compile="eager")
    result = run_bench(spec)
    for row in result.rows:
        assert row["step"]["compile_s"] > 0 and row["step"]["recompiles"] == 0, row["variant"]
        assert row["step"]["min"] < row["step"]["compile_s"]
    assert "| compile s |" in format_report(result) and "--compile eager" in result.meta["command"]


def test_regional_compile_compiles_the_transformer_blocks_only(monkeypatch):
    """``compile_scope="blocks"``: diffusers' compile_repeated_blocks, not the whole UNet; the command says so."""
    from diffusers import UNet2DConditionModel

    scopes = []
    original = UNet2DConditionModel.compile_repeated_blocks
    monkeypatch.setattr(UNet2DConditionModel, "compile_repeated_blocks",
                        lambda self, **kw: scopes.append("blocks") or original(self, **kw))
    monkeypatch.setattr(UNet2DConditionModel, "compile", lambda self, **kw: scopes.append("unet"))
    spec = BenchSpec(model="tiny", sizes=((32, 32),), methods=("turbo@0.5",), repeats=1, profile=False,
                     compile="eager", compile_scope="blocks")
    result = run_bench(spec)
    assert scopes == ["blocks"]
    assert all(row["step"]["compile_s"] > 0 for row in result.rows)
    assert "--compile eager --compile-scope blocks" in result.meta["command"]
    assert any("compile_repeated_blocks" in note for note in result.notes)


def test_compile_mode_reaches_torch_compile_and_the_command(monkeypatch):
    """``--compile-mode reduce-overhead`` (CUDA graphs) is passed on to torch.compile and written in the command."""
    from diffusers import UNet2DConditionModel

    seen = []
    monkeypatch.setattr(UNet2DConditionModel, "compile", lambda self, **kw: seen.append(kw))
    spec = BenchSpec(model="tiny", sizes=((32, 32),), methods=("turbo@0.5",), repeats=1, profile=False,
                     compile="inductor", compile_mode="reduce-overhead")
    result = run_bench(spec)
    assert seen == [{"backend": "inductor", "mode": "reduce-overhead"}]
    assert "--compile inductor --compile-mode reduce-overhead" in result.meta["command"]
    with pytest.raises(ValueError, match="compile mode 'reduce-overhead' needs --compile"):
        BenchSpec(compile_mode="reduce-overhead").validate()
    with pytest.raises(ValueError, match="compile mode must be one of"):
        BenchSpec(compile="inductor", compile_mode="fast").validate()


def test_todo_and_the_bound_run_the_kernel_of_the_processors_they_replace():
    from diffusers.models.attention_processor import XFormersAttnProcessor

    from turbo_diffusion.harness.methods import parse_method

    from .conftest import tiny_sd15_unet

    unet = tiny_sd15_unet()
    for label in ("todo@0.5", "bound@0.5"):
        method = parse_method(label).at_grid((4, 4))
        method.install(unet)
        assert not isinstance(next(iter(unet.attn_processors.values()))._inner, XFormersAttnProcessor)
        method.uninstall(unet)
        unet.set_attn_processor(XFormersAttnProcessor())  # as diffusers' xformers switch leaves it
        method.install(unet)
        assert isinstance(next(iter(unet.attn_processors.values()))._inner, XFormersAttnProcessor)
        method.uninstall(unet)
        assert all(isinstance(p, XFormersAttnProcessor) for p in unet.attn_processors.values())
        unet.set_default_attn_processor()


def test_noisy_rows_are_flagged_with_how_to_get_a_clean_number(bench_run):
    _, _, png = bench_run
    result = read_json(png.with_suffix(".json"))
    for row in result.rows:  # a quiet run, but for one row
        for measure in ("step", "generation"):
            row[measure] |= {"max": row[measure]["min"], "spread": 1.0, "noisy": False}
    turbo = result.rows[1]
    turbo["step"] |= {"max": turbo["step"]["min"] * 6, "spread": 6.0, "noisy": True}
    report = format_report(result)
    assert re.search(r"\| turbo \| 0.5 \|.*\| 6\.00x noisy \|", report)
    assert "warning: noisy: turbo@0.5 (step): " in report and "--repeats 10" in report


def test_profiler_chatter_stays_off_stderr_and_other_output_passes(capfd):
    def call():
        torch.ones(8).sum()
        print("kept", file=sys.stderr, flush=True)

    phase_breakdown(call, torch.device("cpu"))
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "kept" in err


def test_bench_says_what_it_does_before_the_long_work(capsys):
    assert main(["bench", "--model", "tiny", "--sizes", "32", "--methods", "bound@0.5", "--repeats", "1",
                 "--no-profile", "--no-progress"]) == 0
    stages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("turbo-diffusion bench: ")]
    assert stages == ["turbo-diffusion bench: importing torch, diffusers and transformers",
                      "turbo-diffusion bench: building tiny (random weights; about 1 s on a 2-core CPU); then every "
                      "variant is primed, warmed up and timed"]


def test_bench_json_writes_infinity_as_a_string_as_compare_does(bench_run, tmp_path):
    _, _, png = bench_run
    result = read_json(png.with_suffix(".json"))
    result.rows[0]["step"]["of_bound"] = math.inf
    write_json(result, tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text())["rows"][0]["step"]["of_bound"] == "inf"


def test_a_record_saved_before_methods_reads_back_as_methods(bench_run, tmp_path):
    """Runs recorded with ratios/turbo/variants/todo_mode in their spec (benchmarks/results) still read, their
    older flags spelled as methods in the one place that knows them."""
    _, record, _ = bench_run
    spec = {k: v for k, v in record["spec"].items() if k != "methods"}
    spec |= {"ratios": [0.5, 0.7], "turbo": ["semantic=none,alpha=0"], "variants": ["turbo", "bound"],
             "todo_mode": "nearest"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record | {"spec": spec}))
    result = read_json(path)
    assert result.spec.methods == ("turbo@0.5", "turbo@0.5:semantic=none,alpha=0", "bound@0.5", "turbo@0.7",
                                   "turbo@0.7:semantic=none,alpha=0", "bound@0.7")
    assert result.spec.ratios == (0.5, 0.7) and result.rows == record["rows"]
