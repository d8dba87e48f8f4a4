"""`TurboProcessor`: a diffusers attention processor that merges tokens by information degree.

At a merged level, self-attention reads:

    plan = self._plan(attn, x, level)     # partition, R, S, E, top-r (or this block's plan from a recent step)
    merged = plan.merge(x)
    y = attend(attn, merged)
    return plan.restore(y)

Everywhere else (other levels, cross-attention unless asked, 4-D inputs, masks) it hands the call to the processor
that was there before (``inner``) unchanged, so ``ratio=0`` is the unaccelerated model bit for bit. The block's
cross-attention, when it merges (``merge_crossattn``) or measures text mass for ``semantic="text"``, reuses the
plan its self-attention made, as does the feed-forward hook (``merge_mlp``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch.profiler import record_function

from .config import TurboConfig, resolve_config
from .context import TurboContext
from .core import MergePlan, global_query_attention, merged_count, plan_merge, window_count
from .core.fused import fused_plan
from .core.partition import shape_cached
from .kernels import attention, attention_with_text_mass, check_kernel, default_processor, resolve_backend
from .levels import Level
from .prompts import fallback_content
from .state import BlockMemory, BlockState, CallState, LayerMemory

_NO_GENERATION = (
    "Turbo ({config}) keeps plans or text mass from one denoising step to the next only inside a generation: a "
    "call of a pipeline Turbo was applied through (apply_turbo(pipe), a Turbo pipeline, also from_pipe siblings) "
    "or a `with turbo_generation(unet):` block. This UNet call is outside one, so it plans afresh and reads no "
    "previous step, as will every such call."
)

# torch.profiler labels of the merged self-attention path (`turbo-diffusion bench` splits a step's time by them).
PROFILE_PLAN = "turbo::plan"
PROFILE_MERGE = "turbo::merge"
PROFILE_ATTENTION = "turbo::attention"
PROFILE_RESTORE = "turbo::restore"


class TurboProcessor:
    """Attention processor with Turbo token merging (informativity-driven ToMe) for UNet self-attention.

    Use it like any diffusers processor, one instance for the whole UNet::

        unet.set_attn_processor(TurboProcessor(ratio=0.5))

    or, better, ``apply_turbo(pipe, ratio=0.5)``, which also gives it the latent size (exact grids for any
    aspect ratio) and the timestep (seeded draws, new generations), wires up cross-attention / feed-forward
    merging, and is the route that compiles with ``torch.compile(..., fullgraph=True)`` without recompiling.
    Give each UNet its own instance.

    Args:
        config: a `TurboConfig`, a dict of its fields, or ``None`` for the defaults.
        **fields: `TurboConfig` fields overriding ``config`` (e.g. ``ratio=0.6``).
    """

    def __init__(self, config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> None:
        # diffusers re-creates the processors it keeps with `type(processor)()` (load_ip_adapter,
        # unload_ip_adapter): `apply_turbo` puts its own processor back on a layer holding such a re-creation.
        self.made_without_arguments = config is None and not fields
        config = resolve_config(config, **fields)
        check_kernel(config.backend)
        self._setup(TurboContext(config), inner=None, memory=LayerMemory(), name=None)

    @classmethod
    def _installed(cls, context: TurboContext, inner: Any, memory: BlockMemory, name: str) -> TurboProcessor:
        """The processor `apply_turbo` puts on one layer: it passes through to ``inner`` (the layer's previous
        processor) and keeps its block's state in ``memory``, shared with the block's other components."""
        processor = cls.__new__(cls)
        processor.made_without_arguments = False
        processor._setup(context, inner, memory, name)
        return processor

    def _setup(self, context: TurboContext, inner: Any, memory: BlockMemory | LayerMemory, name: str | None) -> None:
        cfg = context.config
        self.config = cfg
        self.context = context
        self.inner = inner  # None: diffusers' default processor for the backend (the bare route)
        self.memory = memory
        self.name = name
        self._records_text_mass = cfg.semantic == "text" and cfg.alpha > 0
        self._keeps_state = cfg.plan_every > 1 or self._records_text_mass  # from one step to the next
        self._defaults: dict[str, Any] = {}

    @property
    def _plan_readers(self) -> bool:
        """Whether a component after self-attention uses the block's plan (cross-attention, feed-forward)."""
        return self.config.merge_crossattn or self._records_text_mass or self.context.feed_forward_merges

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        out = None
        if self.config.ratio > 0 and _is_plain_token_attention(attn, hidden_states):
            if encoder_hidden_states is None:
                out = self._self_attention(attn, hidden_states, attention_mask)
            elif self._plan_readers:
                out = self._cross_attention(attn, hidden_states, encoder_hidden_states, attention_mask)
        if out is not None:
            return out
        inner = self.inner if self.inner is not None else self._default_processor(hidden_states.device)
        if temb is not None or args:
            return inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    # -- the two merged paths (None means: not merged here, pass through) ------------------------------------
    def _self_attention(self, attn: Attention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        merges_here = self.config.merge_attn and mask is None
        if self.config.merge_attn and mask is not None:
            self.context.warn_once("self_attention_mask", "self-attention with an attention mask is not merged")
        if not (merges_here or self._plan_readers):
            return None  # nothing in this block merges: no plan is paid for
        call = self.context.call()
        level = call.level(attn, x.shape[1])
        if level is not None and level.one_dimensional:
            self.context.warn_once(
                "one_dimensional",
                f"TurboProcessor without apply_turbo cannot tell the grid of {x.shape[1]} tokens (non-square "
                "latent); merging in 1-D windows of consecutive tokens. Use apply_turbo(...) for exact 2-D windows.",
            )
        state = call.current = self.memory.state(call, attn)
        if call.generation is None and self._keeps_state and not torch.compiler.is_compiling():
            self.context.warn_once("no_generation", _NO_GENERATION.format(config=self.config))
        plan = self._plan(attn, x, level, call, state) if level is not None else None
        if self._plan_readers:
            state.plan = plan
        if plan is None or not merges_here:
            return None
        if self.config.mode == "kv":
            # Keys and values from the merged tokens, every query kept: nothing to restore.
            with _phase(PROFILE_ATTENTION):
                log_sizes = plan.sizes.log().to(x.dtype)[:, None, None, :]  # (B, 1, 1, N - r)
                y = attend(attn, x, kv_states=plan.merge(x), log_size_bias=log_sizes, backend=self._backend(x))
            return _finish(attn, y, x)
        with _phase(PROFILE_MERGE):
            merged = plan.merge(x)
        with _phase(PROFILE_ATTENTION):
            log_sizes = plan.sizes.log().to(x.dtype)[:, None, None, :] if self.config.proportional_attn else None
            y = attend(attn, merged, log_size_bias=log_sizes, backend=self._backend(x))
        with _phase(PROFILE_RESTORE):
            return _finish(attn, plan.restore(y), x)

    def _cross_attention(
        self, attn: Attention, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        call = self.context.call()
        state = call.current
        plan = state.plan if state is not None else None
        if plan is None or not plan.matches(x):
            return None
        if not self.context.feed_forward_merges:
            state.plan = None  # the block's last use of it
        merge = self.config.merge_crossattn
        queries = plan.merge(x) if merge else x
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        if self._records_text_mass:
            content = self._content_mask(call, x.shape[0], text.shape[1], x.device)
            y, mass = attend_with_text_mass(attn, queries, text, content, mask=mask)
            _keep(state, "text_mass", plan.restore(mass.unsqueeze(-1)).squeeze(-1) if merge else mass)
        else:
            y = attend(attn, queries, kv_states=text, mask=mask, backend=self._backend(x))
        return _finish(attn, plan.restore(y) if merge else y, x)

    # -- which plan ------------------------------------------------------------------------------------------
    def _plan(self, attn: Attention, x: torch.Tensor, level: Level, call: CallState,
              state: BlockState) -> MergePlan | None:
        """This block's plan for this UNet call: made afresh, or, under ``plan_every``, the one this block made
        at the generation's last planning call."""
        cfg = self.config
        num_dst = window_count(level.height, level.width, level.sx, level.sy)
        num_merge = merged_count(x.shape[1], num_dst, cfg.ratio)
        if num_merge == 0:
            return None
        reused = False
        with _phase(PROFILE_PLAN):
            if cfg.plan_every == 1:
                plan = self._new_plan(attn, x, level, num_merge, call, state)
            elif torch.compiler.is_compiling():
                plan = self._plan_in_graph(attn, x, level, num_merge, call, state)
            elif call.planning or not _reusable(state, call, x, num_merge):
                plan = self._new_plan(attn, x, level, num_merge, call, state)
                if call.generation is not None:
                    state.saved, state.saved_in = plan, call.generation.serial
            else:
                plan, reused = state.saved, True
        if self.context.recorder is not None:
            self.context.recorder.add(self.name or attn, level, plan, reused)
        return plan

    def _plan_in_graph(self, attn: Attention, x: torch.Tensor, level: Level, num_merge: int, call: CallState,
                       state: BlockState) -> MergePlan:
        """`_plan` inside a compiled graph: the plan is made at every call (fused into the graph's kernels) and the
        clock's flag selects it or the block's stored one, which the result then replaces. A select, not a branch:
        one graph for every step, no host read of a device value, and nothing that CUDA graphs cannot capture."""
        plan = self._new_plan(attn, x, level, num_merge, call, state)
        storage = state.storage
        if storage is None or any(kept.shape != new.shape for kept, new in zip(storage, plan.indices(), strict=True)):
            # No storage of these shapes yet (the bare route has no UNet hook to size it): this plan's tensors
            # become it, and the next call's graph selects from them (one recompile, then none).
            state.storage = plan.indices()
            return plan
        indices = tuple(torch.where(call.planning_flag, new, kept)
                        for new, kept in zip(plan.indices(), storage, strict=True))
        for kept, chosen in zip(storage, indices, strict=True):
            kept.copy_(chosen)
        return MergePlan.from_indices(indices, plan.num_tokens, plan.num_dst)

    def _new_plan(self, attn: Attention, x: torch.Tensor, level: Level, num_merge: int, call: CallState,
                  state: BlockState) -> MergePlan:
        """Score and select on this call's partition of the grid: a fresh merge plan of this block."""
        cfg = self.config
        partition = call.partition(level, x.device)
        if cfg.fused_plan and not torch.compiler.is_compiling():
            inputs = self._fused_inputs(attn, x, call, state)
            if inputs is not None:
                return fused_plan(x, partition, num_merge, cfg.alpha, **inputs)
        semantic = self._semantic_value(attn, x, call, state) if cfg.semantic != "none" and cfg.alpha > 0 else None
        plan = plan_merge(x, partition, num_merge, semantic, cfg.alpha)
        assert plan is not None  # num_merge > 0 and every window has sources
        return plan

    def _fused_inputs(self, attn: Attention, x: torch.Tensor, call: CallState, state: BlockState) -> dict | None:
        """What the compiled plan needs besides the features: the layer's weights, or the semantic value when it
        is not attention received (``None`` when the layer's projections are not plain ``nn.Linear``)."""
        cfg = self.config
        if cfg.semantic == "none" or cfg.alpha == 0:
            return {}
        if self._records_text_mass and state.text_mass is not None and call.previous:
            return {"semantic": self._semantic_value(attn, x, call, state)}
        if attn.norm_q is not None or attn.norm_k is not None or \
                type(attn.to_q) is not torch.nn.Linear or type(attn.to_k) is not torch.nn.Linear:
            self.context.warn_once("fused_plan", "fused_plan: layers whose query/key projections are not plain "
                                                 "nn.Linear (LoRA, normalised keys) plan in eager mode")
            return None
        return {"query_weight": attn.to_q.weight, "query_bias": attn.to_q.bias, "key_weight": attn.to_k.weight,
                "heads": attn.heads, "scale": attn.scale}

    def _semantic_value(self, attn: Attention, x: torch.Tensor, call: CallState, state: BlockState) -> torch.Tensor:
        """``(B, N)`` semantic value in [0, 1]: this generation's last step's text mass when asked and known, else
        attention received from the mean query."""
        mass = state.text_mass if self._records_text_mass else None
        if mass is None or mass.shape != x.shape[:2]:
            return _attention_received(attn, x)
        if torch.compiler.is_compiling():  # one graph for every step: the clock's flag picks
            return torch.where(call.previous_flag, mass.to(x.dtype), _attention_received(attn, x))
        return mass.to(x.dtype) if call.previous else _attention_received(attn, x)

    def _content_mask(self, call: CallState, batch: int, length: int, device: torch.device) -> torch.Tensor:
        mask = call.content_mask(batch)
        if mask is not None and mask.shape == (batch, length):
            return mask
        if mask is not None:
            self.context.warn_once(
                "prompt_mask_shape",
                f"prompt token mask {tuple(mask.shape)} does not fit cross-attention ({batch}, {length}); "
                "counting every token but the start token",
            )
        # The same mask at every block and step: made once per shape (read only).
        return shape_cached(("fallback_content", batch, length, str(device)),
                            lambda: fallback_content(batch, length, device))

    def _backend(self, x: torch.Tensor) -> str:
        return resolve_backend(self.config.backend, x.device)

    def _default_processor(self, device: torch.device) -> Any:
        """The bare route's pass-through: diffusers' SDPA processor, or its xformers one on that backend."""
        kind = "xformers" if resolve_backend(self.config.backend, device) == "xformers" else "sdpa"
        if kind not in self._defaults:
            self._defaults[kind] = default_processor(kind)
        return self._defaults[kind]

    def __repr__(self) -> str:
        return f"TurboProcessor({self.config})"


# -- attention on (merged) tokens ----------------------------------------------------------------------------------
def attend(
    attn: Attention,
    x: torch.Tensor,
    kv_states: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    log_size_bias: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """``attn``'s projections and attention for ``(B, M, C)`` queries ``x``; returns ``(B, M, C)``.

    Args:
        kv_states: ``(B, L, C_kv)`` tokens the keys and values come from: the text for cross-attention, the merged
            tokens for ``mode="kv"``; ``None`` for ``x`` itself.
        mask: diffusers' attention mask, as the processor received it.
        log_size_bias: ``(B, 1, 1, L)`` ``log(size)`` of each key, the number of tokens it stands for
            (proportional attention: a merged key weighs as much as the tokens it replaced).
        backend: ``"sdpa"`` or ``"xformers"``.
    """
    query, key, value = _project(attn, x, kv_states)
    out = attention(query, key, value, _logit_bias(attn, mask, log_size_bias, key), backend)
    return _project_out(attn, out, query.dtype)


def attend_with_text_mass(
    attn: Attention, x: torch.Tensor, text: torch.Tensor, content: torch.Tensor, *, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention of ``(B, M, C)`` queries on ``(B, L, C_text)`` text that also returns each query's
    attention mass on the content tokens (``content``, ``(B, L)`` bool): ``(B, M, C)`` output, ``(B, M)`` mass."""
    query, key, value = _project(attn, x, text)
    out, mass = attention_with_text_mass(query, key, value, content, attn.scale, _logit_bias(attn, mask, None, key))
    return _project_out(attn, out, query.dtype), mass


def _project(attn: Attention, x: torch.Tensor, kv_states: torch.Tensor | None):
    """``(B, H, M, d)`` queries, ``(B, H, L, d)`` keys and values, with diffusers' q/k norms."""
    batch = x.shape[0]
    source = x if kv_states is None else kv_states
    query, key, value = attn.to_q(x), attn.to_k(source), attn.to_v(source)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def _logit_bias(
    attn: Attention, mask: torch.Tensor | None, log_size_bias: torch.Tensor | None, key: torch.Tensor
) -> torch.Tensor | None:
    """The additive logits of a diffusers mask and/or the proportional-attention bias, or ``None``."""
    bias = log_size_bias
    if mask is not None:
        batch, heads, length = key.shape[0], key.shape[1], key.shape[2]
        prepared = attn.prepare_attention_mask(mask, length, batch).view(batch, heads, -1, length)
        bias = prepared if bias is None else prepared + bias
    return bias


def _project_out(attn: Attention, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    batch, heads, tokens, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim).to(dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _attention_received(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Semantic value ``"attention"``: ``(B, N)`` attention each token receives from the layer's mean query."""
    with torch.no_grad():
        heads = attn.heads
        query_mean = attn.to_q(x.mean(dim=1)).view(x.shape[0], heads, -1)
        if attn.norm_q is None and attn.norm_k is None and type(attn.to_k) is torch.nn.Linear:
            return global_query_attention(x, query_mean, attn.scale, key_weight=attn.to_k.weight)
        # Normalised or adapted keys (LoRA, quantised layers): compute them, O(N * C^2).
        keys = attn.to_k(x)
        if attn.norm_k is not None:
            keys = attn.norm_k(keys.view(x.shape[0], x.shape[1], heads, -1)).flatten(2)
            query_mean = attn.norm_q(query_mean) if attn.norm_q is not None else query_mean
        return global_query_attention(keys, query_mean, attn.scale)


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _phase(label: str):
    """A torch.profiler label while a profiler runs in eager mode; otherwise nothing (a label costs two
    operations, and inside a compiled graph dynamo would drop it, noisily)."""
    if torch.compiler.is_compiling() or not torch.autograd.profiler._is_profiler_enabled:
        return nullcontext()
    return record_function(label)


def _reusable(state: BlockState, call: CallState, x: torch.Tensor, num_merge: int) -> bool:
    """Whether ``state`` holds a plan this generation made for tensors like ``x`` (eager mode)."""
    saved, generation = state.saved, call.generation
    return (saved is not None and generation is not None and state.saved_in == generation.serial
            and saved.matches(x) and saved.num_merged == num_merge)


def _keep(state: BlockState, name: str, value: torch.Tensor) -> None:
    """Store ``value`` as ``state.<name>``: copied into the existing storage when the shapes agree (compiled graphs
    then mutate a static input instead of growing Python state), else assigned."""
    current, value = getattr(state, name), value.detach()
    if current is not None and current.shape == value.shape:
        current.copy_(value)
    else:
        setattr(state, name, value)


def _is_plain_token_attention(attn: Attention, hidden_states: torch.Tensor) -> bool:
    """Token attention Turbo can merge: (B, N, C) input, no group/spatial norm, no added KV projections."""
    return (
        hidden_states.dim() == 3
        and getattr(attn, "group_norm", None) is None
        and getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "add_k_proj", None) is None
    )

