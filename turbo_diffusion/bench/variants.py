"""Methods as `bench` names them: one row of the tables and JSON per `Variant`.

The methods themselves (install, uninstall, grammar, the ToDo and bound processors) live in
`turbo_diffusion.harness`; a variant adds the names bench has always printed, so recorded runs stay comparable:
``default`` (the baseline), ``turbo``, ``turbo[field=value,...]``, ``tomesd``, ``todo-nearest``/``todo-avg`` and
``bound``, each followed by ``@ratio``. Every one of these names parses back to its method
(`turbo_diffusion.harness.methods.parse_method`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..harness.methods import BASELINE, Method, make_method
from ..harness.processors import (  # noqa: F401 (bench's names for them)
    TokenDownsamplingProcessor,
    ZeroOverheadBoundProcessor,
    attention_level,
    level_grid,
)

FAMILIES = {"baseline": "default", "turbo": "turbo", "tome": "tomesd", "todo": "todo", "bound": "bound"}


@dataclass
class Variant:
    """A way to run the UNet, as a bench row.

    Attributes:
        name: unique within a run, e.g. ``"turbo[alpha=0]@0.5"``; keys the timings.
        install: changes the model (a pipeline or a `UNet2DConditionModel`) in place.
        uninstall: restores it exactly.
        series: the name without the ratio (one line of the speed-up plot); defaults to ``name``.
        ratio: share of tokens the variant removes at its level, ``None`` for the default processor.
        family: ``"default"``, ``"turbo"``, ``"tomesd"``, ``"todo"`` or ``"bound"``.
        settings: the variant's own parameters, as recorded in the JSON.
    """

    name: str
    install: Callable[[Any], None]
    uninstall: Callable[[Any], None]
    series: str = ""
    ratio: float | None = None
    family: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.series = self.series or self.name
        self.family = self.family or self.series

    @classmethod
    def of(cls, method: Method, series: str = "") -> Variant:
        """``method`` (bound to its grid where it needs one) under bench's name: ``series`` or `bench_series`."""
        series = series or bench_series(method)
        return cls(variant_name(series, method.ratio), method.install, method.uninstall, series, method.ratio,
                   FAMILIES[method.kind], method.settings())


def bench_series(method: Method) -> str:
    """Bench's name of ``method`` without the ratio: ``default``, ``turbo``, ``turbo[alpha=0]``, ``tomesd``,
    ``todo-nearest``, ``bound``... (settings as written in the method's label)."""
    if method.kind == "todo":
        return f"todo-{method.options.get('mode', 'nearest')}"
    if method.kind == "turbo" and method.written_settings:
        return f"turbo[{method.written_settings}]"
    return FAMILIES[method.kind]


def variant_name(series: str, ratio: float | None) -> str:
    """``"turbo"``, 0.5 -> ``"turbo@0.5"``; no ratio -> the series alone."""
    return series if ratio is None else f"{series}@{ratio:g}"


def default_variant() -> Variant:
    """The model as built (diffusers' default processor, `AttnProcessor2_0`): the speed-up baseline."""
    return Variant.of(BASELINE)


def turbo_variant(ratio: float, series: str = "turbo", **fields: Any) -> Variant:
    """Turbo through `apply_turbo` at ``ratio`` with any other `TurboConfig` ``fields``. On a pipeline it is
    installed on the pipeline (so ``semantic="text"`` sees the prompt), else on the UNet."""
    return Variant.of(make_method("turbo", ratio, **fields), series)


def tomesd_variant(ratio: float, series: str = "tomesd") -> Variant | None:
    """tomesd with its defaults at ``ratio``, or ``None`` when tomesd is not installed."""
    try:
        import tomesd  # noqa: F401
    except ImportError:
        return None
    return Variant.of(make_method("tome", ratio), series)


def todo_variant(ratio: float, grid: tuple[int, int], mode: str = "nearest", series: str = "") -> Variant:
    """ToDo-style key/value downsampling (`TokenDownsamplingProcessor`) at the level whose token grid is ``grid``."""
    TokenDownsamplingProcessor(ratio, grid, mode)  # validates the arguments with its own messages
    return Variant.of(make_method("todo", ratio, mode=mode).at_grid(grid), series)


def bound_variant(ratio: float, latent_tokens: int, series: str = "bound") -> Variant:
    """The zero-overhead bound at the level with ``latent_tokens`` tokens (`ZeroOverheadBoundProcessor`)."""
    # The bound only counts tokens: a one-row grid of that many is the same level.
    return Variant.of(make_method("bound", ratio).at_grid((1, latent_tokens)), series)
