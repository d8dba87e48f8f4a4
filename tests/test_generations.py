"""No state crosses a call (issue 23): whatever ran or failed before, a call gives what it gives on a fresh install.

Every case compares against the same call on freshly built components with Turbo applied the same way, and
must hold bit for bit.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

import turbo_diffusion.installation as hooks_module
from turbo_diffusion import (
    TurboConfig,
    TurboStableDiffusionPipeline,
    apply_turbo,
    remove_turbo,
    turbo_config_of,
    turbo_generation,
)

from .conftest import run, tiny_sd15_unet, unet_args
from .test_pipelines import build, generate

CONFIGS = {
    "default": {},
    "plan_every=2": {"plan_every": 2},
    "plan_every=3": {"plan_every": 3},
    "text": {"semantic": "text"},
    "text+cross+mlp": {"semantic": "text", "merge_crossattn": True, "merge_mlp": True, "plan_every": 2},
    "kv": {"mode": "kv", "plan_every": 2},
}
PIPELINES = {"txt2img": (StableDiffusionPipeline, False), "img2img": (StableDiffusionImg2ImgPipeline, False),
             "sdxl": (StableDiffusionXLPipeline, True)}
STEPS = 3


def fresh(kind: str, fields: dict) -> np.ndarray:
    """The call on freshly built components with Turbo applied: what every other run must reproduce."""
    cls, xl = PIPELINES[kind]
    pipe = build(cls, xl)
    apply_turbo(pipe, **fields)
    return generate(pipe, num_inference_steps=STEPS)


class Boom(RuntimeError):
    pass


def fail_in_unet_call(pipe, number: int, error: BaseException):
    """Raise ``error`` inside the ``number``-th UNet call (0 = the first), in a late attention layer, so part of the
    blocks have run and part have not."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == number + 1:
            raise error

    attention = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")][-1]
    return attention.register_forward_pre_hook(hook)


def failing_call(pipe, failure: str, number: int) -> None:
    """One pipeline call that fails (or is interrupted) at its ``number``-th UNet call."""
    if failure in ("exception", "keyboard", "oom"):
        error = {"exception": Boom("boom"), "keyboard": KeyboardInterrupt(),
                 "oom": torch.OutOfMemoryError("CUDA out of memory (simulated)")}[failure]
        handle = fail_in_unet_call(pipe, number, error)
        try:
            with pytest.raises(type(error)):
                generate(pipe, num_inference_steps=STEPS)
        finally:
            handle.remove()
        return

    def callback(pipe_, step, timestep, kwargs):
        if step == number:
            if failure == "callback":
                raise Boom("callback")
            pipe_._interrupt = True  # diffusers' own way to stop a generation early
        return kwargs

    if failure == "callback":
        with pytest.raises(Boom):
            generate(pipe, num_inference_steps=STEPS, callback_on_step_end=callback)
    else:
        generate(pipe, num_inference_steps=STEPS, callback_on_step_end=callback)


FAILURES = ["exception", "keyboard", "oom", "callback", "interrupt"]


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("config", CONFIGS)
def test_after_any_failure_the_next_txt2img_call_is_the_fresh_one(config, failure):
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, **CONFIGS[config])
    for number in (0, 1):  # in the generation's first (planning) call, and in a later one
        failing_call(pipe, failure, number)
        image = generate(pipe, num_inference_steps=STEPS)
        assert np.isfinite(image).all()
        np.testing.assert_array_equal(image, fresh("txt2img", CONFIGS[config]))


@pytest.mark.parametrize("failure", ["keyboard", "callback", "interrupt"])
@pytest.mark.parametrize("config", ["plan_every=3", "text", "text+cross+mlp"])
@pytest.mark.parametrize("kind", ["img2img", "sdxl"])
def test_after_a_failure_img2img_and_sdxl_calls_are_the_fresh_ones(kind, config, failure):
    cls, xl = PIPELINES[kind]
    pipe = build(cls, xl)
    apply_turbo(pipe, **CONFIGS[config])
    for number in (0, 1):
        failing_call(pipe, failure, number)
        np.testing.assert_array_equal(generate(pipe, num_inference_steps=STEPS), fresh(kind, CONFIGS[config]))


def test_the_all_nan_image_after_ctrl_c_in_the_first_step_is_gone():
    """The reported case: plan_every=3, Ctrl-C inside the first UNet call, the same call again."""
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, plan_every=3)
    attn2 = pipe.unet.up_blocks[2].attentions[0].transformer_blocks[0].attn2
    handle = attn2.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        generate(pipe, num_inference_steps=6)
    handle.remove()
    image = generate(pipe, num_inference_steps=6)
    assert not np.isnan(image).any()
    reference = build(StableDiffusionPipeline)
    apply_turbo(reference, plan_every=3)
    np.testing.assert_array_equal(image, generate(reference, num_inference_steps=6))


