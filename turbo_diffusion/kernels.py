"""Attention kernels behind Turbo's processor: torch SDPA, or xformers' memory-efficient attention on CUDA.

Tensors are ``(B, H, M, d)`` queries against ``(B, H, L, d)`` keys/values, as in diffusers' ``AttnProcessor2_0``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .core.scores import text_attention_mass


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"xformers"`` on CUDA when xformers is installed, else ``"sdpa"``."""
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if backend == "xformers" and device.type != "cuda":
        raise RuntimeError(f"backend='xformers' runs on CUDA only, but the tensors are on {device}; "
                           "use backend='auto' or 'sdpa'")
    return backend


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` with the chosen kernel; returns ``(B, H, M, d)``.

    A mask (rare in UNets: only an explicit ``encoder_attention_mask``) always goes through SDPA, whose
    broadcasting rules diffusers' masks are shaped for.
    """
    if backend == "xformers" and mask is None:
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(
            query.transpose(1, 2).contiguous(),
            key.transpose(1, 2).contiguous(),
            value.transpose(1, 2).contiguous(),
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def attention_with_text_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    content: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention computed explicitly (L is the short text length) so the probabilities can also give each
    query's attention mass on the content tokens (see :func:`~turbo_diffusion.core.text_attention_mass`).

    Returns ``(B, H, M, d)`` output and ``(B, M)`` mass in ``[0, 1]``.
    """
    logits = (query @ key.transpose(-1, -2)).float() * scale
    if mask is not None:
        logits = logits + mask.float()
    probs = logits.softmax(dim=-1)
    out = (probs.to(value.dtype) @ value)
    return out, text_attention_mass(probs, content)
