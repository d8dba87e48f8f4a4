"""Generation for `compare`: every prompt x seed with every method, resumable, split across processes.

* Same conditions for every method: one pipeline, one scheduler, a CPU generator seeded per image (so the
  starting noise is the same on any device and in any process).
* Interleaved timing (`turbo_diffusion.harness.measure`): methods take turns on each prompt and seed (in rotating
  order), after one short warm-up generation per method, which also measures the method's peak memory (CPU or
  CUDA), so drift on a busy machine hits all methods alike and no timed call runs a memory sampler.
* Resumable and growable: each PNG records its own key (`spec.image_key`: the settings, prompt, seed and method
  that decide it), and an image whose PNG exists with the key this run wants is reused with the time measured
  when it was made. So a rerun with more prompts, seeds or methods (or a subset: ``max_prompts``) generates only
  what is missing. ``force=True`` regenerates everything.
* A folder remembers its configuration (``compare.json``), written once the first image is about to be saved,
  and the earlier ones it held (so PNGs from before per-image keys stay reusable). A folder with images made
  under other model, steps, guidance, size, dtype, device or scheduler is refused unless forced. A failed run that
  saved no image leaves no record, so its corrected rerun goes ahead.
* Under ``accelerate launch`` or ``torchrun`` prompts are dealt out to the processes in turn (`api.process_share`),
  so they finish a prefix of the prompts together; each process has every method of its prompts, so pairwise
  metrics need no communication.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..anatomy import attention_level
from ..harness.images import make_image, save_image
from ..harness.loading import about
from ..harness.measure import (
    busy_warning,
    default_repeats,
    generation_cost,
    installed,
    rotated,
    take_turns,
    time_interleaved,
)
from ..harness.memory import MIB, peak_memory
from ..harness.methods import Method
from ..harness.output import write_json
from ..levels import pixel_grid
from .results import ImageRecord
from .spec import GROWABLE, CompareError, CompareSpec, image_key

CONFIG_FILE = "compare.json"
_PNG_KEY = "turbo_diffusion.compare"


def image_path(spec: CompareSpec, method: Method, prompt_index: int, seed: int) -> str:
    """Where an image goes, relative to the output folder: ``images/<method>/<index>_<prompt>_seed<seed>.png``."""
    width = max(4, len(str(len(spec.prompts) - 1)))
    words = re.sub(r"[^a-z0-9]+", "-", spec.texts[prompt_index].lower()).strip("-")[:40].strip("-") or "prompt"
    return f"images/{method.slug}/{prompt_index:0{width}d}_{words}_seed{seed}.png"


def check_output_dir(out_dir: Path, spec: CompareSpec, force: bool) -> None:
    """Refuse (`CompareError`) a folder that holds a comparison whose images cannot be this one's (other settings
    than prompts, seeds and methods), unless ``force``. A record without any image (a run that failed before its
    first image) counts as no record."""
    path = out_dir / CONFIG_FILE
    if force or not path.exists() or not any((out_dir / "images").rglob("*.png")):
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CompareError(f"{path} cannot be read; use --force to overwrite or choose another --out") from None
    if previous.get("fingerprint") == spec.fingerprint():
        return
    old, new = previous.get("configuration", {}), spec.configuration()
    changed = sorted(k for k in set(old) | set(new) if k not in GROWABLE and old.get(k) != new.get(k))
    if old and not changed:
        return  # the same kind of images: those this run shares with the folder are reused
    changed = changed or ["version"]
    raise CompareError(f"{out_dir} holds a comparison with other settings (differs in: {', '.join(changed)}); "
                       "use --force to overwrite it or choose another --out")


def write_config(out_dir: Path, spec: CompareSpec) -> None:
    """Record the configuration of ``out_dir``, keeping the configurations recorded before under ``earlier``
    (by fingerprint): PNGs written before per-image keys are matched through them."""
    fingerprint = spec.fingerprint()
    previous = _read_config(out_dir)
    earlier = dict(previous.get("earlier", {}))
    if previous.get("configuration") and previous.get("fingerprint") not in (None, fingerprint):
        earlier[previous["fingerprint"]] = previous["configuration"]
    earlier.pop(fingerprint, None)
    write_json(out_dir / CONFIG_FILE, {"tool": "turbo-diffusion compare", "fingerprint": fingerprint,
                                       "configuration": spec.configuration(), "earlier": earlier})


def _read_config(out_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((out_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _recorded_configurations(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every configuration the folder recorded, by fingerprint: the current one and the earlier ones."""
    record = _read_config(out_dir)
    known = dict(record.get("earlier", {}))
    if record.get("fingerprint") and record.get("configuration"):
        known[record["fingerprint"]] = record["configuration"]
    return known


