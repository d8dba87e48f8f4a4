"""What a benchmark run reports: Markdown tables, JSON and a speed-up plot.

JSON (`write_json`, schema ``turbo-diffusion-bench/1``), top-level keys:

* ``schema``: the string above.
* ``meta``: ``date`` (ISO 8601, local time with offset), ``machine`` (the CUDA device name, or the CPU model with
  torch's thread count), ``cpu``, ``gpu`` (``None`` on CPU runs), ``commit`` (short hash, ``+dirty`` when the
  working tree had changes, ``unknown`` outside git), ``versions`` (turbo_diffusion, diffusers, torch,
  transformers, tomesd or ``None``, python), ``command`` (an equivalent ``turbo-diffusion bench`` command with
  every option spelled out), ``invoked`` (the process's own command line), ``weights`` (``"random weights"`` for
  built-in models, else ``"pretrained"``), ``methods`` (how speed-up, spread, memory, the phase breakdown and
  compilation are measured).
* ``spec``: the `BenchSpec` fields (sizes as ``[height, width]``).
* ``notes``: variants skipped and why.
* ``rows``: one per case and variant, with ``height``, ``width``, ``batch``, ``level`` (latent downsampling of the
  accelerated level), ``grid`` (its token rows and columns), ``variant`` (unique name, e.g. ``turbo@0.5``),
  ``series`` (the name without the ratio), ``family`` (default, turbo, tomesd, todo, bound), ``ratio``,
  ``settings``, ``step`` and ``generation`` (``None`` without ``--steps``), each with ``seconds`` (every timed call),
  ``min``, ``median``, ``max`` (seconds), ``spread`` (max / min), ``noisy`` (spread above ``NOISY_SPREAD``: the
  machine was busy), ``speedup`` (default's min / this min), ``of_bound`` (speed-up / the bound's at the same ratio,
  ``None`` without one), ``peak_mib``, ``peak_total_mib``, ``compile_s`` (seconds of the compiling call) and
  ``recompiles`` (timed calls that compiled again; both ``None`` without ``--compile``); and ``profile`` (Turbo only,
  else ``None``): ``plan``, ``merge``, ``attention``, ``restore`` (shares of one profiled step), ``total_ms``,
  ``clock``.

Non-finite numbers are written as ``"inf"``/``"nan"`` (`turbo_diffusion.harness.output`).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..harness.measure import NOISY_SPREAD, noisy_advice
from ..harness.output import json_safe
from ..harness.output import write_json as write_json_file
from ..model_names import RANDOM_WEIGHTS_NOTE
from .run import BenchResult
from .spec import BenchSpec, flag_methods

SCHEMA = "turbo-diffusion-bench/1"


# -- JSON -------------------------------------------------------------------------------------------------------
def to_json(result: BenchResult) -> dict[str, Any]:
    """The run as a JSON-ready dict (keys in the module docstring; non-finite numbers as ``"inf"``/``"nan"``)."""
    return json_safe({"schema": SCHEMA, "meta": result.meta, "spec": result.spec.to_dict(), "notes": result.notes,
                      "rows": result.rows})


def write_json(result: BenchResult, path: str | os.PathLike) -> None:
    write_json_file(path, to_json(result))


def read_json(path: str | os.PathLike) -> BenchResult:
    """A run written by `write_json`, e.g. to redraw its plot or table. Raises ``ValueError`` for another schema."""
    record = json.loads(Path(path).read_text())
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {record.get('schema')!r} is not {SCHEMA!r}")
    spec = dict(record["spec"])
    spec["sizes"] = tuple(tuple(size) for size in spec["sizes"])
    spec["batches"] = tuple(spec["batches"])
    flags = {key: spec.pop(key) for key in ("ratios", "turbo", "variants", "todo_mode") if key in spec}
    if not spec.get("methods"):  # a record from before methods were bench's only words
        spec["methods"] = flag_methods(**flags)[0]
    spec["methods"] = tuple(spec["methods"])
    return BenchResult(BenchSpec(**spec), record["meta"], record["rows"], record["notes"])


# -- tables -----------------------------------------------------------------------------------------------------
def _px(row: dict[str, Any]) -> str:
    return str(row["height"]) if row["height"] == row["width"] else f"{row['height']}x{row['width']}"


def _seconds(value: float) -> str:
    """Three significant digits, never in exponent form: 14.6, 5.26, 0.0412."""
    digits = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 3
    return f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _measure(key: str, fmt: Callable[[Any], str]) -> Callable[[dict[str, Any], str], str]:
    return lambda row, measure: "" if row[measure][key] is None else fmt(row[measure][key])


def _spread(row: dict[str, Any], measure: str) -> str:
    values = row[measure]
    spread = values.get("spread") or values["max"] / values["min"]  # runs saved before spread was recorded
    return f"{spread:.2f}x" + (" noisy" if spread > NOISY_SPREAD else "")


def _phase(name: str) -> Callable[[dict[str, Any], str], str]:
    return lambda row, measure: _share(row["profile"][name]) if row["profile"] else ""


# Column title -> cell for (row, measure), measure being "step" or "generation".
COLUMNS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "px": lambda row, _: _px(row),
    "batch": lambda row, _: str(row["batch"]),
    "variant": lambda row, _: row["series"],
    "ratio": lambda row, _: "" if row["ratio"] is None else f"{row['ratio']:g}",
    "min s": _measure("min", _seconds),
    "median s": _measure("median", _seconds),
    "max s": _measure("max", _seconds),
    "spread": _spread,
    "speed-up": _measure("speedup", lambda v: f"{v:.3f}x"),
    "of bound": _measure("of_bound", _share),
    "peak MiB": _measure("peak_mib", lambda v: f"{v:.0f}"),
    "compile s": lambda row, measure: _seconds(row[measure]["compile_s"]) if row[measure].get("compile_s") else "",
    "plan": _phase("plan"),
    "merge": _phase("merge"),
    "attention": _phase("attention"),
    "restore": _phase("restore"),
}
STEP_COLUMNS = tuple(c for c in COLUMNS if c != "compile s")
GENERATION_COLUMNS = ("px", "batch", "variant", "ratio", "min s", "median s", "max s", "spread", "speed-up",
                      "of bound", "peak MiB")


def table(result: BenchResult, measure: str = "step", columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``measure`` (``"step"`` or ``"generation"``), one line per case and variant; runs with
    ``--compile`` get a ``compile s`` column after ``peak MiB``."""
    if columns is None:
        columns = STEP_COLUMNS if measure == "step" else GENERATION_COLUMNS
        if result.spec.compile:
            at = columns.index("peak MiB") + 1
            columns = (*columns[:at], "compile s", *columns[at:])
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; known: {list(COLUMNS)}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in result.rows:
        if row[measure] is not None:
            lines.append("| " + " | ".join(COLUMNS[c](row, measure) for c in columns) + " |")
    return "\n".join(lines)


