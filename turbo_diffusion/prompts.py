"""The prompt's content tokens, for ``semantic="text"``: which text tokens are not start, end or padding.

A pipeline's ``encode_prompt`` tokenises the prompt (and, for classifier-free guidance, the negative prompt) and
runs the text encoder. `PromptRecorder` watches both: a hook on the text encoder records the token ids of the
calls made *inside* ``encode_prompt``, and a wrapper around ``encode_prompt`` (an instance attribute on the
pipeline, removed with Turbo) reads its arguments to tell which ids are the prompt's and which the negative's.
Each ``encode_prompt`` call replaces the previous one's record, so nothing queues up, and a prompt handed over as
embeddings (``prompt_embeds=``) is marked unknown rather than matched to some earlier prompt's ids. The record
belongs to the pipeline call that made it: the generation that call opens takes it (`PromptRecorder.take`), so
no later call, of this pipeline or another sharing its UNet, ever reads it. `content_mask` then lays the record
out over the UNet batch.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from .module_hooks import register_hook, remove_hook

TEXT_ENCODER_HOOK = "turbo_diffusion_text_encoder"


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """What one ``encode_prompt`` call encoded.

    Attributes:
        prompt: ``(n, L)`` token ids of the prompts, or ``None`` when given as embeddings (unknown).
        negative: ``(n, L)`` token ids of the negative prompts, or ``None`` (unknown, or ``negative_zeroed``).
        negative_zeroed: the negative embeddings are zeros (SDXL's empty negative prompt): no content tokens.
        guidance: classifier-free guidance, so the UNet batch is ``[negative, prompt]``.
        special_ids: the tokenizer's start, end and padding ids (not content).
    """

    prompt: torch.Tensor | None
    negative: torch.Tensor | None = None
    negative_zeroed: bool = False
    guidance: bool = True
    special_ids: tuple[int, ...] = ()


def fallback_content(batch: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, L)`` content mask when the prompt is unknown: every token but the first (the start token)."""
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    mask[:, 0] = False
    return mask


def content_mask(encoded: EncodedPrompt | None, batch: int,
                 special_ids: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """``(B, L)`` bool on the CPU, True for content tokens, laid out as diffusers stacks the UNet batch:
    ``[negative, prompt]`` under guidance, each prompt repeated ``num_images_per_prompt`` times. ``special_ids``
    defaults to the record's own.

    Halves whose ids are unknown get `fallback_content` rows. Returns ``None`` when the record cannot be laid out
    over ``batch`` (it belongs to another batch) or nothing is known at all.
    """
    if encoded is None or (encoded.prompt is None and encoded.negative is None and not encoded.negative_zeroed):
        return None
    known = [ids for ids in (encoded.prompt, encoded.negative) if ids is not None]
    rows, length = known[0].shape if known else (0, 0)
    halves_count = 2 if encoded.guidance else 1
    if not known or batch % (halves_count * rows) or any(ids.shape != (rows, length) for ids in known):
        return None
    special = torch.tensor(encoded.special_ids if special_ids is None else special_ids, dtype=torch.long)

    def mask_of(ids: torch.Tensor | None, zeroed: bool = False) -> torch.Tensor:
        if zeroed:
            return torch.zeros(rows, length, dtype=torch.bool)
        return fallback_content(rows, length) if ids is None else ~torch.isin(ids.long().cpu(), special)

    halves = [mask_of(encoded.prompt)]
    if encoded.guidance:
        halves.insert(0, mask_of(encoded.negative, encoded.negative_zeroed))
    repeats = batch // (halves_count * rows)
    return torch.cat([half.repeat_interleave(repeats, dim=0) for half in halves])


class _TextEncoderHook(ModelHook):
    """Record the token ids the text encoder sees while ``encode_prompt`` runs (in the same thread)."""

    def __init__(self, recorder: PromptRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        ids = args[0] if args else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.recorder._saw_ids(ids)
        return args, kwargs


class PromptRecorder:
    """Knows, per thread, what the pipeline's last ``encode_prompt`` call encoded (`latest`).

    Args:
        special_ids: start, end and padding token ids (not content).
    """

    def __init__(self, pipe: Any, encoder: torch.nn.Module, special_ids: tuple[int, ...]) -> None:
        self.special_ids = special_ids
        # Weak: the installation that owns this recorder is kept per UNet, and the pipeline holds that UNet.
        self._pipe, self._encoder = weakref.ref(pipe), weakref.ref(encoder)
        self._local = threading.local()
        self._wrapper: weakref.ref | None = None
        self._hook_name = f"{TEXT_ENCODER_HOOK}_{id(self)}"  # pipelines may share a text encoder

    @classmethod
    def for_pipeline(cls, pipe: Any) -> PromptRecorder | None:
        """A recorder for ``pipe`` (not installed yet), or ``None`` when it has no text encoder, tokenizer or
        ``encode_prompt`` to watch."""
        encoder = getattr(pipe, "text_encoder", None) or getattr(pipe, "text_encoder_2", None)
        tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
        if encoder is None or tokenizer is None or not callable(getattr(pipe, "encode_prompt", None)):
            return None
        special = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
        return cls(pipe, encoder, tuple(sorted(int(i) for i in special if i is not None)))

    def latest(self) -> EncodedPrompt | None:
        """This thread's last ``encode_prompt`` record not yet taken, or ``None``."""
        return getattr(self._local, "latest", None)

    def take(self) -> EncodedPrompt | None:
        """`latest`, which from now on belongs to the caller (the generation of the pipeline call that made it)."""
        latest, self._local.latest = self.latest(), None
        return latest

    def install(self) -> None:
        pipe, encoder = self._pipe(), self._encoder()
        original = pipe.encode_prompt
        signature = inspect.signature(original)

        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            self._local.recording = []
            try:
                return original(*args, **kwargs)
            finally:
                recorded, self._local.recording = self._local.recording, None
                self._local.latest = _interpret(signature, args, kwargs, recorded, self.special_ids)

        register_hook(encoder, _TextEncoderHook(self), self._hook_name)
        pipe.encode_prompt = encode_prompt
        self._wrapper = weakref.ref(encode_prompt)

    def uninstall(self) -> None:
        if self._wrapper is None:
            return
        pipe, encoder, wrapper = self._pipe(), self._encoder(), self._wrapper()
        if encoder is not None:
            remove_hook(encoder, self._hook_name)
        if pipe is not None and wrapper is not None and pipe.__dict__.get("encode_prompt") is wrapper:
            del pipe.encode_prompt
        self._wrapper = None

    def _saw_ids(self, ids: torch.Tensor) -> None:
        recording = getattr(self._local, "recording", None)
        if recording is not None:
            recording.append(ids.detach().to("cpu"))


def _interpret(signature: inspect.Signature, args: tuple, kwargs: dict, recorded: list,
               special_ids: tuple[int, ...]) -> EncodedPrompt:
    """Assign the ids recorded during one ``encode_prompt`` call to its prompt and negative prompt.

    diffusers encodes the prompt unless ``prompt_embeds`` is given, then, under guidance, the negative prompt
    unless ``negative_prompt_embeds`` is given; SDXL zeroes an empty negative prompt without encoding it."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return EncodedPrompt(None, guidance=True, special_ids=special_ids)
    bound.apply_defaults()
    arguments = bound.arguments
    guidance = bool(arguments.get("do_classifier_free_guidance", True))
    pending = list(recorded)
    prompt = pending.pop(0) if arguments.get("prompt_embeds") is None and pending else None
    negative, zeroed = None, False
    if guidance and arguments.get("negative_prompt_embeds") is None:
        if pending:
            negative = pending.pop(0)
        else:
            zeroed = True
    return EncodedPrompt(prompt, negative, zeroed, guidance, special_ids)