def generation_size(pipe: Any, spec: CompareSpec) -> tuple[int, int]:
    """The ``(height, width)`` in pixels the pipeline generates: the spec's, else the pipeline's default."""
    default = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    return spec.height or default, spec.width or default


def generate(pipe: Any, spec: CompareSpec, out_dir: Path, prompt_indices: Sequence[int], force: bool = False,
             progress: bool = True, position: int = 0, random_note: str | None = None,
             on_first_image: Callable[[], None] | None = None, log: Callable[[str], None] | None = None,
             repeats: int | None = None) -> tuple[list[ImageRecord], dict[str, list[float]]]:
    """Generate (or reuse) every image of ``prompt_indices`` x seeds x methods; return their records and the
    seconds of extra timed runs per method.

    The images are timed as they are made, the methods taking turns per prompt and seed. Where they give a method
    fewer than ``repeats`` timed runs (``None``: 3 where a run takes under 10 s, else 1; see
    `turbo_diffusion.harness.measure.default_repeats`), the first prompt and seed are generated again, the methods
    taking turns, until they have; those images are not kept. ``on_first_image`` is called once, just before the
    first new image is saved; ``log`` with a line before the warm-up and before the generations (with the time
    they are expected to take)."""
    from tqdm.auto import tqdm

    fingerprint, configuration = spec.fingerprint(), spec.configuration()
    recorded = {} if force else _recorded_configurations(out_dir)
    records: list[ImageRecord] = []
    todo: list[tuple[int, int, list[Method]]] = []  # (prompt index, seed, methods still to generate)
    for p in prompt_indices:
        for s in spec.seeds:
            missing = []
            for method in spec.methods:
                rel = image_path(spec, method, p, s)
                key = image_key(configuration, p, s, method.label)
                meta = None if force else _reusable(out_dir / rel, key, recorded)
                if meta is None:
                    missing.append(method)
                else:
                    records.append(ImageRecord(method.label, p, spec.texts[p], s, rel, meta.get("seconds"),
                                               meta.get("peak_memory_bytes"), reused=True))
            if missing:
                todo.append((p, s, missing))
    if not todo:
        return _ordered(records, spec), {}

    pipe.set_progress_bar_config(disable=True)
    device = _device_of(pipe)
    grid = pixel_grid(*generation_size(pipe, spec), attention_level(pipe.unet))
    say = log or (lambda _: None)
    warm_steps = min(2, spec.steps)
    timed_methods = {m.label: m.at_grid(grid) for *_, methods in todo for m in methods}
    say(f"warming up: one {warm_steps}-step generation for each of {len(timed_methods)} methods")
    first = partial(_generate_one, pipe, spec, spec.texts[todo[0][0]], todo[0][1])
    peaks, costs = {}, {}
    for label, method in timed_methods.items():
        with installed(pipe, method), peak_memory(device) as peak:
            costs[label] = generation_cost(pipe, first, device, warm_steps)
        peaks[label] = round(peak.total_mib * MIB)
    made = {label: sum(label in {m.label for m in methods} for *_, methods in todo) for label in timed_methods}
    rounds = repeats or default_repeats(max(cost.estimate(spec.steps) for cost in costs.values()))
    extra = max(0, rounds - min(made.values()))
    images = sum(made.values())
    expected = sum(costs[label].estimate(spec.steps) * (count + extra) for label, count in made.items())
    say(f"generating {images} images of {spec.steps} steps"
        + (f", then {extra} more timed run{'s' if extra > 1 else ''} of each method for the speed-up (images not "
           "kept)" if extra else "") + f": expected about {about(expected)} (from the warm-up)")
    busy = busy_warning()
    if busy:
        say(busy)
    bar = tqdm(total=images + extra * len(timed_methods), desc=f"compare[{position}]" if position else "compare",
               position=position, disable=not progress, unit="img")
    rounds = [[timed_methods[m.label] for m in methods] for *_, methods in todo]  # no method always runs first

    def make(number: int, method: Method) -> Image.Image:
        return _generate_one(pipe, spec, spec.texts[todo[number][0]], todo[number][1], spec.steps)

    for number, method, image, seconds in take_turns(pipe, rounds, make, device):
        p, s = todo[number][:2]
        if on_first_image is not None:
            on_first_image()
            on_first_image = None
        rel = image_path(spec, method, p, s)
        meta = {"fingerprint": fingerprint, "key": image_key(configuration, p, s, method.label),
                "method": method.label, "prompt_index": p, "seed": s,
                "seconds": seconds, "peak_memory_bytes": peaks[method.label], "device": str(device)}
        save_png(image, out_dir / rel, meta, random_note)
        records.append(ImageRecord(method.label, p, spec.texts[p], s, rel, seconds, peaks[method.label]))
        bar.update(1)
    extra_seconds: dict[str, list[float]] = {}
    if extra:
        timings = time_interleaved(pipe, rotated(list(timed_methods.values()), len(todo)),
                                   partial(first, spec.steps), device, repeats=extra, warmup=0,
                                   measure_memory=False, progress=lambda _: bar.update(1), prime=False)
        extra_seconds = {label: timing.seconds for label, timing in timings.items()}
    bar.close()
    return _ordered(records, spec), extra_seconds


