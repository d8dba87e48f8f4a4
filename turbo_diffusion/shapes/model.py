"""The ``shapes`` model's components: a miniature Stable Diffusion 1.5, sized to train on a 2-core CPU.

* VAE: ``AutoencoderKL``, 3 blocks (4x downsampling), 4 latent channels, no mid-block attention: 128 px images
  become 32 x 32 latents.
* Text encoder: a 4-layer, 128-wide ``CLIPTextModel`` trained from scratch, with the scene tokenizer
  (:mod:`turbo_diffusion.shapes.tokenizer`, one token per scene word).
* UNet: ``UNet2DConditionModel`` with SD 1.5's block layout (three cross-attention down blocks and a plain one,
  a mid block with attention, a plain up block and three cross-attention up blocks), at widths 32-64-128-128. Its
  finest attention level sees the whole 32 x 32 latent: 1024 tokens, the count Turbo merges at.
* Scheduler: SD's ``scaled_linear`` betas, epsilon prediction; sampling with DPM-Solver++ (2M).

Every component is a stock diffusers / transformers class, so the exported folder loads with plain
``StableDiffusionPipeline.from_pretrained(folder)``.
"""

from __future__ import annotations

from typing import Any

from .scenes import IMAGE_SIZE
from .tokenizer import MAX_LENGTH

LATENT_SIZE = IMAGE_SIZE // 4
TEXT_WIDTH = 128

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16,
    sample_size=IMAGE_SIZE, mid_block_add_attention=False,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=TEXT_WIDTH, attention_head_dim=2, norm_num_groups=16,
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon",
)


def text_encoder_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=TEXT_WIDTH,
    )


def new_components(seed: int = 0) -> dict[str, Any]:
    """Freshly initialised components (the starting point of training)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .tokenizer import scene_tokenizer

    torch.manual_seed(seed)
    tokenizer = scene_tokenizer()
    return {
        "vae": AutoencoderKL(**VAE_CONFIG),
        "text_encoder": CLIPTextModel(text_encoder_config(tokenizer)),
        "tokenizer": tokenizer,
        "unet": UNet2DConditionModel(**UNET_CONFIG),
        "noise_scheduler": DDPMScheduler(**SCHEDULER_CONFIG),
    }


def build_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Any:
    """A ``StableDiffusionPipeline`` around trained components, with the sampling scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing", steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
