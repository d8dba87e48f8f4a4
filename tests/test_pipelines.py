"""Turbo pipelines and apply_turbo on diffusers pipelines, all built from tiny components (no downloads)."""

import inspect
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0

import turbo_diffusion.kernels as kernels_module
from turbo_diffusion import (
    TurboConfig,
    TurboProcessor,
    TurboStableDiffusionImg2ImgPipeline,
    TurboStableDiffusionPipeline,
    TurboStableDiffusionXLPipeline,
    apply_turbo,
    remove_turbo,
    turbo_config_of,
)
from turbo_diffusion.coexistence import INSTALLATIONS as _INSTALLATIONS
from turbo_diffusion.community import pipeline_file
from turbo_diffusion.kernels import xformers_available
from turbo_diffusion.models import _accepted, load_pipeline, tiny_components

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(height=64, width=96)  # non-square: an 8 x 12 latent


def build(cls, xl=False, **kwargs):
    pipe = cls(**_accepted(cls, tiny_components(xl=xl)), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_input():
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def generate(pipe, **kwargs):
    if isinstance(pipe, StableDiffusionImg2ImgPipeline | StableDiffusionInpaintPipeline):
        kwargs.setdefault("image", image_input())
        kwargs.setdefault("strength", 0.8)
    if isinstance(pipe, StableDiffusionInpaintPipeline):
        mask = torch.zeros(1, 1, 64, 96)
        mask[..., 16:48, 24:72] = 1
        kwargs.setdefault("mask_image", mask)
    if not isinstance(pipe, StableDiffusionImg2ImgPipeline):
        kwargs = SIZE | kwargs
    kwargs.setdefault("num_inference_steps", 2)
    return pipe("a red cat", generator=torch.manual_seed(0), output_type="np", **kwargs).images


CASES = [
    (TurboStableDiffusionPipeline, StableDiffusionPipeline, False),
    (TurboStableDiffusionImg2ImgPipeline, StableDiffusionImg2ImgPipeline, False),
    (TurboStableDiffusionXLPipeline, StableDiffusionXLPipeline, True),
]


@pytest.mark.parametrize(("turbo_cls", "base_cls", "xl"), CASES)
def test_turbo_pipeline_merges_and_disable_turbo_restores_the_baseline(turbo_cls, base_cls, xl):
    baseline = generate(build(base_cls, xl))
    pipe = build(turbo_cls, xl)
    assert isinstance(pipe, base_cls) and pipe.turbo_config == TurboConfig()
    merged = generate(pipe)
    assert merged.shape == baseline.shape and np.isfinite(merged).all()
    assert np.abs(merged - baseline).max() > 1e-4
    pipe.disable_turbo()
    assert pipe.turbo_config is None
    np.testing.assert_array_equal(generate(pipe), baseline)


def test_turbo_argument_forms():
    assert build(TurboStableDiffusionPipeline, turbo={"ratio": 0.3}).turbo_config.ratio == 0.3
    assert build(TurboStableDiffusionPipeline, turbo=TurboConfig(alpha=2.0)).turbo_config.alpha == 2.0
    assert build(TurboStableDiffusionPipeline, turbo=False).turbo_config is None
    with pytest.raises(ValueError, match="ratio"):
        build(TurboStableDiffusionPipeline, turbo={"ratio": 1.5})


def test_enable_turbo_fields_override_the_current_config():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.3, "alpha": 2.0})
    pipe.enable_turbo(ratio=0.6)
    assert (pipe.turbo_config.ratio, pipe.turbo_config.alpha) == (0.6, 2.0)
    pipe.disable_turbo()
    pipe.enable_turbo(seed=4)
    assert pipe.turbo_config == TurboConfig(seed=4)


def test_set_attn_processor_on_the_pipeline():
    pipe = build(TurboStableDiffusionPipeline, turbo=False)
    baseline = generate(pipe)
    pipe.set_attn_processor(TurboProcessor(ratio=0.3))
    assert pipe.turbo_config.ratio == 0.3
    assert not np.array_equal(generate(pipe), baseline)
    pipe.set_attn_processor(AttnProcessor2_0())
    assert pipe.turbo_config is None
    np.testing.assert_array_equal(generate(pipe), baseline)


