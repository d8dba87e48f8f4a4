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
model they expect (both tested). Everything is validated before anything changes, so a failing `apply_turbo`
leaves the previous state as it was. `remove_turbo` puts back exactly the processors that were there before.
When anything else replaces Turbo's processors (``enable_attention_slicing()``, ``fuse_qkv_projections()``,
``set_attn_processor(...)``, ``set_default_attn_processor()``, ...), Turbo takes itself off completely, with one
warning naming the call, so it never reports itself on while merging nothing. Where diffusers only re-creates
Turbo's processors by calling their class (``load_ip_adapter()``, ``unload_ip_adapter()``), Turbo puts its own
back and stays on. docs/DESIGN.md ("Processors replaced by other calls") lists what each call does.
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
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from torch.utils.hooks import RemovableHandle

from .anatomy import find_unet, merge_depth, transformer_block_levels
from .anatomy import unet_or_none as _unet_or_none
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

_FEED_FORWARD_HOOK = "turbo_diffusion_feed_forward"
_SET_DEFAULT = "set_default_attn_processor"  # the UNet method apply_turbo overrides on the instance

# Processors Turbo may wrap: plain, fused, sliced and xformers attention (it keeps them for what it does not
# merge). Anything else (IP-Adapter, custom) is left in place, with a warning.
_WRAPPABLE = (AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor)

# The diffusers calls that install each processor class, to say which one switched Turbo off.
_INSTALLED_BY = {
    "SlicedAttnProcessor": "enable_attention_slicing() / set_attention_slice()",
    "FusedAttnProcessor2_0": "fuse_qkv_projections()",
    "XFormersAttnProcessor": "enable_xformers_memory_efficient_attention()",
    "AttnProcessor": "set_default_attn_processor() / set_attn_processor(AttnProcessor())",
    "AttnProcessor2_0": "set_attn_processor(AttnProcessor2_0()) / unfuse_qkv_projections()",
    "IPAdapterAttnProcessor": "load_ip_adapter()",
    "IPAdapterAttnProcessor2_0": "load_ip_adapter()",
    "IPAdapterXFormersAttnProcessor": "load_ip_adapter()",
}

# Why Turbo cannot stay on a UNet whose cross-attention another processor (IP-Adapter's, a custom one) runs.
_CROSS_ATTENTION_TAKEN = (
    "merge_crossattn and semantic='text' need Turbo's processor on cross-attention, but {what}; Turbo merges "
    "self-attention alongside it with merge_crossattn=False and semantic='attention' (or 'none')"
)

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

    def replaced(self) -> Any:
        """The processor that replaced one of Turbo's, or ``None`` while all of them are in place.

        A layer where diffusers re-created Turbo's processor by calling its class with no arguments, as
        ``load_ip_adapter()`` and ``unload_ip_adapter()`` do for every processor they keep, gets Turbo's own
        processor back first: that call meant to keep the layer's processor, and a bare ``TurboProcessor()`` would
        merge with the default config, detached from this installation.
        """
        current = [module.processor for module, _ in self.layers]
        replacement = None
        for (module, processor), now in zip(self.layers, current, strict=True):
            if now is processor:
                continue
            # diffusers makes one per layer; one instance on several layers is someone's set_attn_processor(...).
            if _is_recreation(now) and sum(p is now for p in current) == 1:
                module.set_processor(processor)
            elif replacement is None:
                replacement = now
        return replacement

    def hook(self, unet: UNet2DConditionModel) -> None:
        """Put this installation's hooks on: the UNet's, the feed-forwards', the pipelines'."""
        for module in self.feed_forwards:
            register_hook(module, _FeedForwardHook(self.context), _FEED_FORWARD_HOOK)
        for pipeline in self.pipelines:
            pipeline.install()
        self.handles = [unet.register_forward_pre_hook(_CallStart(self), with_kwargs=True),
                        unet.register_forward_hook(_CallEnd(self))]
        unet.__dict__[_SET_DEFAULT] = _SetDefaultAttnProcessor(unet)

    def unhook(self, unet: torch.nn.Module) -> None:
        """Take this installation's hooks off (those that are still there)."""
        if isinstance(unet.__dict__.get(_SET_DEFAULT), _SetDefaultAttnProcessor):
            del unet.__dict__[_SET_DEFAULT]
        for handle in self.handles:
            handle.remove()
        for pipeline in self.pipelines:
            pipeline.uninstall()
        for module in self.feed_forwards:
            remove_hook(module, _FEED_FORWARD_HOOK)

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

    def __init__(self, installation: _Installation) -> None:
        self.installation = weakref.ref(installation)

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        installation = self.installation()
        if installation is not None and _INSTALLATIONS.get(unet) is not installation:
            installation = _adopt_copy(unet, installation.context.config)
        if installation is None or _retire_if_replaced(unet, installation):
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        installation.start_call(sample, timestep)
        return None


