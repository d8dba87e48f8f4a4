"""Generation for `compare`: every prompt x seed with every method, resumable, split across processes.

* Same conditions for every method: one pipeline, one scheduler, a CPU generator seeded per image (so the
  starting noise is the same on any device and in any process).
* Interleaved timing: methods take turns on each prompt and seed (in rotating order), after one warm-up
  generation per method, so drift on a busy machine hits all methods alike.
* Resumable: an image whose PNG exists, made under the same configuration (recorded in the PNG), is reused with
  the time measured when it was made. ``force=True`` regenerates everything.
* A folder remembers its configuration (``compare.json``); another configuration there is refused unless forced.
* Under ``accelerate launch`` prompts are split across processes (``PartialState.split_between_processes``); each
  process has every method of its prompts, so pairwise metrics need no communication.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from .methods import Method, method_signature
from .results import ImageRecord

CONFIG_FILE = "compare.json"
_PNG_KEY = "turbo_diffusion.compare"


class CompareError(ValueError):
    """A comparison that cannot run as asked (bad settings, or a folder holding another configuration)."""


@dataclass(frozen=True)
class CompareSpec:
    """What to generate. Everything here decides the images, so it all goes into the fingerprint."""

    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]
    steps: int
    guidance: float
    height: int | None
    width: int | None
    dtype: str
    device_type: str
    scheduler: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise CompareError("no prompts")
        if not self.seeds:
            raise CompareError("no seeds")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise CompareError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise CompareError(f"seeds given twice: {list(self.seeds)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise CompareError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (isinstance(self.guidance, (int, float)) and 0 <= self.guidance < float("inf")):
            raise CompareError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise CompareError(f"{name} must be a multiple of 8 (at least 8), got {value!r}")
        if not self.methods or self.methods[0].kind != "baseline":
            raise CompareError("the first method must be the baseline")

    def configuration(self) -> dict[str, Any]:
        """The settings that decide the images, JSON-ready."""
        return {
            "model": self.model,
            "preset": self.preset,
            "prompts": list(self.prompts),
            "seeds": list(self.seeds),
            "methods": [{**m.to_dict(), "settings": method_signature(m)} for m in self.methods],
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "device_type": self.device_type,
            "scheduler": self.scheduler,
        }

    def fingerprint(self) -> str:
        """A short hash of `configuration`."""
        text = json.dumps(self.configuration(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_path(spec: CompareSpec, method: Method, prompt_index: int, seed: int) -> str:
    """Where an image goes, relative to the output folder: ``images/<method>/<index>_<prompt>_seed<seed>.png``."""
    width = max(4, len(str(len(spec.prompts) - 1)))
    words = re.sub(r"[^a-z0-9]+", "-", spec.prompts[prompt_index].lower()).strip("-")[:40].strip("-") or "prompt"
    return f"images/{method.slug}/{prompt_index:0{width}d}_{words}_seed{seed}.png"


def check_output_dir(out_dir: Path, spec: CompareSpec, force: bool) -> None:
    """Refuse (`CompareError`) a folder that holds a comparison of another configuration, unless ``force``."""
    path = out_dir / CONFIG_FILE
    if force or not path.exists():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CompareError(f"{path} cannot be read; use --force to overwrite or choose another --out") from None
    if previous.get("fingerprint") == spec.fingerprint():
        return
    old, new = previous.get("configuration", {}), spec.configuration()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["version"]
    raise CompareError(f"{out_dir} holds a comparison with other settings (differs in: {', '.join(changed)}); "
                       "use --force to overwrite it or choose another --out")


def write_config(out_dir: Path, spec: CompareSpec) -> None:
    """Record the configuration of ``out_dir`` (main process, before generating)."""
    data = {"tool": "turbo-diffusion compare", "fingerprint": spec.fingerprint(), "configuration": spec.configuration()}
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(data, indent=2, default=str) + "\n")


def generate(pipe: Any, spec: CompareSpec, out_dir: Path, prompt_indices: Sequence[int], force: bool = False,
             progress: bool = True, position: int = 0, random_note: str | None = None) -> list[ImageRecord]:
    """Generate (or reuse) every image of ``prompt_indices`` x seeds x methods; return their records."""
    from tqdm.auto import tqdm

    fingerprint = spec.fingerprint()
    items = [(p, s) for p in prompt_indices for s in spec.seeds]
    records: list[ImageRecord] = []
    todo: list[tuple[int, int, int, Method]] = []  # (item number, prompt index, seed, method)
    for number, (p, s) in enumerate(items):
        for method in spec.methods:
            rel = image_path(spec, method, p, s)
            meta = None if force else _reusable(out_dir / rel, fingerprint)
            if meta is None:
                todo.append((number, p, s, method))
            else:
                records.append(ImageRecord(method.label, p, spec.prompts[p], s, rel, meta.get("seconds"),
                                           meta.get("peak_memory_bytes"), reused=True))
    if not todo:
        return _ordered(records, spec)

    pipe.set_progress_bar_config(disable=True)
    device = _device_of(pipe)
    for method in {m.label: m for *_, m in todo}.values():  # one warm-up per method that will be timed
        _timed_generation(pipe, spec, method, spec.prompts[todo[0][1]], todo[0][2], device, steps=min(2, spec.steps))
    # Rotate the methods' order from one prompt/seed to the next: no method always runs first.
    n = len(spec.methods)
    order = {m.label: i for i, m in enumerate(spec.methods)}
    todo.sort(key=lambda t: (t[0], (order[t[3].label] - t[0]) % n))
    bar = tqdm(total=len(todo), desc=f"compare[{position}]" if position else "compare", position=position,
               disable=not progress, unit="img")
    for _, p, s, method in todo:
        image, seconds, peak = _timed_generation(pipe, spec, method, spec.prompts[p], s, device)
        rel = image_path(spec, method, p, s)
        meta = {"fingerprint": fingerprint, "method": method.label, "prompt_index": p, "seed": s,
                "seconds": seconds, "peak_memory_bytes": peak, "device": str(device)}
        save_png(image, out_dir / rel, meta, random_note)
        records.append(ImageRecord(method.label, p, spec.prompts[p], s, rel, seconds, peak))
        bar.update(1)
    bar.close()
    return _ordered(records, spec)


def _ordered(records: list[ImageRecord], spec: CompareSpec) -> list[ImageRecord]:
    order = {m.label: i for i, m in enumerate(spec.methods)}
    seeds = {s: i for i, s in enumerate(spec.seeds)}
    return sorted(records, key=lambda r: (r.prompt_index, seeds[r.seed], order[r.method]))


def _timed_generation(pipe: Any, spec: CompareSpec, method: Method, prompt: str, seed: int, device: torch.device,
                      steps: int | None = None) -> tuple[Image.Image, float, int | None]:
    """One image with ``method`` installed: (image, seconds, peak CUDA bytes or ``None``)."""
    cuda = device.type == "cuda"
    method.install(pipe)
    try:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        image = _generate_one(pipe, spec, prompt, seed, steps or spec.steps)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
    finally:
        method.uninstall(pipe)
    return image, seconds, peak


def _generate_one(pipe: Any, spec: CompareSpec, prompt: str, seed: int, steps: int) -> Image.Image:
    """The pipeline call itself (a seam for tests that count generations)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    kwargs: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=spec.guidance, generator=generator,
                                  output_type="pil")
    if spec.height:
        kwargs["height"] = spec.height
    if spec.width:
        kwargs["width"] = spec.width
    with torch.no_grad():
        return pipe(prompt, **kwargs).images[0]


def _device_of(pipe: Any) -> torch.device:
    device = getattr(pipe, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def save_png(image: Image.Image, path: Path, meta: dict[str, Any], random_note: str | None = None) -> None:
    """Write a PNG atomically (a half-written file is never taken for a finished one), with ``meta`` in a text
    chunk and, for random-weight models, the note saying so."""
    info = PngImagePlugin.PngInfo()
    info.add_text(_PNG_KEY, json.dumps(meta))
    if random_note:
        info.add_text("Comment", random_note)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def read_png_meta(path: Path) -> dict[str, Any] | None:
    """The metadata `save_png` wrote, or ``None`` (no file, not ours, unreadable)."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            return json.loads(text[_PNG_KEY]) if _PNG_KEY in text else None
    except (OSError, ValueError, KeyError):
        return None


def _reusable(path: Path, fingerprint: str) -> dict[str, Any] | None:
    meta = read_png_meta(path) if path.exists() else None
    return meta if meta and meta.get("fingerprint") == fingerprint else None


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
