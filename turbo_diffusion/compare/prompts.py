"""Prompt sets for `compare`: presets (``paper``, ``smoke``) or a text file with one prompt per line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

PAPER_TEMPLATE = "a photo of a {name}"

SMOKE_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a red apple on a wooden table, studio lighting",
    "a watercolor painting of a lighthouse at dawn",
    "a close-up photo of a golden retriever in the snow",
)


@dataclass(frozen=True)
class Preset:
    """A named prompt set with the generation settings that go with it (``None``: the command's default).

    ``scheduler="pndm"`` swaps in diffusers' ``PNDMScheduler`` with ``skip_prk_steps`` (the PLMS sampler).
    """

    name: str
    description: str
    prompts: tuple[str, ...]
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    seeds: tuple[int, ...] | None = None
    scheduler: str | None = None


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (first WordNet name of each class).

    Shipped as package data; ``turbo_diffusion/data/README.md`` says where the list comes from.
    """
    text = resources.files("turbo_diffusion").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def presets() -> dict[str, Preset]:
    """The named prompt sets."""
    return {
        "paper": Preset(
            "paper",
            "ImageNet-1k class names as 'a photo of a {name}', 512x512, 50 PLMS steps, guidance 7.5, 2 seeds "
            "per class (2000 images): the protocol of ToMe for SD, which Turbo follows",
            tuple(PAPER_TEMPLATE.format(name=name) for name in imagenet_class_names()),
            steps=50, guidance=7.5, height=512, width=512, seeds=(0, 1), scheduler="pndm",
        ),
        "smoke": Preset("smoke", "four varied prompts for a quick look", SMOKE_PROMPTS),
    }


def resolve_prompts(spec: str) -> tuple[list[str], Preset | None]:
    """The prompts named by ``spec``: a preset name, else a UTF-8 text file with one prompt per line (blank
    lines are skipped). Raises ``ValueError`` (one line) for an unknown preset or a missing or empty file."""
    known = presets()
    if spec in known:
        return list(known[spec].prompts), known[spec]
    if not os.path.isfile(spec):
        raise ValueError(f"--prompts {spec!r} is neither a preset ({', '.join(known)}) nor a file")
    with open(spec, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {spec!r} has no prompts")
    return prompts, None
