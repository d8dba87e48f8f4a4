"""Prompt sets for `compare`: lists of prompt records ``{"prompt": text, **metadata}``.

A set comes from a preset (``paper``, ``smoke``, or one a model plugs in: ``shapes``, ``shapes-quick``), a
prompt source ``MODULE:NAME`` (a `Preset`, a mapping of its fields, or a callable returning either: how the
built-in models plug theirs in, `turbo_diffusion.model_names.PROMPT_SOURCES`), a JSON Lines file (``.jsonl``: one
object per line with a ``"prompt"`` string; every other key is metadata, e.g. ``{"prompt": "a red circle",
"scene_seed": 7}``), a text file (one prompt per line), or a list of prompts or records. Metadata goes, untouched,
to every scorer (`turbo_diffusion.compare.scoring`). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..harness.loading import PLUGIN_SOURCE, load_plugin
from ..model_names import PROMPT_SOURCES

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

    ``prompts`` are texts or records with metadata. ``scheduler="pndm"`` swaps in diffusers' ``PNDMScheduler``
    with ``skip_prk_steps`` (the PLMS sampler).
    """

    name: str
    description: str
    prompts: tuple[str | Mapping[str, Any], ...]
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
    """The named prompt sets: the built-in ones, then those the built-in models plug in."""
    return {
        "paper": Preset(
            "paper",
            "ImageNet-1k class names as 'a photo of a {name}', 512x512, 50 PLMS steps, guidance 7.5, 2 seeds "
            "per class (2000 images): the protocol of ToMe for SD, which Turbo follows",
            tuple(PAPER_TEMPLATE.format(name=name) for name in imagenet_class_names()),
            steps=50, guidance=7.5, height=512, width=512, seeds=(0, 1), scheduler="pndm",
        ),
        "smoke": Preset("smoke", "four varied prompts for a quick look", SMOKE_PROMPTS),
        **{name: plugged_preset(source) for name, source in PROMPT_SOURCES.items()},
    }


def plugged_preset(source: str) -> Preset:
    """The preset a prompt source ``MODULE:NAME`` names (see the module docstring); ``ValueError`` otherwise."""
    value = load_plugin(source, "--prompts")
    value = value() if callable(value) and not isinstance(value, Preset) else value
    if isinstance(value, Mapping):
        value = Preset(**value)
    if not isinstance(value, Preset):
        raise ValueError(f"--prompts {source}: not a preset, a mapping of its fields or a callable returning one")
    return value


def load_prompts(source: str | Sequence[str | Mapping[str, Any]]) -> tuple[list[dict[str, Any]], Preset | None]:
    """The prompt records of ``source`` (see the module docstring) and its preset, if it is one. Raises
    ``ValueError`` (one line, naming the file and line) for an unknown name, an empty set or a bad record."""
    if not isinstance(source, str):
        records = [_record(item, f"prompt {i}") for i, item in enumerate(source)]
        preset = None
    elif source in (named := presets()):
        preset = named[source]
        records = [_record(prompt, f"preset {source!r}, prompt {i}") for i, prompt in enumerate(preset.prompts)]
    elif os.path.isfile(source):
        records, preset = _read_file(source), None
    elif PLUGIN_SOURCE.fullmatch(source):
        preset = plugged_preset(source)
        records = [_record(prompt, f"prompt source {source}, prompt {i}") for i, prompt in enumerate(preset.prompts)]
    else:
        raise ValueError(f"--prompts {source!r} is neither a preset ({', '.join(named)}), a prompt source "
                         "(MODULE:NAME) nor a file")
    if not records:
        raise ValueError(f"prompt set {source if isinstance(source, str) else 'given'!r} has no prompts")
    return records, preset


def _read_file(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]
    if not path.lower().endswith(".jsonl"):
        return [{"prompt": line} for _, line in lines]
    records = []
    for n, line in lines:
        try:
            item = json.loads(line)
        except ValueError as err:
            raise ValueError(f"prompt file {path!r}, line {n}: not JSON ({err})") from None
        records.append(_record(item, f"prompt file {path!r}, line {n}"))
    return records


def _record(item: str | Mapping[str, Any], where: str) -> dict[str, Any]:
    record = {"prompt": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
    if record is None or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise ValueError(f"{where}: a prompt record needs a non-empty \"prompt\" string, got {item!r}")
    return record