def _ordered(records: list[ImageRecord], spec: CompareSpec) -> list[ImageRecord]:
    order = {m.label: i for i, m in enumerate(spec.methods)}
    seeds = {s: i for i, s in enumerate(spec.seeds)}
    return sorted(records, key=lambda r: (r.prompt_index, seeds[r.seed], order[r.method]))


def _generate_one(pipe: Any, spec: CompareSpec, prompt: str, seed: int, steps: int) -> Image.Image:
    """One image of the comparison (a seam for tests that count generations)."""
    return make_image(pipe, prompt, seed=seed, steps=steps, guidance=spec.guidance, height=spec.height or None,
                      width=spec.width or None)


def _device_of(pipe: Any) -> torch.device:
    device = getattr(pipe, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def save_png(image: Image.Image, path: Path, meta: dict[str, Any], random_note: str | None = None) -> None:
    """Write a PNG atomically (`harness.images.save_image`), with ``meta`` in a text chunk and, for random-weight
    models, the note saying so."""
    save_image(image, path, {_PNG_KEY: json.dumps(meta)} | ({"Comment": random_note} if random_note else {}))


def read_png_meta(path: Path) -> dict[str, Any] | None:
    """The metadata `save_png` wrote, or ``None`` (no file, not ours, unreadable)."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            return json.loads(text[_PNG_KEY]) if _PNG_KEY in text else None
    except (OSError, ValueError, KeyError):
        return None


def _reusable(path: Path, key: str, recorded: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The PNG's metadata when it was made as the image of ``key``, else ``None``. A PNG from before per-image keys
    has its key worked out from the configuration its fingerprint names (``recorded``), when the folder kept it."""
    meta = read_png_meta(path) if path.exists() else None
    if not meta:
        return None
    if "key" in meta:
        return meta if meta["key"] == key else None
    configuration = recorded.get(meta.get("fingerprint"))
    try:
        made_as = image_key(configuration, meta["prompt_index"], meta["seed"], meta["method"])
    except (KeyError, IndexError, TypeError):  # no configuration recorded, or one without this image
        return None
    return meta if made_as == key else None
