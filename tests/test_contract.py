"""diffusers' own pipeline contract on Turbo pipelines (issue 14): pipelines without a UNet, IP-Adapter, and the
other diffusers calls that replace attention processors. Every component is built here (no downloads)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from turbo_diffusion import (
    TurboConfig,
    TurboProcessor,
    TurboStableDiffusionImg2ImgPipeline,
    TurboStableDiffusionPipeline,
    TurboStableDiffusionXLPipeline,
    apply_turbo,
    inspect_plans,
    remove_turbo,
    turbo_config_of,
)
from turbo_diffusion.models import _accepted, tiny_components

SIZE = dict(height=64, width=64)
IMAGE_EMBED_DIM = 16


def components(xl=False, ip_adapter=False):
    parts = tiny_components(xl=xl)
    if ip_adapter:  # the image side of an IP-Adapter: a tiny CLIP vision tower and its preprocessing
        torch.manual_seed(1)
        parts["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, intermediate_size=37, projection_dim=IMAGE_EMBED_DIM, num_hidden_layers=2,
            num_attention_heads=2, image_size=32, patch_size=8)).eval()
        parts["feature_extractor"] = CLIPImageProcessor(size=32, crop_size=32)
    return parts


def build(cls, xl=False, ip_adapter=False, **kwargs):
    pipe = cls(**_accepted(cls, components(xl, ip_adapter)), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ip_adapter_state_dict(unet, seed=2):
    """Random IP-Adapter weights in the layout ``load_ip_adapter`` reads: ``to_k_ip`` / ``to_v_ip`` of every
    cross-attention layer (numbered 1, 3, 5, ... in ``attn_processors`` order) and the image projection."""
    gen = torch.Generator().manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    layers, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name[: -len(".processor")]).to_q.in_features
            for kind in ("to_k_ip", "to_v_ip"):
                layers[f"{key_id}.{kind}.weight"] = torch.randn(hidden, cross_dim, generator=gen) * 0.1
            key_id += 2
    torch.manual_seed(seed)
    projection = ImageProjection(image_embed_dim=IMAGE_EMBED_DIM, cross_attention_dim=cross_dim,
                                 num_image_text_embeds=4).state_dict()
    image_proj = {"proj.weight": projection["image_embeds.weight"], "proj.bias": projection["image_embeds.bias"],
                  "norm.weight": projection["norm.weight"], "norm.bias": projection["norm.bias"]}
    return {"image_proj": image_proj, "ip_adapter": layers}


def generate(pipe, **kwargs):
    if isinstance(pipe, StableDiffusionImg2ImgPipeline):
        kwargs.setdefault("image", torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    else:
        kwargs = SIZE | kwargs
    return pipe("a red cat", num_inference_steps=2, generator=torch.manual_seed(0), output_type="np",
                **kwargs).images


def ip_image():
    return np.random.default_rng(3).random((32, 32, 3)).astype(np.float32)


def lora_state_dict(xl=False):
    """Random LoRA weights on the UNet's attention projections, as ``load_lora_weights`` reads them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_components(xl=xl)["unet"]
    torch.manual_seed(5)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    return {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}


def merged_blocks(pipe, **kwargs):
    """The blocks Turbo merged in during one generation."""
    with inspect_plans(pipe) as records:
        generate(pipe, **kwargs)
    return sorted({r.block for r in records})


def turbo_off_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "Turbo is off" in r.getMessage()]


