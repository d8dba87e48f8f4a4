"""The merge plan: which sources merge where, and how to undo it.

Plain torch, no diffusers. :func:`plan_merge` picks the ``r`` sources with the highest information degree and
returns a :class:`MergePlan`, which any ``(B, N, C)`` tensor of that block can go through:

    plan = plan_merge(x, partition, r, semantic, alpha)
    y = component(plan.merge(x))      # (B, N - r, C)
    out = plan.restore(y)             # (B, N, C)

Merged layout: the ``Nw`` destinations first (row ``i`` is window ``i``, so a source's match is directly its
target row), then the unmerged sources in partition order. Merging averages each destination with the sources
it absorbs, weighted by size (every token starts with size 1); restoring copies each row back to every position
it stands for. Both are a single row gather over the flattened batch, plus one ``index_add_`` for the merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .partition import Partition
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

    Attributes:
        batch, num_tokens: ``B`` and ``N`` of the tensors it applies to.
        num_dst: destinations, the first rows of the merged layout.
        num_merged: ``r``, sources removed by merging; ``num_kept = N - r`` rows remain.
        sizes: ``(B, N - r)`` how many original tokens each merged row stands for (for proportional attention).
        merged_positions: ``(B, r)`` token positions that were merged away (for inspection and pictures).
        scores: the `PlanScores` it was chosen by, or ``None`` for a plan rebuilt from saved indices.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        keep: torch.Tensor,
        merged_src: torch.Tensor,
        merged_row: torch.Tensor,
        restore_row: torch.Tensor,
        sizes: torch.Tensor,
        num_dst: int,
        scores: PlanScores | None = None,
    ) -> None:
        self.batch, self.num_kept = keep.shape
        self.num_tokens = num_tokens
        self.num_merged = merged_src.shape[1]
        self.num_dst = num_dst
        self.sizes = sizes
        self.merged_positions = merged_src
        self.scores = scores
        self._indices = (keep, merged_src, merged_row, restore_row, sizes)
        # Flatten (B, *) row indices to rows of (B * N, C) / (B * M, C) so each move is one index_select.
        token_base = torch.arange(self.batch, device=keep.device)[:, None] * num_tokens
        row_base = torch.arange(self.batch, device=keep.device)[:, None] * self.num_kept
        self._keep = (keep + token_base).flatten()
        self._merged_src = (merged_src + token_base).flatten()
        self._merged_row = (merged_row + row_base).flatten()
        self._restore = (restore_row + row_base).flatten()
        self._inv_dst_size = sizes[:, :num_dst, None].reciprocal()

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N - r, C)``: size-weighted average of each destination and its sources."""
        self._check(x, self.num_tokens)
        channels = x.shape[-1]
        flat = x.reshape(-1, channels)
        merged = flat.index_select(0, self._keep)
        merged.index_add_(0, self._merged_row, flat.index_select(0, self._merged_src))
        merged = merged.view(self.batch, self.num_kept, channels)
        merged[:, : self.num_dst] *= self._inv_dst_size.to(merged.dtype)
        return merged

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, N - r, C)`` -> ``(B, N, C)``: kept tokens return to their positions, merged ones copy their
        destination's row."""
        self._check(y, self.num_kept)
        channels = y.shape[-1]
        return y.reshape(-1, channels).index_select(0, self._restore).view(self.batch, self.num_tokens, channels)

    def indices(self) -> tuple[torch.Tensor, ...]:
        """The plan as tensors only, ``(keep, merged_src, merged_row, restore_row, sizes)``: what a block saves to
        reuse the plan at a later step (see `from_indices`)."""
        return self._indices

    @classmethod
    def from_indices(cls, indices: tuple[torch.Tensor, ...], num_tokens: int, num_dst: int) -> MergePlan:
        """Rebuild a plan from `indices` (its ``scores`` are not kept)."""
        keep, merged_src, merged_row, restore_row, sizes = indices
        return cls(num_tokens=num_tokens, keep=keep, merged_src=merged_src, merged_row=merged_row,
                   restore_row=restore_row, sizes=sizes, num_dst=num_dst)

    @staticmethod
    def empty_indices(batch: int, num_tokens: int, num_merged: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Zero-filled `indices` of the shapes a ``(B, N)`` plan merging ``r`` tokens has: storage to copy plans
        into, allocated before a compiled graph first runs."""
        kept = num_tokens - num_merged

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return (zeros(batch, kept), zeros(batch, num_merged), zeros(batch, num_merged), zeros(batch, num_tokens),
                zeros(batch, kept, dtype=torch.float32))

    def matches(self, x: torch.Tensor) -> bool:
        """Whether ``x`` has the batch and token count this plan was made for."""
        return x.dim() == 3 and x.shape[0] == self.batch and x.shape[1] == self.num_tokens

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

    with torch.no_grad():
        redundancy, match = mutual_redundancy(metric, partition)
        semantic_src = None if semantic is None else semantic.index_select(1, src)
        degree = information_degree(redundancy, semantic_src, alpha)
        chosen = degree.topk(r, dim=-1, sorted=False).indices  # (B, r) indices into src

        merged = torch.zeros(batch, num_src, dtype=torch.bool, device=device).scatter_(1, chosen, True)
        kept = ~merged
        # Unmerged sources fill rows num_dst.. in partition order; merged ones point at their destination's row.
        kept_row = num_dst + kept.cumsum(dim=1) - 1
        src_row = torch.where(kept, kept_row, match)
        num_kept = num_tokens - r

        restore_row = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
        restore_row[:, dst] = torch.arange(num_dst, device=device)
        restore_row[:, src] = src_row

        # Scatter the kept sources' positions into their rows; merged ones land in a spare last column.
        column = torch.where(kept, kept_row, torch.full_like(kept_row, num_kept))
        keep = torch.empty(batch, num_kept + 1, dtype=torch.long, device=device)
        keep.scatter_(1, column, src.expand(batch, -1))
        keep = keep[:, :num_kept]
        keep[:, :num_dst] = dst

        merged_row = match.gather(1, chosen)
        sizes = torch.ones(batch, num_kept, dtype=torch.float32, device=device)
        sizes[:, :num_dst].scatter_add_(1, merged_row, torch.ones(batch, r, device=device))

    return MergePlan(
        num_tokens=num_tokens,
        keep=keep,
        merged_src=src[chosen],
        merged_row=merged_row,
        restore_row=restore_row,
        sizes=sizes,
        num_dst=num_dst,
        scores=PlanScores(partition, redundancy, semantic, degree),
    )
