"""Speed measurement: variants of one UNet timed interleaved in one process.

Each variant installs itself on the shared UNet (so weights are loaded once) and uninstalls afterwards. Repeats
visit the variants in rotating order, so drift on a shared machine hits them all alike; the minimum over repeats
is the least-disturbed run (noise only adds time) and ratios of minima are the speed-ups.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .hooks import apply_turbo, remove_turbo


class ZeroOverheadBoundProcessor:
    """The zero-overhead bound: full-resolution self-attention run on the first ``N - floor(ratio * N)`` tokens
    (a free slice), its output padded back to ``N`` tokens by one copy. No plan, no real gather/scatter: no merge
    can be faster at the same ratio. Its output is meaningless; it exists to be timed."""

    def __init__(self, ratio: float, num_tokens: int) -> None:
        self.ratio, self.num_tokens = ratio, num_tokens
        self._sdpa = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        n = hidden_states.shape[1] if hidden_states.dim() == 3 else -1
        if encoder_hidden_states is None and n == self.num_tokens:
            removed = int(self.ratio * n)
            out = self._sdpa(attn, hidden_states[:, : n - removed], None, *args, **kwargs)
            return torch.cat([out, out[:, :removed]], dim=1)
        return self._sdpa(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@dataclass
class Variant:
    """A way to run the UNet: ``install`` changes it, ``uninstall`` restores it."""

    name: str
    install: Callable[[UNet2DConditionModel], None]
    uninstall: Callable[[UNet2DConditionModel], None]


def default_variant() -> Variant:
    return Variant("default", lambda u: u.set_attn_processor(AttnProcessor2_0()), lambda u: None)


def turbo_variant(name: str = "turbo", **fields: Any) -> Variant:
    return Variant(name, lambda u: apply_turbo(u, **fields), remove_turbo)


def tomesd_variant(ratio: float, name: str = "tomesd") -> Variant | None:
    """tomesd with its defaults at ``ratio``, or ``None`` when tomesd is not installed."""
    try:
        import tomesd
    except ImportError:
        return None
    return Variant(name, lambda u: tomesd.apply_patch(u, ratio=ratio), tomesd.remove_patch)


def bound_variant(ratio: float, latent_tokens: int, name: str = "bound") -> Variant:
    """The zero-overhead bound at the full-resolution level (``latent_tokens`` tokens)."""
    return Variant(
        name,
        lambda u: u.set_attn_processor(ZeroOverheadBoundProcessor(ratio, latent_tokens)),
        lambda u: u.set_attn_processor(AttnProcessor2_0()),
    )


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@contextmanager
def installed(unet: UNet2DConditionModel, variant: Variant) -> Iterator[None]:
    variant.install(unet)
    try:
        yield
    finally:
        variant.uninstall(unet)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    unet: UNet2DConditionModel,
    inputs: dict[str, Any],
    variants: list[Variant],
    repeats: int = 3,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time one UNet call per variant, ``repeats`` times, interleaved in rotating order after ``warmup`` calls each."""
    device = next(unet.parameters()).device
    timings = {v.name: Timing(v.name) for v in variants}
    # Positional sample and timestep, as diffusers' pipelines call the UNet (tomesd's hook needs it).
    rest = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
    args = (inputs["sample"], inputs["timestep"])
    with torch.inference_mode():
        for _ in range(warmup):
            for v in variants:
                with installed(unet, v):
                    unet(*args, **rest)
                if progress:
                    progress(f"warm-up {v.name}")
        for rep in range(repeats):
            order = variants[rep % len(variants):] + variants[: rep % len(variants)]
            for v in order:
                with installed(unet, v):
                    _sync(device)
                    start = time.perf_counter()
                    unet(*args, **rest)
                    _sync(device)
                    timings[v.name].seconds.append(time.perf_counter() - start)
                if progress:
                    progress(f"repeat {rep + 1}/{repeats} {v.name}")
    return timings