def header(result: BenchResult) -> str:
    """Date, machine, commit, versions, model (with "random weights"), dtype, device, repeats and the command."""
    meta, spec = result.meta, result.spec
    versions = meta["versions"]
    tomesd = f" · tomesd {versions['tomesd']}" if versions.get("tomesd") else ""
    weights = f" ({RANDOM_WEIGHTS_NOTE})" if meta["weights"] == "random weights" else ""
    lines = [
        f"{meta['date']} · {meta['machine']} · commit {meta['commit']}",
        f"turbo_diffusion {versions['turbo_diffusion']} · diffusers {versions['diffusers']} · torch {versions['torch']}"
        f"{tomesd} · python {versions['python']}",
        f"model {spec.model}{weights} · {spec.dtype} · {spec.device} · {spec.repeats} interleaved repeats after "
        f"{spec.warmup} warm-up",
        f"command: {meta['command']}",
    ]
    if meta.get("invoked") and meta["invoked"] != meta["command"]:
        lines.append(f"invoked as: {meta['invoked']}")
    return "\n".join(lines + [f"note: {note}" for note in result.notes])


def format_report(result: BenchResult) -> str:
    """Header, the UNet-step table and, when generations were timed, the generation table."""
    parts = [header(result), "", "### One UNet step", "", table(result, "step")]
    parts += ["", "speed-up: default min / variant min · of bound: speed-up / bound's speed-up at the same ratio · "
                  "plan/merge/attention/restore: share of one profiled step · peak MiB: above memory held before"]
    if any(row["generation"] is not None for row in result.rows):
        parts += ["", f"### Whole generation, {result.spec.steps} steps", "", table(result, "generation")]
    return "\n".join(parts + warnings(result))


