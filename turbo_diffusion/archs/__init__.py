"""Published Stable Diffusion UNet architectures, shipped as configs so speed can be measured without weights.

Weights are random (seeded): outputs are noise, but time and memory are those of the real models, since neither
depends on weight values.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from diffusers import UNet2DConditionModel

ARCHITECTURES = {"sd15-arch": "sd15_unet.json", "sd21-arch": "sd21_unet.json", "sdxl-arch": "sdxl_unet.json"}


def unet_config(arch: str) -> dict[str, Any]:
    """The UNet config of ``arch`` (one of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    text = resources.files(__package__).joinpath(ARCHITECTURES[arch]).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def build_unet(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """A UNet of the real ``arch`` architecture with random weights (seeded), in eval mode."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(arch)).eval()
    return unet if dtype == torch.float32 else unet.to(dtype)


def unet_inputs(
    unet: UNet2DConditionModel, height: int, width: int, batch: int, dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu", seed: int = 0,
) -> dict[str, Any]:
    """Random inputs of one denoising call at ``height x width`` pixels (latent = pixels / 8), with SDXL's
    added conditions when the UNet needs them."""
    gen = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, height // 8, width // 8, generator=gen),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen),
    }
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=gen),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1),
        }
    return _to(kwargs, dtype, device)


def _to(value: Any, dtype: torch.dtype, device: str | torch.device) -> Any:
    if isinstance(value, dict):
        return {k: _to(v, dtype, device) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    return value
