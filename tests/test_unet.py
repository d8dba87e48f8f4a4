"""Turbo on tiny SD 1.x- and SDXL-shaped UNets: equivalence, merging, removal, shapes, state."""

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor2_0

import turbo_diffusion.processor as processor_module
from turbo_diffusion import TurboConfig, TurboProcessor, apply_turbo, remove_turbo, turbo_config_of

from .conftest import run, tiny_sd15_unet, tiny_sdxl_unet, unet_args


@pytest.fixture
def merges(monkeypatch):
    """Record (tokens, merged) of every plan the processor makes."""
    seen = []
    original = processor_module.plan_merge

    def spy(metric, partition, num_merge, *args, **kwargs):
        plan = original(metric, partition, num_merge, *args, **kwargs)
        seen.append((metric.shape[1], plan.num_merged if plan is not None else 0))
        return plan

    monkeypatch.setattr(processor_module, "plan_merge", spy)
    return seen


@pytest.mark.parametrize("make_unet", [tiny_sd15_unet, tiny_sdxl_unet])
def test_ratio_zero_equals_default_processor(make_unet):
    unet = make_unet()
    args, kwargs = unet_args(unet)
    unet.set_attn_processor(AttnProcessor2_0())
    baseline = run(unet, args, kwargs)

    unet.set_attn_processor(TurboProcessor(ratio=0))
    assert (run(unet, args, kwargs) - baseline).abs().max() <= 1e-5

    unet.set_attn_processor(AttnProcessor2_0())
    apply_turbo(unet, ratio=0)
    assert (run(unet, args, kwargs) - baseline).abs().max() <= 1e-5


@pytest.mark.parametrize("make_unet", [tiny_sd15_unet, tiny_sdxl_unet])
def test_default_config_merges_stays_finite_and_removal_is_exact(make_unet):
    unet = make_unet()
    args, kwargs = unet_args(unet)
    baseline = run(unet, args, kwargs)
    processors_before = unet.attn_processors

    apply_turbo(unet)
    merged = run(unet, args, kwargs)
    assert torch.isfinite(merged).all()
    assert (merged - baseline).abs().max() > 1e-4

    remove_turbo(unet)
    assert torch.equal(run(unet, args, kwargs), baseline)
    assert unet.attn_processors == processors_before
    assert not unet._forward_pre_hooks and not getattr(unet, "_diffusers_hook", None)


def test_sd15_merges_only_full_resolution_blocks_with_the_asked_count(sd15_unet, merges):
    apply_turbo(sd15_unet, ratio=0.5)
    run(sd15_unet, *unet_args(sd15_unet, 32, 32))
    # 1 down + 2 up transformer blocks at the 32x32 level; none at 16x16.
    assert merges == [(1024, 512)] * 3


def test_sdxl_default_merges_at_the_2x_level(sdxl_unet, merges):
    apply_turbo(sdxl_unet, ratio=0.6)
    run(sdxl_unet, *unet_args(sdxl_unet, 32, 32))
    # SDXL has no attention at full resolution: 2 layers in the down block, 2 x 2 in the up blocks, 16x16 each.
    assert merges == [(256, int(0.6 * 256))] * 6


def test_sdxl_max_downsample_one_is_an_error_not_a_silent_no_op(sdxl_unet):
    with pytest.raises(ValueError, match="max_downsample=1 merges nothing.*downsample 2"):
        apply_turbo(sdxl_unet, max_downsample=1)


def test_max_downsample_two_merges_both_attention_levels(sd15_unet, merges):
    apply_turbo(sd15_unet, max_downsample=2)
    run(sd15_unet, *unet_args(sd15_unet, 32, 32))
    assert sorted({n for n, _ in merges}) == [256, 1024]


@pytest.mark.parametrize(("height", "width"), [(40, 64), (64, 40), (33, 17), (30, 30)])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_shapes_and_batches_merge_and_stay_finite(sd15_unet, merges, height, width, batch):
    args, kwargs = unet_args(sd15_unet, height, width, batch)
    baseline = run(sd15_unet, args, kwargs)
    apply_turbo(sd15_unet)
    out = run(sd15_unet, args, kwargs)
    assert out.shape == baseline.shape and torch.isfinite(out).all()
    assert merges and all(n == height * width and m == int(0.5 * n) for n, m in merges)
    assert (out - baseline).abs().max() > 0


