"""Methods to compare, written as short strings: ``baseline``, ``turbo@R[:field=value,...]``, ``tome@R[:...]``.

* ``baseline``: the pipeline as loaded, nothing installed.
* ``turbo@0.5:alpha=2,semantic=none``: `apply_turbo` with ``TurboConfig(ratio=0.5, alpha=2, semantic="none")``.
  Any `TurboConfig` field may follow the colon; values are Python literals (``None``, ``True``, ``2.0``), and a
  bare word is a string (``semantic=none`` means ``"none"``).
* ``tome@0.5[:max_downsample=2,...]``: ``tomesd.apply_patch(pipe, ratio=0.5, ...)`` (needs ``pip install tomesd``).

Every method installs itself on the shared pipeline before a generation and uninstalls after it, so methods can
be interleaved image by image on one set of weights and one scheduler.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import TurboConfig, parse_fields, split_top_level
from ..hooks import apply_turbo, remove_turbo

KINDS = ("baseline", "turbo", "tome")
SYNTAX = "baseline, turbo@R[:field=value,...] or tome@R[:field=value,...]"

# tomesd.apply_patch keywords a ``tome@R:...`` method may set (ratio comes after the @).
_TOME_FIELDS = ("max_downsample", "sx", "sy", "use_rand", "merge_attn", "merge_crossattn", "merge_mlp")


class MethodError(ValueError):
    """A method string that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Method:
    """One way to run the pipeline.

    Attributes:
        label: the string as written by the user (spaces removed); names the method everywhere.
        kind: ``"baseline"``, ``"turbo"`` or ``"tome"``.
        ratio: share of tokens merged (``None`` for the baseline).
        fields: further keyword settings, sorted by name (`TurboConfig` fields or tomesd keywords).
    """

    label: str
    kind: str
    ratio: float | None = None
    fields: tuple[tuple[str, Any], ...] = ()

    @property
    def turbo_config(self) -> TurboConfig | None:
        """The `TurboConfig` of a ``turbo`` method, else ``None``."""
        if self.kind != "turbo":
            return None
        return TurboConfig().replace(ratio=self.ratio, **dict(self.fields))

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label (``turbo@0.5:alpha=2`` -> ``turbo-0.5_alpha=2``)."""
        return re.sub(r"[^A-Za-z0-9.=-]+", "_", self.label.replace("@", "-")).strip("_")

    def install(self, pipe: Any) -> None:
        """Switch ``pipe`` to this method (in place)."""
        if self.kind == "turbo":
            apply_turbo(pipe, self.turbo_config)
        elif self.kind == "tome":
            import tomesd

            tomesd.apply_patch(pipe, ratio=self.ratio, **dict(self.fields))

    def uninstall(self, pipe: Any) -> None:
        """Put ``pipe`` back as it was before `install`."""
        if self.kind == "turbo":
            remove_turbo(pipe)
        elif self.kind == "tome":
            import tomesd

            tomesd.remove_patch(pipe)

    def to_dict(self) -> dict[str, Any]:
        """Everything that defines the method, JSON-ready (for the configuration fingerprint and metrics.json)."""
        return {"label": self.label, "kind": self.kind, "ratio": self.ratio, "fields": dict(self.fields)}


def parse_method(text: str) -> Method:
    """Parse one method string (see the module docstring). Raises `MethodError` with a one-line reason."""
    label = re.sub(r"\s+", "", text)
    if label == "baseline":
        return Method(label, "baseline")
    head, _, options = label.partition(":")
    kind, at, ratio_text = head.partition("@")
    if kind not in ("turbo", "tome") or not at:
        raise MethodError(f"unknown method {text!r}: use {SYNTAX}")
    try:
        ratio = float(ratio_text)
    except ValueError:
        raise MethodError(f"{text!r}: the ratio after '@' must be a number, got {ratio_text!r}") from None
    fields = _parse_fields(text, options) if options else {}
    if "ratio" in fields:
        raise MethodError(f"{text!r}: give the ratio after '@' only")
    if kind == "turbo":
        try:
            TurboConfig().replace(ratio=ratio, **fields)  # names unknown fields and lists the known ones
        except (TypeError, ValueError) as err:
            raise MethodError(f"{text!r}: {_one_line(err)}") from None
    else:
        _check_tome(text, ratio, fields)
    return Method(label, kind, ratio, tuple(sorted(fields.items())))


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """Parse a comma-separated list (or a sequence of such lists) of methods.

    A comma also separates a method's ``field=value`` settings, so a piece that looks like ``name=value`` belongs
    to the method before it: ``baseline,turbo@0.5:alpha=2,semantic=none,tome@0.5`` is three methods.
    ``baseline`` is added first when missing, since every fidelity metric compares against it. Duplicate labels
    raise `MethodError`.
    """
    pieces: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        for piece in split_top_level(part):
            piece = piece.strip()
            if not piece:
                continue
            if pieces and re.match(r"^\w+=", piece) and ":" in pieces[-1]:
                pieces[-1] += "," + piece
            else:
                pieces.append(piece)
    if not pieces:
        raise MethodError(f"no methods given: use {SYNTAX}")
    methods = [parse_method(p) for p in pieces]
    labels = [m.label for m in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MethodError(f"method(s) given twice: {', '.join(duplicates)}")
    slugs = [m.slug for m in methods]
    if len(set(slugs)) != len(slugs):
        raise MethodError(f"methods {', '.join(labels)} would share file names; write them differently")
    if "baseline" not in labels:
        methods.insert(0, Method("baseline", "baseline"))
    return methods


def _parse_fields(text: str, options: str) -> dict[str, Any]:
    try:
        return parse_fields(options)
    except ValueError as err:
        raise MethodError(f"{text!r}: settings after ':' must be field=value: {err}") from None


def _check_tome(text: str, ratio: float, fields: dict[str, Any]) -> None:
    if importlib.util.find_spec("tomesd") is None:
        raise MethodError(f"{text!r} needs the tomesd package, which is not installed: pip install tomesd")
    if not 0 <= ratio < 1:
        raise MethodError(f"{text!r}: ratio must be a number in [0, 1), got {ratio!r}")
    unknown = sorted(set(fields) - set(_TOME_FIELDS))
    if unknown:
        raise MethodError(f"{text!r}: unknown tomesd setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(_TOME_FIELDS)}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def method_signature(method: Method) -> dict[str, Any]:
    """What a method does, with defaults filled in: a `TurboConfig` as a dict, or tomesd's keywords."""
    if method.kind == "turbo":
        return dataclasses.asdict(method.turbo_config)
    if method.kind == "tome":
        import tomesd

        params = inspect.signature(tomesd.apply_patch).parameters
        settings = {k: p.default for k, p in params.items() if k in _TOME_FIELDS}
        return {"ratio": method.ratio, **settings, **dict(method.fields)}
    return {}
