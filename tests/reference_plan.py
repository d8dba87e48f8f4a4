"""Turbo's merge plan as it was before the lean per-step plan (commit 90e61b2), kept verbatim as a reference.

The tests compare the shipped plan with this one: the same merged tokens, destinations and merge/restore outputs,
so that benchmarks/QUALITY.md's study still describes the shipped method. `benchmarks/plan_time.py` times it
beside the lean plan. Do not "improve" this file: its value is that it is the old code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from turbo_diffusion.core import WindowGrid, seeded_offsets, window_grid

_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class Partition:
    """Destinations and sources of one bipartite split, shared by every element of the batch.

    Attributes:
        grid: the layout the split was drawn on.
        dst: ``(Nw,)`` positions of the destinations, one per window, in window order (slot ``i`` is window ``i``).
        src: ``(Ns,)`` positions of the sources: first the ``k - 1`` sources of each full window, window by window,
            then the leftover tokens. That grouping is what makes neighbourhood matching a batched matmul.
    """

    grid: WindowGrid
    dst: torch.Tensor
    src: torch.Tensor

    @property
    def num_grouped(self) -> int:
        """Number of sources that sit inside full windows (the first ``Nw * (k - 1)`` of ``src``)."""
        return self.grid.num_windows * (self.grid.window_size - 1)


def partition_tokens(grid: WindowGrid, offsets: torch.Tensor | None = None) -> Partition:
    """Split the grid into destinations and sources.

    Args:
        grid: from :func:`window_grid`.
        offsets: ``(Nw,)`` in-window offset of each destination (see :func:`~turbo_diffusion.core.seeded_offsets`
            or :func:`random_offsets`); ``None`` takes the top-left token of every window, as tomesd does with
            ``use_rand=False``.

    Returns:
        A `Partition` whose tensors are new: writing into them leaves the cached grid intact.
    """
    if offsets is None:
        dst = grid.window_base.clone()  # never the cached tensor itself: a write into it would corrupt the cache
        src_offsets = grid.others[0].expand(grid.num_windows, -1)
    else:
        dst = grid.window_base + grid.offset_pos[offsets]
        src_offsets = grid.others[offsets]
    grouped = grid.window_base[:, None] + grid.offset_pos[src_offsets]
    return Partition(grid, dst, torch.cat([grouped.flatten(), grid.leftover]))


def mutual_redundancy(metric: torch.Tensor, partition: Partition) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source's highest cosine similarity to a destination, and which destination that is.

    Args:
        metric: ``(B, N, C)`` token features used for similarity (the layer's normalised hidden states).
        partition: the bipartite split; its grid's ``neighbours`` restricts the candidates to nearby windows
            (about ``9 * C`` work per token for radius 1) or, when ``None``, allows every destination
            (``Ns * Nw * C`` work, exactly ToMe's matching).

    Returns:
        ``redundancy`` ``(B, Ns)`` in ``[-1, 1]`` and ``match`` ``(B, Ns)``, the destination slot (window index)
        each source would merge into. All-zero tokens have similarity 0, never NaN.
    """
    x = F.normalize(metric, dim=-1, eps=_EPS)
    b = x.index_select(1, partition.dst)
    neighbours = partition.grid.neighbours
    if neighbours is None:
        a = x.index_select(1, partition.src)
        return (a @ b.transpose(-1, -2)).max(dim=-1)

    batch, channels = x.shape[0], x.shape[-1]
    nw, k = partition.grid.num_windows, partition.grid.window_size
    g = partition.num_grouped
    parts_r, parts_m = [], []
    if g:
        # Sources grouped by window: (B, Nw, k-1, C) against their windows' neighbour destinations (B, Nw, K, C).
        a = x.index_select(1, partition.src[:g]).view(batch, nw, k - 1, channels)
        cand = b.index_select(1, neighbours.flatten()).view(batch, nw, -1, channels)
        red, arg = (a @ cand.transpose(-1, -2)).max(dim=-1)
        match = neighbours.expand(batch, -1, -1).gather(2, arg)
        parts_r.append(red.flatten(1))
        parts_m.append(match.flatten(1))
    if partition.src.shape[0] > g:
        left = x.index_select(1, partition.src[g:])
        cand_windows = neighbours[partition.grid.leftover_window]
        cand = b.index_select(1, cand_windows.flatten()).view(batch, left.shape[1], -1, channels)
        red, arg = (cand @ left.unsqueeze(-1)).squeeze(-1).max(dim=-1)
        parts_r.append(red)
        parts_m.append(cand_windows.expand(batch, -1, -1).gather(2, arg.unsqueeze(-1)).squeeze(-1))
    return torch.cat(parts_r, dim=1), torch.cat(parts_m, dim=1)


