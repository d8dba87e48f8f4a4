"""`TurboProcessor`: a diffusers attention processor that merges tokens by information degree.

At a merged level, a self-attention call reads:

    plan = self._plan(attn, hidden_states, level)     # partition, R, S, E, top-r
    out = self._attend(attn, plan.merge(hidden_states))
    return plan.restore(out)

Everywhere else (other levels, cross-attention unless asked, 4-D inputs, masks) it hands the call to diffusers'
own processor unchanged, so ``ratio=0`` is the unaccelerated model bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, XFormersAttnProcessor
from torch.profiler import record_function

from .config import TurboConfig, resolve_config
from .context import Level, TurboContext
from .core import (
    MergePlan,
    Partition,
    global_query_attention,
    partition_tokens,
    plan_merge,
    random_offsets,
    window_grid,
)
from .kernels import attention, attention_with_text_mass, resolve_backend, xformers_available

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
    aspect ratio), seeds its draws per timestep, and wires up cross-attention / feed-forward merging. An
    instance keeps per-UNet state: give each UNet its own.

    Args:
        config: a `TurboConfig`, a dict of its fields, or ``None`` for the defaults.
        **fields: `TurboConfig` fields overriding ``config`` (e.g. ``ratio=0.6``).
    """

    def __init__(self, config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> None:
        self.config = resolve_config(config, **fields)
        if self.config.backend == "xformers" and not xformers_available():
            raise ImportError("backend='xformers' needs xformers: pip install 'turbo-diffusion[xformers]'")
        self.context = TurboContext(self.config)
        self._sdpa = AttnProcessor2_0()
        self._xformers: XFormersAttnProcessor | None = None

    @classmethod
    def _for_context(cls, context: TurboContext) -> TurboProcessor:
        """A processor sharing ``context`` with the hooks ``apply_turbo`` installs."""
        processor = cls(context.config)
        processor.context = context
        return processor

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
        if self.config.ratio > 0 and _is_plain_token_attention(attn, hidden_states):
            if encoder_hidden_states is None:
                out = self._self_attention(attn, hidden_states, attention_mask)
            else:
                out = self._cross_attention(attn, hidden_states, encoder_hidden_states, attention_mask)
            if out is not None:
                return out
        return self._passthrough(hidden_states.device)(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )

    # -- the two merged paths (None means: not merged here, pass through) ------------------------------------
    def _self_attention(self, attn: Attention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        level = self.context.locate(attn, x.shape[1])
        plan = self._block_plan(attn, x, level) if level is not None else None
        self.context.begin_block(attn, plan)
        if plan is None or not self.config.merge_attn:
            return None
        if mask is not None:
            self.context.warn_once("mask", "self-attention with an attention mask is not merged")
            return None
        with record_function(PROFILE_MERGE):
            merged = plan.merge(x)
        if self.config.mode == "kv":
            # Keys and values from the merged tokens, every query kept: nothing to restore.
            with record_function(PROFILE_ATTENTION):
                return self._finish(attn, self._attend(attn, x, merged, key_sizes=plan.sizes), x)
        with record_function(PROFILE_ATTENTION):
            out = self._attend(attn, merged)
        with record_function(PROFILE_RESTORE):
            return self._finish(attn, plan.restore(out), x)

    def _cross_attention(
        self, attn: Attention, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        plan = self.context.plan_for(x) if self.config.merge_crossattn else None
        record = self.context.wants_text_mass(x)
        if plan is None and not record:
            return None
        queries = plan.merge(x) if plan is not None else x
        out = self._attend(attn, queries, text, mask, record_text_mass=record, plan=plan)
        if plan is not None:
            out = plan.restore(out)
        return self._finish(attn, out, x)

    # -- pieces --------------------------------------------------------------------------------------------
    def _block_plan(self, attn: Attention, x: torch.Tensor, level: Level) -> MergePlan | None:
        """This block's plan for this UNet call: reused within ``plan_every`` calls, else made afresh."""
        plan = self.context.reusable_plan(attn, x)
        if plan is None:
            with record_function(PROFILE_PLAN):
                plan = self._plan(attn, x, level)
            self.context.store_plan(attn, plan)
        return plan

    def _plan(self, attn: Attention, x: torch.Tensor, level: Level) -> MergePlan | None:
        """Partition, score and select: the merge plan of this block for this UNet call."""
        cfg = self.config
        partition = self._partition(level, x.device)
        semantic = self._semantic_value(attn, x) if cfg.semantic != "none" and cfg.alpha > 0 else None
        return plan_merge(x, partition, int(cfg.ratio * x.shape[1]), semantic, cfg.alpha)

    @torch.compiler.disable
    def _partition(self, level: Level, device: torch.device) -> Partition:
        """The cached window layout and this call's random destinations. Kept out of torch.compile graphs: the
        layout cache and the seeded generator are Python state that must not be traced."""
        grid = window_grid(level.height, level.width, level.sx, level.sy, self.config.match_radius, str(device))
        offsets = random_offsets(grid, self.context.generator(device)) if self.config.use_rand else None
        return partition_tokens(grid, offsets)

    def _semantic_value(self, attn: Attention, x: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` semantic value in [0, 1]: last step's text mass when asked and known, else attention
        received from the mean query."""
        if self.config.semantic == "text":
            mass = self.context.text_mass(attn, x.shape[0], x.shape[1])
            if mass is not None:
                return mass.to(x.dtype)
        with torch.no_grad():
            heads = attn.heads
            query_mean = attn.to_q(x.mean(dim=1, keepdim=True)).view(x.shape[0], heads, -1)
            if attn.norm_q is None and attn.norm_k is None and type(attn.to_k) is torch.nn.Linear:
                return global_query_attention(x, query_mean, attn.scale, key_weight=attn.to_k.weight)
            # Normalised or adapted keys (LoRA, quantised layers): compute them, O(N * C^2).
            keys = attn.to_k(x)
            if attn.norm_k is not None:
                keys = attn.norm_k(keys.view(x.shape[0], x.shape[1], heads, -1)).flatten(2)
                query_mean = attn.norm_q(query_mean) if attn.norm_q is not None else query_mean
            return global_query_attention(keys, query_mean, attn.scale)

    def _attend(
        self,
        attn: Attention,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        record_text_mass: bool = False,
        plan: MergePlan | None = None,
        key_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Project, attend and project out ``(B, M, C)`` tokens against ``context`` (itself when ``None``).

        ``key_sizes`` ``(B, L)``: how many tokens each key stands for; adds ``log(size)`` to its logits
        (proportional attention, so a merged key weighs as much as the tokens it replaced).
        """
        batch, tokens, _ = x.shape
        if context is None:
            context = x
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if mask is not None:
            mask = attn.prepare_attention_mask(mask, key.shape[2], batch).view(batch, attn.heads, -1, key.shape[2])
        if key_sizes is not None:
            mask = key_sizes.log().to(query.dtype)[:, None, None, :]  # (B, 1, 1, L), broadcast over heads/queries

        if record_text_mass:
            content = self.context.content_mask(batch, key.shape[2], x.device)
            out, mass = attention_with_text_mass(query, key, value, content, attn.scale, mask)
            if plan is not None:
                mass = plan.restore(mass.unsqueeze(-1)).squeeze(-1)
            self.context.record_text_mass(mass)
        else:
            out = attention(query, key, value, mask, resolve_backend(self.config.backend, x.device))
        out = out.transpose(1, 2).reshape(batch, tokens, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))

    @staticmethod
    def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _passthrough(self, device: torch.device):
        if resolve_backend(self.config.backend, device) == "xformers":
            if self._xformers is None:
                self._xformers = XFormersAttnProcessor()
            return self._xformers
        return self._sdpa

    def __repr__(self) -> str:
        return f"TurboProcessor({self.config})"


def _is_plain_token_attention(attn: Attention, hidden_states: torch.Tensor) -> bool:
    """Token attention Turbo can merge: (B, N, C) input, no group/spatial norm, no added KV projections."""
    return (
        hidden_states.dim() == 3
        and getattr(attn, "group_norm", None) is None
        and getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "add_k_proj", None) is None
    )
