"""One method type and one grammar for `generate`, `bench` and `compare`.

    baseline                      the model as loaded (diffusers' default processor); nothing installed
    turbo@R[:field=value,...]     apply_turbo with TurboConfig(ratio=R, field=value, ...)
    tome@R[:field=value,...]      tomesd.apply_patch(model, ratio=R, ...)  (pip install tomesd)
    todo@R[:mode=nearest|avg]     ToDo-style key/value downsampling at the attention level (`processors`)
    bound@R                       the zero-overhead bound: attention on the kept tokens, free gather/scatter

``R`` is the share of tokens removed. Values are Python literals (``None``, ``True``, ``2.0``, ``'text'``) or bare
words (``semantic=none``). Old spellings are aliases with the same meaning: ``default`` is ``baseline``,
``tomesd@R`` is ``tome@R``, ``todo-avg@R`` is ``todo@R:mode=avg`` (likewise ``todo-nearest``), and the names
``bench`` prints, ``turbo[field=value,...]@R``, are ``turbo@R:field=value,...``.

A method installs on a model (a pipeline or its UNet) and uninstalls to exactly what was there, so methods can
take turns call by call on one set of weights. ``todo`` and ``bound`` act on the token grid of the
highest-resolution attention level, which depends on the image size: `Method.at_grid` binds it (the tools do).

Parsing imports neither torch nor diffusers, so the command line checks methods before loading anything.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import TurboConfig, parse_fields, split_top_level
from ..errors import MethodError
from .environment import package_version

KINDS = ("baseline", "turbo", "tome", "todo", "bound")
TODO_MODES = ("nearest", "avg")  # ToDo's pools, as `processors` implements them
SYNTAX = "baseline, turbo@R[:field=value,...], tome@R[:field=value,...], todo@R[:mode=nearest|avg] or bound@R"

# Old spelling -> (kind, settings it implies).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("baseline", {}),
    "tomesd": ("tome", {}),
    "todo-nearest": ("todo", {"mode": "nearest"}),
    "todo-avg": ("todo", {"mode": "avg"}),
}
# tomesd.apply_patch keywords a ``tome@R:...`` method may set (the ratio comes after the @).
TOME_FIELDS = ("max_downsample", "sx", "sy", "use_rand", "merge_attn", "merge_crossattn", "merge_mlp")
# Seed of the generator `install` gives tomesd. Left alone, tomesd forks torch's global generator when a patched
# block first runs, so its random partitions (and images) would depend on whatever the process drew before.
TOMESD_SEED = 0
_GRAMMAR = re.compile(r"(?P<name>[a-z][a-z-]*)(?:\[(?P<bracket>.*)\])?(?:@(?P<ratio>[^:]*))?(?::(?P<options>.*))?",
                      re.DOTALL)
# Processors saved by `install`, per UNet, for `uninstall` (todo and bound swap processors).
_SAVED: weakref.WeakKeyDictionary[Any, list[dict[str, Any]]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Method:
    """One way to run the model (see the module docstring).

    Attributes:
        label: the method as written, spaces removed (``"turbo@0.5:alpha=2"``); names it in reports and files.
        kind: one of ``KINDS``.
        ratio: share of tokens removed at the level the method acts at; ``None`` for the baseline.
        fields: further settings, sorted by name: `TurboConfig` fields, tomesd keywords or ToDo's ``mode``.
        grid: ``(rows, cols)`` token grid of the highest-resolution attention level, where ``todo`` and ``bound``
            act; set by `at_grid`, ignored by equality.
    """

    label: str
    kind: str
    ratio: float | None = None
    fields: tuple[tuple[str, Any], ...] = ()
    grid: tuple[int, int] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The label: what the measurement layer keys timings by."""
        return self.label

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.fields)

    @property
    def meaning(self) -> tuple[str, float | None, str]:
        """What the method does, whatever its spelling: ``default`` and ``baseline`` mean the same."""
        return self.kind, self.ratio, repr(self.fields)

    @property
    def written_settings(self) -> str:
        """The settings as the label writes them (``"semantic=none,alpha=2"``), in their order."""
        match = _GRAMMAR.fullmatch(self.label)
        return ",".join(part for part in (match["bracket"], match["options"]) if part) if match else ""

    @property
    def turbo_config(self) -> TurboConfig | None:
        """The `TurboConfig` of a ``turbo`` method, else ``None``."""
        return TurboConfig(ratio=self.ratio, **self.options) if self.kind == "turbo" else None

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label (``turbo@0.5:alpha=2`` -> ``turbo-0.5_alpha=2``)."""
        return re.sub(r"[^A-Za-z0-9.=-]+", "_", self.label.replace("@", "-")).strip("_")

    def at_grid(self, grid: tuple[int, int]) -> Method:
        """This method bound to the token grid where ``todo`` and ``bound`` act (`levels.pixel_grid` gives it)."""
        return dataclasses.replace(self, grid=(int(grid[0]), int(grid[1])))

    def with_defaults(self, **settings: Any) -> Method:
        """A copy with ``settings`` added where not already set; the label is unchanged (e.g. bench pins
        Turbo's attention kernel with ``backend="sdpa"``)."""
        return dataclasses.replace(self, fields=tuple(sorted({**settings, **self.options}.items())))

    def install(self, model: Any) -> None:
        """Switch ``model`` (a pipeline or a `UNet2DConditionModel`) to this method, in place."""
        if self.kind == "turbo":
            from ..installation import apply_turbo

            apply_turbo(model, self.turbo_config)
        elif self.kind == "tome":
            import tomesd
            import torch

            from ..anatomy import find_unet

            tomesd.apply_patch(model, ratio=self.ratio, **self.options)
            unet = find_unet(model)  # tomesd keeps its state on the UNet it patched
            unet._tome_info["args"]["generator"] = torch.Generator(unet.device).manual_seed(TOMESD_SEED)
        elif self.kind in ("todo", "bound"):
            from ..anatomy import find_unet
            from ..kernels import kernel_of

            unet = find_unet(model)
            saved = unet.attn_processors
            processor = self._processor(kernel_of(saved))  # attention on the kernel of what it replaces
            _SAVED.setdefault(unet, []).append(saved)
            unet.set_attn_processor(processor)

    def uninstall(self, model: Any) -> None:
        """Put ``model`` back exactly as it was before `install` (the same processor objects)."""
        if self.kind == "turbo":
            from ..installation import remove_turbo

            remove_turbo(model)
        elif self.kind == "tome":
            import tomesd

            tomesd.remove_patch(model)
        elif self.kind in ("todo", "bound"):
            from ..anatomy import find_unet

            unet = find_unet(model)
            unet.set_attn_processor(_SAVED[unet].pop())

    def settings(self) -> dict[str, Any]:
        """What the method does, JSON-ready, defaults filled in: the whole `TurboConfig`; tomesd's keywords, version
        and generator seed; ToDo's mode and grids; the bound's token count."""
        if self.kind == "turbo":
            return dataclasses.asdict(self.turbo_config)
        if self.kind == "tome":
            import inspect

            import tomesd

            defaults = {k: p.default for k, p in inspect.signature(tomesd.apply_patch).parameters.items()
                        if k in TOME_FIELDS}
            return {"ratio": self.ratio, **defaults, **self.options,
                    "version": package_version("tomesd") or "unknown",  # tomesd has no __version__: ask its metadata
                    "generator_seed": TOMESD_SEED}
        if self.kind == "todo":
            settings = {"ratio": self.ratio, "mode": self.options.get("mode", "nearest")}
            if self.grid is not None:
                settings |= {"grid": list(self.grid), "kv_grid": list(self._processor().kv_grid)}
            return settings
        if self.kind == "bound":
            return {"ratio": self.ratio} | ({"tokens": self.grid[0] * self.grid[1]} if self.grid else {})
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The method as parsed, JSON-ready: label, kind, ratio and the settings given."""
        return {"label": self.label, "kind": self.kind, "ratio": self.ratio, "fields": self.options}

    def _processor(self, kernel: str = "sdpa") -> Any:
        from .processors import TokenDownsamplingProcessor, ZeroOverheadBoundProcessor

        if self.grid is None:
            raise ValueError(f"{self.label} acts on one attention level: bind its token grid with at_grid first")
        if self.kind == "todo":
            return TokenDownsamplingProcessor(self.ratio, self.grid, self.options.get("mode", "nearest"), kernel)
        return ZeroOverheadBoundProcessor(self.ratio, self.grid[0] * self.grid[1], kernel)


BASELINE = Method("baseline", "baseline")


def make_method(kind: str, ratio: float | None = None, **fields: Any) -> Method:
    """The method of ``kind`` (one of ``KINDS``) at ``ratio`` with ``fields``, checked as `parse_method` checks
    text and labelled as it would be written: ``make_method("turbo", 0.5, alpha=2)`` is ``turbo@0.5:alpha=2``."""
    label = kind if ratio is None else f"{kind}@{ratio_text(ratio)}"
    if fields:
        label += ":" + ",".join(f"{k}={v if isinstance(v, str) and v.isidentifier() else repr(v)}"
                                for k, v in fields.items())
    if kind not in KINDS:
        raise MethodError(f"unknown method {label!r}: use {SYNTAX}")
    return _checked(label, kind, ratio, fields)


def ratio_text(value: float) -> str:
    """``0.5`` -> ``"0.5"``; the shortest text that reads back as the same number."""
    short = format(value, "g")
    return short if float(short) == value else repr(float(value))


def parse_method(text: str) -> Method:
    """Parse one method string (see the module docstring). Raises `MethodError` with a one-line reason."""
    label = re.sub(r"\s+", "", text)
    match = _GRAMMAR.fullmatch(label)
    kind, implied = ALIASES.get(match["name"], (match["name"], {})) if match else ("", {})
    if kind not in KINDS:
        raise MethodError(f"unknown method {text!r}: use {SYNTAX}")
    fields = dict(implied)
    for name, value in _parse_options(text, Method(label, kind).written_settings).items():
        if name in fields and fields[name] != value:
            raise MethodError(f"{text!r}: {name} given twice")
        fields[name] = value
    try:
        ratio = None if match["ratio"] is None else float(match["ratio"])
    except ValueError:
        raise MethodError(f"{text!r}: the ratio after '@' must be a number, got {match['ratio']!r}") from None
    return _checked(text, kind, ratio, fields, label)


def _checked(text: str, kind: str, ratio: float | None, fields: dict[str, Any], label: str = "") -> Method:
    """The method, once its ratio and settings are known to fit ``kind``; ``text`` names it in errors."""
    if kind == "baseline":
        if ratio is not None or fields:
            raise MethodError(f"{text!r}: the baseline takes no ratio and no settings")
        return Method(label or text, "baseline")
    if ratio is None:
        raise MethodError(f"{text!r}: give the share of tokens removed after '@', e.g. {kind}@0.5")
    low_open = kind == "todo"  # ToDo removes some key/value tokens or it is not ToDo
    if not ((0 < ratio) if low_open else (0 <= ratio)) or not ratio < 1:
        raise MethodError(f"{text!r}: ratio must be a number in {'(0' if low_open else '[0'}, 1), got {ratio:g}")
    if "ratio" in fields:
        raise MethodError(f"{text!r}: give the ratio after '@' only")
    _check_fields(text, kind, ratio, fields)
    return Method(label or text, kind, float(ratio), tuple(sorted(fields.items())))


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """Parse a comma-separated list (or a sequence of such lists) of methods; the baseline comes first.

    A comma also separates a method's ``field=value`` settings, so a piece that looks like ``name=value`` belongs
    to the method before it: ``baseline,turbo@0.5:alpha=2,semantic=none,tome@0.5`` is three methods. The
    baseline is added when missing (every speed-up and fidelity number compares with it). Two methods with the
    same meaning (``baseline,default``), or whose labels would share file names, raise `MethodError`.
    """
    pieces: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        for piece in split_top_level(part):
            piece = piece.strip()
            if pieces and re.match(r"^\w+=", piece) and ":" in pieces[-1]:
                pieces[-1] += "," + piece
            elif piece:
                pieces.append(piece)
    if not pieces:
        raise MethodError(f"no methods given: use {SYNTAX}")
    methods, seen = [], {}
    for method in map(parse_method, pieces):
        if method.meaning in seen:
            raise MethodError(f"method given twice: {seen[method.meaning]} and {method.label} mean the same")
        seen[method.meaning] = method.label
        methods.append(method)
    slugs = [m.slug for m in methods]
    if len(set(slugs)) != len(slugs):
        raise MethodError(f"methods {', '.join(m.label for m in methods)} would share file names; write them "
                          "differently")
    baseline = next((m for m in methods if m.kind == "baseline"), BASELINE)
    return [baseline] + [m for m in methods if m.kind != "baseline"]


def _parse_options(text: str, options: str) -> dict[str, Any]:
    try:
        return parse_fields(options) if options else {}
    except ValueError as err:
        raise MethodError(f"{text!r}: settings must be field=value: {err}") from None


def _check_fields(text: str, kind: str, ratio: float, fields: dict[str, Any]) -> None:
    if kind == "turbo":
        try:
            TurboConfig(ratio=ratio).replace(**fields)  # names unknown fields and lists the known ones
        except (TypeError, ValueError) as err:
            raise MethodError(f"{text!r}: {' '.join(str(err).split())}") from None
        return
    if kind == "tome" and importlib.util.find_spec("tomesd") is None:
        raise MethodError(f"{text!r} needs the tomesd package, which is not installed: pip install tomesd")
    known = {"tome": TOME_FIELDS, "todo": ("mode",), "bound": ()}[kind]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise MethodError(f"{text!r}: unknown {kind} setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known) or 'none'}")
    if kind == "todo" and fields.get("mode", "nearest") not in TODO_MODES:
        raise MethodError(f"{text!r}: mode must be one of {', '.join(TODO_MODES)}, got {fields['mode']!r}")