def normalize_semantic(values: torch.Tensor) -> torch.Tensor:
    """Divide ``(B, N)`` non-negative values by their per-sample maximum, giving ``[0, 1]`` (all zeros stay 0)."""
    return values / values.amax(dim=-1, keepdim=True).clamp_min(_EPS)


def global_query_attention(
    tokens: torch.Tensor,
    query_mean: torch.Tensor,
    scale: float,
    key_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Semantic value ``"attention"``: how much attention each token receives from the layer's mean query.

    SD has no [CLS] token, so the mean of the layer's queries stands in for a global query. With
    ``q_h = mean_i q_h,i`` per head, ``S_j = mean_h softmax_j(scale * q_h . k_h,j)``, normalised by its maximum.
    Costs ``O(N * H * C)``: the N x N attention map is never formed.

    Args:
        tokens: ``(B, N, C)`` layer input, or ``(B, N, H * d)`` keys when ``key_weight`` is ``None``.
        query_mean: ``(B, H, d)`` the mean query per head (``to_q`` applied to the mean token, by linearity).
        scale: the attention scale, usually ``d ** -0.5``.
        key_weight: ``(H * d, C)`` the key projection. Given it, ``q_h . W_k,h x_j = (W_k,h^T q_h) . x_j``, so the
            keys are never computed (a key bias adds the same constant to every logit and drops out of softmax).

    Returns:
        ``(B, N)`` in ``[0, 1]``.
    """
    batch, heads, head_dim = query_mean.shape
    if key_weight is not None:
        # (B, H, 1, d) @ (H, d, C) -> (B, H, C): the mean query folded into the key projection.
        folded = (query_mean.unsqueeze(2) @ key_weight.view(heads, head_dim, -1).to(query_mean.dtype)).squeeze(2)
    else:
        # Block-diagonal fold of the explicit keys: logits_h = keys[..., h] . qbar_h.
        eye = torch.eye(heads, dtype=query_mean.dtype, device=query_mean.device)
        folded = (eye[None, :, :, None] * query_mean[:, None, :, :]).flatten(2)  # (B, H, H * d)
    logits = tokens @ folded.transpose(1, 2)  # (B, N, H)
    received = torch.softmax(logits.float() * scale, dim=1).mean(dim=-1)
    return normalize_semantic(received).to(tokens.dtype)


def information_degree(
    redundancy: torch.Tensor, semantic: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """``E = R - alpha * S`` for the sources: high E means redundant and unimportant, merged first.

    Args:
        redundancy: ``(B, Ns)`` from :func:`mutual_redundancy`.
        semantic: ``(B, Ns)`` the sources' semantic values in ``[0, 1]``, or ``None`` (plain ToMe).
        alpha: weight of semantics. 0 is ToMe; larger values protect attended tokens at the cost of merging
            less similar ones.
    """
    if semantic is None or alpha == 0:
        return redundancy
    return redundancy - alpha * semantic.to(redundancy.dtype)


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


def _attention_received(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Semantic value ``"attention"``: ``(B, N)`` attention each token receives from the layer's mean query."""
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


def reference_plan(attn, x: torch.Tensor, height: int, width: int, num_merge: int, *, alpha: float = 1.0,
                   semantic: bool = True, seed: int = 0, timestep: torch.Tensor | None = None, sx: int = 2,
                   sy: int = 2, radius: int | None = 1, use_rand: bool = True) -> MergePlan:
    """What `TurboProcessor._new_plan` computed for one block (``semantic="attention"`` or none)."""
    grid = window_grid(height, width, sx, sy, radius, str(x.device))
    offsets = seeded_offsets(grid, seed, timestep) if use_rand else None
    values = _attention_received(attn, x) if semantic and alpha > 0 else None
    return plan_merge(x, partition_tokens(grid, offsets), num_merge, values, alpha)
