"""torch.compile with Turbo on: no graph break, no recompilation across steps, the eager result (issue 9).

Graphs are counted with dynamo's cheap ``eager`` backend (no code generation); one test runs inductor.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from turbo_diffusion import apply_turbo, turbo_generation

from .conftest import run, tiny_sd15_unet, unet_args

CONFIGS = {"default": {}, "plan_every": {"plan_every": 3},
           "text+cross+mlp": {"semantic": "text", "merge_crossattn": True, "merge_mlp": True, "plan_every": 2}}
TIMESTEPS = [900, 850, 800, 750, 700, 650]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def calls(unet, args, kwargs, timesteps):
    return [run(unet, (args[0], torch.tensor(t)), kwargs) for t in timesteps]


def denoise(unet, args, kwargs, timesteps=TIMESTEPS):
    """One generation (plans are reused, and text mass read, only inside one)."""
    with turbo_generation(unet):
        return calls(unet, args, kwargs, timesteps)


def turbo_unet(fields, *shape):
    """A tiny SD 1.x UNet with Turbo applied, its inputs, and its eager outputs over TIMESTEPS."""
    unet = tiny_sd15_unet()
    apply_turbo(unet, **fields)
    args, kwargs = unet_args(unet, *shape)
    return unet, args, kwargs, denoise(unet, args, kwargs)


@pytest.mark.parametrize("fields", CONFIGS.values(), ids=CONFIGS.keys())
def test_turbo_unet_has_no_graph_break(fields):
    unet = tiny_sd15_unet()
    apply_turbo(unet, **fields)
    args, kwargs = unet_args(unet)
    with torch.no_grad():
        explanation = torch._dynamo.explain(unet)(*args, **kwargs)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("fields", CONFIGS.values(), ids=CONFIGS.keys())
def test_fullgraph_compile_compiles_once_for_all_steps_and_matches_eager(fields):
    unet, args, kwargs, eager = turbo_unet(fields)
    counter = CompileCounter()
    compiled = torch.compile(unet, backend=counter, fullgraph=True)
    outputs = denoise(compiled, args, kwargs)
    assert counter.frame_count == 1
    for out, ref in zip(outputs, eager, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_twenty_steps_at_one_resolution_do_not_recompile():
    unet = tiny_sd15_unet()
    apply_turbo(unet, plan_every=2)
    args, kwargs = unet_args(unet, 16, 16, 1)
    counter = CompileCounter()
    compiled = torch.compile(unet, backend=counter, fullgraph=True)
    denoise(compiled, args, kwargs, timesteps=torch.linspace(999, 0, 20).tolist())
    assert counter.frame_count == 1


@pytest.mark.parametrize("fields", [{}, {"plan_every": 3}], ids=["default", "plan_every"])
def test_compile_repeated_blocks_fullgraph_stops_compiling_after_the_first_step(fields):
    unet, args, kwargs, eager = turbo_unet(fields)
    counter = CompileCounter()
    unet.compile_repeated_blocks(backend=counter, fullgraph=True)
    with turbo_generation(unet):
        first = calls(unet, args, kwargs, TIMESTEPS[:1])
        after_first_step = counter.frame_count
        rest = calls(unet, args, kwargs, TIMESTEPS[1:])
    assert counter.frame_count == after_first_step
    for out, ref in zip(first + rest, eager, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_inductor_matches_eager_within_fp32_tolerance():
    unet, args, kwargs, eager = turbo_unet({"plan_every": 2}, 16, 16, 1)
    compiled = torch.compile(unet, fullgraph=True)
    for out, ref in zip(denoise(compiled, args, kwargs), eager, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_the_bare_processor_compiles_with_plan_every_and_matches_eager():
    """unet.set_attn_processor(TurboProcessor(plan_every=...)) under torch.compile (it used to raise), in a
    generation and outside one."""
    from turbo_diffusion import TurboProcessor

    unet = tiny_sd15_unet()
    unet.set_attn_processor(TurboProcessor(plan_every=3, semantic="text", merge_crossattn=True))
    args, kwargs = unet_args(unet)
    eager, lone = denoise(unet, args, kwargs), run(unet, args, kwargs)
    compiled = torch.compile(unet, backend=CompileCounter(), fullgraph=True)
    for out, ref in zip(denoise(compiled, args, kwargs), eager, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(compiled, args, kwargs), lone, rtol=1e-5, atol=1e-5)