@pytest.mark.parametrize("before", [1, 2])
@pytest.mark.parametrize("config", ["plan_every=3", "text"])
def test_back_to_back_one_step_generations_each_start_afresh(config, before):
    # SD-Turbo / LCM style: every call runs at the same single timestep
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, **CONFIGS[config])
    reference = build(StableDiffusionPipeline)
    apply_turbo(reference, **CONFIGS[config])
    first = generate(reference, num_inference_steps=1)
    for _ in range(before):
        pipe("a big blue dog", num_inference_steps=1, generator=torch.manual_seed(1), output_type="np", height=64,
             width=96)
    np.testing.assert_array_equal(generate(pipe, num_inference_steps=1), first)


@pytest.mark.parametrize("config", ["plan_every=3", "text"])
def test_img2img_after_an_interrupted_txt2img_on_the_shared_unet_is_the_fresh_one(config):
    """img2img starts below the txt2img's first timestep; Turbo was applied through the txt2img pipeline only."""

    def pair():
        text = build(StableDiffusionPipeline)
        apply_turbo(text, **CONFIGS[config])
        image = StableDiffusionImg2ImgPipeline.from_pipe(text)
        image.set_progress_bar_config(disable=True)
        return text, image

    text, image = pair()
    failing_call(text, "keyboard", 0)
    np.testing.assert_array_equal(generate(image, num_inference_steps=STEPS),
                                  generate(pair()[1], num_inference_steps=STEPS))


def _components():
    from turbo_diffusion.models import _accepted, tiny_components

    return _accepted(StableDiffusionPipeline, tiny_components())


@pytest.mark.parametrize("config", ["plan_every=3", "text"])
def test_from_pipe_siblings_sharing_a_unet_each_keep_their_own_generations_and_prompts(config):
    a = TurboStableDiffusionPipeline(**_components(), turbo=CONFIGS[config])
    a.set_progress_bar_config(disable=True)
    b = TurboStableDiffusionPipeline.from_pipe(a)
    b.set_progress_bar_config(disable=True)
    assert b.unet is a.unet

    def call(pipe, prompt):
        return pipe(prompt, num_inference_steps=STEPS, generator=torch.manual_seed(0), output_type="np",
                    height=64, width=96).images

    call(a, "a red cat")
    call(b, "a big blue dog")
    again = call(a, "a red cat")
    reference = TurboStableDiffusionPipeline(**_components(), turbo=CONFIGS[config])
    reference.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(again, call(reference, "a red cat"))


@pytest.mark.parametrize("config", ["plan_every=3", "text", "text+cross+mlp"])
def test_direct_unet_calls_never_reuse_another_inputs_plan_or_prompt(config):
    """A UNet call outside a generation is a generation of its own: the same input gives the same output whatever
    was called before, at any timestep order."""
    unet = tiny_sd15_unet()
    apply_turbo(unet, **CONFIGS[config])
    (sample, _), kwargs = unet_args(unet)
    other = torch.randn_like(sample)
    alone = run(tiny_and_turbo(config), (sample, torch.tensor(500)), kwargs)
    for x, t in ((other, 900), (other, 700), (sample, 600), (other, 500)):
        run(unet, (x, torch.tensor(t)), kwargs)
    assert torch.equal(run(unet, (sample, torch.tensor(500)), kwargs), alone)


def tiny_and_turbo(config):
    unet = tiny_sd15_unet()
    apply_turbo(unet, **CONFIGS[config])
    return unet


def test_a_direct_unet_call_after_a_text_generation_does_not_read_its_prompt():
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text")
    generate(pipe)
    (sample, _), kwargs = unet_args(pipe.unet, 8, 12)
    after = run(pipe.unet, (sample, torch.tensor(1)), kwargs)
    reference = build(StableDiffusionPipeline)
    apply_turbo(reference, semantic="text")
    assert torch.equal(after, run(reference.unet, (sample, torch.tensor(1)), kwargs))


def test_inside_turbo_generation_a_timestep_that_does_not_fall_starts_afresh():
    unet = tiny_sd15_unet()
    apply_turbo(unet, plan_every=3)
    (sample, _), kwargs = unet_args(unet)
    alone = run(tiny_and_turbo("plan_every=3"), (sample, torch.tensor(500)), kwargs)
    with turbo_generation(unet):
        run(unet, (torch.randn_like(sample), torch.tensor(500)), kwargs)
        assert torch.equal(run(unet, (sample, torch.tensor(500)), kwargs), alone)  # same t: not a next step


