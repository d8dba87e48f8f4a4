"""fused_plan=True: the plan compiled with inductor, one graph per grid shape, the eager indices (issue 22)."""

import re

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._inductor.utils import run_and_get_code

import turbo_diffusion.processor as processor_module
from turbo_diffusion import TurboConfig, apply_turbo, turbo_generation
from turbo_diffusion.core import partition_tokens, seeded_offsets, window_grid
from turbo_diffusion.core.fused import block_plan, compiled_block_plan

from .conftest import run, tiny_sd15_unet, unet_args


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    compiled_block_plan.cache_clear()
    yield
    torch._dynamo.reset()
    compiled_block_plan.cache_clear()


def kernel_calls(source: str) -> list[str]:
    """The kernel calls of an inductor wrapper's ``call``: its fused C++ kernels and the aten kernels it calls."""
    body = source[source.index("def call("):]
    calls = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#") or line.startswith("assert") or line.startswith("def "):
            continue
        if re.match(r"(\w+ = )?(cpp_fused_\w+|extern_kernels\.\w+|torch\.ops\.aten\.[\w.]+|aten\.[\w.]+)\(", line):
            calls.append(line.split("(")[0])
    return calls


def test_the_compiled_plan_is_a_dozen_kernel_calls_with_the_eager_indices():
    torch.manual_seed(0)
    channels, heads = 64, 4
    x = torch.randn(2, 32 * 32, channels)
    weights = dict(query_weight=torch.randn(channels, channels) * 0.1, query_bias=None,
                   key_weight=torch.randn(channels, channels) * 0.1, heads=heads, scale=(channels // heads) ** -0.5)
    grid = window_grid(32, 32, 2, 2, 1)
    partition = partition_tokens(grid, seeded_offsets(grid, 0, torch.tensor([500.0])))
    eager = block_plan(x, partition, 512, 1.0, **weights)
    fused, sources = run_and_get_code(compiled_block_plan(), x, partition, 512, 1.0, **weights)
    for a, b in zip(fused[0], eager[0], strict=True):
        assert torch.equal(a, b)
    calls = kernel_calls(sources[-1])
    assert 0 < len(calls) <= 12, calls


def test_fused_plan_merges_as_the_eager_plan_and_compiles_once_for_a_generation():
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    timesteps = (900, 800, 700, 600)

    def generation(fields):
        apply_turbo(unet, **fields)
        with turbo_generation(unet):
            return [run(unet, (args[0], torch.tensor(t)), kwargs) for t in timesteps]

    eager = generation({})
    fused = generation({"fused_plan": True})
    # one grid shape: one graph for every block of every step (the timestep enters as a tensor)
    assert len(_debug_get_cache_entry_list(block_plan.__code__)) == 1
    for out, ref in zip(fused, eager, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_plan_is_a_checked_switch_and_layers_it_cannot_fuse_plan_eagerly(caplog):
    assert TurboConfig(fused_plan=True).fused_plan is True
    with pytest.raises(ValueError, match="fused_plan"):
        TurboConfig(fused_plan="yes")
    peft = pytest.importorskip("peft")
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k"], init_lora_weights=False))
    apply_turbo(unet)
    eager = run(unet, args, kwargs)
    apply_turbo(unet, fused_plan=True)
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        assert torch.equal(run(unet, args, kwargs), eager)
    assert "plan in eager mode" in caplog.text
    assert processor_module  # the eager path is the processor's own