def warnings(result: BenchResult) -> list[str]:
    """Lines saying which numbers not to trust, and how to get clean ones."""
    measured = [(row, m) for row in result.rows for m in ("step", "generation") if row[m] is not None]
    noisy = [f"{row['variant']} ({m})" for row, m in measured
             if row[m].get("noisy", row[m]["max"] / row[m]["min"] > NOISY_SPREAD)]
    recompiled = [f"{row['variant']} ({m})" for row, m in measured if row[m].get("recompiles")]
    lines = []
    if noisy:
        lines.append(noisy_advice(noisy, result.spec.repeats))
    elif result.spec.repeats == 1:
        lines.append("one repeat per variant: noise cannot be seen; use --repeats 3 or more.")
    if recompiled:
        lines.append(f"recompiled while timed: {', '.join(recompiled)}; their times include compilation "
                     "(the method changes what torch.compile guards on at every install).")
    return [""] + [f"warning: {line}" for line in lines] if lines else []


# -- plot -------------------------------------------------------------------------------------------------------
def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """PNG of the speed-ups, one panel per case (and measure). With several ratios: speed-up against ratio, one
    line per variant series, the default processor at 1 and the bound dashed. With one ratio: one labelled bar
    per variant. Needs matplotlib (``pip install 'turbo-diffusion[metrics]'``)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    measures = ["step"] + (["generation"] if any(r["generation"] is not None for r in result.rows) else [])
    cases = list(dict.fromkeys((r["height"], r["width"], r["batch"]) for r in result.rows))
    series = list(dict.fromkeys(r["series"] for r in result.rows if r["ratio"] is not None))
    bars = len({r["ratio"] for r in result.rows if r["ratio"] is not None}) == 1
    height = 0.45 * len(series) + 1.6 if bars else 3.6
    fig, axes = plt.subplots(len(measures), len(cases), figsize=(4.5 * len(cases) + 1.5 * bars, height * len(measures)),
                             squeeze=False)
    for i, measure in enumerate(measures):
        for j, (h, w, batch) in enumerate(cases):
            ax = axes[i][j]
            rows = [r for r in result.rows if (r["height"], r["width"], r["batch"]) == (h, w, batch)]
            if bars:
                _bars(ax, [r for r in rows if r["ratio"] is not None], measure)
            else:
                _lines(ax, rows, measure)
            what = "UNet step" if measure == "step" else f"generation, {result.spec.steps} steps"
            ratio = f" · ratio {rows[-1]['ratio']}" if bars else ""
            ax.set_title(f"{h}x{w} px · batch {batch} · {what}{ratio}", fontsize=9)
    if not bars:
        axes[0][0].legend(fontsize=7, loc="best")
    meta = result.meta
    title = (f"{result.spec.model} ({meta['weights']}) · {result.spec.dtype} · {meta['machine']} · "
             f"{meta['date'][:10]} · {meta['commit']}")
    # About 14 characters of 9-point text per inch: wrap so that a one-panel figure shows the whole title.
    fig.suptitle(textwrap.fill(title, width=int(14 * fig.get_figwidth())), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lines(ax: Any, rows: list[dict[str, Any]], measure: str) -> None:
    ax.axhline(1.0, color="black", linewidth=0.8, label="default")
    for series in dict.fromkeys(r["series"] for r in rows if r["ratio"] is not None):
        points = sorted((r["ratio"], r[measure]["speedup"]) for r in rows if r["series"] == series)
        style = dict(linestyle="--", color="gray") if series == "bound" else {}
        ax.plot(*zip(*points, strict=True), marker="o", label=series, **style)
    ax.set_xlabel("ratio")
    ax.set_ylabel("speed-up over default (ratio of minima)")
    ax.grid(alpha=0.3)


def _bars(ax: Any, rows: list[dict[str, Any]], measure: str) -> None:
    colors = ["gray" if r["family"] == "bound" else f"C{k % 10}" for k, r in enumerate(rows)]
    rows, colors = rows[::-1], colors[::-1]  # first variant on top
    speedups = [r[measure]["speedup"] for r in rows]
    ax.barh(range(len(rows)), speedups, color=colors, height=0.6)
    for k, value in enumerate(speedups):
        ax.annotate(f"{value:.3f}x", (value, k), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["series"] for r in rows], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlim(min(0.9, min(speedups) - 0.05), max(speedups) * 1.12)
    ax.set_xlabel("speed-up over default (ratio of minima)")
    ax.grid(axis="x", alpha=0.3)
