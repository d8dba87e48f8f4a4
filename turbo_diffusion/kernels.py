"""Attention kernels, in one place: torch SDPA, or xformers' memory-efficient attention on CUDA.

Kernel choice (a name -> diffusers' processor for it, which kernel a UNet runs, whether a kernel is usable on a
device) and the kernels behind Turbo's processor. Tensors are ``(B, H, M, d)`` queries against ``(B, H, L, d)``
keys/values, as in diffusers' ``AttnProcessor2_0``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

from .core.scores import text_attention_mass

# Looked up once: a module search inside the per-call path would not trace into a compiled graph.
_XFORMERS_INSTALLED = importlib.util.find_spec("xformers") is not None


def xformers_available() -> bool:
    return _XFORMERS_INSTALLED


def check_kernel(kernel: str, device: torch.device | None = None, what: str = "backend") -> None:
    """Whether ``kernel`` can run (on ``device``, when given): ``ImportError`` for xformers when it is not
    installed, ``RuntimeError`` for xformers off CUDA. ``what`` names the setting in the message."""
    if kernel != "xformers":
        return
    if device is not None and device.type != "cuda":
        raise RuntimeError(f"{what}='xformers' runs on CUDA only, but the tensors are on {device}; "
                           f"use {what}='auto' or 'sdpa'")
    if not xformers_available():
        raise ImportError(f"{what}='xformers' needs xformers: pip install 'turbo-diffusion[xformers]'")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"xformers"`` on CUDA when xformers is installed, else ``"sdpa"``."""
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if backend == "xformers" and device.type != "cuda":  # the per-call path: a call only where it raises
        check_kernel(backend, device)
    return backend


def default_processor(kernel: str = "sdpa") -> AttnProcessor2_0 | XFormersAttnProcessor:
    """diffusers' processor of ``kernel`` (``"sdpa"`` or ``"xformers"``): what the baseline runs, what Turbo's bare
    route passes through to, and what ToDo and the bound run inside."""
    if kernel not in ("sdpa", "xformers"):
        raise ValueError(f"kernel must be 'sdpa' or 'xformers', got {kernel!r}")
    return XFormersAttnProcessor() if kernel == "xformers" else AttnProcessor2_0()


def kernel_of(processors: dict[str, Any]) -> str:
    """``"xformers"`` when any of ``processors`` (a UNet's ``attn_processors``) is diffusers' xformers one, else
    ``"sdpa"``."""
    return "xformers" if any(isinstance(p, XFormersAttnProcessor) for p in processors.values()) else "sdpa"


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
