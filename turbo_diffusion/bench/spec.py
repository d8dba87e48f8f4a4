"""What one benchmark run measures (`BenchSpec`), checked without importing torch, and the command repeating it."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import TurboConfig, parse_fields, split_top_level
from ..harness.loading import DTYPES
from ..harness.methods import TODO_MODES, parse_methods
from ..model_names import check_model_name

FAMILIES = ("turbo", "tomesd", "todo", "bound")
ATTENTION_KERNELS = ("sdpa", "xformers")
COMPILE_SCOPES = ("unet", "blocks")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon"


@dataclass(frozen=True)
class BenchSpec:
    """What one run measures. `validate` checks it; every problem is a one-line ``ValueError``.

    Attributes:
        model: a built-in name (``sd15-arch``, ``sd21-arch``, ``sdxl-arch``: real architectures with random weights;
            ``tiny``, ``tiny-xl`` for tests), a local folder or a Hub id.
        sizes: image sizes ``(height, width)`` in pixels, multiples of 8. Larger sizes make attention, and so
            merging, matter more.
        batches: UNet batch sizes; 2 is one image with classifier-free guidance.
        ratios: share of tokens removed at the accelerated level, each in ``(0, 1)``; every variant but the default
            runs at each.
        turbo: extra Turbo settings, each ``"field=value,..."`` of `TurboConfig` fields (values are Python literals,
            bare words are strings); each runs at every ratio next to Turbo's default config.
        variants: which of ``turbo``, ``tomesd``, ``todo``, ``bound`` to run (the default processor always runs).
        todo_mode: ``"nearest"`` or ``"avg"`` pooling of the ToDo variant's keys and values.
        methods: instead of ``ratios``, ``turbo`` and ``variants``: the methods to run, in the grammar of
            `turbo_diffusion.harness.methods` (``"turbo@0.5:alpha=2"``, ``"todo@0.7"``...; the baseline is added).
        dtype: ``auto`` (float16 on CUDA, else float32), ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        repeats: timed calls per variant and measure; more makes the minima more reliable and the run longer.
        warmup: untimed calls per variant before timing (at least 1; the first one measures memory).
        steps: denoising steps of the whole-generation measure; 0 times UNet steps only.
        prompt, guidance_scale, seed: of the generations (guidance applies to even batches), and the weights' seed.
        profile: profile one extra step per Turbo variant for the phase breakdown.
        compile: a ``torch.compile`` backend (``"inductor"``, ``"eager"``...) to compile the UNet with, after
            installing each variant; ``None`` runs eagerly. Compilation is timed on its own, before the warm-up.
        compile_scope: ``"unet"`` compiles the whole UNet (`nn.Module.compile`); ``"blocks"`` only its transformer
            blocks (diffusers' ``compile_repeated_blocks``, regional compilation): much shorter compiles, the
            ResNets stay eager.
        compile_mode: ``torch.compile``'s ``mode`` (one of ``COMPILE_MODES``; ``None`` is torch's default):
            ``"reduce-overhead"`` replays CUDA graphs, which removes the launch cost a small step is made of.
        attention: the attention kernel of every variant: ``"sdpa"`` (torch; diffusers' default processor) or
            ``"xformers"`` (CUDA with xformers installed: the baseline gets diffusers' xformers processor, Turbo
            ``backend="xformers"``, tomesd the blocks' processor, ToDo and the bound run xformers inside).
    """

    model: str = "sd15-arch"
    sizes: tuple[tuple[int, int], ...] = ((512, 512),)
    batches: tuple[int, ...] = (1,)
    ratios: tuple[float, ...] = (0.5,)
    turbo: tuple[str, ...] = ()
    variants: tuple[str, ...] = FAMILIES
    todo_mode: str = "nearest"
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    steps: int = 0
    prompt: str = DEFAULT_PROMPT
    guidance_scale: float = 7.5
    seed: int = 0
    profile: bool = True
    methods: tuple[str, ...] = ()
    compile: str | None = None
    compile_scope: str = "unet"
    compile_mode: str | None = None
    attention: str = "sdpa"

    def validate(self) -> BenchSpec:
        """Raise ``ValueError`` (one line) for the first bad value; return ``self``. The device is checked when
        the run starts (that needs torch)."""
        check_model_name(self.model)
        for height, width in self.sizes:
            if height < 8 or width < 8 or height % 8 or width % 8:
                raise ValueError(f"image size {height}x{width}: height and width must be positive multiples of 8 "
                                 "(latent = pixels / 8)")
        _check_all("batch", self.batches, lambda b: isinstance(b, int) and b >= 1, "an integer >= 1")
        _check_all("ratio", self.ratios, lambda r: isinstance(r, float | int) and 0 < r < 1, "a number in (0, 1)")
        unknown = sorted(set(self.variants) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
        if self.turbo and "turbo" not in self.variants:
            raise ValueError("extra Turbo settings given but the turbo variant is not selected")
        for setting in self.turbo:
            parse_turbo_setting(setting)
        if self.methods:
            if self.turbo or self.ratios != (0.5,) or set(self.variants) != set(FAMILIES):
                raise ValueError("give either methods or ratios/variants/Turbo settings, not both")
            parse_methods(self.methods)
        if self.todo_mode not in TODO_MODES:
            raise ValueError(f"todo mode must be one of {', '.join(TODO_MODES)}, got {self.todo_mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_all("repeats", [self.repeats], lambda n: n >= 1, "at least 1")
        _check_all("warmup", [self.warmup], lambda n: n >= 1, "at least 1 (the first warm-up call measures memory)")
        _check_all("steps", [self.steps], lambda n: n >= 0, "0 (UNet steps only) or more")
        _check_all("guidance scale", [self.guidance_scale], lambda g: math.isfinite(g) and g >= 0, "a number >= 0")
        if self.compile is not None and not re.fullmatch(r"[\w.-]+", self.compile):
            raise ValueError(f"compile backend must be a torch.compile backend name, got {self.compile!r}")
        if self.compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile scope must be one of {', '.join(COMPILE_SCOPES)}, got {self.compile_scope!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode is not None and self.compile is None:
            raise ValueError(f"compile mode {self.compile_mode!r} needs --compile")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}, got {self.attention!r}")
        if self.attention == "xformers" and self.device == "cpu":
            raise ValueError("attention='xformers' runs on CUDA only; use --device cuda (or auto on a GPU machine)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(s) for s in v] if k == "sizes" else (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def parse_turbo_setting(spec: str) -> dict[str, Any]:
    """``"semantic=none,alpha=0"`` -> ``{"semantic": "none", "alpha": 0}``, checked against `TurboConfig`.

    Values are Python literals (``None``, ``0.5``, ``True``, ``'text'``); a bare word is a string. Field names
    come from `TurboConfig` itself, so fields added later work unchanged. ``ratio`` is not allowed here: ratios
    are the benchmark's axis. Raises ``ValueError`` with a one-line message.
    """
    try:
        fields = parse_fields(spec)
    except ValueError as err:
        raise ValueError(f"Turbo setting {spec!r}: {err}") from None
    if not fields:
        raise ValueError(f"Turbo setting {spec!r} is empty")
    known = {f.name for f in dataclasses.fields(TurboConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"Turbo setting {spec!r}: unknown field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known - {'ratio'}))}")
    if "ratio" in fields:
        raise ValueError(f"Turbo setting {spec!r}: set ratios with --ratios, not in a Turbo setting")
    try:
        TurboConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Turbo setting {spec!r}: {err}") from None
    return fields


def turbo_series(spec: str) -> str:
    """The label of an extra Turbo setting, e.g. ``"turbo[semantic=none,alpha=0]"`` (spaces removed)."""
    items = [re.sub(r"\s+", "", item) for item in split_top_level(spec)]
    return f"turbo[{','.join(items)}]"


def command_for(spec: BenchSpec, outputs: Sequence[str] = ()) -> str:
    """A ``turbo-diffusion bench`` command that repeats ``spec``, every option spelled out (plus ``outputs``)."""
    sizes = [str(h) if h == w else f"{h}x{w}" for h, w in spec.sizes]
    args = ["turbo-diffusion", "bench", "--model", spec.model, "--sizes", *sizes,
            "--batches", *map(str, spec.batches)]
    if spec.methods:
        args += ["--methods", *spec.methods]
    else:
        args += ["--ratios", *(f"{r:g}" for r in spec.ratios)]
        for setting in spec.turbo:
            args += ["--turbo", setting]
        args += ["--variants", *spec.variants, "--todo-mode", spec.todo_mode]
    args += ["--dtype", spec.dtype, "--device", spec.device, "--repeats", str(spec.repeats), "--warmup",
             str(spec.warmup), "--steps", str(spec.steps)]
    if spec.steps:
        args += ["--prompt", spec.prompt, "--guidance", f"{spec.guidance_scale:g}"]
    args += ["--seed", str(spec.seed)]
    if not spec.profile:
        args.append("--no-profile")
    if spec.compile:
        args += ["--compile", spec.compile]
        if spec.compile_scope != "unet":
            args += ["--compile-scope", spec.compile_scope]
        if spec.compile_mode is not None:
            args += ["--compile-mode", spec.compile_mode]
    if spec.attention != "sdpa":
        args += ["--attention", spec.attention]
    return shlex.join([*args, *outputs])


def _check_all(what: str, values: Any, ok: Callable[[Any], bool], allowed: str) -> None:
    for value in values:
        if isinstance(value, bool) or not ok(value):
            raise ValueError(f"{what} must be {allowed}, got {value!r}")
