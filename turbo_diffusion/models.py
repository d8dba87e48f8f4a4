"""Pipelines without downloads: a tiny one for tests, and the real SD architectures with random weights.

Model names understood by :func:`load_pipeline` (and the CLI's ``--model``):

* ``"tiny"``, ``"tiny-xl"``: a few-hundred-kilobyte SD / SDXL-shaped pipeline for tests (random weights);
* ``"sd15-arch"``, ``"sd21-arch"``, ``"sdxl-arch"``: the published SD 1.5, SD 2.1 and SDXL architectures with
  random weights, for honest timings (time and memory do not depend on weight values);
* ``"shapes"``: a miniature SD 1.5 *trained here* on scenes of coloured shapes (see :mod:`turbo_diffusion.shapes`),
  shipped with the package: real images, 128 px, in seconds on a CPU;
* anything else: a Hugging Face Hub id or a local folder, through ``from_pretrained``.

Random-weight pipelines produce noise. :func:`uses_random_weights` tells, and everything that saves or shows an
image from them says so. Their tokenizer is a byte-level CLIP tokenizer with no merges (one token per character,
built in code), since the real vocabulary cannot be downloaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .archs import unet_config
from .model_names import RANDOM_WEIGHT_MODELS, RANDOM_WEIGHTS_NOTE, SHAPES_FOLDER, TRAINED_MODELS, check_model_name  # noqa: F401 (re-exported)

_RANDOM_FLAG = "_turbo_random_weights"
# diffusers 0.42 renamed from_pretrained's torch_dtype to dtype (the old name warns); 0.35 knows only torch_dtype.
_DTYPE_KEYWORD = "dtype" if tuple(int(p) for p in diffusers.__version__.split(".")[:2]) >= (0, 42) else "torch_dtype"

# Published text-encoder shapes: CLIP ViT-L/14 (SD 1.x, SDXL's first), OpenCLIP ViT-H/14 (SD 2.x), ViT-bigG/14.
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768, hidden_act="quick_gelu")
_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
               projection_dim=512, hidden_act="gelu")
_CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu")
_SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                     timestep_spacing="leading")


def byte_level_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte-level symbols and no merges: one token per character.

    Ids: 0-255 symbols, 256-511 symbols ending a word (``"</w>"``), 512 start, 513 end (also padding).
    """
    vocab = byte_level_vocab()
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    # Through files: transformers 4 takes (vocab_file, merges_file) paths, 5 takes paths or objects.
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)


def byte_level_vocab() -> dict[str, int]:
    """CLIP's vocabulary before merges: the 256 byte-level symbols (ids 0-255), then each ending a word
    (``"</w>"``, ids 256-511)."""
    symbols = _byte_symbols()
    return {s: i for i, s in enumerate(symbols)} | {s + "</w>": i + 256 for i, s in enumerate(symbols)}


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: printable bytes map to themselves, the rest to code points from 256."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _text_encoder(shape: dict[str, Any], with_projection: bool = False, vocab_size: int = 49408):
    config = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                            pad_token_id=513, **shape)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_components(xl: bool = False, seed: int = 0) -> dict[str, Any]:
    """Components of a tiny SD (or SDXL-shaped, ``xl=True``) pipeline: 8x VAE, 3-level UNet, 2-layer CLIP.

    The UNet has attention at the full latent resolution (SD) or only from 2x down (SDXL), like the real ones.
    """
    torch.manual_seed(seed)
    text_shape = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=32, hidden_act="gelu")
    unet_kwargs: dict[str, Any] = dict(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64, 64), norm_num_groups=8,
        attention_head_dim=(2, 4, 4),
    )
    if xl:
        unet_kwargs.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 2), use_linear_projection=True, cross_attention_dim=64,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        )
    else:
        unet_kwargs.update(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        )
    components: dict[str, Any] = {
        "unet": UNet2DConditionModel(**unet_kwargs).eval(),
        "vae": AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64).eval(),
        "text_encoder": _text_encoder(text_shape, vocab_size=514),
        "tokenizer": byte_level_tokenizer(),
        "scheduler": EulerDiscreteScheduler(**_SD_SCHEDULER),
    }
    if xl:
        components["text_encoder_2"] = _text_encoder(text_shape, with_projection=True, vocab_size=514)
        components["tokenizer_2"] = byte_level_tokenizer()
    else:
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return components