class _CallEnd:
    """UNet forward hook: the call returned (a call that raised never gets here, so the next one starts its
    generation afresh)."""

    def __init__(self, installation: _Installation) -> None:
        self.installation = weakref.ref(installation)

    @torch.compiler.disable
    def __call__(self, unet: torch.nn.Module, args: tuple, output: Any) -> None:
        installation = self.installation()
        if installation is not None and _INSTALLATIONS.get(unet) is installation:
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


class _SetDefaultAttnProcessor:
    """``unet.set_default_attn_processor()`` on a UNet with Turbo: Turbo off, then diffusers' method.

    diffusers' method raises on processor classes it does not list, `TurboProcessor` among them. What it promises
    is to disable custom processors and set the default attention, so that is what it does here: Turbo comes off
    (one warning naming the call), every layer gets diffusers' default and `turbo_config_of` returns ``None``.
    Set on the UNet instance by `apply_turbo` (the class is untouched) and removed with Turbo.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = weakref.ref(unet)

    def __deepcopy__(self, memo: dict) -> _SetDefaultAttnProcessor:
        """The copy of a UNet's method acts on the copied UNet (``copy.deepcopy`` puts it in ``memo`` first)."""
        unet = self.unet()
        copied = memo.get(id(unet)) if unet is not None else None
        return _SetDefaultAttnProcessor(copied if copied is not None else unet)

    def __call__(self) -> None:
        unet = self.unet()
        installation = _INSTALLATIONS.get(unet)
        if installation is None:
            remove_turbo(unet)  # a copy that has not run yet: its copied Turbo pieces come off
        elif not _retire_if_replaced(unet, installation):
            _take_off(unet, installation)
            logger.warning("Turbo is off: set_default_attn_processor() replaced its attention processors with "
                           "diffusers' default. Call apply_turbo(...) again afterwards to merge on top of it.")
        type(unet).set_default_attn_processor(unet)


_INSTALLATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # UNet -> _Installation


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
    unet = _unet_or_none(model)
    if unet is None:
        logger.warning(f"apply_turbo: this {type(model).__name__} has no UNet (unet=None), so there is nothing to "
                       "merge and nothing was installed; call apply_turbo again once it has one.")
        return model
    levels = transformer_block_levels(unet)
    depth = merge_depth(config.max_downsample, levels)

    # Everything below builds the new installation without touching the model; the model changes at the end.
    context = TurboContext(config, max_downsample=depth)
    originals = {name: _original(processor) for name, processor in unet.attn_processors.items()}
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
            if isinstance(originals[key], _WRAPPABLE):
                processor = TurboProcessor._installed(context, originals[key], memory, f"{name}.{layer}")
                wanted[key] = processor
                installation.layers.append((getattr(block, layer), processor))
            elif layer == "attn2":
                raise ValueError(_CROSS_ATTENTION_TAKEN.format(what=f"{key} runs {type(originals[key]).__name__}"))
            else:
                kept.append(f"{key} ({type(originals[key]).__name__})")
        if config.merge_mlp:
            installation.feed_forwards.append(block.ff)
    context.feed_forward_merges = bool(installation.feed_forwards)
    previous = _INSTALLATIONS.get(unet)
    installation.pipelines = [_pipeline_hooks(pipe, context) for pipe in _pipelines_of(unet, model, previous)]

    # Commit: the previous installation's pieces off, the new ones on, registered last. If anything fails or is
    # interrupted on the way, the model goes back to how it was, so `turbo_config_of` never reports a config that
    # is not fully installed.
    before = unet.attn_processors
    try:
        if previous is not None:
            _INSTALLATIONS.pop(unet, None)
            previous.unhook(unet)
        else:
            _strip_copied_hooks(unet)
        unet.set_attn_processor({**originals, **wanted})
        installation.hook(unet)
        _INSTALLATIONS[unet] = installation
    except BaseException:
        _INSTALLATIONS.pop(unet, None)
        installation.unhook(unet)
        unet.set_attn_processor(before)
        if previous is not None:
            previous.hook(unet)
            _INSTALLATIONS[unet] = previous
        raise
    if kept:
        context.warn_once("kept", f"Turbo left {len(kept)} custom attention processor(s) in place: {', '.join(kept)}")
    return model


def _pipelines_of(unet: UNet2DConditionModel, model: Any, previous: _Installation | None) -> list[Any]:
    """The pipelines a new installation serves: ``model`` when it is one, and those the previous installation
    served that still run this UNet (``from_pipe`` siblings share it, and each keeps its generations)."""
    pipes = [model] if model is not unet and not isinstance(model, torch.nn.Module) else []
    for hooks in previous.pipelines if previous is not None else []:
        pipe = hooks.pipe()
        if pipe is not None and all(pipe is not p for p in pipes) and _unet_or_none(pipe) is unet:
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
    unet = _unet_or_none(model)
    if unet is None:
        return model
    installation = _INSTALLATIONS.get(unet)
    if installation is not None:
        _take_off(unet, installation)
    else:
        _strip_copied_hooks(unet)
    _set_processors(unet, lambda name, processor: _original(processor))
    return model