def test_xformers_switch_fails_like_diffusers_and_keeps_turbo_where_xformers_cannot_run():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4})
    before = generate(pipe)
    with pytest.raises((ModuleNotFoundError, ValueError)):
        pipe.enable_xformers_memory_efficient_attention()
    assert pipe.turbo_config == TurboConfig(ratio=0.4)
    np.testing.assert_array_equal(generate(pipe), before)


def test_xformers_switch_moves_turbo_to_the_xformers_backend(monkeypatch):
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4})
    calls = []

    def fake_switch(valid, attention_op=None):  # stands in for diffusers' switch where xformers runs (CUDA)
        calls.append(valid)
        pipe.unet.set_attn_processor(AttnProcessor2_0())

    monkeypatch.setattr(pipe, "set_use_memory_efficient_attention_xformers", fake_switch)
    monkeypatch.setattr(kernels_module, "xformers_available", lambda: True)
    pipe.enable_xformers_memory_efficient_attention()
    assert calls == [True] and pipe.turbo_config == TurboConfig(ratio=0.4, backend="xformers")
    assert any(isinstance(p, TurboProcessor) for p in pipe.unet.attn_processors.values())
    pipe.disable_xformers_memory_efficient_attention()
    assert calls == [True, False] and pipe.turbo_config.backend == "auto"


def test_save_pretrained_round_trip(tmp_path):
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.35, "semantic": "none"})
    images = generate(pipe)
    pipe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "turbo_config.json").read_text())
    assert saved["ratio"] == 0.35 and saved["semantic"] == "none"
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"

    reloaded = TurboStableDiffusionPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.turbo_config == TurboConfig(ratio=0.35, semantic="none")
    np.testing.assert_allclose(generate(reloaded), images, atol=1e-6)
    assert TurboStableDiffusionPipeline.from_pretrained(tmp_path, turbo={"ratio": 0.2}).turbo_config.ratio == 0.2

    plain = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert type(plain) is StableDiffusionPipeline
    auto = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(auto) is StableDiffusionPipeline


def test_save_without_turbo_writes_no_turbo_config(tmp_path):
    build(TurboStableDiffusionPipeline, turbo=False).save_pretrained(tmp_path)
    assert not (tmp_path / "turbo_config.json").exists()


@pytest.mark.parametrize(("file", "base_cls", "xl", "turbo_name"), [
    ("turbo_stable_diffusion.py", StableDiffusionPipeline, False, "TurboStableDiffusionPipeline"),
    ("turbo_stable_diffusion_img2img.py", StableDiffusionImg2ImgPipeline, False, "TurboStableDiffusionImg2ImgPipeline"),
    ("turbo_stable_diffusion_xl.py", StableDiffusionXLPipeline, True, "TurboStableDiffusionXLPipeline"),
])
def test_custom_pipeline_file_loads_a_turbo_pipeline(tmp_path, file, base_cls, xl, turbo_name):
    build(base_cls, xl).save_pretrained(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(REPO / "pipelines" / file),
                                             trust_remote_code=True, turbo={"ratio": 0.4})
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == turbo_name and pipe.turbo_config.ratio == 0.4
    assert np.isfinite(generate(pipe)).all()


def test_a_pipeline_file_shipped_in_the_package_loads_from_any_directory(tmp_path, monkeypatch):
    build(StableDiffusionPipeline).save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)  # not the repository: "pipelines/..." would be read as a Hub id here
    pipe = DiffusionPipeline.from_pretrained("model", custom_pipeline=pipeline_file("turbo_stable_diffusion"),
                                             trust_remote_code=True, turbo={"ratio": 0.4})
    assert type(pipe).__name__ == "TurboStableDiffusionPipeline" and pipe.turbo_config.ratio == 0.4


def test_from_pipe_reuses_components_and_installs_turbo():
    plain = build(StableDiffusionPipeline)
    turbo = TurboStableDiffusionPipeline.from_pipe(plain, turbo={"ratio": 0.45})
    assert turbo.unet is plain.unet and turbo.turbo_config.ratio == 0.45