# -- 1. pipelines without a UNet -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("turbo_cls", "base_cls", "xl"), [
    (TurboStableDiffusionPipeline, StableDiffusionPipeline, False),
    (TurboStableDiffusionXLPipeline, StableDiffusionXLPipeline, True),
])
def test_a_turbo_pipeline_without_a_unet_encodes_prompts_and_installs_turbo_once_a_unet_is_set(turbo_cls, base_cls,
                                                                                               xl):
    parts = components(xl)
    unet = parts.pop("unet")
    pipe = turbo_cls(**_accepted(turbo_cls, parts), unet=None, turbo={"ratio": 0.3})
    plain = base_cls(**_accepted(base_cls, parts), unet=None)
    assert pipe.turbo_config is None  # nothing merges without a UNet
    prompt = dict(prompt="a red cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    for got, expected in zip(pipe.encode_prompt(**prompt), plain.encode_prompt(**prompt), strict=True):
        assert torch.equal(got, expected)
    pipe.unet = unet
    assert pipe.turbo_config == TurboConfig(ratio=0.3)
    assert any(isinstance(p, TurboProcessor) for p in unet.attn_processors.values())


def test_from_pretrained_without_a_unet_builds_a_turbo_pipeline(tmp_path):
    build(TurboStableDiffusionPipeline, turbo={"ratio": 0.35}).save_pretrained(tmp_path)
    pipe = TurboStableDiffusionPipeline.from_pretrained(tmp_path, unet=None)
    assert pipe.unet is None and pipe.turbo_config is None
    assert pipe.encode_prompt("a red cat", "cpu", 1, True)[0].shape == (1, 77, 32)
    pipe.disable_turbo()  # nothing to take off, and nothing pending any more
    pipe.unet = tiny_components()["unet"]
    assert pipe.turbo_config is None


def test_apply_turbo_on_a_pipeline_without_a_unet_installs_nothing_and_says_so(caplog):
    parts = components()
    parts["unet"] = None
    pipe = StableDiffusionPipeline(**_accepted(StableDiffusionPipeline, parts))
    with pytest.raises(ValueError, match="ratio"):
        apply_turbo(pipe, ratio=2)  # the config is still checked
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        assert apply_turbo(pipe, ratio=0.4) is pipe
    assert "has no UNet (unet=None)" in caplog.text and "nothing was installed" in caplog.text
    assert turbo_config_of(pipe) is None and remove_turbo(pipe) is pipe


# -- 2. IP-Adapter ---------------------------------------------------------------------------------------------------
IP_CASES = [
    (TurboStableDiffusionPipeline, False),
    (TurboStableDiffusionImg2ImgPipeline, False),
    (TurboStableDiffusionXLPipeline, True),
]


@pytest.mark.parametrize(("cls", "xl", "ratio"), [(cls, xl, 0.0) for cls, xl in IP_CASES] + [(*IP_CASES[0], 0.5)])
def test_an_ip_adapter_at_scale_zero_changes_nothing_and_keeps_the_turbo_config(cls, xl, ratio):
    pipe = build(cls, xl, ip_adapter=True, turbo={"ratio": ratio, "seed": 3})
    before = generate(pipe)
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet), subfolder="", weight_name="")
    pipe.set_ip_adapter_scale(0.0)
    assert pipe.turbo_config == TurboConfig(ratio=ratio, seed=3)
    np.testing.assert_array_equal(generate(pipe, ip_adapter_image=ip_image()), before)


def test_turbo_merges_self_attention_while_ip_adapter_runs_cross_attention():
    pipe = build(TurboStableDiffusionPipeline, ip_adapter=True, turbo={"ratio": 0.5})
    merged_before = merged_blocks(pipe)
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet), subfolder="", weight_name="")
    processors = pipe.unet.attn_processors
    assert all(isinstance(p, IPAdapterAttnProcessor2_0) for n, p in processors.items() if "attn2" in n)
    assert pipe.turbo_config == TurboConfig(ratio=0.5)
    assert merged_blocks(pipe, ip_adapter_image=ip_image()) == merged_before


def test_unload_ip_adapter_gives_back_turbo_as_it_was():
    pipe = build(TurboStableDiffusionPipeline, ip_adapter=True, turbo={"ratio": 0.4, "alpha": 2.0})
    before, processors = generate(pipe), pipe.unet.attn_processors
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet), subfolder="", weight_name="")
    generate(pipe, ip_adapter_image=ip_image())
    pipe.unload_ip_adapter()
    assert pipe.turbo_config == TurboConfig(ratio=0.4, alpha=2.0)
    now = pipe.unet.attn_processors
    assert all(now[n] is p for n, p in processors.items() if isinstance(p, TurboProcessor))
    np.testing.assert_array_equal(generate(pipe), before)
    pipe.disable_turbo()
    assert not any(isinstance(p, TurboProcessor) for p in pipe.unet.attn_processors.values())


