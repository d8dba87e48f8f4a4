"""Attention kernels behind Turbo's processor: torch SDPA, or xformers' memory-efficient attention on CUDA.

Tensors are ``(B, H, M, d)`` queries against ``(B, H, L, d)`` keys/values, as in diffusers' ``AttnProcessor2_0``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .core.scores import text_attention_mass

# Looked up once: a module search inside the per-call path would not trace into a compiled graph.
_XFORMERS_INSTALLED = importlib.util.find_spec("xformers") is not None


def xformers_available() -> bool:
    return _XFORMERS_INSTALLED


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
    bias: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` with the chosen kernel; returns ``(B, H, M, d)``.

    ``bias``: additive logits broadcast to ``(B, H, M, L)``: a prepared attention mask, ``log(size)`` of merged
    keys, or both. A bias always goes through SDPA, whose broadcasting rules diffusers' masks are shaped for.
    """
    if backend == "xformers" and bias is None:
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(
            query.transpose(1, 2).contiguous(),
            key.transpose(1, 2).contiguous(),
            value.transpose(1, 2).contiguous(),
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)


def attention_with_text_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    content: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention computed explicitly (L is the short text length) so the probabilities can also give each
    query's attention mass on the content tokens (see :func:`~turbo_diffusion.core.text_attention_mass`).

    Returns ``(B, H, M, d)`` output and ``(B, M)`` mass in ``[0, 1]``.
    """
    logits = (query @ key.transpose(-1, -2)).float() * scale
    if bias is not None:
        logits = logits + bias.float()
    probs = logits.softmax(dim=-1)
    out = (probs.to(value.dtype) @ value)
    return out, text_attention_mass(probs, content)
