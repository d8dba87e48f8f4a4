"""Turbo on a CUDA GPU: the same plans and images as on the CPU, fp16, the xformers backend, inductor and bench.

Skipped where there is no GPU (CI never has one); run on the lent H100/H200 (benchmarks/gpu_session.sh). Each
check compares against a reference that a broken CUDA path would miss: the CPU's fp32 result, the SDPA kernel,
eager execution, or the baseline's images by a margin.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from turbo_diffusion import TurboProcessor, apply_turbo, remove_turbo
from turbo_diffusion.kernels import xformers_available
from turbo_diffusion.model_names import SHAPES_FOLDER

from .conftest import run, tiny_sd15_unet, tiny_sdxl_unet, unet_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_xformers = pytest.mark.skipif(not xformers_available(), reason="needs xformers (turbo-diffusion[xformers])")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _to_cuda(value):
    """A tensor, or a (nested) tuple/dict of them, moved to the GPU."""
    if torch.is_tensor(value):
        return value.cuda()
    if isinstance(value, dict):
        return {k: _to_cuda(v) for k, v in value.items()}
    return tuple(_to_cuda(v) for v in value)


@pytest.mark.parametrize("build", [tiny_sd15_unet, tiny_sdxl_unet], ids=["sd15", "sdxl"])
def test_turbo_on_cuda_gives_the_cpu_result(build):
    """Same weights and inputs: Turbo's fp32 output on the GPU is the CPU's, far closer to it than merging moves
    the output away from the baseline (a plan or restore that went wrong on CUDA would land at that distance)."""
    unet = build()
    args, kwargs = unet_args(unet, 32, 32, 2)
    baseline = run(unet, args, kwargs)
    apply_turbo(unet, ratio=0.5)
    cpu = run(unet, args, kwargs)
    gpu = run(unet.cuda(), _to_cuda(args), _to_cuda(kwargs)).cpu()
    merge_effect = _relative(cpu, baseline)
    assert merge_effect > 1e-3, "Turbo changed nothing: the test would not see a wrong plan"
    assert _relative(gpu, cpu) < 0.05 * merge_effect


def test_fp16_on_cuda_stays_close_to_fp32():
    unet = tiny_sd15_unet().cuda()
    apply_turbo(unet, ratio=0.5)
    args, kwargs = _to_cuda(unet_args(unet, 32, 32, 2))
    full = run(unet, args, kwargs)
    half = run(unet.half(), tuple(a.half() if a.is_floating_point() else a for a in args),
               {k: v.half() for k, v in kwargs.items()})
    assert torch.isfinite(half).all()
    assert _relative(half, full) < 0.02


@needs_xformers
@pytest.mark.parametrize("fields", [{}, {"merge_crossattn": True, "merge_mlp": True}], ids=["default", "wider"])
def test_xformers_backend_matches_sdpa(fields):
    unet = tiny_sd15_unet().cuda().half()
    args, kwargs = _to_cuda(unet_args(unet, 32, 32, 2, dtype=torch.float16))
    unet.set_attn_processor(TurboProcessor(ratio=0.5, backend="sdpa", **fields))
    sdpa = run(unet, args, kwargs)
    unet.set_attn_processor(TurboProcessor(ratio=0.5, backend="xformers", **fields))
    xformers = run(unet, args, kwargs)
    assert _relative(xformers, sdpa) < 1e-2


@needs_xformers
def test_pipeline_xformers_switch_keeps_turbo_on_cuda():
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion import TurboStableDiffusionPipeline

    if not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")):
        pytest.skip("the shapes weights are not in the package")
    pipe = TurboStableDiffusionPipeline.from_pretrained(SHAPES_FOLDER, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    prompt = "a large red circle at the top left, on a white background"

    def image():
        out = pipe(prompt, num_inference_steps=6, generator=torch.Generator("cuda").manual_seed(0),
                   output_type="np").images[0]
        return out

    sdpa = image()
    pipe.enable_xformers_memory_efficient_attention()
    processors = set(map(type, pipe.unet.attn_processors.values()))
    assert processors == {TurboProcessor}, processors
    assert {p.backend for p in pipe.unet.attn_processors.values()} == {"xformers"}
    assert np.abs(image() - sdpa).mean() < 0.02
    assert isinstance(pipe, StableDiffusionPipeline)


def test_inductor_compile_on_cuda_matches_eager_without_recompiling():
    """Inductor's fused kernels round differently, which can flip a near-tie in the plan (one token merged
    elsewhere: seen on an H200, 14 of 8192 values off by 5e-3), so the bar is the one above: far closer to eager
    than merging is to the baseline."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    unet = tiny_sd15_unet().cuda()
    (sample, _), kwargs = _to_cuda(unet_args(unet, 32, 32, 2))
    steps = (900, 800, 700, 600)
    baseline = [run(unet, (sample, torch.tensor(t)), kwargs) for t in steps]
    apply_turbo(unet, ratio=0.5, plan_every=2)
    eager = [run(unet, (sample, torch.tensor(t)), kwargs) for t in steps]
    compiled = torch.compile(unet, fullgraph=True)
    before = int(counters["stats"]["unique_graphs"])
    outputs = [run(compiled, (sample, torch.tensor(t)), kwargs) for t in steps]
    assert int(counters["stats"]["unique_graphs"]) - before == 1
    for out, ref, base in zip(outputs, eager, baseline, strict=True):
        assert _relative(out, ref) < 0.05 * _relative(ref, base)
    torch._dynamo.reset()


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")),
                    reason="the shapes weights are not in the package")
