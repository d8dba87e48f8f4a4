"""`apply_turbo` / `remove_turbo`: install Turbo on a UNet or a pipeline through processors and hooks.

What gets installed, and nothing else:

* on the self-attention (``attn1``) of every transformer block at the merged levels, and on their cross-attention
  (``attn2``) when ``merge_crossattn`` or ``semantic="text"`` needs it, a `TurboProcessor` wrapping the processor
  that was there (it passes through to it wherever it does not merge);
* a UNet forward pre-hook that reports each call's latent size and timestep, and a forward hook that reports its
  return (see `_CallStart` for why they are torch hooks rather than diffusers ones);
* with ``merge_mlp``, a diffusers hook on those blocks' feed-forward that merges its input and restores its output;
* on a pipeline, when the config keeps state from step to step (``plan_every > 1``, ``semantic="text"``), a
  wrapper around its ``progress_bar`` that makes the denoising loop one generation (see
  :mod:`turbo_diffusion.state`), and for ``semantic="text"`` the prompt recorder of :mod:`turbo_diffusion.prompts`.
  Every pipeline Turbo was applied through that still shares the UNet (``from_pipe`` siblings) keeps its own.

Module classes are never renamed or swapped, so ``unet.compile_repeated_blocks()`` and LoRA loading see the
model they expect (both tested). `apply_turbo` is two steps: `_build` validates and builds the new installation
without touching the model, `_commit` swaps it in, all or nothing, so a failing `apply_turbo` leaves the previous
state as it was. `remove_turbo` puts back exactly the processors that were there before. What happens when other
code replaces Turbo's processors is `turbo_diffusion.coexistence`'s: every reader here calls its `settle` openly.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.hooks import ModelHook
from torch.utils.hooks import RemovableHandle

from .anatomy import find_unet, merge_depth, transformer_block_levels, unet_or_none
from .coexistence import (
    CROSS_ATTENTION_TAKEN,
    FEED_FORWARD_HOOK,
    INSTALLATIONS,
    SET_DEFAULT,
    WRAPPABLE,
    SetDefaultAttnProcessor,
    original,
    set_processors,
    settle,
    strip_copied_hooks,
    take_off,
)
from .config import TurboConfig, resolve_config
from .context import TurboContext
from .core import MergePlan, merged_count, window_count, window_grid
from .kernels import check_kernel
from .levels import grid_at
from .module_hooks import register_hook, remove_hook
from .processor import TurboProcessor
from .prompts import PromptRecorder
from .state import BlockMemory, HookedCall

logger = logging.getLogger("turbo_diffusion")

@dataclass
class _Installation:
    """Everything one `apply_turbo` installed on a UNet, to undo it exactly."""

    context: TurboContext
    originals: dict[str, Any]  # every layer's processor before Turbo
    layers: list[tuple[torch.nn.Module, TurboProcessor]] = field(default_factory=list)
    blocks: list[tuple[BlockMemory, int]] = field(default_factory=list)  # (memory, downsample)
    feed_forwards: list[torch.nn.Module] = field(default_factory=list)  # hooked with _FeedForwardHook
    pipelines: list[_PipelineHooks] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)  # the UNet's pre- and post-hook

    def hook(self, unet: UNet2DConditionModel) -> None:
        """Put this installation's hooks on: the UNet's, the feed-forwards', the pipelines'."""
        for module in self.feed_forwards:
            register_hook(module, _FeedForwardHook(self.context), FEED_FORWARD_HOOK)
        for pipeline in self.pipelines:
            pipeline.install()
        self.handles = [unet.register_forward_pre_hook(_CallStart(self), with_kwargs=True),
                        unet.register_forward_hook(_CallEnd(self))]
        unet.__dict__[SET_DEFAULT] = SetDefaultAttnProcessor(unet)

    def unhook(self, unet: torch.nn.Module) -> None:
        """Take this installation's hooks off (those that are still there)."""
        if isinstance(unet.__dict__.get(SET_DEFAULT), SetDefaultAttnProcessor):
            del unet.__dict__[SET_DEFAULT]
        for handle in self.handles:
            handle.remove()
        for pipeline in self.pipelines:
            pipeline.uninstall()
        for module in self.feed_forwards:
            remove_hook(module, FEED_FORWARD_HOOK)

    def start_call(self, sample: torch.Tensor, timestep: object) -> None:
        """Advance this thread's clock; on new shapes, size the blocks' storage (outside any graph)."""
        call = self.context.call()
        if call.begin(sample, timestep):
            self._allocate(call, sample.device)

    def _allocate(self, call: HookedCall, device: torch.device) -> None:
        """Fresh per-block state for the call's shapes: the levels' window layouts, and static storage that
        compiled graphs copy plans and text mass into (so a graph's inputs are the same objects at every step,
        as CUDA graphs need)."""
        cfg = self.context.config
        for memory, downsample in self.blocks:
            state = memory.state(call, None)
            state.plan = state.saved = state.storage = state.text_mass = None
            h, w = grid_at(call.latent_hw, downsample)
            # Cached now, the layout enters compiled graphs as constant inputs instead of being traced.
            window_grid(h, w, cfg.sx, cfg.sy, cfg.match_radius, str(device))
            num_merge = merged_count(h * w, window_count(h, w, cfg.sx, cfg.sy), cfg.ratio)
            if cfg.plan_every > 1 and num_merge > 0:
                state.storage = tuple(map(_static, MergePlan.empty_indices(call.batch, h * w, num_merge, device)))
            if cfg.semantic == "text" and cfg.alpha > 0:
                state.text_mass = _static(torch.zeros(call.batch, h * w, device=device))