@pytest.mark.parametrize("make_unet", [tiny_sd15_unet, tiny_sdxl_unet])
def test_bfloat16_on_cpu(make_unet):
    unet = make_unet().to(torch.bfloat16)
    apply_turbo(unet, merge_crossattn=True, merge_mlp=True)
    out = run(unet, *unet_args(unet, 40, 24, 2, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_all_zero_input_gives_no_nan(sd15_unet):
    apply_turbo(sd15_unet, semantic="text", merge_crossattn=True, merge_mlp=True)
    args, kwargs = unet_args(sd15_unet, 32, 32, 2)
    args = (torch.zeros_like(args[0]), args[1])
    kwargs["encoder_hidden_states"] = torch.zeros_like(kwargs["encoder_hidden_states"])
    for _ in range(2):  # the second call uses the first call's text mass
        assert torch.isfinite(run(sd15_unet, args, kwargs)).all()


@pytest.mark.parametrize("fields", [{}, {"semantic": "text"}, {"merge_crossattn": True, "merge_mlp": True}])
def test_same_seed_same_output(fields):
    outs = []
    for _ in range(2):
        unet = tiny_sd15_unet()
        apply_turbo(unet, seed=3, **fields)
        outs.append(run(unet, *unet_args(unet)))
    assert torch.equal(outs[0], outs[1])


def test_generation_is_reproducible_on_the_same_unet_and_seed_matters(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet, seed=1)
    first, again = run(sd15_unet, args, kwargs), run(sd15_unet, args, kwargs)
    assert torch.equal(first, again)  # re-seeded from (seed, timestep) at each call
    apply_turbo(sd15_unet, seed=2)
    assert not torch.equal(run(sd15_unet, args, kwargs), first)


def test_two_unets_with_different_configs_do_not_affect_each_other():
    a, b = tiny_sd15_unet(), tiny_sd15_unet()
    args, kwargs = unet_args(a)
    apply_turbo(a, ratio=0.3)
    alone = run(a, args, kwargs)
    apply_turbo(b, ratio=0.7, semantic="none", merge_mlp=True)
    b_out = run(b, args, kwargs)
    assert torch.equal(run(a, args, kwargs), alone)
    assert not torch.equal(b_out, alone)
    assert turbo_config_of(a).ratio == 0.3 and turbo_config_of(b).ratio == 0.7


def test_component_switches_change_the_output(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    outs = {}
    for name, fields in {"attn": {}, "cross": {"merge_crossattn": True}, "mlp": {"merge_mlp": True},
                         "only_mlp": {"merge_attn": False, "merge_mlp": True}}.items():
        apply_turbo(sd15_unet, **fields)
        outs[name] = run(sd15_unet, args, kwargs)
    for x, y in [("attn", "cross"), ("attn", "mlp"), ("mlp", "only_mlp")]:
        assert not torch.equal(outs[x], outs[y])


@pytest.mark.parametrize("semantic", ["attention", "text", "none"])
def test_semantic_modes_and_alpha_change_the_choice(sd15_unet, semantic):
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet, semantic=semantic, alpha=0.0)
    tome = run(sd15_unet, args, kwargs)
    apply_turbo(sd15_unet, semantic=semantic, alpha=50.0)
    run(sd15_unet, args, kwargs)  # "text" needs one step of cross-attention first
    heavy = run(sd15_unet, args, kwargs)
    if semantic == "none":
        assert torch.equal(heavy, tome)  # alpha ignored
    else:
        assert not torch.equal(heavy, tome)


def test_text_semantic_lays_the_prompts_content_tokens_over_the_guidance_batch():
    from turbo_diffusion.prompts import EncodedPrompt, content_mask

    encoded = EncodedPrompt(prompt=torch.tensor([[0, 5, 6, 9, 9]]), negative=torch.tensor([[0, 9, 9, 9, 9]]))
    # classifier-free guidance stacks [negative, prompt], each repeated per image
    assert content_mask(encoded, 4, special_ids=(0, 9)).tolist() == [
        [False] * 5, [False] * 5, [False, True, True, False, False], [False, True, True, False, False]]


def test_text_semantic_counts_every_token_but_the_start_for_prompts_given_as_embeddings():
    from turbo_diffusion.prompts import EncodedPrompt, content_mask

    encoded = EncodedPrompt(prompt=None, negative=None, negative_zeroed=True)
    assert content_mask(encoded, 2, special_ids=(0, 9)) is None  # nothing known: every row falls back
    encoded = EncodedPrompt(prompt=None, negative=torch.tensor([[0, 9, 9]]))
    assert content_mask(encoded, 2, special_ids=(0, 9)).tolist() == [[False] * 3, [False, True, True]]


def test_text_mass_is_forgotten_when_a_new_generation_starts(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet, semantic="text", alpha=5.0)
    t_high, t_low = torch.tensor(900), torch.tensor(100)
    first = run(sd15_unet, (args[0], t_high), kwargs)
    run(sd15_unet, (args[0], t_low), kwargs)
    # t goes up again: a new generation, which must start like the first one did
    assert torch.equal(run(sd15_unet, (args[0], t_high), kwargs), first)


def test_bare_processor_merges_square_latents_like_apply_turbo(sd15_unet, merges):
    args, kwargs = unet_args(sd15_unet, 32, 32)
    baseline = run(sd15_unet, args, kwargs)
    sd15_unet.set_attn_processor(TurboProcessor(ratio=0.5))
    out = run(sd15_unet, args, kwargs)
    assert merges == [(1024, 512)] * 3
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)


def test_bare_processor_accepts_a_per_layer_dict(sd15_unet, merges):
    turbo = TurboProcessor(ratio=0.5)
    sd15_unet.set_attn_processor({name: turbo for name in sd15_unet.attn_processors})
    run(sd15_unet, *unet_args(sd15_unet))
    assert merges == [(1024, 512)] * 3


@pytest.mark.parametrize(("height", "width"), [(40, 64), (33, 17), (20, 34)])
def test_bare_processor_never_crashes_on_other_shapes(sd15_unet, height, width):
    sd15_unet.set_attn_processor(TurboProcessor(ratio=0.5, merge_crossattn=True))
    for batch in (1, 3):
        out = run(sd15_unet, *unet_args(sd15_unet, height, width, batch))
        assert torch.isfinite(out).all()
    # and back to a square size: the reference level follows the resolution
    assert torch.isfinite(run(sd15_unet, *unet_args(sd15_unet, 16, 16))).all()


def test_module_classes_are_never_swapped(sd15_unet):
    apply_turbo(sd15_unet, merge_mlp=True)
    blocks = [m for m in sd15_unet.modules() if "TransformerBlock" in type(m).__name__]
    assert blocks and all(type(m) is BasicTransformerBlock for m in blocks)


def test_compile_repeated_blocks_keeps_working(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet, merge_mlp=True)
    eager = run(sd15_unet, args, kwargs)
    torch._dynamo.reset()
    sd15_unet.compile_repeated_blocks(backend="eager")
    compiled = run(sd15_unet, args, kwargs)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)


