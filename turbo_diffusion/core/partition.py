"""Bipartite partition of a token grid: one destination per window, every other token a source.

Plain torch, no diffusers. A grid of ``height x width`` tokens (row-major, as a UNet flattens its feature map) is
cut into ``sy x sx`` windows. Each full window contributes one destination, chosen by an offset inside the
window; all its other tokens are sources. Tokens outside the full windows (the last rows/columns when the
stride does not divide the grid) are always sources and are attached to the nearest full window.

Work is split by what it depends on, because on a launch-bound GPU every tensor operation costs about the same:

* :func:`window_grid`: the shape alone (window positions, the table of "other offsets", neighbourhoods). Built
  once per shape and device and cached.
* :func:`partition_tokens`: the shape and the destination offsets, i.e. (seed, timestep, grid). A handful of
  gathers, done once per UNet call and grid and shared by every block of that grid (the processor caches it
  per call): the destinations, the sources, and the positions of each window's candidate destinations.
* the block's features: everything in :mod:`~turbo_diffusion.core.scores` and :mod:`~turbo_diffusion.core.plan`.

The layout is built from shape-only ops (no ``nonzero``, no boolean indexing), so it can also be built inside a
``torch.compile`` graph when it was not cached before.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)
class WindowGrid:
    """Static layout of a token grid cut into windows. Build it with :func:`window_grid`.

    Attributes:
        height, width: token grid size.
        sx, sy: window size actually used (the requested stride, capped by the grid size).
        window_base: ``(Nw,)`` position of each window's top-left token, windows in row-major order.
        offset_pos: ``(k,)`` position offset of in-window offset ``o`` (row ``o // sx``, column ``o % sx``).
        others: ``(k, k - 1)`` for each offset, the other offsets of the window (its sources).
        leftover: ``(L,)`` positions outside every full window (always sources).
        leftover_window: ``(L,)`` home window of each leftover token (the nearest full window).
        neighbours: ``(Nw, K)`` windows within ``radius`` windows of each window (clamped at the border), or
            ``None`` when every window already sees every destination (global matching).
        other_pos: ``(k, k - 1)`` position offsets of ``others`` (the sources' offsets for each destination
            offset), and ``window_column`` ``(Nw, 1)`` the window bases as a column: with them a partition's
            sources are one gather and one add.
        neighbour_list: ``neighbours`` flattened, ``(Nw * K,)``; ``leftover_neighbours`` ``(L, K)`` the
            neighbourhood of each leftover token's home window.
    """

    height: int
    width: int
    sx: int
    sy: int
    window_base: torch.Tensor
    offset_pos: torch.Tensor
    others: torch.Tensor
    leftover: torch.Tensor
    leftover_window: torch.Tensor
    neighbours: torch.Tensor | None
    other_pos: torch.Tensor
    window_column: torch.Tensor
    neighbour_list: torch.Tensor | None
    leftover_neighbours: torch.Tensor | None

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    @property
    def num_windows(self) -> int:
        return self.window_base.shape[0]

    @property
    def window_size(self) -> int:
        return self.sx * self.sy


def window_count(height: int, width: int, sx: int = 2, sy: int = 2) -> int:
    """Number of full windows (= destinations) of a ``height x width`` grid, without building it."""
    return (height // min(sy, height)) * (width // min(sx, width))


_CACHE: OrderedDict[tuple, object] = OrderedDict()  # shape-only tables, least recently used first
_CACHE_SIZE = 256


def shape_cached(key: tuple, build):
    """``build()`` once per ``key`` (shapes and a device string), kept in a small LRU cache. Inside a compiled
    graph the cache is only read: a table cached before compilation enters the graph as a constant input; a
    missing one is built in the graph."""
    value = _CACHE.get(key)
    if torch.compiler.is_compiling():
        return value if value is not None else build()
    if value is None:
        value = _CACHE[key] = build()
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return value


def window_grid(
    height: int, width: int, sx: int = 2, sy: int = 2, radius: int | None = 1, device: str = "cpu"
) -> WindowGrid:
    """The window layout of a ``height x width`` token grid, cached per shape and device.

    Args:
        height, width: grid size in tokens, at least 1 each.
        sx, sy: window width and height; capped at the grid size so that tiny grids still have one window.
        radius: matching neighbourhood in windows: a source is compared with the destinations of the
            ``(2 * radius + 1) ** 2`` windows around its own. ``None`` compares with all destinations.
        device: where the index tensors live (a string so the cache key is hashable).

    The cached layout is shared: treat its tensors as read-only (:func:`partition_tokens` hands out copies).
    Inside a compiled graph the cache is only read: a layout built before compilation (``apply_turbo``'s UNet
    hook builds its levels' layouts) enters the graph as constant inputs; a missing one is built in the graph.
    """
    return shape_cached(("grid", height, width, sx, sy, radius, device),
                   lambda: _build_window_grid(height, width, sx, sy, radius, device))


def row_offsets(batch: int, rows: int, device: torch.device) -> torch.Tensor:
    """``(B, 1)`` int64 ``[[0], [rows], [2 * rows], ...]``: the first row of each sample when a ``(B, rows, C)``
    tensor is flattened to ``(B * rows, C)``. Cached per shape and device."""
    return shape_cached(("offsets", batch, rows, str(device)),
                        lambda: torch.arange(batch, device=device)[:, None] * rows)


def row_range(count: int, device: torch.device) -> torch.Tensor:
    """``(count,)`` int64 ``arange(count)``, cached (read only)."""
    return shape_cached(("range", count, str(device)), lambda: torch.arange(count, device=device))


def _build_window_grid(height: int, width: int, sx: int, sy: int, radius: int | None, device: str) -> WindowGrid:
    if height < 1 or width < 1:
        raise ValueError(f"token grid must be at least 1x1, got {height}x{width}")
    sx, sy = min(sx, width), min(sy, height)
    rows, cols = height // sy, width // sx
    dev = torch.device(device)

    win_r = torch.arange(rows, device=dev).repeat_interleave(cols)
    win_c = torch.arange(cols, device=dev).repeat(rows)
    window_base = win_r * sy * width + win_c * sx

    k = sx * sy
    offsets = torch.arange(k, device=dev)
    offset_pos = (offsets // sx) * width + offsets % sx
    # others[o] lists the k - 1 offsets that are not o, in increasing order: j, or j + 1 from o on.
    slots = torch.arange(k - 1, device=dev)
    others = slots[None, :] + (slots[None, :] >= offsets[:, None]).long()

    # Tokens outside the full windows, in row-major order: the right strip of the windowed rows, then the
    # rows below them (empty when the stride divides the grid).
    windowed_rows = torch.arange(rows * sy, device=dev)[:, None]
    right = (windowed_rows * width + torch.arange(cols * sx, width, device=dev)).flatten()
    below = torch.arange(rows * sy * width, height * width, device=dev)
    leftover = torch.cat([right, below])
    leftover_r, leftover_c = leftover // width, leftover % width
    leftover_window = (leftover_r // sy).clamp(max=rows - 1) * cols + (leftover_c // sx).clamp(max=cols - 1)

    neighbours = None
    if radius is not None and (rows > radius + 1 or cols > radius + 1):
        d = torch.arange(-radius, radius + 1, device=dev)
        nr = (win_r[:, None, None] + d[None, :, None]).clamp(0, rows - 1)
        nc = (win_c[:, None, None] + d[None, None, :]).clamp(0, cols - 1)
        neighbours = (nr * cols + nc).flatten(1)

    neighbour_list = neighbours.flatten() if neighbours is not None else None
    leftover_neighbours = neighbours[leftover_window] if neighbours is not None else None
    return WindowGrid(height, width, sx, sy, window_base, offset_pos, others, leftover, leftover_window, neighbours,
                      offset_pos[others], window_base[:, None], neighbour_list, leftover_neighbours)


@dataclass(frozen=True, eq=False)
class Partition:
    """Destinations and sources of one bipartite split, shared by every element of the batch and every block of
    the grid in one UNet call.

    Attributes:
        grid: the layout the split was drawn on.
        dst: ``(Nw,)`` positions of the destinations, one per window, in window order (slot ``i`` is window ``i``).
        src: ``(Ns,)`` positions of the sources: first the ``k - 1`` sources of each full window, window by window,
            then the leftover tokens. That grouping is what makes neighbourhood matching a batched matmul.
        candidates: ``(Nw * K,)`` positions of the destinations each window's sources are compared with (the
            destinations of ``grid.neighbours``, window after window), or ``None`` for global matching.
        leftover_candidates: ``(L * K,)`` the same for each leftover source, or ``None`` (global matching, or no
            leftovers).
    """

    grid: WindowGrid
    dst: torch.Tensor
    src: torch.Tensor
    candidates: torch.Tensor | None = None
    leftover_candidates: torch.Tensor | None = None
    _rows: dict = field(default_factory=dict, repr=False)

    def dst_rows(self, batch: int) -> torch.Tensor:
        """``(B, Nw)``: the destinations as rows of the batch flattened to ``(B * N, C)``."""
        return self._batch_rows("dst", batch)

    def src_rows(self, batch: int) -> torch.Tensor:
        """``(B, Ns)``: the sources as rows of the batch flattened to ``(B * N, C)``."""
        return self._batch_rows("src", batch)

    def _batch_rows(self, which: str, batch: int) -> torch.Tensor:
        # Made once per batch size and kept (in eager mode): the blocks of a UNet call share the partition, so
        # this costs one operation per call instead of one per block.
        rows = self._rows.get((which, batch)) if not torch.compiler.is_compiling() else None
        if rows is None:
            positions = getattr(self, which)
            rows = positions + row_offsets(batch, self.grid.num_tokens, positions.device)
            if not torch.compiler.is_compiling():
                self._rows[(which, batch)] = rows
        return rows

    @property
    def num_grouped(self) -> int:
        """Number of sources that sit inside full windows (the first ``Nw * (k - 1)`` of ``src``)."""
        return self.grid.num_windows * (self.grid.window_size - 1)


def random_offsets(grid: WindowGrid, generator: torch.Generator) -> torch.Tensor:
    """Draw one destination offset per window, uniformly in ``[0, sx * sy)``, from ``generator``; ``(Nw,)`` on the
    grid's device. (Turbo's processor uses :func:`~turbo_diffusion.core.seeded_offsets`, which needs no
    generator state and traces into compiled graphs.)"""
    offsets = torch.randint(grid.window_size, (grid.num_windows,), generator=generator, device=generator.device)
    return offsets.to(grid.window_base.device)


def partition_tokens(grid: WindowGrid, offsets: torch.Tensor | None = None) -> Partition:
    """Split the grid into destinations and sources, and list each source group's candidate destinations.

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
        src = (grid.window_column + grid.other_pos[0]).flatten()
    else:
        dst = grid.window_base + grid.offset_pos[offsets]
        src = (grid.window_column + grid.other_pos[offsets]).flatten()
    if grid.leftover.shape[0]:
        src = torch.cat([src, grid.leftover])
    candidates = leftover_candidates = None
    if grid.neighbours is not None:
        candidates = dst[grid.neighbour_list]
        if grid.leftover.shape[0]:
            leftover_candidates = dst[grid.leftover_neighbours.flatten()]
    return Partition(grid, dst, src, candidates, leftover_candidates)