@pytest.mark.parametrize("fields", [{"merge_crossattn": True}, {"semantic": "text"}])
def test_turbo_on_cross_attention_and_ip_adapter_are_refused_together_with_the_reason(caplog, fields):
    pipe = build(TurboStableDiffusionPipeline, ip_adapter=True, turbo=fields)
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet), subfolder="", weight_name="")
        assert pipe.turbo_config is None
    [warning] = turbo_off_warnings(caplog)
    assert "load_ip_adapter()" in warning and "merge_crossattn=False and semantic='attention'" in warning
    assert not any(isinstance(p, TurboProcessor) for p in pipe.unet.attn_processors.values())
    with pytest.raises(ValueError, match="need Turbo's processor on cross-attention.*IPAdapterAttnProcessor2_0"):
        pipe.enable_turbo(fields)
    pipe.enable_turbo(ratio=0.5)  # self-attention only: merges beside the adapter
    assert pipe.turbo_config == TurboConfig(ratio=0.5)


def test_one_turbo_processor_set_on_every_layer_is_not_taken_for_a_recreation():
    unet = tiny_components()["unet"]
    apply_turbo(unet, ratio=0.3)
    unet.set_attn_processor(TurboProcessor())  # the bare route, asked for: it replaces apply_turbo's installation
    assert turbo_config_of(unet) == TurboConfig()


# -- 3. set_default_attn_processor -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "base_cls", "xl"), [
    (TurboStableDiffusionPipeline, StableDiffusionPipeline, False),
    (TurboStableDiffusionXLPipeline, StableDiffusionXLPipeline, True),
])
def test_set_default_attn_processor_takes_turbo_off_and_sets_diffusers_default(caplog, cls, base_cls, xl):
    pipe, plain = build(cls, xl), build(base_cls, xl)
    plain.unet.set_default_attn_processor()
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        pipe.unet.set_default_attn_processor()
        assert pipe.turbo_config is None
    assert [w for w in turbo_off_warnings(caplog) if "set_default_attn_processor()" in w] != []
    assert len(turbo_off_warnings(caplog)) == 1
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    np.testing.assert_array_equal(generate(pipe), generate(plain))
    pipe.enable_turbo(ratio=0.4)  # and Turbo goes back on over the default processors
    assert pipe.turbo_config == TurboConfig(ratio=0.4) and merged_blocks(pipe) != []


# -- other diffusers calls that touch attention ----------------------------------------------------------------------
def test_lora_loading_and_fusing_keep_turbo():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.5})
    pipe.load_lora_weights(lora_state_dict())
    assert pipe.turbo_config == TurboConfig(ratio=0.5) and merged_blocks(pipe) != []
    pipe.fuse_lora()
    assert pipe.turbo_config == TurboConfig(ratio=0.5) and merged_blocks(pipe) != []


def test_freeu_keeps_turbo():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.5})
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert pipe.turbo_config == TurboConfig(ratio=0.5) and merged_blocks(pipe) != []


def test_set_attn_processor_with_a_dict_that_keeps_turbos_processors_keeps_turbo():
    pipe = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4})
    processors = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({n: (AttnProcessor() if "attn2" in n else p) for n, p in processors.items()})
    assert pipe.turbo_config == TurboConfig(ratio=0.4) and merged_blocks(pipe) != []


def test_set_attn_processor_with_a_dict_that_replaces_one_of_turbos_turns_turbo_off(caplog):
    pipe, plain = build(TurboStableDiffusionPipeline, turbo={"ratio": 0.4}), build(StableDiffusionPipeline)
    processors = pipe.unet.attn_processors
    first = next(n for n, p in processors.items() if isinstance(p, TurboProcessor))
    pipe.unet.set_attn_processor({**processors, first: AttnProcessor2_0()})
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        assert pipe.turbo_config is None
    [warning] = turbo_off_warnings(caplog)
    assert "set_attn_processor(AttnProcessor2_0())" in warning
    assert not any(isinstance(p, TurboProcessor) for p in pipe.unet.attn_processors.values())
    np.testing.assert_array_equal(generate(pipe), generate(plain))
