"""Scores that decide which tokens merge: mutual redundancy R, semantic value S, information degree E.

Plain torch, no diffusers. Shapes: ``B`` batch, ``N`` tokens, ``C`` channels, ``H`` heads, ``d`` head size,
``L`` text tokens, ``Ns`` sources of a :class:`~turbo_diffusion.core.partition.Partition`.

    R_i = max_{j in candidates(i)} cos(x_i, x_j)       i a source, j a destination
    S_i = mean_h softmax_i(scale * qbar_h . k_h,i) / max_j (same)        ("attention")
    S_i = mean_h sum_{l content} softmax_l(scale * q_h,i . k_h,l) / max_j (same)     ("text")
    E_i = R_i - alpha * S_i

Both semantic values are divided by their maximum over the tokens of each sample, so ``S`` lies in ``[0, 1]``
with 1 for the most attended token whatever the resolution or batch: one ``alpha`` means the same everywhere,
in units of cosine similarity. A uniform ``S`` (random weights, all-zero input) is all ones and leaves the
ToMe ranking unchanged.
"""

from __future__ import annotations

import torch

from .partition import Partition, WindowGrid, row_offsets, shape_cached

_EPS = 1e-6


def mutual_redundancy(
    metric: torch.Tensor, partition: Partition, row_stride: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source's highest cosine similarity to a destination, and which destination that is.

    Args:
        metric: ``(B, N, C)`` token features used for similarity (the layer's normalised hidden states).
        partition: the bipartite split; its ``candidates`` restrict each source to the destinations of nearby
            windows (about ``9 * C`` work per token for radius 1) or, when ``None``, allow every destination
            (``Ns * Nw * C`` work, exactly ToMe's matching).
        row_stride: added to sample ``b``'s matches ``b`` times (the merge's rows per sample, so that a match is a
            row of the flattened merged batch); 0 gives window indices.

    Returns:
        ``redundancy`` ``(B, Ns)`` in ``[-1, 1]`` and ``match`` ``(B, Ns)``, the destination slot (window index,
        plus ``b * row_stride``) each source would merge into. All-zero tokens have similarity 0, never NaN.
    """
    # F.normalize's arithmetic, without its expand_as: one operation fewer per block.
    x = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    if partition.candidates is None:
        a, b = x.index_select(1, partition.src), x.index_select(1, partition.dst)
        redundancy, match = torch.bmm(a, b.transpose(1, 2)).max(dim=-1)
        return redundancy, match + row_offsets(x.shape[0], row_stride, x.device) if row_stride else match

    batch, channels = x.shape[0], x.shape[-1]
    grid = partition.grid
    nw, k, g = grid.num_windows, grid.window_size, partition.num_grouped
    # Sources grouped by window, (B * Nw, k - 1, C), against their windows' candidate destinations (B * Nw, K, C):
    # one batched matmul. The candidates are gathered straight from x by position.
    a = x.index_select(1, partition.src[:g] if g < partition.src.shape[0] else partition.src)
    cand = x.index_select(1, partition.candidates).view(batch * nw, -1, channels)
    red, arg = torch.bmm(a.view(batch * nw, k - 1, channels), cand.transpose(1, 2)).max(dim=-1)
    match = _repeated_neighbours(grid, batch, row_stride).gather(1, arg).view(batch, g)
    if partition.leftover_candidates is None:
        return red.view(batch, g), match
    left = x.index_select(1, grid.leftover)
    cand = x.index_select(1, partition.leftover_candidates).view(batch, left.shape[1], -1, channels)
    left_red, left_arg = (cand @ left.unsqueeze(-1)).squeeze(-1).max(dim=-1)
    left_match = grid.leftover_neighbours.expand(batch, -1, -1).gather(2, left_arg.unsqueeze(-1)).squeeze(-1)
    if row_stride:
        left_match = left_match + row_offsets(batch, row_stride, x.device)
    return torch.cat([red.view(batch, g), left_red], dim=1), torch.cat([match, left_match], dim=1)


def _repeated_neighbours(grid: WindowGrid, batch: int, row_stride: int) -> torch.Tensor:
    """``(B * Nw, K)``: ``grid.neighbours`` once per sample, sample ``b``'s plus ``b * row_stride``; cached per grid,
    batch and stride."""
    neighbours = grid.neighbours
    key = ("neighbours", grid.height, grid.width, grid.sx, grid.sy, neighbours.shape[1], str(neighbours.device), batch,
           row_stride)

    def build() -> torch.Tensor:
        offsets = row_offsets(batch, row_stride, neighbours.device).repeat_interleave(neighbours.shape[0], dim=0)
        return neighbours.repeat(batch, 1) + offsets

    return shape_cached(key, build)


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
        # (H, B, d) @ (H, d, C) -> (H, B, C): the mean query folded into the key projection, head by head (a
        # broadcast matmul would copy W_k once per sample).
        weight = key_weight.view(heads, head_dim, -1).to(query_mean.dtype)
        folded = torch.bmm(query_mean.transpose(0, 1), weight).permute(1, 2, 0)  # (B, C, H)
    else:
        # Block-diagonal fold of the explicit keys: logits_h = keys[..., h] . qbar_h.
        eye = torch.eye(heads, dtype=query_mean.dtype, device=query_mean.device)
        folded = (eye[None, :, :, None] * query_mean[:, None, :, :]).flatten(2).transpose(1, 2)  # (B, H * d, H)
    logits = torch.bmm(tokens, folded)  # (B, N, H)
    received = torch.softmax(logits.float() * scale, dim=1).mean(dim=-1)
    if received.shape[1] < 1 / _EPS:
        # Each head's softmax sums to 1 over the N tokens, so the largest value is at least 1 / N > eps: the
        # clamp of normalize_semantic cannot act, and dividing by the maximum alone gives the same numbers.
        return (received / received.amax(dim=-1, keepdim=True)).to(tokens.dtype)
    return normalize_semantic(received).to(tokens.dtype)


def text_attention_mass(probs: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Semantic value ``"text"``: each image token's cross-attention mass on the prompt's content tokens.

    Args:
        probs: ``(B, H, N, L)`` cross-attention probabilities (rows sum to 1).
        content: ``(B, L)`` or ``(L,)`` bool, True for content tokens (not start, end or padding).

    Returns:
        ``(B, N)`` in ``[0, 1]``, normalised by its per-sample maximum.
    """
    mass = (probs * content.to(probs.dtype).view(-1, 1, 1, probs.shape[-1])).sum(dim=-1).mean(dim=1)
    return normalize_semantic(mass)


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
    if alpha == 1:
        return redundancy - semantic.to(redundancy.dtype)  # the same numbers as 1 * S, one operation fewer
    return redundancy - alpha * semantic.to(redundancy.dtype)
