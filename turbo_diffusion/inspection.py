"""`inspect_plans`: see which tokens Turbo merges, and why, block by block and step by step.

    with inspect_plans(pipe) as records:
        pipe("a red cat", num_inference_steps=4)
    first = records[0]
    first.block, first.step, first.grid        # "down_blocks.0.attentions.0.transformer_blocks.0.attn1", 0, (h, w)
    first.redundancy, first.semantic, first.degree, first.merged   # (B, h, w) maps and a (B, h, w) bool mask

Recording copies each plan's scores to the CPU, which synchronises the device: use it to look, not to time.
Outside the ``with`` block nothing is recorded and the processors pay one attribute check per merged block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from .anatomy import find_unet
from .coexistence import settle
from .core import MergePlan
from .installation import turbo_contexts
from .levels import Level


@dataclass(frozen=True, eq=False)
class PlanRecord:
    """One merged block at one UNet call, on the CPU.

    Attributes:
        block: the self-attention layer's module name, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1"``.
        step: the UNet call, counted from 0 when inspection started (one per denoising step with batched
            classifier-free guidance).
        grid: ``(h, w)`` token grid of the block's level.
        merged: ``(B, h, w)`` bool, True for the tokens merged away.
        merged_positions: ``(B, r)`` row-major positions of those tokens.
        redundancy: ``(B, h, w)`` mutual redundancy ``R`` of each source; NaN for destinations.
        semantic: ``(B, h, w)`` semantic value ``S``; NaN everywhere when Turbo measured none
            (``semantic="none"`` or ``alpha=0``).
        degree: ``(B, h, w)`` information degree ``E = R - alpha * S``; NaN for destinations.
        reused: the plan was reused from an earlier step (``plan_every``); its maps are then all NaN, since nothing
            was scored at this step.
    """

    block: str
    step: int
    grid: tuple[int, int]
    merged: torch.Tensor
    merged_positions: torch.Tensor
    redundancy: torch.Tensor
    semantic: torch.Tensor
    degree: torch.Tensor
    reused: bool = False


class _Recorder:
    """Collects `PlanRecord` s; the processors call `add`, the UNet hooks call `start_call`."""

    def __init__(self, names: dict[Attention, str]) -> None:
        self.records: list[PlanRecord] = []
        self.step = -1
        self._names = names

    def start_call(self) -> None:
        self.step += 1

    def add(self, block: str | Attention, level: Level, plan: MergePlan, reused: bool) -> None:
        name = block if isinstance(block, str) else self._names.get(block, type(block).__name__)
        batch, (h, w) = plan.batch, (level.height, level.width)
        positions = plan.merged_positions.detach().cpu()
        merged = torch.zeros(batch, h * w, dtype=torch.bool).scatter_(1, positions, True)
        nan = torch.full((batch, h * w), float("nan"))
        redundancy, semantic, degree = nan.clone(), nan.clone(), nan.clone()
        scores = plan.scores if not reused else None  # a reused plan was scored at an earlier step
        if scores is not None:
            src = scores.partition.src.cpu()
            redundancy[:, src] = scores.redundancy.detach().float().cpu()
            degree[:, src] = scores.degree.detach().float().cpu()
            if scores.semantic is not None:
                semantic = scores.semantic.detach().float().cpu()
        self.records.append(PlanRecord(
            name, max(self.step, 0), (h, w), merged.view(batch, h, w), positions, redundancy.view(batch, h, w),
            semantic.view(batch, h, w), degree.view(batch, h, w), reused,
        ))


@contextmanager
def inspect_plans(model: Any) -> Iterator[list[PlanRecord]]:
    """Record every merge plan Turbo uses on ``model`` while the ``with`` block runs.

    Args:
        model: a pipeline or UNet with Turbo on it (`apply_turbo`, a Turbo pipeline, or bare `TurboProcessor` s).

    Yields:
        A list that fills with one `PlanRecord` per merged block and UNet call, in call order.

    Raises:
        ValueError: when no Turbo processor is installed on ``model``.
    """
    unet = find_unet(model)
    settle(unet)  # Turbo comes off first where another call replaced its processors
    contexts = turbo_contexts(unet, needed_by="inspect_plans")
    names = {module: name for name, module in unet.named_modules() if isinstance(module, Attention)}
    recorder = _Recorder(names)
    # Counts UNet calls for every route (the bare processor has no UNet hook of its own).
    handle = unet.register_forward_pre_hook(lambda module, args: recorder.start_call())
    for context in contexts:
        context.recorder = recorder
    try:
        yield recorder.records
    finally:
        handle.remove()
        for context in contexts:
            context.recorder = None