def _controlnet_pipe():
    components = tiny_components()
    controlnet = ControlNetModel.from_unet(components["unet"], conditioning_channels=3)
    pipe = StableDiffusionControlNetPipeline(**_accepted(StableDiffusionControlNetPipeline, components),
                                             controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("make", [_controlnet_pipe, lambda: build(StableDiffusionInpaintPipeline)],
                         ids=["controlnet", "inpaint"])
def test_apply_turbo_on_controlnet_and_inpainting_pipelines(make):
    pipe = make()
    extra = {"image": image_input()} if isinstance(pipe, StableDiffusionControlNetPipeline) else {}
    baseline = generate(pipe, **extra)
    apply_turbo(pipe)
    merged = generate(pipe, **extra)
    assert np.isfinite(merged).all() and np.abs(merged - baseline).max() > 1e-4
    remove_turbo(pipe)
    np.testing.assert_array_equal(generate(pipe, **extra), baseline)


def content_masks_seen(pipe, call):
    """Run ``call()``; return the prompt content mask Turbo laid out for each of its UNet calls."""
    context, seen = _INSTALLATIONS[pipe.unet].context, []

    def look(unet, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.append(context.call().content_mask(sample.shape[0]))

    handle = pipe.unet.register_forward_pre_hook(look, with_kwargs=True)  # runs after Turbo's own
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_text_semantic_learns_the_prompts_content_tokens_from_the_pipeline():
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text")
    mask = content_masks_seen(pipe, lambda: generate(pipe))[-1]
    # classifier-free guidance: [negative "" (no content), "a red cat" (7 character tokens, one per letter/word end)]
    assert mask.shape == (2, 77)
    assert mask[0].sum() == 0
    assert mask[1].sum() == 7 and mask[1, 1:8].all() and not mask[1, 0]


def test_text_semantic_never_uses_another_prompts_token_mask():
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text")
    embeds, negative = pipe.encode_prompt("a red cat", "cpu", 1, True)
    pipe.encode_prompt("a big blue dog", "cpu", 1, True)
    masks = content_masks_seen(pipe, lambda: pipe(prompt_embeds=embeds, negative_prompt_embeds=negative,
                                                  num_inference_steps=1, output_type="np", **SIZE))
    # the embeddings' token ids are unknown: every token but the start token counts, in both halves
    assert masks == [None]


def test_encode_prompt_calls_do_not_queue_up_token_ids():
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text")
    for _ in range(50):
        pipe.encode_prompt("a red cat", "cpu", 1, True)
    latest = _INSTALLATIONS[pipe.unet].pipelines[0].recorder.latest()
    assert latest.prompt.shape == (1, 77) and latest.negative.shape == (1, 77)
    remove_turbo(pipe)
    assert "encode_prompt" not in vars(pipe) and not hasattr(pipe.text_encoder, "_diffusers_hook")
    assert "forward" not in vars(pipe.text_encoder)  # no instance attribute left where the hook wrapped it


@pytest.mark.parametrize("cls", [TurboStableDiffusionPipeline, TurboStableDiffusionXLPipeline])
def test_turbo_argument_type_is_one_older_diffusers_can_read(cls):
    # diffusers 0.35 reads constructor types as classes or typing.Union only; a `|` union made its
    # from_pretrained raise KeyError('turbo') (found by running this suite on diffusers 0.35.2).
    annotation = inspect.signature(cls.__init__).parameters["turbo"].annotation
    assert typing.get_origin(annotation) is typing.Union
    assert set(typing.get_args(annotation)) == {TurboConfig, dict[str, typing.Any], bool, type(None)}


# -- issue 9: failed changes, replaced processors, configs and files -------------------------------------------
def test_a_failed_enable_turbo_leaves_turbo_as_it_was():
    pipe = build(TurboStableDiffusionXLPipeline, xl=True, turbo={"ratio": 0.4})
    with pytest.raises(ValueError, match="max_downsample=1 merges nothing"):
        pipe.enable_turbo(max_downsample=1)
    with pytest.raises(ValueError, match="ratio"):
        pipe.enable_turbo(ratio=3)
    assert pipe.turbo_config == TurboConfig(ratio=0.4)


@pytest.mark.parametrize("switch", ["enable_attention_slicing", "fuse_qkv_projections"])
def test_turbo_pipelines_keep_turbo_through_processor_switches(switch):
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4})
    plain = build(StableDiffusionPipeline)
    getattr(plain, switch)()
    getattr(pipe, switch)()
    assert pipe.turbo_config == TurboConfig(ratio=0.4)
    assert np.abs(generate(pipe) - generate(plain)).max() > 1e-4  # still merging
    pipe.disable_turbo()
    np.testing.assert_allclose(generate(pipe), generate(plain), atol=1e-6)