def turbo_config_of(model: Any) -> TurboConfig | None:
    """The `TurboConfig` merging on ``model``: the one `apply_turbo` installed, else a bare `TurboProcessor`'s;
    ``None`` when Turbo is off (also after another call replaced its processors, and on a pipeline without a
    UNet)."""
    unet = _unet_or_none(model)
    if unet is None:
        return None
    installation = _INSTALLATIONS.get(unet)
    if installation is not None and not _retire_if_replaced(unet, installation):
        return installation.context.config
    bare = [p for p in unet.attn_processors.values() if isinstance(p, TurboProcessor)]
    return bare[0].config if bare else None


def turbo_contexts(model: Any, needed_by: str) -> list[TurboContext]:
    """The `TurboContext` of every Turbo installation merging on ``model``'s UNet (`apply_turbo`'s, and each bare
    `TurboProcessor`'s), after taking Turbo off where another call replaced its processors. ``ValueError`` naming
    ``needed_by`` (the caller) when there is none."""
    unet = find_unet(model)
    turbo_config_of(unet)  # first settles processors another call replaced or re-created
    contexts = {id(p.context): p.context for p in unet.attn_processors.values() if isinstance(p, TurboProcessor)}
    if not contexts:
        raise ValueError(f"{needed_by} needs Turbo on this model: apply_turbo(model, ...) first")
    return list(contexts.values())


# -- internals --------------------------------------------------------------------------------------------------
def _original(processor: Any) -> Any:
    """The processor a Turbo processor stands in for (diffusers' default for a bare one); others unchanged."""
    if isinstance(processor, TurboProcessor):
        return processor.inner if processor.inner is not None else AttnProcessor2_0()
    return processor


def _is_recreation(processor: Any) -> bool:
    """A bare `TurboProcessor` made with no arguments: how diffusers re-creates a processor it keeps."""
    return type(processor) is TurboProcessor and processor.made_without_arguments


def _is_ours(processor: Any, installation: _Installation) -> bool:
    return isinstance(processor, TurboProcessor) and processor.context is installation.context


def _set_processors(unet: UNet2DConditionModel, choose) -> None:
    """Replace each layer's processor by ``choose(name, processor)``, touching the UNet only if one changes."""
    current = unet.attn_processors
    chosen = {name: choose(name, processor) for name, processor in current.items()}
    if any(chosen[name] is not current[name] for name in current):
        unet.set_attn_processor(chosen)


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
        _strip_copied_hooks(unet)
        return None  # someone replaced the copy's processors before its first call: leave theirs
    apply_turbo(unet, config)  # takes the processors Turbo's copies wrap, and strips the copied hooks
    return _INSTALLATIONS.get(unet)


def _static(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, marked as storage whose address never changes: CUDA graphs (``mode="reduce-overhead"``) then
    let a captured graph write into it instead of refusing to capture (they may mutate only static inputs)."""
    torch._dynamo.mark_static_address(tensor)
    return tensor


def _strip_copied_hooks(unet: torch.nn.Module) -> None:
    """Remove the Turbo hooks a UNet carries without an installation of its own (a deep copy's)."""
    for hooks, kind in ((unet._forward_pre_hooks, _CallStart), (unet._forward_hooks, _CallEnd)):
        for hook_id, hook in list(hooks.items()):
            if isinstance(hook, kind):
                del hooks[hook_id]
                unet._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    if isinstance(unet.__dict__.get(_SET_DEFAULT), _SetDefaultAttnProcessor):
        del unet.__dict__[_SET_DEFAULT]
    for module in unet.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_FEED_FORWARD_HOOK) is not None:
            remove_hook(module, _FEED_FORWARD_HOOK)


def _take_off(unet: UNet2DConditionModel, installation: _Installation) -> None:
    """Undo one installation: its hooks, and its processors where they still are (others are left alone)."""
    _INSTALLATIONS.pop(unet, None)
    installation.unhook(unet)
    _set_processors(unet, lambda name, p: installation.originals[name] if _is_ours(p, installation) else p)


def _retire_if_replaced(unet: torch.nn.Module, installation: _Installation) -> bool:
    """Take Turbo off when another call replaced its processors, with one warning naming the call. Layers that
    still hold a Turbo processor get back the processor it wrapped: Turbo is then off everywhere."""
    replacement = installation.replaced()
    if replacement is None:
        return False
    _take_off(unet, installation)
    kind = type(replacement).__name__
    call = _INSTALLED_BY.get(kind, f"set_attn_processor({kind}(...))")
    if kind.startswith("IPAdapter"):
        advice = _CROSS_ATTENTION_TAKEN.format(what=f"{call} put {kind} there")
    else:
        advice = "Call apply_turbo(...) again afterwards to merge on top of it (Turbo pipelines do this for you)."
    logger.warning(f"Turbo is off: {call} replaced its attention processors with {kind}. {advice}")
    return True