def test_a_call_that_raised_inside_turbo_generation_makes_the_next_one_start_afresh():
    unet = tiny_sd15_unet()
    apply_turbo(unet, plan_every=3)
    (sample, _), kwargs = unet_args(unet)
    reference = tiny_and_turbo("plan_every=3")
    with turbo_generation(reference):
        expected = run(reference, (sample, torch.tensor(700)), kwargs)
    attention = [m for name, m in unet.named_modules() if name.endswith("attn2")][-1]
    with turbo_generation(unet):
        run(unet, (torch.randn_like(sample), torch.tensor(900)), kwargs)
        handle = attention.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(Boom("boom")))
        with pytest.raises(Boom):
            run(unet, (sample, torch.tensor(800)), kwargs)
        handle.remove()
        assert torch.equal(run(unet, (sample, torch.tensor(700)), kwargs), expected)


def test_turbo_generation_needs_turbo():
    with pytest.raises(ValueError, match="apply_turbo"), turbo_generation(tiny_sd15_unet()):
        pass


@pytest.mark.parametrize("config", ["plan_every=3", "text"])
def test_a_call_outside_any_generation_says_once_that_it_plans_afresh(caplog, config):
    unet = tiny_sd15_unet()
    apply_turbo(unet, **CONFIGS[config])
    args, kwargs = unet_args(unet)
    with caplog.at_level("WARNING", logger="turbo_diffusion"):
        run(unet, args, kwargs)
        run(unet, args, kwargs)
    assert caplog.text.count("turbo_generation") == 1


# -- installation is all or nothing, and removal leaves nothing behind --------------------------------------------
@pytest.mark.parametrize("where", ["processors", "hooks"])
def test_an_interrupted_apply_turbo_leaves_the_previous_installation_working(monkeypatch, where):
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    apply_turbo(unet, ratio=0.4)
    before = run(unet, args, kwargs)
    if where == "processors":  # half the layers swapped when the interrupt comes
        original = type(unet).set_attn_processor
        calls = []

        def half_then_interrupt(self, processor):
            calls.append(1)
            if len(calls) == 1:
                first = dict(list(processor.items())[: len(processor) // 2])
                original(self, {**self.attn_processors, **first})
                raise KeyboardInterrupt
            return original(self, processor)

        monkeypatch.setattr(type(unet), "set_attn_processor", half_then_interrupt)
    else:
        original_hook = hooks_module._Installation.hook

        def hook_then_interrupt(self, unet_):
            original_hook(self, unet_)
            raise KeyboardInterrupt

        monkeypatch.setattr(hooks_module._Installation, "hook", hook_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        apply_turbo(unet, ratio=0.6, merge_mlp=True)
    monkeypatch.undo()
    assert turbo_config_of(unet) == TurboConfig(ratio=0.4)
    assert torch.equal(run(unet, args, kwargs), before)
    assert len(unet._forward_pre_hooks) == 1 and len(unet._forward_hooks) == 1


def test_remove_turbo_leaves_no_forward_attribute_or_empty_registry_behind():
    pipe = build(StableDiffusionPipeline)
    apply_turbo(pipe, semantic="text", merge_mlp=True, plan_every=2)
    generate(pipe)
    remove_turbo(pipe)
    modules = [pipe.text_encoder, *[m for m in pipe.unet.modules() if type(m).__name__ == "FeedForward"]]
    for module in modules:
        assert "forward" not in vars(module) and not hasattr(module, "_diffusers_hook")
    assert "progress_bar" not in vars(pipe) and "encode_prompt" not in vars(pipe)


# -- saved files ------------------------------------------------------------------------------------------------
def test_saved_config_files_get_the_mode_diffusers_files_get(tmp_path):
    pipe = build(TurboStableDiffusionPipeline)
    pipe.save_pretrained(tmp_path)
    diffusers_mode = stat.S_IMODE(os.stat(tmp_path / "scheduler" / "scheduler_config.json").st_mode)
    for name in ("model_index.json", "turbo_config.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == diffusers_mode


def test_a_save_with_turbo_off_tolerates_the_config_file_vanishing_meanwhile(tmp_path, monkeypatch):
    pipe = build(TurboStableDiffusionPipeline)
    pipe.save_pretrained(tmp_path)
    pipe.disable_turbo()
    (tmp_path / "turbo_config.json").unlink()  # a concurrent save removed it after this one looked
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: True if str(p).endswith("turbo_config.json") else real_exists(p))
    pipe.save_pretrained(tmp_path)
    assert not (tmp_path / "turbo_config.json").exists()
