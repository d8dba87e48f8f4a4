"""Seeded destinations without a generator: a counter-based hash of (seed, timestep, window).

Plain torch, no diffusers. Each window's destination offset is ``hash(seed, timestep, window) mod (sx * sy)``,
computed with integer tensor ops. Compared with a ``torch.Generator`` re-seeded at every UNet call, this

* traces into a ``torch.compile`` graph (no Python state, no ``.item()``; the timestep stays a tensor),
* gives the same offsets on every device (the same int64 arithmetic everywhere), and
* is thread-safe, since nothing is mutated: two concurrent calls with the same timestep draw the same offsets.

The mixing function is MurmurHash3's 32-bit finaliser (``fmix32``), a bijection on 32-bit words whose output bits
each depend on every input bit. Its products are split into 16-bit halves so that no intermediate value leaves
the non-negative int64 range (signed overflow is undefined in compiled kernels).
"""

from __future__ import annotations

import torch

from .partition import WindowGrid, shape_cached

_MASK32 = 0xFFFFFFFF
_FMIX_C1 = 0x85EBCA6B
_FMIX_C2 = 0xC2B2AE35
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive window indices before mixing


def _mul32(x, constant: int):
    """``(x * constant) mod 2^32`` for ``x`` in ``[0, 2^32)`` (an int64 tensor or a Python int), without leaving
    the int64 range."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def fmix32(x):
    """MurmurHash3's finaliser on 32-bit words (``[0, 2^32)``): an int64 tensor (elementwise) or a Python int."""
    x = x ^ (x >> 16)
    x = _mul32(x, _FMIX_C1)
    x = x ^ (x >> 13)
    x = _mul32(x, _FMIX_C2)
    return x ^ (x >> 16)


def seed_word(seed: int) -> int:
    """Fold a seed in ``[-2^63, 2^64)`` (``torch.Generator``'s range) into one 32-bit word."""
    seed %= 2**64
    return fmix32(fmix32(seed >> 32) ^ (seed & _MASK32))


def timestep_word(timestep: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``(1,)`` int64 word of a UNet call's timestep: ``round(1000 * t)`` of its first element (0 when ``None``).

    Scaling by 1000 keeps fractional timesteps (Karras-style schedules) apart."""
    if timestep is None:
        return torch.zeros(1, dtype=torch.long, device=device)
    # float32, not float64: some devices (MPS) have no float64, and t * 1000 <= 1e6 is exact enough in float32.
    t = timestep
    if t.shape != (1,) or t.dtype != torch.float32 or t.device != device or t.requires_grad:
        t = t.detach().reshape(-1)[:1].to(device=device, dtype=torch.float32)  # (the UNet hook's is already so)
    return (t * 1000).round().long() & _MASK32


def seeded_offsets(grid: WindowGrid, seed: int, timestep: torch.Tensor | None = None) -> torch.Tensor:
    """One destination offset per window, uniform in ``[0, sx * sy)``: ``(Nw,)`` int64 on the grid's device.

    Args:
        grid: the window layout (see :func:`~turbo_diffusion.core.window_grid`).
        seed: ``TurboConfig.seed``; any integer in ``[-2^63, 2^64)``.
        timestep: the UNet call's timestep, a tensor of any shape (its first element counts), or ``None``.
            Different timesteps give independent draws, so the destinations move from step to step.
    """
    device = grid.window_base.device
    key = fmix32(timestep_word(timestep, device) ^ seed_word(seed))
    words = fmix32((key + _window_words(grid.num_windows, device)) & _MASK32)
    return words % grid.window_size


def _window_words(count: int, device: torch.device) -> torch.Tensor:
    """``(count,)`` ``window * golden mod 2^32``: the timestep-free half of each window's hash input, cached."""
    return shape_cached(("window_words", count, str(device)),
                        lambda: _mul32(torch.arange(count, device=device, dtype=torch.long), _GOLDEN))
