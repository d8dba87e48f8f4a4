"""mode="kv" (proportional attention on merged keys/values) and plan_every (plan reuse across steps)."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import turbo_diffusion.processor as processor_module
from turbo_diffusion import TurboConfig, TurboProcessor, apply_turbo, turbo_generation

from .conftest import run, tiny_sd15_unet, unet_args


def window_copies(side=16, channels=32, batch=2):
    """(B, side*side, C) tokens where every 2x2 window holds copies of one random vector."""
    base = torch.randn(batch, (side // 2) ** 2, channels, generator=torch.Generator().manual_seed(0))
    r, c = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    return base[:, (r // 2) * (side // 2) + c // 2]


@pytest.mark.parametrize("ratio", [0.5, 0.75])
@pytest.mark.parametrize("fields", [{"mode": "kv"}, {"proportional_attn": True}], ids=["kv", "tokens"])
def test_proportional_attention_with_duplicate_tokens_equals_full_attention(ratio, fields):
    # Merged tokens are exact copies of those they replaced, and proportional attention (+log size) counts each
    # as often as they were: the result (kv: every query kept; tokens: restored rows) must be the unmerged one.
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    x = window_copies()
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x)
        merged = TurboProcessor(ratio=ratio, alpha=0.0, **fields)(attn, x)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_without_proportional_attention_unequal_sizes_change_the_result():
    # At ratio 0.5 some destinations absorb more sources than others; "tokens" mode weighs each merged key once.
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    x = window_copies()
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x)
        tokens = TurboProcessor(ratio=0.5, alpha=0.0)(attn, x)
    assert (tokens - expected).abs().max() > 1e-3


def test_proportional_attention_is_a_checked_switch_that_changes_the_unet_output():
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    apply_turbo(unet)
    plain = run(unet, args, kwargs)
    apply_turbo(unet, proportional_attn=True)
    proportional = run(unet, args, kwargs)
    assert torch.isfinite(proportional).all() and (proportional - plain).abs().max() > 1e-5
    with pytest.raises(ValueError, match="proportional_attn must be True or False, got 'yes'"):
        TurboConfig(proportional_attn="yes")


def test_kv_mode_changes_the_unet_output_and_needs_only_self_attention():
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    baseline = run(unet, args, kwargs)
    apply_turbo(unet, mode="kv")
    kv = run(unet, args, kwargs)
    apply_turbo(unet)
    tokens = run(unet, args, kwargs)
    assert torch.isfinite(kv).all()
    assert (kv - baseline).abs().max() > 1e-5 and not torch.equal(kv, tokens)
    with pytest.raises(ValueError, match="mode='kv'"):
        TurboConfig(mode="kv", merge_mlp=True)


@pytest.fixture
def plans(monkeypatch):
    """Count plans made (plan_merge calls)."""
    made = []
    original = processor_module.plan_merge

    def spy(*args, **kwargs):
        made.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(processor_module, "plan_merge", spy)
    return made


def denoise(unet, timesteps, args, kwargs):
    """One generation: the UNet calls of a denoising loop (plans are reused only inside one)."""
    with turbo_generation(unet):
        return [run(unet, (args[0], torch.tensor(t)), kwargs) for t in timesteps]


def test_plan_every_reuses_plans_between_steps(plans):
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    apply_turbo(unet, plan_every=3)
    reused = denoise(unet, [900, 700, 500, 300, 100], args, kwargs)
    assert len(plans) == 2 * 3  # 3 merged blocks, planned at steps 0 and 3 only

    apply_turbo(unet, plan_every=1)
    plans.clear()
    fresh = denoise(unet, [900, 700, 500, 300, 100], args, kwargs)
    assert len(plans) == 5 * 3
    assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[3], fresh[3])  # same plan at planning steps
    assert not torch.equal(reused[1], fresh[1])  # step 1 merges with step 0's plan


def test_plan_cache_is_dropped_when_a_new_generation_starts(plans):
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    apply_turbo(unet, plan_every=10)
    first = denoise(unet, [900, 500], args, kwargs)
    assert len(plans) == 3
    second = denoise(unet, [900, 500], args, kwargs)  # a new generation plans afresh
    assert len(plans) == 6
    assert torch.equal(first[1], second[1])
    both = denoise(unet, [900, 500, 900, 500], args, kwargs)  # in one, t rising again starts it afresh
    assert len(plans) == 12 and torch.equal(both[3], first[1])


def test_plan_every_on_the_bare_processor_counts_unet_calls(plans):
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    unet.set_attn_processor(TurboProcessor(plan_every=2))
    denoise(unet, [900, 700, 500, 300], args, kwargs)
    assert len(plans) == 2 * 3
