"""Tiny UNets built from configs (no downloads): SD 1.x-shaped and SDXL-shaped."""

from __future__ import annotations

import os

# Everything is built offline; never let a test wait on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

TEXT_DIM = 32


def tiny_sd15_unet() -> UNet2DConditionModel:
    """SD 1.x layout: attention at the full latent resolution and at 2x, none at the bottom."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL layout: no attention at full resolution, two transformer layers per block, text-time embedding."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM,
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=8,
    ).eval()


def unet_args(unet: UNet2DConditionModel, height: int = 32, width: int = 32, batch: int = 2,
              dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[tuple, dict]:
    """Positional (sample, timestep) and keyword conditions for one UNet call."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, height, width, generator=gen).to(dtype)
    kwargs = {"encoder_hidden_states": torch.randn(batch, 7, TEXT_DIM, generator=gen).to(dtype)}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, TEXT_DIM, generator=gen).to(dtype),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(batch, 1).to(dtype),
        }
    return (sample, torch.tensor(500)), kwargs


def run(unet: UNet2DConditionModel, args: tuple, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(*args, **kwargs).sample


@pytest.fixture
def sd15_unet() -> UNet2DConditionModel:
    return tiny_sd15_unet()


@pytest.fixture
def sdxl_unet() -> UNet2DConditionModel:
    return tiny_sdxl_unet()
