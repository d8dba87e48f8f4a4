"""Outputs of `compare`: a labelled grid per prompt, a speed-vs-fidelity plot, metrics.json/.csv, report.md/.html."""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..harness.output import atomic_write_text
from ..harness.output import write_json as write_json_file
from .results import BUILTIN_SCORES, SPEED_NOTE, CompareResult, MethodSummary
from .runner import save_png

MAX_GRIDS_IN_REPORT = 24
PLOT_FILE = "speed_vs_quality.png"
_PAD = 4
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_WARNING_INK = (170, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where things are in a grid image: a title band, a band of column labels, a column of row labels, and
    ``rows x columns`` cells of ``cell_width x cell_height`` pixels, with no gaps, starting at ``(left, top)``."""

    columns: int
    rows: int
    cell_width: int
    cell_height: int
    left: int
    top: int

    @property
    def size(self) -> tuple[int, int]:
        return self.left + self.columns * self.cell_width, self.top + self.rows * self.cell_height

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """The ``(left, upper, right, lower)`` box of a cell, for ``Image.crop``."""
        x, y = self.left + column * self.cell_width, self.top + row * self.cell_height
        return x, y, x + self.cell_width, y + self.cell_height


def make_grid(cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str],
              title: str = "", warning: str = "") -> tuple[Image.Image, GridLayout]:
    """Images side by side: one row per entry of ``cells``, labelled columns and rows, a title and an optional
    warning line (drawn in red) above. Every cell must have the size of the first."""
    font = ImageFont.load_default()
    cell_w, cell_h = cells[0][0].size
    line_h = _text_height(font) + 2
    row_label_w = max(_text_width(font, label) for label in row_labels) + 2 * _PAD
    columns = len(column_labels)
    total_w = row_label_w + columns * cell_w
    title_lines = _wrap(title, font, total_w - 2 * _PAD) if title else []
    warning_lines = _wrap(warning, font, total_w - 2 * _PAD) if warning else []
    label_lines = [_wrap(label, font, cell_w - 2 * _PAD) for label in column_labels]
    header_h = max(len(lines) for lines in label_lines) * line_h + 2 * _PAD
    top = (len(title_lines) + len(warning_lines)) * line_h + header_h + (_PAD if title_lines or warning_lines else 0)
    layout = GridLayout(columns, len(cells), cell_w, cell_h, row_label_w, top)

    grid = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    y = _PAD
    for line, ink in [(t, _INK) for t in title_lines] + [(w, _WARNING_INK) for w in warning_lines]:
        draw.text((_PAD, y), line, fill=ink, font=font)
        y += line_h
    for c, lines in enumerate(label_lines):
        for i, line in enumerate(lines):
            draw.text((row_label_w + c * cell_w + _PAD, top - header_h + _PAD + i * line_h), line, fill=_INK, font=font)
    for r, row in enumerate(cells):
        draw.text((_PAD, top + r * cell_h + _PAD), row_labels[r], fill=_INK, font=font)
        for c, image in enumerate(row):
            if image.size != (cell_w, cell_h):
                raise ValueError(f"grid cells differ in size: {image.size} vs {(cell_w, cell_h)}")
            grid.paste(image.convert("RGB"), layout.cell_box(r, c)[:2])
    return grid, layout


def write_grids(result: CompareResult, random_note: str | None) -> list[str]:
    """One grid per prompt in ``grids/``: a column per method, a row per seed. Returns their relative paths."""
    config = result.configuration
    labels = [m["label"] for m in config["methods"]]
    seeds = config["seeds"]
    index = {(r.method, r.prompt_index, r.seed): r for r in result.images}
    prompt_indices = sorted({r.prompt_index for r in result.images})
    width = max(4, len(str(len(config["prompts"]) - 1)))
    paths = []
    for p in prompt_indices:
        cells = []
        for seed in seeds:
            row = []
            for label in labels:
                with Image.open(result.out_dir / index[(label, p, seed)].path) as image:
                    row.append(image.convert("RGB"))
            cells.append(row)
        warning = _headline(random_note) if random_note else ""
        grid, _ = make_grid(cells, labels, [f"seed {s}" for s in seeds], f"{p}: {config['prompts'][p]}", warning)
        rel = f"grids/{p:0{width}d}.png"
        save_png(grid, result.out_dir / rel, {"prompt_index": p, "columns": labels, "rows": seeds}, random_note)
        paths.append(rel)
    return paths


def write_plot(result: CompareResult, random_note: str | None) -> str:
    """Speed-up against PSNR and SSIM (and LPIPS when measured), one labelled point per method. Returns the
    relative path; raises ``ImportError`` without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("psnr", "PSNR vs baseline (dB, higher = closer)"), ("ssim", "SSIM vs baseline (higher = closer)")]
    if any(m.lpips is not None for m in result.methods):
        panels.append(("lpips", "LPIPS vs baseline (lower = closer)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for i, m in enumerate(result.methods):
            value = getattr(m, key)
            if m.speedup is None or value is None or not math.isfinite(value):
                continue  # e.g. the baseline's infinite PSNR
            ax.scatter([m.speedup], [value], color=f"C{i % 10}")
            ax.annotate(m.method, (m.speedup, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("speed-up over baseline (indicative; see report)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    title = f"{result.configuration['model']}: speed vs fidelity to the baseline"
    if random_note:
        title += (f"\n{_headline(random_note)}."
                  "\nFidelity here is agreement between noise images, not image quality.")
    fig.suptitle(title, fontsize=9, color="darkred" if random_note else "black")
    fig.tight_layout()
    fig.savefig(result.out_dir / PLOT_FILE, dpi=100)
    plt.close(fig)
    return PLOT_FILE


def write_json(result: CompareResult) -> None:
    write_json_file(result.out_dir / "metrics.json", result.to_json())


CSV_COLUMNS = ("method", "kind", "images", "seconds_per_image", "speedup", "timed_runs", "spread", "noisy",
               "peak_memory_mb", "psnr_db",
               "identical", "ssim", "lpips", "clip_score", "fid", "random_weights")


def write_csv(result: CompareResult) -> None:
    """One row per method, custom scorers' numbers after the built-in columns. Empty cells: not measured (see
    metrics.json's ``skipped``); ``inf``: identical."""
    extra = _extra_scores(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, *extra])
    for m in result.methods:
        writer.writerow([m.method, m.kind, m.images, _num(m.seconds_per_image, 4), _num(m.speedup, 3),
                         m.timed_runs, _num(m.spread, 3), m.noisy, _num(_mb(m.peak_memory_bytes), 1),
                         _num(m.psnr, 3), m.identical, _num(m.ssim, 4),
                         _num(m.lpips, 4), _num(m.clip_score, 3), _num(m.fid, 3), result.random_weights,
                         *(_num(m.scores.get(name), 4) for name in extra)])
    atomic_write_text(result.out_dir / "metrics.csv", buffer.getvalue())


def _extra_scores(result: CompareResult) -> list[str]:
    """Numbers of custom scorers, in the order first seen."""
    return [name for name in result.score_names if name not in BUILTIN_SCORES]


# ---- markdown and HTML -------------------------------------------------------------------------------------


TABLE_HEADER = ("method", "images", "s / image (median)", "speed-up", "spread (runs)", "peak memory (MB)", "PSNR (dB)",
                "SSIM",
                "LPIPS", "CLIP score", "FID")


def table_header(result: CompareResult) -> list[str]:
    """`TABLE_HEADER` and a column per custom scorer number."""
    return [*TABLE_HEADER, *_extra_scores(result)]


def table_rows(result: CompareResult) -> list[list[str]]:
    """The summary table as text cells ("skipped" for a metric that did not run, "n/a" where it does not apply)."""
    extra = _extra_scores(result)
    rows = []
    skipped = result.skipped
    for m in result.methods:
        psnr = "inf (identical)" if m.psnr is not None and math.isinf(m.psnr) else _num(m.psnr, 2)
        if m.psnr is not None and m.identical and not math.isinf(m.psnr):
            psnr += f" ({m.identical} identical)"
        fid = _num(m.fid, 2)
        if m.fid is None and result.fid and m.method in result.fid.get("not_applicable", []):
            fid = "n/a (reference)"
        rows.append([
            m.method, str(m.images), _num(m.seconds_per_image, 3), _num(m.speedup, 2) + ("x" if m.speedup else ""),
            _spread(m),
            _num(_mb(m.peak_memory_bytes), 0) or "not measured", psnr, _num(m.ssim, 4),
            _num(m.lpips, 4) if "lpips" not in skipped else "skipped",
            _num(m.clip_score, 2) if "clip_score" not in skipped else "skipped",
            fid if "fid" not in skipped else "skipped",
            *(_num(m.scores.get(name), 4) for name in extra),
        ])
    return rows


def _spread(m: MethodSummary) -> str:
    """``"1.04x (3)"``: slowest over fastest timed run and the number of runs; ``noisy`` when above the limit."""
    if m.spread is None:
        return f"- ({m.timed_runs})"
    return f"{m.spread:.2f}x ({m.timed_runs})" + (" noisy" if m.noisy else "")


def _intro(result: CompareResult, random_note: str | None) -> tuple[list[str], list[str]]:
    """(warnings, facts): the lines both reports open with."""
    config = result.configuration
    warnings = []
    if random_note:
        warnings.append(f"{_headline(random_note)}. The fidelity columns below measure how much each method "
                        "changes noise images, not image quality. Run a real model to judge quality.")
    height, width = config.get("size") or (config["height"], config["width"])
    size = f"{width}x{height} px" if height else "the model's default size"
    facts = [
        f"Model: {config['model']}; {len(config['prompts'])} prompt(s)"
        + (f" (preset {config['preset']})" if config["preset"] else "")
        + f" x {len(config['seeds'])} seed(s) {config['seeds']}; {config['steps']} steps, guidance "
        f"{config['guidance']}, {size}, {config['dtype']} on {result.device}"
        + (f", scheduler {config['scheduler']}" if config.get("scheduler") else "") + ".",
        "Every method used the same pipeline, scheduler and seeds. PSNR, SSIM and LPIPS compare each image with "
        "the baseline image of the same prompt and seed; CLIP score compares it with its prompt.",
        SPEED_NOTE,
    ]
    if result.fid:
        facts.append(f"FID: {result.fid['description']}.")
    facts.extend(result.notes)
    return warnings, facts


def write_markdown(result: CompareResult, grids: Sequence[str], plot: str | None, random_note: str | None) -> None:
    warnings, facts = _intro(result, random_note)
    lines = [f"# turbo-diffusion compare: {result.configuration['model']}", ""]
    lines += [f"> **{w}**" for w in warnings] + ([""] if warnings else [])
    lines += facts + [""]
    header = table_header(result)
    lines += ["## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(result)]
    lines += [""] + [f"- {name}: skipped. {reason}" for name, reason in _skipped_lines(result)] + [""]
    if plot:
        lines += ["## Speed vs fidelity", "", f"![speed vs fidelity]({plot})", ""]
    lines += ["## Grids", "", "Columns: methods; rows: seeds."
              + (f" {_headline(random_note)}." if random_note else ""), ""]
    for rel in grids[:MAX_GRIDS_IN_REPORT]:
        lines += [f"![grid {Path(rel).stem}]({rel})", ""]
    if len(grids) > MAX_GRIDS_IN_REPORT:
        lines += [f"{len(grids) - MAX_GRIDS_IN_REPORT} more grids are in grids/.", ""]
    atomic_write_text(result.out_dir / "report.md", "\n".join(lines))


def write_html(result: CompareResult, grids: Sequence[str], plot: str | None, random_note: str | None) -> None:
    warnings, facts = _intro(result, random_note)
    e = html.escape
    parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
             f"<title>turbo-diffusion compare: {e(result.configuration['model'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             ".warning{color:#a00;font-weight:bold}img{max-width:100%}</style></head><body>",
             f"<h1>turbo-diffusion compare: {e(result.configuration['model'])}</h1>"]
    parts += [f"<p class='warning'>{_html(w)}</p>" for w in warnings]
    parts += [f"<p>{_html(f)}</p>" for f in facts]
    parts += ["<h2>Results</h2>", "<table>",
              "<tr>" + "".join(f"<th>{e(h)}</th>" for h in table_header(result)) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table_rows(result)]
    parts += ["</table>", "<ul>"] + [f"<li>{e(n)}: skipped. {e(r)}</li>" for n, r in _skipped_lines(result)]
    parts += ["</ul>"]
    if plot:
        parts += ["<h2>Speed vs fidelity</h2>", f"<img src='{e(plot)}' alt='speed vs fidelity'>"]
    parts += ["<h2>Grids</h2>", "<p>Columns: methods; rows: seeds."
              + (f" <span class='warning'>{e(_headline(random_note))}.</span>" if random_note else "") + "</p>"]
    parts += [f"<p><img src='{e(rel)}' alt='grid {e(Path(rel).stem)}'></p>" for rel in grids[:MAX_GRIDS_IN_REPORT]]
    if len(grids) > MAX_GRIDS_IN_REPORT:
        parts.append(f"<p>{len(grids) - MAX_GRIDS_IN_REPORT} more grids are in grids/.</p>")
    parts.append("</body></html>")
    atomic_write_text(result.out_dir / "report.html", "\n".join(parts) + "\n")


def _html(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> (the facts are written for both reports)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_METRIC_NAMES = {"lpips": "LPIPS", "clip_score": "CLIP score", "fid": "FID", "plot": "speed-vs-quality plot"}


def _headline(note: str) -> str:
    """The random-weights note, word for word, as a warning."""
    return f"Warning, {note}"


def _skipped_lines(result: CompareResult) -> list[tuple[str, str]]:
    return [(_METRIC_NAMES.get(k, k), reason) for k, reason in result.skipped.items()]


def _text_width(font, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Hg")
    return bottom


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy wrap after spaces, commas and colons (so ``turbo@0.5:alpha=2`` breaks at the colon), cutting a
    piece that alone exceeds ``width``."""
    lines: list[str] = []
    current = ""
    for piece in re.findall(r"[^ ,:]+[ ,:]?|[ ,:]", text):
        if _text_width(font, (current + piece).rstrip()) <= width:
            current += piece
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = ""
        while _text_width(font, piece.rstrip()) > width and len(piece) > 1:
            cut = 1
            while cut < len(piece) - 1 and _text_width(font, piece[: cut + 1]) <= width:
                cut += 1
            lines.append(piece[:cut])
            piece = piece[cut:]
        current = piece
    if current.strip():
        lines.append(current.rstrip())
    return lines or [""]


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20

