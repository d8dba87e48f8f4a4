"""inspect_plans: what Turbo merged, block by block and step by step."""

import math

import pytest
import torch

from turbo_diffusion import PlanRecord, TurboProcessor, apply_turbo, inspect_plans, turbo_generation

from .conftest import run, unet_args


def steps(unet, count, **shape):
    """One generation of ``count`` UNet calls."""
    args, kwargs = unet_args(unet, **shape)
    with turbo_generation(unet):
        for t in torch.linspace(900, 100, count).tolist():
            run(unet, (args[0], torch.tensor(t)), kwargs)


def test_one_record_per_merged_block_and_unet_call(sd15_unet):
    apply_turbo(sd15_unet)
    with inspect_plans(sd15_unet) as records:
        steps(sd15_unet, 2, height=40, width=24)
    assert [(r.step, r.grid) for r in records] == [(0, (40, 24))] * 3 + [(1, (40, 24))] * 3
    assert records[0].block == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert all(isinstance(r, PlanRecord) for r in records)


def test_records_hold_the_merged_tokens_and_the_score_maps_on_the_cpu(sd15_unet):
    apply_turbo(sd15_unet, ratio=0.5, alpha=1.0)
    with inspect_plans(sd15_unet) as records:
        steps(sd15_unet, 1, height=32, width=32, batch=2)
    r = records[0]
    assert r.merged.shape == (2, 32, 32) and r.merged.device.type == "cpu"
    assert r.merged.flatten(1).sum(1).tolist() == [512, 512]
    assert r.merged.flatten(1).gather(1, r.merged_positions).all()
    destinations = r.redundancy.isnan()
    assert destinations.flatten(1).sum(1).tolist() == [256, 256]  # one per 2x2 window
    assert torch.equal(r.degree.isnan(), destinations) and not r.merged[destinations].any()
    assert r.semantic.isfinite().all() and r.semantic.max() == pytest.approx(1.0)
    torch.testing.assert_close(r.degree[~destinations], (r.redundancy - r.semantic)[~destinations])


def test_semantic_map_is_nan_when_turbo_measures_no_semantics(sd15_unet):
    apply_turbo(sd15_unet, semantic="none")
    with inspect_plans(sd15_unet) as records:
        steps(sd15_unet, 1)
    assert records[0].semantic.isnan().all() and not records[0].redundancy.isnan().all()


def test_reused_plans_are_marked(sd15_unet):
    apply_turbo(sd15_unet, plan_every=2)
    with inspect_plans(sd15_unet) as records:
        steps(sd15_unet, 3)
    assert [r.reused for r in records[::3]] == [False, True, False]
    assert records[3].degree.isnan().all() and torch.equal(records[3].merged, records[0].merged)


def test_nothing_is_recorded_outside_the_with_block(sd15_unet):
    apply_turbo(sd15_unet)
    with inspect_plans(sd15_unet) as records:
        pass
    steps(sd15_unet, 1)
    assert records == []
    assert [type(hook).__name__ for hook in sd15_unet._forward_pre_hooks.values()] == ["_CallStart"]


def test_bare_processors_are_inspected_with_their_layer_names(sd15_unet):
    sd15_unet.set_attn_processor(TurboProcessor())
    with inspect_plans(sd15_unet) as records:
        steps(sd15_unet, 2)
    assert len(records) == 6 and records[-1].step == 1
    assert records[0].block.endswith("transformer_blocks.0.attn1") and math.prod(records[0].grid) == 32 * 32


def test_inspecting_a_model_without_turbo_is_an_error(sd15_unet):
    with pytest.raises(ValueError, match="apply_turbo"), inspect_plans(sd15_unet):
        pass