def test_shapes_on_cuda_fp16_keeps_the_regression_margin():
    """The quality regression test's image margin (tests/test_quality.py, set on the CPU in fp32) holds on the GPU
    in fp16, and a wrong restore still breaks it."""
    from diffusers import StableDiffusionPipeline

    from turbo_diffusion.harness.fidelity import psnr
    from turbo_diffusion.shapes.evaluate import eval_scenes, generate

    from .test_quality import MIN_PSNR, STEPS, WRONG_RESTORES, _wrong_restore

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(16)

    def mean_psnr(images, reference):  # as tests/test_quality.py measures it
        return sum(min(psnr(a, b), 60.0) for a, b in zip(images, reference, strict=True)) / len(images)

    baseline = generate(pipe, scenes, steps=STEPS)
    apply_turbo(pipe, ratio=0.5)
    try:
        turbo = generate(pipe, scenes, steps=STEPS)
        with _wrong_restore(WRONG_RESTORES["mirrored"]):
            mirrored = generate(pipe, scenes, steps=STEPS)
    finally:
        remove_turbo(pipe)
    assert mean_psnr(turbo, baseline) > MIN_PSNR
    assert mean_psnr(mirrored, baseline) < mean_psnr(turbo, baseline) - 1.0


def test_bench_runs_on_cuda(tmp_path, capsys):
    import json

    from turbo_diffusion.cli import main

    args = ["bench", "--model", "tiny", "--device", "cuda", "--dtype", "float16", "--sizes", "64", "--repeats", "1",
            "--json", str(tmp_path / "b.json")]
    if xformers_available():
        args += ["--attention", "xformers"]
    assert main(args) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert {row["family"] for row in result["rows"]} >= {"default", "turbo", "bound"}
    assert all(row["step"]["seconds"] for row in result["rows"])


# -- issue 22: CUDA graphs, host syncs, the fused plan -------------------------------------------------------------
GRAPH_CONFIGS = {"default": {}, "plan_every=2": {"plan_every": 2}, "text": {"semantic": "text"},
                 "text+cross+mlp": {"semantic": "text", "merge_crossattn": True, "merge_mlp": True, "plan_every": 2},
                 "kv": {"mode": "kv", "plan_every": 3}, "proportional": {"proportional_attn": True}}


@pytest.mark.parametrize("fields", GRAPH_CONFIGS.values(), ids=GRAPH_CONFIGS.keys())
def test_reduce_overhead_captures_turbo_and_replays_the_eager_result(fields):
    """torch.compile(mode="reduce-overhead") records CUDA graphs with Turbo on, in every config that keeps state
    from step to step: no graph is skipped (a mutated non-static input or a host read would skip it), and the
    replayed generation equals the eager one."""
    from torch._dynamo.utils import counters

    from turbo_diffusion import turbo_generation

    torch._dynamo.reset()
    counters.clear()
    unet = tiny_sd15_unet().cuda()
    apply_turbo(unet, **fields)
    (sample, _), kwargs = _to_cuda(unet_args(unet, 32, 32, 2))
    timesteps = (900, 800, 700, 600, 500)

    def generation(model):
        with turbo_generation(unet), torch.no_grad():
            return [model(sample, torch.tensor(t, device="cuda"), **kwargs).sample.clone() for t in timesteps]

    eager = generation(unet)
    compiled = torch.compile(unet, mode="reduce-overhead", fullgraph=True)
    generation(compiled)  # records
    replayed = generation(compiled)
    assert counters["inductor"]["cudagraph_skips"] == 0
    for out, ref in zip(replayed, eager, strict=True):
        assert _relative(out, ref) < 1e-3
    torch._dynamo.reset()


def test_no_config_synchronises_the_host_with_the_device():
    """CUDA's sync debug mode raises at any operation that waits for the device."""
    from turbo_diffusion import turbo_generation

    unet = tiny_sd15_unet().cuda()
    (sample, _), kwargs = _to_cuda(unet_args(unet, 32, 32, 2))
    timesteps = [torch.tensor(t, device="cuda") for t in (900, 800, 700)]  # made before: a copy from the host syncs
    for fields in GRAPH_CONFIGS.values():
        apply_turbo(unet, **fields)
        run(unet, (sample, timesteps[0]), kwargs)  # caches and storage first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with turbo_generation(unet), torch.no_grad():
                for t in timesteps:
                    unet(sample, t, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_fused_plan_on_cuda_gives_the_eager_result():
    unet = tiny_sd15_unet().cuda()
    args, kwargs = _to_cuda(unet_args(unet, 32, 32, 2))
    apply_turbo(unet)
    eager = run(unet, args, kwargs)
    apply_turbo(unet, fused_plan=True)
    assert _relative(run(unet, args, kwargs), eager) < 1e-3