def test_lora_adapter_loads_after_apply_turbo(sd15_unet):
    peft = pytest.importorskip("peft")
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet)
    before = run(sd15_unet, args, kwargs)
    sd15_unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False))
    with_lora = run(sd15_unet, args, kwargs)
    assert torch.isfinite(with_lora).all() and not torch.equal(with_lora, before)
    remove_turbo(sd15_unet)
    assert torch.isfinite(run(sd15_unet, args, kwargs)).all()


def test_keyword_calls_reach_the_hook(sd15_unet, merges):
    apply_turbo(sd15_unet)
    (sample, timestep), kwargs = unet_args(sd15_unet, 40, 24)
    with torch.no_grad():
        sd15_unet(sample=sample, timestep=timestep, **kwargs)
    assert merges and merges[0][0] == 40 * 24


def test_apply_turbo_twice_replaces_and_remove_restores_original(sd15_unet):
    before = sd15_unet.attn_processors
    apply_turbo(sd15_unet, ratio=0.3)
    apply_turbo(sd15_unet, ratio=0.6)
    assert turbo_config_of(sd15_unet).ratio == 0.6
    remove_turbo(sd15_unet)
    assert sd15_unet.attn_processors == before and turbo_config_of(sd15_unet) is None


def test_unsupported_models_get_a_clear_type_error():
    from diffusers import SD3Transformer2DModel, UNet2DModel

    class FakeTransformerPipeline:
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                            caption_projection_dim=16, pooled_projection_dim=16, out_channels=4)

    with pytest.raises(TypeError, match="transformer-based.*UNet2DConditionModel"):
        apply_turbo(FakeTransformerPipeline())
    with pytest.raises(TypeError, match="supports UNet2DConditionModel"):
        apply_turbo(UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
    with pytest.raises(TypeError, match="supports UNet2DConditionModel"):
        apply_turbo(torch.nn.Linear(2, 2))


# -- issue 9 and 12: pass-through, removal, failed re-apply, replaced processors, threads, guards, warnings -----
def test_ratio_zero_over_the_classic_attn_processor_is_bit_for_bit(sd15_unet):
    from diffusers.models.attention_processor import AttnProcessor

    sd15_unet.set_attn_processor(AttnProcessor())
    args, kwargs = unet_args(sd15_unet)
    baseline = run(sd15_unet, args, kwargs)
    apply_turbo(sd15_unet, ratio=0)
    assert torch.equal(run(sd15_unet, args, kwargs), baseline)


def test_remove_turbo_takes_off_bare_turbo_processors(sd15_unet):
    args, kwargs = unet_args(sd15_unet)
    baseline = run(sd15_unet, args, kwargs)
    sd15_unet.set_attn_processor(TurboProcessor(ratio=0.5))
    assert turbo_config_of(sd15_unet) == TurboConfig(ratio=0.5)
    remove_turbo(sd15_unet)
    assert not any(isinstance(p, TurboProcessor) for p in sd15_unet.attn_processors.values())
    assert turbo_config_of(sd15_unet) is None
    assert torch.equal(run(sd15_unet, args, kwargs), baseline)


@pytest.mark.parametrize("bad", [{"max_downsample": 1}, {"backend": "xformers"}, {"ratio": 2.0}])
def test_a_failed_apply_turbo_leaves_the_previous_installation_working(sdxl_unet, bad):
    from turbo_diffusion.kernels import xformers_available

    if "backend" in bad and xformers_available():
        pytest.skip("xformers is installed here")
    args, kwargs = unet_args(sdxl_unet)
    apply_turbo(sdxl_unet, ratio=0.4)
    before = run(sdxl_unet, args, kwargs)
    with pytest.raises((ValueError, ImportError)):
        apply_turbo(sdxl_unet, **{"ratio": 0.4, **bad})
    assert turbo_config_of(sdxl_unet) == TurboConfig(ratio=0.4)
    assert torch.equal(run(sdxl_unet, args, kwargs), before)


@pytest.mark.parametrize(("replace", "named"), [
    (lambda unet: unet.set_attn_processor(AttnProcessor2_0()), "set_attn_processor"),
    (lambda unet: unet.set_attention_slice(2), "enable_attention_slicing"),
    (lambda unet: unet.fuse_qkv_projections(), "fuse_qkv_projections"),
])
def test_a_call_that_replaces_turbos_processors_turns_turbo_honestly_off(sd15_unet, caplog, replace, named):
    args, kwargs = unet_args(sd15_unet)
    apply_turbo(sd15_unet)
    replace(sd15_unet)
    replaced = sd15_unet.attn_processors
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        assert turbo_config_of(sd15_unet) is None
        assert turbo_config_of(sd15_unet) is None
    assert [r.getMessage() for r in caplog.records if named in r.getMessage()] != []
    assert len([r for r in caplog.records if "Turbo is off" in r.getMessage()]) == 1
    assert sd15_unet.attn_processors == replaced and not sd15_unet._forward_pre_hooks
    out = run(sd15_unet, args, kwargs)
    remove_turbo(sd15_unet)  # nothing of Turbo's is left to remove
    assert torch.equal(run(sd15_unet, args, kwargs), out)


def test_turbo_notices_replaced_processors_at_the_next_call_too(sd15_unet, merges):
    apply_turbo(sd15_unet)
    sd15_unet.set_attn_processor(AttnProcessor2_0())
    run(sd15_unet, *unet_args(sd15_unet))
    assert merges == [] and not sd15_unet._forward_pre_hooks


@pytest.mark.parametrize("make_slow", [lambda unet: unet.set_attention_slice(2),
                                       lambda unet: unet.fuse_qkv_projections()], ids=["sliced", "fused"])
def test_apply_turbo_over_sliced_or_fused_attention_merges_and_removes_back_to_it(sd15_unet, merges, make_slow):
    make_slow(sd15_unet)
    args, kwargs = unet_args(sd15_unet)
    before, processors = run(sd15_unet, args, kwargs), sd15_unet.attn_processors
    apply_turbo(sd15_unet)
    assert not torch.equal(run(sd15_unet, args, kwargs), before)
    assert merges == [(1024, 512)] * 3
    remove_turbo(sd15_unet)
    assert sd15_unet.attn_processors == processors
    assert torch.equal(run(sd15_unet, args, kwargs), before)


@pytest.mark.parametrize("fields", [{}, {"plan_every": 2}, {"semantic": "text", "merge_mlp": True}])
def test_two_threads_on_one_unet_give_the_sequential_outputs(sd15_unet, fields):
    import threading

    apply_turbo(sd15_unet, **fields)
    jobs = {"a": unet_args(sd15_unet, 32, 32, 1, seed=1), "b": unet_args(sd15_unet, 40, 24, 2, seed=2)}

    def generation(name):
        (sample, _), kwargs = jobs[name]
        return [run(sd15_unet, (sample, torch.tensor(t)), kwargs) for t in (900, 700, 500)]

    sequential = {name: generation(name) for name in jobs}
    concurrent, barrier = {}, threading.Barrier(2)

    def worker(name):
        barrier.wait()
        concurrent[name] = generation(name)

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in jobs:
        assert all(torch.equal(a, b) for a, b in zip(concurrent[name], sequential[name], strict=True))


def test_a_masked_self_attention_pays_for_no_plan(merges, caplog):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    x, mask = torch.randn(1, 64, 32), torch.zeros(1, 64, 64)
    with caplog.at_level("WARNING", logger="turbo_diffusion"), torch.no_grad():
        out = TurboProcessor(ratio=0.5)(attn, x, attention_mask=mask)
        expected = AttnProcessor2_0()(attn, x, attention_mask=mask)
    assert merges == [] and torch.equal(out, expected)
    assert "attention mask is not merged" in caplog.text


def test_the_mask_warning_does_not_silence_the_prompt_mask_warning(caplog):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    processor = TurboProcessor(ratio=0.5)
    call = processor.context.call()
    call.content_mask = lambda batch: torch.ones(1, 3, dtype=torch.bool)  # a prompt mask that does not fit
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        processor(attn, torch.randn(1, 64, 32), attention_mask=torch.zeros(1, 64, 64))
        processor._content_mask(call, 1, 7, torch.device("cpu"))
    assert "attention mask is not merged" in caplog.text
    assert "prompt token mask (1, 3) does not fit" in caplog.text


# -- copies ----------------------------------------------------------------------------------------------------


def test_a_deep_copy_of_a_turbo_unet_merges_as_the_original_and_comes_off_on_its_own():
    import copy

    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    baseline = run(unet, args, kwargs)
    apply_turbo(unet, alpha=2.0, merge_mlp=True)
    turbo = run(unet, args, kwargs)
    twin = copy.deepcopy(unet)
    torch.testing.assert_close(run(twin, args, kwargs), turbo, rtol=0, atol=0)  # merging, not silently plain
    assert turbo_config_of(twin) == turbo_config_of(unet)
    remove_turbo(twin)
    torch.testing.assert_close(run(twin, args, kwargs), baseline, rtol=0, atol=0)
    torch.testing.assert_close(run(unet, args, kwargs), turbo, rtol=0, atol=0)  # the original kept Turbo
    remove_turbo(unet)
    torch.testing.assert_close(run(unet, args, kwargs), baseline, rtol=0, atol=0)


def test_a_copy_taken_off_before_its_first_call_stays_plain_and_leaves_the_original_alone():
    import copy

    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    baseline = run(unet, args, kwargs)
    apply_turbo(unet)
    turbo = run(unet, args, kwargs)
    removed, defaulted = copy.deepcopy(unet), copy.deepcopy(unet)
    remove_turbo(removed)
    defaulted.set_default_attn_processor()
    for twin in (removed, defaulted):  # diffusers' default is AttnProcessor, a hair off SDPA's numbers
        torch.testing.assert_close(run(twin, args, kwargs), baseline, rtol=0, atol=1e-5)
        assert turbo_config_of(twin) is None and not twin._forward_pre_hooks
    torch.testing.assert_close(run(unet, args, kwargs), turbo, rtol=0, atol=0)
    assert turbo_config_of(unet) is not None
