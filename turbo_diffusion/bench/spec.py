"""What one benchmark run measures (`BenchSpec`), checked without importing torch, and the command repeating it.

A spec speaks only methods (`turbo_diffusion.harness.methods`). The command line's older flags (``--ratios``,
``--variants``, ``--turbo``, ``--todo-mode``) are spelled as methods by `flag_methods`, the one place that knows
them (records saved before ``methods`` was the only field are read through it too).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..harness.loading import DTYPES
from ..harness.methods import Method, parse_method, parse_methods, ratio_text
from ..model_names import check_model_name

# Bench's name of each kind of method, kept from its first runs so that recorded rows stay comparable; all but
# the default are the families --variants names, in the order bench runs them at each ratio.
FAMILIES = {"baseline": "default", "turbo": "turbo", "tome": "tomesd", "todo": "todo", "bound": "bound"}
VARIANTS = tuple(FAMILIES.values())[1:]
ATTENTION_KERNELS = ("sdpa", "xformers")
COMPILE_SCOPES = ("unet", "blocks")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon"


@dataclass(frozen=True)
class BenchSpec:
    """What one run measures. `validate` checks it; every problem is a one-line `UsageError`.

    Attributes:
        model: a built-in name (``sd15-arch``, ``sd21-arch``, ``sdxl-arch``: real architectures with random weights;
            ``tiny``, ``tiny-xl`` for tests), a local folder or a Hub id.
        sizes: image sizes ``(height, width)`` in pixels, multiples of 8. Larger sizes make attention, and so
            merging, matter more.
        batches: UNet batch sizes; 2 is one image with classifier-free guidance.
        methods: the methods to run, in the grammar of `turbo_diffusion.harness.methods` (``"turbo@0.5:alpha=2"``,
            ``"todo@0.7"``...; the baseline is added). `flag_methods` spells the command line's older flags so.
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
    methods: tuple[str, ...] = ("turbo@0.5",)
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    steps: int = 0
    prompt: str = DEFAULT_PROMPT
    guidance_scale: float = 7.5
    seed: int = 0
    profile: bool = True
    compile: str | None = None
    compile_scope: str = "unet"
    compile_mode: str | None = None
    attention: str = "sdpa"

    @functools.cached_property
    def parsed_methods(self) -> list[Method]:
        """The methods, parsed once, the baseline first; `MethodError` for a bad one."""
        return parse_methods(self.methods)

    @property
    def ratios(self) -> tuple[float, ...]:
        """The ratios the methods run at, in their order (the axis of the speed-up plot)."""
        return tuple(dict.fromkeys(m.ratio for m in self.parsed_methods if m.ratio is not None))

    def validate(self) -> BenchSpec:
        """Raise `UsageError` (one line) for the first bad value; return ``self``. The device is checked when
        the run starts (that needs torch)."""
        check_model_name(self.model)
        for height, width in self.sizes:
            if height < 8 or width < 8 or height % 8 or width % 8:
                raise UsageError(f"image size {height}x{width}: height and width must be positive multiples of 8 "
                                 "(latent = pixels / 8)")
        _check_all("batch", self.batches, lambda b: isinstance(b, int) and b >= 1, "an integer >= 1")
        self.parsed_methods  # noqa: B018 (parsing checks them)
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_all("repeats", [self.repeats], lambda n: n >= 1, "at least 1")
        _check_all("warmup", [self.warmup], lambda n: n >= 1, "at least 1 (the first warm-up call measures memory)")
        _check_all("steps", [self.steps], lambda n: n >= 0, "0 (UNet steps only) or more")
        _check_all("guidance scale", [self.guidance_scale], lambda g: math.isfinite(g) and g >= 0, "a number >= 0")
        if self.compile is not None and not re.fullmatch(r"[\w.-]+", self.compile):
            raise UsageError(f"compile backend must be a torch.compile backend name, got {self.compile!r}")
        if self.compile_scope not in COMPILE_SCOPES:
            raise UsageError(f"compile scope must be one of {', '.join(COMPILE_SCOPES)}, got {self.compile_scope!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise UsageError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode is not None and self.compile is None:
            raise UsageError(f"compile mode {self.compile_mode!r} needs --compile")
        if self.attention not in ATTENTION_KERNELS:
            raise UsageError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}, got {self.attention!r}")
        if self.attention == "xformers" and self.device == "cpu":
            raise UsageError("attention='xformers' runs on CUDA only; use --device cuda (or auto on a GPU machine)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(s) for s in v] if k == "sizes" else (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def flag_methods(
    ratios: Sequence[float] = (0.5,),
    turbo: Sequence[str] = (),
    variants: Sequence[str] = VARIANTS,
    todo_mode: str = "nearest",
    tomesd_installed: bool = True,
) -> tuple[list[str], list[str]]:
    """The methods the older flags ask for, in bench's order (at each ratio: Turbo, each extra Turbo setting,
    tomesd, ToDo, the bound), and notes on what was left out (tomesd when it is not installed).

    ``turbo`` settings are ``"field=value,..."`` of `TurboConfig` (``alpha=0`` and ``alpha = 0`` are one); they
    become ``turbo@R:field=value,...``, which bench labels ``turbo[field=value,...]@R`` as it always has. Raises
    `UsageError` (one line) for a bad ratio or setting.
    """
    _check_all("ratio", ratios, lambda r: isinstance(r, float | int) and 0 < r < 1, "a number in (0, 1)")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if turbo and "turbo" not in variants:
        raise UsageError("extra Turbo settings given but the turbo variant is not selected")
    settings = list(dict.fromkeys(re.sub(r"\s+", "", setting) for setting in turbo))
    for setting in settings:
        if not setting:
            raise UsageError("a --turbo setting is empty")
        if re.search(r"(^|,)ratio=", setting):
            raise UsageError(f"Turbo setting {setting!r}: set ratios with --ratios, not in a Turbo setting")
        parse_method(f"turbo@0.5:{setting}")  # on its own: in a list, a piece without '=' would read as a method
    notes = []
    if "tomesd" in variants and not tomesd_installed:
        notes.append("tomesd is not installed (pip install tomesd): its variant was skipped")
    per_ratio = {
        "turbo": lambda r: [f"turbo@{r}"] + [f"turbo@{r}:{setting}" for setting in settings],
        "tomesd": lambda r: [f"tomesd@{r}"] if tomesd_installed else [],
        "todo": lambda r: [f"todo-{todo_mode}@{r}"],
        "bound": lambda r: [f"bound@{r}"],
    }
    methods = [m for r in map(ratio_text, ratios) for family in VARIANTS if family in variants
               for m in per_ratio[family](r)]
    return methods or ["baseline"], notes


def command_for(spec: BenchSpec, outputs: Sequence[str] = (), chosen_by: Sequence[str] = ()) -> str:
    """A ``turbo-diffusion bench`` command that repeats ``spec``, every option spelled out (plus ``outputs``).
    ``chosen_by``: the options that chose the methods, when not ``--methods`` (the older flags, as given)."""
    sizes = [str(h) if h == w else f"{h}x{w}" for h, w in spec.sizes]
    args = ["turbo-diffusion", "bench", "--model", spec.model, "--sizes", *sizes,
            "--batches", *map(str, spec.batches)]
    args += list(chosen_by) or ["--methods", *spec.methods]
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
            raise UsageError(f"{what} must be {allowed}, got {value!r}")