class _PipelineHooks:
    """What Turbo wraps on one pipeline that runs the UNet: its ``progress_bar``, so that the denoising loop is one
    generation, and for ``semantic="text"`` its prompt recorder, whose record that generation takes."""

    def __init__(self, pipe: Any, context: TurboContext, recorder: PromptRecorder | None, wraps: bool) -> None:
        self.pipe = weakref.ref(pipe)
        self.context, self.recorder, self.wraps = context, recorder, wraps
        self._wrapper: weakref.ref | None = None

    def install(self) -> None:
        pipe = self.pipe()
        if pipe is None or not self.wraps:
            return
        original, context, recorder = pipe.progress_bar, self.context, self.recorder

        @functools.wraps(original)
        def progress_bar(*args: Any, **kwargs: Any) -> Any:
            return _GenerationBar(original(*args, **kwargs), context, recorder)

        pipe.progress_bar = progress_bar
        self._wrapper = weakref.ref(progress_bar)
        if recorder is not None:
            recorder.install()

    def uninstall(self) -> None:
        pipe, wrapper = self.pipe(), self._wrapper() if self._wrapper is not None else None
        if pipe is not None and wrapper is not None and pipe.__dict__.get("progress_bar") is wrapper:
            del pipe.progress_bar
        self._wrapper = None
        if self.recorder is not None:
            self.recorder.uninstall()


class _GenerationBar:
    """A pipeline's progress bar (tqdm) whose ``with`` block, or iteration, is one generation: it opens in this
    thread when the denoising loop starts and closes when it ends, on success or failure."""

    def __init__(self, bar: Any, context: TurboContext, recorder: PromptRecorder | None) -> None:
        self._bar, self._context, self._recorder = bar, context, recorder
        self._outer: Any = None

    def _open(self) -> Any:
        call = self._context.call()
        outer = call.open_generation()
        call.generation.prompt = self._recorder.take() if self._recorder is not None else None
        return outer

    def __enter__(self) -> Any:
        self._outer = self._open()
        try:
            return self._bar.__enter__()
        except BaseException:
            self._context.call().close_generation(self._outer)
            raise

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._bar.__exit__(*exc)
        finally:
            self._context.call().close_generation(self._outer)

    def __iter__(self):
        outer = self._open()
        try:
            yield from self._bar
        finally:
            self._context.call().close_generation(outer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


class _CallStart:
    """UNet forward pre-hook: report the call's latent size and timestep to the installation.

    A torch module hook rather than a diffusers one: torch runs module hooks before it enters the compiled forward
    of ``torch.compile(unet)`` and ``unet.compile()``, so with ``torch.compiler.disable`` this bookkeeping stays in
    plain Python, outside every graph: no graph break (there is no graph around it), and sizing storage at the
    first call does not make the second call recompile. It also notices when something else replaced Turbo's
    processors and takes Turbo off.
    """

    turbo_unet_hook = True  # how `coexistence.strip_copied_hooks` finds it on a deep copy

    def __init__(self, installation: _Installation) -> None:
        self.installation = weakref.ref(installation)

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        installation = self.installation()
        if installation is not None and INSTALLATIONS.get(unet) is not installation:
            installation = _adopt_copy(unet, installation.context.config)
        if installation is None or settle(unet) is not installation:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        installation.start_call(sample, timestep)
        return None


class _CallEnd:
    """UNet forward hook: the call returned (a call that raised never gets here, so the next one starts its
    generation afresh)."""

    turbo_unet_hook = True

    def __init__(self, installation: _Installation) -> None:
        self.installation = weakref.ref(installation)

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, output: Any) -> None:
        installation = self.installation()
        if installation is not None and INSTALLATIONS.get(unet) is installation:
            installation.context.call().finish()
        return None


