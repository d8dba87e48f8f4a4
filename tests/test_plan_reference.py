"""The lean plan merges what the plan before it merged (tests/reference_plan.py keeps that code): the same tokens
into the same destinations, with bit-identical merge and restore, so benchmarks/QUALITY.md's study still describes
the shipped method."""

import pytest
import torch
from diffusers.models.attention_processor import Attention

import turbo_diffusion.processor as processor_module
from turbo_diffusion import apply_turbo, turbo_generation
from turbo_diffusion.core import merged_count, partition_tokens, plan_merge, seeded_offsets, window_count, window_grid
from turbo_diffusion.processor import _attention_received

from .conftest import run, tiny_sd15_unet, tiny_sdxl_unet, unet_args
from .reference_plan import _attention_received as reference_attention_received
from .reference_plan import reference_plan

SHAPES = [(8, 8), (16, 16), (33, 17), (12, 20), (5, 3), (1, 7)]


def lean_plan(attn, x, h, w, num_merge, *, alpha, semantic, timestep, radius, use_rand, seed=0):
    grid = window_grid(h, w, 2, 2, radius)
    offsets = seeded_offsets(grid, seed, timestep) if use_rand else None
    values = _attention_received(attn, x) if semantic and alpha > 0 else None
    return plan_merge(x, partition_tokens(grid, offsets), num_merge, values, alpha)


def assert_same_plan(old, new, x):
    assert old.num_merged == new.num_merged and old.num_kept == new.num_kept
    for b in range(x.shape[0]):
        assert set(old.merged_positions[b].tolist()) == set(new.merged_positions[b].tolist())
    # the destinations lead the merged layout, in window order, in both
    merged = old.merge(x)
    assert torch.equal(merged, new.merge(x))
    y = torch.randn_like(merged)
    assert torch.equal(old.restore(y), new.restore(y))
    assert torch.equal(old.sizes, new.sizes)


@pytest.mark.parametrize(("h", "w"), SHAPES)
@pytest.mark.parametrize("radius", [1, None, 2])
@pytest.mark.parametrize(("alpha", "semantic"), [(0.0, False), (1.0, True), (2.5, True)])
@pytest.mark.parametrize("use_rand", [True, False])
def test_lean_plan_merges_what_the_old_plan_merged(h, w, radius, alpha, semantic, use_rand):
    for seed in range(4):
        torch.manual_seed(seed)
        attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
        x = torch.randn(2, h * w, 32)
        timestep = torch.tensor([25.0 * seed + 1])
        r = merged_count(h * w, window_count(h, w), 0.5)
        if r == 0:
            continue
        kwargs = dict(alpha=alpha, semantic=semantic, timestep=timestep, radius=radius, use_rand=use_rand)
        assert_same_plan(reference_plan(attn, x, h, w, r, **kwargs), lean_plan(attn, x, h, w, r, **kwargs), x)


def test_semantic_value_is_the_old_one_bit_for_bit():
    for seed in range(8):
        torch.manual_seed(seed)
        attn = Attention(query_dim=64, heads=8, dim_head=8).eval()
        x = torch.randn(3, 24 * 24, 64)
        assert torch.equal(_attention_received(attn, x), reference_attention_received(attn, x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_plans_are_the_old_ones_too(dtype):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval().to(dtype)
    x = torch.randn(2, 16 * 16, 32).to(dtype)
    kwargs = dict(alpha=1.0, semantic=True, timestep=torch.tensor([500.0]), radius=1, use_rand=True)
    old, new = reference_plan(attn, x, 16, 16, 128, **kwargs), lean_plan(attn, x, 16, 16, 128, **kwargs)
    assert_same_plan(old, new, x)


@pytest.mark.parametrize("make_unet", [tiny_sd15_unet, tiny_sdxl_unet])
@pytest.mark.parametrize("fields", [{}, {"alpha": 0.0}, {"match_radius": None}, {"use_rand": False},
                                    {"max_downsample": 4}], ids=["default", "alpha0", "global", "fixed", "deeper"])
def test_every_plan_of_a_unet_denoising_loop_is_the_old_one(monkeypatch, make_unet, fields):
    """Each block's plan, on the features it really sees over three steps of a generation, against the old plan
    function on the same features."""
    unet = make_unet()
    apply_turbo(unet, **fields)
    checked = []
    original = processor_module.TurboProcessor._new_plan

    def both(self, attn, x, level, num_merge, call, state):
        plan = original(self, attn, x, level, num_merge, call, state)
        cfg = self.config
        old = reference_plan(attn, x, level.height, level.width, num_merge, alpha=cfg.alpha,
                             semantic=cfg.semantic == "attention", seed=cfg.seed, timestep=call.timestep,
                             radius=cfg.match_radius, use_rand=cfg.use_rand)
        assert_same_plan(old, plan, x)
        checked.append(level.downsample)
        return plan

    monkeypatch.setattr(processor_module.TurboProcessor, "_new_plan", both)
    args, kwargs = unet_args(unet, 40, 24)
    with turbo_generation(unet):
        for t in (900, 600, 300):
            run(unet, (args[0], torch.tensor(t)), kwargs)
    assert checked and (fields.get("max_downsample") != 4 or len(set(checked)) > 1)
