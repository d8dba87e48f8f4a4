"""`TurboContext`: the state one Turbo installation shares between its processor and hooks.

One context per UNet. It knows where the current UNet call is (latent size, seeded generator), which plan the
current transformer block made (so cross-attention and the feed-forward reuse it), and what the previous step's
cross-attention said about each token (for ``semantic="text"``). No diffusers import.

Two routes feed it:

* ``apply_turbo`` registers a UNet hook that calls :meth:`TurboContext.start_call` with the latent size and the
  timestep, so every layer's grid is known exactly, for any aspect ratio.
* A bare ``unet.set_attn_processor(TurboProcessor(...))`` has no hook. The processor then takes the first
  self-attention layer it ever sees (the highest-resolution attention layer of a UNet) as the reference: each
  time that layer runs, its token count gives the reference grid, assumed square. Levels count from that
  layer (``max_downsample=None`` or 1 merges at that layer's level). Non-square latents cannot be factored from a
  token count, so that layer is then split into 1-D windows of ``sx * sy`` consecutive tokens, with a warning.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass

import torch

from .config import TurboConfig
from .core import MergePlan

logger = logging.getLogger("turbo_diffusion")

_MAX_LEVELS = 8


@dataclass(frozen=True)
class Level:
    """Where a self-attention layer sits: its token grid, window size and latent downsampling factor."""

    height: int
    width: int
    downsample: int
    sx: int
    sy: int


class TurboContext:
    """Mutable state of one Turbo installation (one UNet).

    Args:
        config: the installation's configuration.
        max_downsample: resolved merge depth when the UNet's structure is known (``apply_turbo``); ``None`` for the
            bare-processor route, where levels are counted from the first self-attention layer.
    """

    def __init__(self, config: TurboConfig, max_downsample: int | None = None) -> None:
        self.config = config
        self.max_downsample = max_downsample
        self.latent_hw: tuple[int, int] | None = None
        self.token_mask: torch.Tensor | None = None
        self.special_token_ids: tuple[int, ...] = ()
        self._call_seed = config.seed
        self._last_timestep: float | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._seeded: set[str] = set()
        self._leader: weakref.ref | None = None
        self._reference_tokens: int | None = None
        self._plan: MergePlan | None = None
        self._block: object | None = None
        self._text_mass: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> (step made, plan)
        self._step = 0  # UNet calls since the generation started
        self._pending_prompts: list[torch.Tensor] = []
        self._warned: set[str] = set()

    # -- UNet call -------------------------------------------------------------------------------------------
    def start_call(self, latent_hw: tuple[int, int], timestep: object = None, batch: int | None = None) -> None:
        """Called by the UNet hook before every UNet forward."""
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self._plan, self._block = None, None
        t = _timestep_value(timestep)
        if t is not None and self._last_timestep is not None and t > self._last_timestep:
            # Denoising runs towards t = 0: a larger timestep starts a new generation, which must not see the
            # previous one's cross-attention or plans.
            self._text_mass.clear()
            self._plans.clear()
            self._step = 0
        elif self._last_timestep is not None:
            self._step += 1
        self._last_timestep = t
        if self.config.use_rand:
            self._call_seed = (self.config.seed * 1_000_003 + round((t or 0.0) * 1000)) % (2**63 - 1)
            self._seeded.clear()
        if self._pending_prompts and batch is not None:
            self.token_mask = self._resolve_prompts(batch)

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator for ``device`` (CPU for devices without generators of their own)."""
        key = device.type if device.type in ("cpu", "cuda") else "cpu"
        if key == "cuda":
            key = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=key)
        if key not in self._seeded:
            gen.manual_seed(self._call_seed)
            self._seeded.add(key)
        return gen

    # -- levels ----------------------------------------------------------------------------------------------
    def locate(self, attn: object, num_tokens: int) -> Level | None:
        """The level of a self-attention layer with ``num_tokens`` tokens, or ``None`` when it is not merged."""
        sx, sy = self.config.sx, self.config.sy
        if self.latent_hw is not None:
            h, w = self.latent_hw
            limit = self.max_downsample if self.max_downsample is not None else 1
            for k in range(_MAX_LEVELS):
                f = 2**k
                hk, wk = -(-h // f), -(-w // f)
                if hk * wk == num_tokens:
                    return Level(hk, wk, f, sx, sy) if f <= limit else None
            return None
        return self._locate_without_hook(attn, num_tokens, sx, sy)

    def _locate_without_hook(self, attn: object, num_tokens: int, sx: int, sy: int) -> Level | None:
        if self._leader is None or self._leader() is None:
            self._leader = weakref.ref(attn)
        if self._leader() is attn:  # the first layer of a UNet call
            self._reference_tokens = num_tokens
            self._step += 1
        ref = self._reference_tokens
        limit = self.config.max_downsample or 1
        side = math.isqrt(ref)
        if side * side == ref:
            for k in range(_MAX_LEVELS):
                f = 2**k
                s = -(-side // f)
                if s * s == num_tokens:
                    return Level(s, s, f, sx, sy) if f <= limit else None
            return None
        if num_tokens != ref:
            return None
        self.warn_once(
            "1d",
            f"TurboProcessor without apply_turbo cannot tell the grid of {num_tokens} tokens (non-square latent); "
            "merging in 1-D windows of consecutive tokens. Use apply_turbo(...) for exact 2-D windows.",
        )
        return Level(1, num_tokens, 1, sx * sy, 1)

    # -- the current block's plan ----------------------------------------------------------------------------
    def begin_block(self, block_key: object, plan: MergePlan | None) -> None:
        """Record the plan a self-attention layer made (``None`` when it does not merge)."""
        self._block, self._plan = block_key, plan

    def reusable_plan(self, block_key: object, x: torch.Tensor) -> MergePlan | None:
        """The block's stored plan if it is younger than ``plan_every`` UNet calls and fits ``x``, else ``None``."""
        entry = self._plans.get(block_key)
        if entry is None:
            return None
        made, plan = entry
        return plan if self._step - made < self.config.plan_every and plan.matches(x) else None

    def store_plan(self, block_key: object, plan: MergePlan | None) -> None:
        if self.config.plan_every > 1 and plan is not None:
            self._plans[block_key] = (self._step, plan)

    def plan_for(self, x: torch.Tensor) -> MergePlan | None:
        """The current block's plan if it applies to ``x`` (same batch and token count), else ``None``."""
        plan = self._plan
        return plan if plan is not None and plan.matches(x) else None

    # -- semantic="text" -------------------------------------------------------------------------------------
    def wants_text_mass(self, x: torch.Tensor) -> bool:
        return self.config.semantic == "text" and self.config.alpha > 0 and self.plan_for(x) is not None

    def record_text_mass(self, mass: torch.Tensor) -> None:
        """Keep ``(B, N)`` cross-attention mass of the current block for its next step."""
        if self._block is not None:
            self._text_mass[self._block] = mass.detach()

    def text_mass(self, block_key: object, batch: int, num_tokens: int) -> torch.Tensor | None:
        mass = self._text_mass.get(block_key)
        return mass if mass is not None and mass.shape == (batch, num_tokens) else None

    def content_mask(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """``(B, L)`` True for prompt content tokens. Known from the tokenised prompt when a text-encoder hook
        saw it; otherwise every token but the first (the start token) counts."""
        mask = self.token_mask
        if mask is not None and mask.shape == (batch, length):
            return mask.to(device)
        if mask is not None:
            self.warn_once("mask", f"prompt token mask {tuple(mask.shape)} does not fit cross-attention "
                                   f"({batch}, {length}); counting every token but the start token")
        fallback = torch.ones(batch, length, dtype=torch.bool, device=device)
        fallback[:, 0] = False
        return fallback

    def record_prompt_ids(self, input_ids: torch.Tensor) -> None:
        """Called by the text-encoder hook with each ``(n, L)`` batch of token ids it encodes."""
        self._pending_prompts.append(input_ids.detach().to("cpu"))

    def _resolve_prompts(self, batch: int) -> torch.Tensor | None:
        """Map the prompts encoded since the last UNet call to the UNet batch.

        diffusers' pipelines encode the prompt, then the negative prompt, and stack them as
        ``[negative, prompt]`` for classifier-free guidance, each row repeated ``num_images_per_prompt`` times.
        SDXL may skip the negative encoding (zeroed embeddings): that half has no content tokens.
        """
        special = torch.tensor(self.special_token_ids, dtype=torch.long)
        masks = [~torch.isin(ids.long(), special) for ids in self._pending_prompts]
        self._pending_prompts = []
        prompt = masks[0]
        if len(masks) >= 2 and masks[1].shape == prompt.shape and batch % (2 * prompt.shape[0]) == 0:
            halves = [masks[1], prompt]
        elif batch % (2 * prompt.shape[0]) == 0 and batch != prompt.shape[0]:
            halves = [torch.zeros_like(prompt), prompt]
        elif batch % prompt.shape[0] == 0:
            halves = [prompt]
        else:
            self.warn_once("prompts", f"could not match {len(masks)} encoded prompt batch(es) to a UNet batch of "
                                      f"{batch}; semantic='text' counts every token but the start token")
            return None
        repeats = batch // (len(halves) * prompt.shape[0])
        return torch.cat([h.repeat_interleave(repeats, dim=0) for h in halves])

    # -- misc ------------------------------------------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def _timestep_value(timestep: object) -> float | None:
    """A UNet call's timestep as a float (the first one of a per-sample tensor), or ``None``."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0].item()) if timestep.numel() else None
    try:
        return float(timestep) if timestep is not None else None
    except (TypeError, ValueError):
        return None