class _FeedForwardHook(ModelHook):
    """Merge the feed-forward's input with the block's plan, restore its output."""

    def __init__(self, context: TurboContext) -> None:
        super().__init__()
        self.context = context

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        forward = self.fn_ref.original_forward
        state = self.context.call().current
        plan = state.plan if state is not None else None
        if state is not None:
            state.plan = None  # the feed-forward is the block's last use of its plan
        if plan is None or not plan.matches(hidden_states):
            return forward(hidden_states, *args, **kwargs)
        return plan.restore(forward(plan.merge(hidden_states), *args, **kwargs))


def apply_turbo(model: Any, config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> Any:
    """Install Turbo token merging on a pipeline or a `UNet2DConditionModel`, in place.

    Args:
        model: a diffusers pipeline with a ``unet`` (SD 1.x/2.x, SDXL, img2img, inpainting, ControlNet, ...) or
            the UNet itself (also a ``torch.compile``'d one). Anything else raises ``TypeError``.
        config: a `TurboConfig`, a dict of its fields, or ``None`` for the defaults.
        **fields: `TurboConfig` fields overriding ``config``.

    Returns:
        ``model``, for chaining. Calling it again replaces the previous installation; if it raises, the previous
        installation (or its absence) is left as it was. A pipeline built without a UNet (``unet=None``, as
        diffusers does to encode prompts on their own) has nothing to merge: the config is checked, nothing is
        installed, and a warning says so; call it again once the pipeline has a UNet.
    """
    config = resolve_config(config, **fields)
    check_kernel(config.backend)
    unet = unet_or_none(model)
    if unet is None:
        logger.warning(f"apply_turbo: this {type(model).__name__} has no UNet (unet=None), so there is nothing to "
                       "merge and nothing was installed; call apply_turbo again once it has one.")
        return model
    installation, wanted, kept = _build(unet, model, config)
    _commit(unet, installation, wanted)
    if kept:
        installation.context.warn_once(
            "kept", f"Turbo left {len(kept)} custom attention processor(s) in place: {', '.join(kept)}")
    return model


def _build(unet: UNet2DConditionModel, model: Any, config: TurboConfig) -> tuple[_Installation, dict, list[str]]:
    """The installation of ``config`` on ``unet``, built without touching the model: it, the processors it sets
    (layer name -> `TurboProcessor`) and the custom processors it leaves in place. Raises before any change."""
    levels = transformer_block_levels(unet)
    depth = merge_depth(config.max_downsample, levels)
    context = TurboContext(config, max_downsample=depth)
    originals = {name: original(processor) for name, processor in unet.attn_processors.items()}
    installation = _Installation(context, originals)
    wanted, kept = {}, []
    need_cross = config.merge_crossattn or (config.semantic == "text" and config.alpha > 0)
    for name, (block, downsample) in levels.items():
        if downsample > depth:
            continue
        memory = BlockMemory()
        installation.blocks.append((memory, downsample))
        layers = ["attn1"] + (["attn2"] if need_cross and block.attn2 is not None else [])
        for layer in layers:
            key = f"{name}.{layer}.processor"
            if isinstance(originals[key], WRAPPABLE):
                processor = TurboProcessor._installed(context, originals[key], memory, f"{name}.{layer}")
                wanted[key] = processor
                installation.layers.append((getattr(block, layer), processor))
            elif layer == "attn2":
                raise ValueError(CROSS_ATTENTION_TAKEN.format(what=f"{key} runs {type(originals[key]).__name__}"))
            else:
                kept.append(f"{key} ({type(originals[key]).__name__})")
        if config.merge_mlp:
            installation.feed_forwards.append(block.ff)
    context.feed_forward_merges = bool(installation.feed_forwards)
    previous = INSTALLATIONS.get(unet)
    installation.pipelines = [_pipeline_hooks(pipe, context) for pipe in _pipelines_of(unet, model, previous)]
    return installation, wanted, kept


def _commit(unet: UNet2DConditionModel, installation: _Installation, wanted: dict[str, TurboProcessor]) -> None:
    """The previous installation's pieces off, the new ones on, registered last. If anything fails or is
    interrupted on the way, the model goes back to how it was, so `turbo_config_of` never reports a config that
    is not fully installed."""
    previous, originals = INSTALLATIONS.get(unet), installation.originals
    before = unet.attn_processors
    try:
        if previous is not None:
            INSTALLATIONS.pop(unet, None)
            previous.unhook(unet)
        else:
            strip_copied_hooks(unet)
        unet.set_attn_processor({**originals, **wanted})
        installation.hook(unet)
        INSTALLATIONS[unet] = installation
    except BaseException:
        INSTALLATIONS.pop(unet, None)
        installation.unhook(unet)
        unet.set_attn_processor(before)
        if previous is not None:
            previous.hook(unet)
            INSTALLATIONS[unet] = previous
        raise


def _pipelines_of(unet: UNet2DConditionModel, model: Any, previous: _Installation | None) -> list[Any]:
    """The pipelines a new installation serves: ``model`` when it is one, and those the previous installation
    served that still run this UNet (``from_pipe`` siblings share it, and each keeps its generations)."""
    pipes = [model] if model is not unet and not isinstance(model, torch.nn.Module) else []
    for hooks in previous.pipelines if previous is not None else []:
        pipe = hooks.pipe()
        if pipe is not None and all(pipe is not p for p in pipes) and unet_or_none(pipe) is unet:
            pipes.append(pipe)
    return pipes


def _pipeline_hooks(pipe: Any, context: TurboContext) -> _PipelineHooks:
    """`_PipelineHooks` for ``pipe``: its progress bar wrapped when the config keeps state from step to step, its
    prompts recorded for ``semantic="text"``."""
    config = context.config
    text = config.semantic == "text" and config.alpha > 0
    recorder = PromptRecorder.for_pipeline(pipe) if text else None
    if text and recorder is None:
        context.warn_once("text", "semantic='text': no text encoder or encode_prompt to watch; counting every "
                                  "prompt token but the start token")
    keeps_state = config.plan_every > 1 or text
    return _PipelineHooks(pipe, context, recorder, wraps=keeps_state)


def remove_turbo(model: Any) -> Any:
    """Take Turbo off: restore the processors `apply_turbo` found and remove its hooks. Bare `TurboProcessor`\\ s
    set with ``unet.set_attn_processor`` are replaced by diffusers' default processor.

    A model without Turbo (or a pipeline without a UNet) is returned unchanged.
    """
    unet = unet_or_none(model)
    if unet is None:
        return model
    installation = INSTALLATIONS.get(unet)
    if installation is not None:
        take_off(unet, installation)
    else:
        strip_copied_hooks(unet)
    set_processors(unet, lambda name, processor: original(processor))
    return model


def turbo_config_of(model: Any) -> TurboConfig | None:
    """The `TurboConfig` merging on ``model``: the one `apply_turbo` installed, else a bare `TurboProcessor`'s;
    ``None`` when Turbo is off (also after another call replaced its processors, and on a pipeline without a
    UNet)."""
    unet = unet_or_none(model)
    if unet is None:
        return None
    installation = settle(unet)  # takes Turbo off where another call replaced its processors
    if installation is not None:
        return installation.context.config
    bare = [p for p in unet.attn_processors.values() if isinstance(p, TurboProcessor)]
    return bare[0].config if bare else None


def turbo_contexts(model: Any, needed_by: str) -> list[TurboContext]:
    """The `TurboContext` of every Turbo installation on ``model``'s UNet (`apply_turbo`'s, and each bare
    `TurboProcessor`'s), as the processors are now (callers `settle` first). ``ValueError`` naming ``needed_by``
    (the caller) when there is none."""
    unet = find_unet(model)
    contexts = {id(p.context): p.context for p in unet.attn_processors.values() if isinstance(p, TurboProcessor)}
    if not contexts:
        raise ValueError(f"{needed_by} needs Turbo on this model: apply_turbo(model, ...) first")
    return list(contexts.values())


# -- internals --------------------------------------------------------------------------------------------------
def _adopt_copy(unet: torch.nn.Module, config: TurboConfig) -> _Installation | None:
    """Turbo on a copy of a Turbo UNet (``copy.deepcopy``), at its first call.

    A deep copy carries copies of Turbo's processors and hooks, but the hook it carries still reports to the
    original's installation (it holds it by weak reference, which copies as is), so the copy's processors would
    never learn where a call is and silently merge nothing. Its copied Turbo pieces are taken off and, if its
    layers still hold Turbo's processors, Turbo is installed afresh with the same config: the copy then merges as
    the original does and `remove_turbo` undoes it. A ``semantic="text"`` copy of a bare UNet has no pipeline to
    read the prompt from (see `apply_turbo`).
    """
    if not any(isinstance(p, TurboProcessor) for p in unet.attn_processors.values()):
        strip_copied_hooks(unet)
        return None  # someone replaced the copy's processors before its first call: leave theirs
    apply_turbo(unet, config)  # takes the processors Turbo's copies wrap, and strips the copied hooks
    return INSTALLATIONS.get(unet)


def _static(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, marked as storage whose address never changes: CUDA graphs (``mode="reduce-overhead"``) then
    let a captured graph write into it instead of refusing to capture (they may mutate only static inputs)."""
    torch._dynamo.mark_static_address(tensor)
    return tensor