def test_attention_slicing_after_apply_turbo_leaves_the_pipeline_honestly_unaccelerated(caplog):
    pipe, plain = build(StableDiffusionPipeline), build(StableDiffusionPipeline)
    apply_turbo(pipe)
    pipe.enable_attention_slicing()
    plain.enable_attention_slicing()
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        np.testing.assert_array_equal(generate(pipe), generate(plain))
        assert turbo_config_of(pipe) is None
    assert "enable_attention_slicing" in caplog.text and caplog.text.count("Turbo is off") == 1


CONFIGS = [
    {},
    {"ratio": np.float32(0.25), "max_downsample": np.int64(2), "sx": np.int64(3), "seed": np.uint64(2**64 - 1)},
    {"ratio": torch.tensor(0.3), "plan_every": torch.tensor(2), "use_rand": np.bool_(False), "seed": -(2**63)},
    {"alpha": 0, "semantic": "none", "match_radius": None, "mode": "kv"},
    {"semantic": "text", "merge_crossattn": True, "merge_mlp": True, "backend": "sdpa"},
]


@pytest.mark.parametrize("fields", CONFIGS)
def test_every_accepted_config_round_trips_through_save_pretrained(tmp_path, fields):
    pipe = build(TurboStableDiffusionPipeline, turbo=fields)
    pipe.save_pretrained(tmp_path)
    assert TurboStableDiffusionPipeline.from_pretrained(tmp_path).turbo_config == TurboConfig(**fields)


def test_turbo_config_json_is_written_atomically(tmp_path, monkeypatch):
    import turbo_diffusion.pipelines as pipelines_module

    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.35})
    pipe.save_pretrained(tmp_path)
    before = (tmp_path / "turbo_config.json").read_text()
    real_dump = json.dump

    def failing_dump(data, f, **kwargs):
        f.write("{")  # half a file, then the failure
        raise OSError("disk full")

    pipe.enable_turbo(ratio=0.6)
    monkeypatch.setattr(pipelines_module.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        pipelines_module._write_json_atomically(str(tmp_path / "turbo_config.json"), pipe.turbo_config.to_dict())
    monkeypatch.setattr(pipelines_module.json, "dump", real_dump)
    assert (tmp_path / "turbo_config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == []


@pytest.mark.parametrize(("content", "message"), [
    ("null", "holds null; expected a JSON object of TurboConfig fields"),
    ("0.5", "holds 0.5; expected a JSON object"),
    ("[]", "holds \\[\\]; expected a JSON object"),
    ("{ratio: 0.5", "cannot be read as JSON .*expected a JSON object"),
    (None, "is not a file; expected a JSON object"),
    ('{"ratio": 1.5}', "turbo_config.json: ratio must be a number in \\[0, 1\\), got 1.5"),
    ('{"ratio": 0.5, "bogus": 1}', "turbo_config.json: unknown TurboConfig field\\(s\\) bogus; known fields"),
])
def test_a_bad_turbo_config_json_gives_one_error_naming_the_file(tmp_path, content, message):
    build(StableDiffusionPipeline).save_pretrained(tmp_path)
    target = tmp_path / "turbo_config.json"
    if content is None:
        target.mkdir()
    else:
        target.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        TurboStableDiffusionPipeline.from_pretrained(tmp_path)
    assert str(target) in str(err.value)


def test_load_pipeline_passes_constructor_arguments_and_rejects_unknown_ones():
    pipe = load_pipeline("tiny", pipeline_class=TurboStableDiffusionPipeline, turbo={"ratio": 0.3})
    assert pipe.turbo_config.ratio == 0.3
    with pytest.raises(TypeError, match="bogus"):
        load_pipeline("tiny", pipeline_class=TurboStableDiffusionPipeline, turbo={"ratio": 0.3}, bogus=1)


def test_a_pipeline_with_text_semantics_is_garbage_collected():
    import gc
    import weakref

    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text")
    unet = weakref.ref(pipe.unet)
    del pipe
    gc.collect()
    assert unet() is None


@pytest.mark.skipif(xformers_available(), reason="xformers is installed here")
def test_enable_turbo_with_xformers_missing_leaves_turbo_as_it_was():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4})
    with pytest.raises(ImportError, match="xformers"):
        pipe.enable_turbo(backend="xformers")
    assert pipe.turbo_config == TurboConfig(ratio=0.4)
