"""One block's plan as a pure tensor function, and that function compiled: the fused plan (``fused_plan=True``).

Plain torch, no diffusers. `block_plan` is what the processor runs per merging block in eager mode, written with
tensors only (the layer's projection weights instead of the layer), so that ``torch.compile(fullgraph=True)`` turns
it into one graph per grid shape: inductor fuses the ~50 operations of the semantic value, the redundancy, the
information degree and the index tables into about a dozen kernel calls, and the indices are the eager ones. The
partition's tables (seeded destinations, sources, candidates) come in as inputs, computed once per UNet call, so
nothing in the graph depends on the timestep's value and it never recompiles from step to step.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .partition import Partition
from .plan import MergePlan, PlanScores, plan_merge
from .scores import global_query_attention


def block_plan(
    x: torch.Tensor,
    partition: Partition,
    num_merge: int,
    alpha: float,
    semantic: torch.Tensor | None = None,
    query_weight: torch.Tensor | None = None,
    query_bias: torch.Tensor | None = None,
    key_weight: torch.Tensor | None = None,
    heads: int = 1,
    scale: float = 1.0,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Semantic value (unless given), then `plan_merge`, as tensors.

    Args:
        x: ``(B, N, C)`` the block's self-attention input.
        partition: this UNet call's partition of the grid.
        num_merge: ``r``.
        alpha: weight of the semantic value.
        semantic: ``(B, N)`` precomputed semantic value (``semantic="text"``'s text mass), or ``None`` to compute
            attention received from the mean query with ``query_weight`` / ``query_bias`` / ``key_weight``
            (``(H * d, C)`` each, bias ``(H * d,)``), ``heads`` and ``scale``; with ``alpha == 0`` none is used.

    Returns:
        ``(MergePlan.indices(), redundancy, semantic, degree)``.
    """
    if semantic is None and alpha > 0 and key_weight is not None:
        query_mean = F.linear(x.mean(dim=1), query_weight, query_bias).view(x.shape[0], heads, -1)
        semantic = global_query_attention(x, query_mean, scale, key_weight=key_weight)
    plan = plan_merge(x, partition, num_merge, semantic if alpha > 0 else None, alpha)
    assert plan is not None
    scores = plan.scores
    return plan.indices(), scores.redundancy, scores.semantic, scores.degree


@functools.cache
def compiled_block_plan():
    """`block_plan` compiled with inductor (``fullgraph=True``, static shapes): one graph per grid shape, batch and
    ratio, made at its first call with that shape (once per process)."""
    return torch.compile(block_plan, fullgraph=True, dynamic=False)


def fused_plan(x: torch.Tensor, partition: Partition, num_merge: int, alpha: float, **inputs) -> MergePlan:
    """`block_plan` through `compiled_block_plan`, as a `MergePlan` (with its scores, for inspection)."""
    indices, redundancy, semantic, degree = compiled_block_plan()(x, partition, num_merge, alpha, **inputs)
    plan = MergePlan.from_indices(indices, x.shape[1], partition.dst.shape[0])
    plan.scores = PlanScores(partition, redundancy, semantic, degree)
    return plan