def arch_components(arch: str, seed: int = 0) -> dict[str, Any]:
    """Components of the real ``sd15-arch``, ``sd21-arch`` or ``sdxl-arch`` pipeline, with random weights."""
    unet_cfg = unet_config(arch)  # validates the name
    torch.manual_seed(seed)
    xl = arch == "sdxl-arch"
    sample = unet_cfg["sample_size"] * 8
    components: dict[str, Any] = {
        "unet": UNet2DConditionModel(**unet_cfg).eval(),
        "vae": AutoencoderKL(**_SD_VAE, sample_size=sample, scaling_factor=0.13025 if xl else 0.18215,
                             force_upcast=xl).eval(),
        "text_encoder": _text_encoder(_CLIP_H if arch == "sd21-arch" else _CLIP_L),
        "tokenizer": byte_level_tokenizer(),
        "scheduler": EulerDiscreteScheduler(
            **_SD_SCHEDULER, prediction_type="v_prediction" if arch == "sd21-arch" else "epsilon"
        ),
    }
    if xl:
        components["text_encoder_2"] = _text_encoder(_CLIP_BIG_G, with_projection=True)
        components["tokenizer_2"] = byte_level_tokenizer()
    else:
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return components


def is_xl(model: str) -> bool:
    """Whether a built-in model name is SDXL-shaped."""
    return model in ("tiny-xl", "sdxl-arch")


def load_pipeline(
    model: str,
    pipeline_class: type[DiffusionPipeline] | None = None,
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> DiffusionPipeline:
    """A pipeline for ``model``: a built-in random-weight name (see the module docstring), a local folder or a
    Hub id.

    Args:
        model: the name, folder or Hub id.
        pipeline_class: the class to build; defaults to the SD or SDXL text-to-image pipeline for built-in names
            and to ``DiffusionPipeline`` (auto-detected) otherwise.
        torch_dtype: weights' dtype (``None`` keeps float32).
        seed: seed of the random weights (built-in names only).
        **kwargs: passed to ``from_pretrained`` for folders and Hub ids, and to the constructor for built-in names
            (e.g. ``turbo=`` of a Turbo pipeline class); one it does not take raises ``TypeError``.
    """
    if model in RANDOM_WEIGHT_MODELS:
        if model.startswith("tiny"):
            components = tiny_components(xl=is_xl(model), seed=seed)
        else:
            components = arch_components(model, seed=seed)
        cls = pipeline_class or (StableDiffusionXLPipeline if is_xl(model) else StableDiffusionPipeline)
        pipe = cls(**{**_accepted(cls, components), **kwargs})
        if torch_dtype is not None:
            pipe = pipe.to(dtype=torch_dtype)
        setattr(pipe, _RANDOM_FLAG, True)
        return pipe
    check_model_name(model)
    if model == "shapes":
        if not os.path.isfile(os.path.join(SHAPES_FOLDER, "model_index.json")):
            raise ValueError(f"the shapes model's weights are missing from {SHAPES_FOLDER}; train them with "
                             "`turbo-diffusion train-shapes --out DIR` and pass --model DIR/pipeline")
        model = SHAPES_FOLDER
        pipeline_class = pipeline_class or StableDiffusionPipeline
    cls = pipeline_class or DiffusionPipeline
    if torch_dtype is not None:
        kwargs[_DTYPE_KEYWORD] = torch_dtype
    return cls.from_pretrained(model, **kwargs)


def uses_random_weights(pipe: Any) -> bool:
    """Whether ``pipe`` came from a built-in random-weight model (its images are noise)."""
    return bool(getattr(pipe, _RANDOM_FLAG, False))


def _accepted(cls: type, components: dict[str, Any]) -> dict[str, Any]:
    """The components ``cls.__init__`` takes (e.g. img2img has no ``requires_safety_checker`` in some versions)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in components.items() if k in params}
