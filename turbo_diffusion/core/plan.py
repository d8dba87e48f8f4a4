"""The merge plan: which sources merge where, and how to undo it.

Plain torch, no diffusers. :func:`plan_merge` picks the ``r`` sources with the highest information degree and
returns a :class:`MergePlan`, which any ``(B, N, C)`` tensor of that block can go through:

    plan = plan_merge(x, partition, r, semantic, alpha)
    y = component(plan.merge(x))      # (B, N - r, C)
    out = plan.restore(y)             # (B, N, C)

Merged layout: the ``Nw`` destinations first (row ``i`` is window ``i``, so a source's match is directly its
target row), then the unmerged sources in partition order. Merging averages each destination with the sources
it absorbs, weighted by size (every token starts with size 1); restoring copies each row back to every position
it stands for.

Everything here is counted in tensor operations, since on a launch-bound GPU each costs about the same whatever
its size: the plan is a few gathers and one scatter per index table (``x[rows, index]`` is one operation), the
merge two gathers, one accumulating scatter and one scale, the restore one gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .partition import Partition, row_offsets, row_range, shape_cached
from .scores import information_degree, mutual_redundancy


@dataclass(frozen=True, eq=False)
class PlanScores:
    """The scores a plan was chosen by, kept for inspection (they exist anyway; keeping them costs no work).

    Attributes:
        partition: the destinations/sources split.
        redundancy: ``(B, Ns)`` mutual redundancy ``R`` of each source (partition order).
        semantic: ``(B, N)`` semantic value ``S`` of every token, or ``None`` when none was used.
        degree: ``(B, Ns)`` information degree ``E = R - alpha * S`` of each source.
    """

    partition: Partition
    redundancy: torch.Tensor
    semantic: torch.Tensor | None
    degree: torch.Tensor


class MergePlan:
    """Indices of one merge, shared by every component of a transformer block in one UNet call.

    Built by :func:`plan_merge` (or rebuilt with `from_indices`); construction does no tensor work. Its indices
    are rows of the batch flattened to ``(B * N, C)``, so that merging and restoring are row gathers
    (``index_select``) and one ``index_add_``: on the CPU these are several times faster than per-sample
    gathers, and they are the kernels a GPU runs best too.

    Attributes:
        batch, num_tokens: ``B`` and ``N`` of the tensors it applies to.
        num_dst: destinations, the first rows of each sample's merged layout.
        num_merged: ``r``, sources removed by merging; ``num_kept = N - r`` rows remain.
        kept_rows: ``(B * (N - r),)`` the input row each merged row starts from: destinations, then unmerged
            sources, sample after sample.
        merged_sources: ``(B * r,)`` input rows merged away; ``merged_targets`` ``(B * r,)`` the merged row each
            joins.
        restore_rows: ``(B * N,)`` the merged row each input row reads back.
        sizes: ``(B, N - r)`` float32, how many original tokens each merged row stands for (proportional
            attention, the merge's weights).
        scores: the `PlanScores` it was chosen by, or ``None`` for a plan rebuilt from saved indices.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        kept_rows: torch.Tensor,
        merged_sources: torch.Tensor,
        merged_targets: torch.Tensor,
        restore_rows: torch.Tensor,
        sizes: torch.Tensor,
        num_dst: int,
        scores: PlanScores | None = None,
    ) -> None:
        self.batch, self.num_kept = sizes.shape
        self.num_tokens = num_tokens
        self.num_merged = merged_sources.shape[0] // self.batch
        self.num_dst = num_dst
        self.kept_rows = kept_rows
        self.merged_sources = merged_sources
        self.merged_targets = merged_targets
        self.restore_rows = restore_rows
        self.sizes = sizes
        self.scores = scores
        self._inverse_sizes: dict[torch.dtype, torch.Tensor] = {}

    @property
    def merged_positions(self) -> torch.Tensor:
        """``(B, r)`` token positions (within each sample) that were merged away: for inspection and pictures, not
        used by merging."""
        offsets = row_offsets(self.batch, self.num_tokens, self.merged_sources.device)
        return self.merged_sources.view(self.batch, -1) - offsets

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N - r, C)``: size-weighted average of each destination and its sources."""
        self._check(x, self.num_tokens)
        flat = x.reshape(-1, x.shape[-1])
        merged = flat.index_select(0, self.kept_rows)
        merged.index_add_(0, self.merged_targets, flat.index_select(0, self.merged_sources))
        return merged.mul_(self._inverse_sizes_as(merged.dtype)).view(self.batch, self.num_kept, -1)

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, N - r, C)`` -> ``(B, N, C)``: kept tokens return to their positions, merged ones copy their
        destination's row."""
        self._check(y, self.num_kept)
        return y.reshape(-1, y.shape[-1]).index_select(0, self.restore_rows).view(self.batch, self.num_tokens, -1)

    def indices(self) -> tuple[torch.Tensor, ...]:
        """The plan as tensors only, ``(kept_rows, merged_sources, merged_targets, restore_rows, sizes)``: what a
        block saves to reuse the plan at a later step (see `from_indices`)."""
        return self.kept_rows, self.merged_sources, self.merged_targets, self.restore_rows, self.sizes

    @classmethod
    def from_indices(cls, indices: tuple[torch.Tensor, ...], num_tokens: int, num_dst: int) -> MergePlan:
        """Rebuild a plan from `indices` (its ``scores`` are not kept)."""
        kept, sources, targets, restore_rows, sizes = indices
        return cls(num_tokens=num_tokens, kept_rows=kept, merged_sources=sources, merged_targets=targets,
                   restore_rows=restore_rows, sizes=sizes, num_dst=num_dst)

    @staticmethod
    def empty_indices(batch: int, num_tokens: int, num_merged: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Zero-filled `indices` of the shapes a ``(B, N)`` plan merging ``r`` tokens has: storage to copy plans
        into, allocated before a compiled graph first runs."""
        kept = num_tokens - num_merged

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return (zeros(batch * kept), zeros(batch * num_merged), zeros(batch * num_merged), zeros(batch * num_tokens),
                zeros(batch, kept, dtype=torch.float32))

    def matches(self, x: torch.Tensor) -> bool:
        """Whether ``x`` has the batch and token count this plan was made for."""
        return x.dim() == 3 and x.shape[0] == self.batch and x.shape[1] == self.num_tokens

    def _inverse_sizes_as(self, dtype: torch.dtype) -> torch.Tensor:
        """``(B * (N - r), 1)`` ``1 / size`` of every merged row in ``dtype`` (1 for unmerged rows, which the merge
        then leaves exactly as they were), made at the first merge of that dtype: a block's components merge
        tensors of one dtype, so once per plan."""
        inverse = self._inverse_sizes.get(dtype)
        if inverse is None:
            inverse = self._inverse_sizes[dtype] = self.sizes.view(-1, 1).reciprocal().to(dtype)
        return inverse

    def _check(self, x: torch.Tensor, tokens: int) -> None:
        if x.dim() != 3 or x.shape[0] != self.batch or x.shape[1] != tokens:
            raise ValueError(f"expected a ({self.batch}, {tokens}, C) tensor, got {tuple(x.shape)}")


def merged_count(num_tokens: int, num_windows: int, ratio: float) -> int:
    """``r = min(floor(ratio * N), N - Nw)``: tokens a plan merges away (every window keeps its destination)."""
    return max(0, min(int(ratio * num_tokens), num_tokens - num_windows))


def plan_merge(
    metric: torch.Tensor,
    partition: Partition,
    num_merge: int,
    semantic: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> MergePlan | None:
    """Choose the ``num_merge`` sources with the highest information degree and plan their merge.

    Args:
        metric: ``(B, N, C)`` features for redundancy (cosine similarity).
        partition: the destinations/sources split (see :mod:`turbo_diffusion.core.partition`).
        num_merge: ``r``, tokens to remove; capped at the number of sources.
        semantic: ``(B, N)`` semantic value in ``[0, 1]`` for every token, or ``None`` for plain ToMe.
        alpha: weight of the semantic value in ``E = R - alpha * S``.

    Returns:
        The plan, or ``None`` when nothing merges (``r == 0`` or no sources).
    """
    batch, num_tokens, _ = metric.shape
    src, dst = partition.src, partition.dst
    num_src, num_dst = src.shape[0], dst.shape[0]
    r = min(num_merge, num_src)
    if r <= 0:
        return None
    device = metric.device

    num_kept = num_tokens - r
    with torch.no_grad():
        # match: the merged row (destination window) each source would join, as a row of the flattened batch
        redundancy, match = mutual_redundancy(metric, partition, row_stride=num_kept)
        semantic_src = None if semantic is None else semantic.index_select(1, src)
        degree = information_degree(redundancy, semantic_src, alpha)
        chosen = degree.topk(r, dim=-1, sorted=False).indices  # (B, r) indices into src

        # A stable sort of the chosen flags lists the unmerged sources first, in partition order. (Out-of-place
        # scatters into cached constant views: one operation each instead of an allocation and a scatter.)
        flags = _constant(0, (batch, num_src), torch.uint8, device).scatter(1, chosen, 1)
        kept_src = flags.argsort(dim=1, stable=True)[:, : num_src - r]
        src_rows = partition.src_rows(batch)  # (B, Ns) rows of the flattened batch
        kept_rows = torch.cat([partition.dst_rows(batch), src_rows.gather(1, kept_src)], dim=1).flatten()
        merged_sources = src_rows.gather(1, chosen).flatten()
        merged_targets = match.gather(1, chosen).flatten()

        restore_rows = _constant(0, (batch * num_tokens,), torch.long, device).scatter(
            0, kept_rows, row_range(batch * num_kept, device))
        restore_rows.scatter_(0, merged_sources, merged_targets)
        # A row's size is the number of positions that read it back (exact: small integers in float32).
        sizes = _constant(0, (batch * num_kept,), torch.float32, device).scatter_add(
            0, restore_rows, _constant(1, (batch * num_tokens,), torch.float32, device)).view(batch, num_kept)

    return MergePlan(
        num_tokens=num_tokens,
        kept_rows=kept_rows,
        merged_sources=merged_sources,
        merged_targets=merged_targets,
        restore_rows=restore_rows,
        sizes=sizes,
        num_dst=num_dst,
        scores=PlanScores(partition, redundancy, semantic, degree),
    )


def _constant(value: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` filled with ``value``: a cached read-only view of one element (out-of-place ops on it
    write into new memory)."""
    return shape_cached(("constant", value, shape, dtype, str(device)),
                        lambda: torch.full((1,) * len(shape), value, dtype=dtype, device=device).expand(shape))
