"""The demo page (Gradio Blocks): settings on the left; on the right a *Compare* tab (baseline and Turbo side by
side, with times, speed-up, PSNR and SSIM, and what Turbo merged) and a *Sweep* tab (ratios 0, 0.3, 0.5 and 0.7 in a
row). `build_app` makes the page around a `DemoSession`; `launch` loads the model and serves it on 127.0.0.1.

Requests that generate share one queue slot (``concurrency_id="pipeline"``, limit 1) and the session's lock, so two
tabs take turns. Every per-tab result lives in ``gr.State``, never in the session.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: this machine may have no network

import gradio as gr  # noqa: E402

from ..config import DOWNSAMPLES, SEMANTICS  # noqa: E402
from ..harness.measure import Timing, busy_warning, noisy_advice  # noqa: E402
from .session import Comparison, DemoSession, Progress, SweepImage, format_psnr  # noqa: E402
from .settings import MAX_RATIO, MAX_STEPS, SIZE_RANGE, SWEEP_RATIOS, Settings, from_page  # noqa: E402
from .visuals import blocks_of, describe, heat_map, merge_overlay, pick  # noqa: E402

HOST = "127.0.0.1"
DEMO_REPEATS_FLAG = "turbo-diffusion demo --repeats"
TITLE = "Turbo token merging: side by side"
# System fonts only: the page must not wait on a font server it cannot reach.
# Small images (64 or 128 px) are shown at least as large as the 256 px maps, pixels kept sharp.
CSS = ("#baseline-image img, #turbo-image img { min-width: 256px; min-height: 256px; max-width: 100%; "
       "object-fit: contain; image-rendering: pixelated; }")
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def build_app(session: DemoSession) -> gr.Blocks:
    """The demo page for ``session`` (not yet launched)."""
    d = session.defaults
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nThe same prompt and seed without and with "
                    "[Turbo](https://github.com/turbo-diffusion/turbo-diffusion), timed. " + session.note,
                    elem_id="model-note")
        comparison = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                prompt = gr.Textbox(d.prompt, label="Prompt", lines=3, elem_id="prompt")
                with gr.Row():
                    seed = gr.Number(d.seed, label="Seed", precision=0, minimum=0, elem_id="seed")
                    guidance = gr.Number(d.guidance, label="Guidance", minimum=0, elem_id="guidance")
                steps = gr.Slider(1, MAX_STEPS, d.steps, step=1, label="Steps", elem_id="steps")
                size = gr.Slider(*SIZE_RANGE, d.size, step=8, label="Size (px, square)", elem_id="size")
                gr.Markdown("**Turbo**")
                ratio = gr.Slider(0, MAX_RATIO, d.ratio, step=0.05, label="Ratio (share of tokens merged)",
                                  elem_id="ratio")
                alpha = gr.Slider(0, 5, d.alpha, step=0.1, label="Alpha (weight of S in E = R - alpha S)",
                                  elem_id="alpha")
                semantic = gr.Dropdown(list(SEMANTICS), value=d.semantic, label="Semantic value", elem_id="semantic")
                max_downsample = gr.Dropdown(["auto", *map(str, DOWNSAMPLES)], value="auto",
                                             label="Max downsample (auto: the finest level with attention)",
                                             elem_id="max-downsample")
            with gr.Column(scale=3):
                with gr.Tab("Compare"):
                    generate = gr.Button("Generate baseline and Turbo", variant="primary", elem_id="generate")
                    with gr.Row():
                        baseline_image = _image("Baseline (no Turbo)", "baseline-image")
                        turbo_image = _image("Turbo", "turbo-image")
                        overlay_image = _image("Tokens merged (magenta)", "overlay-image")
                    summary = gr.Markdown(elem_id="summary")
                    with gr.Row():
                        step = gr.Slider(1, d.steps, max(1, d.steps // 2), step=1, label="Denoising step shown",
                                         elem_id="plan-step")
                        block = gr.Dropdown([], label="Block (finest level)", elem_id="plan-block")
                    with gr.Row():
                        r_map = _image("Mutual redundancy R", "r-map")
                        s_map = _image("Semantic value S", "s-map")
                        e_map = _image("Information degree E = R - alpha S", "e-map")
                    detail = gr.Markdown(elem_id="plan-detail")
                with gr.Tab("Sweep"):
                    sweep = gr.Button(f"Sweep ratios {', '.join(f'{r:g}' for r in SWEEP_RATIOS)}", variant="primary",
                                      elem_id="sweep")
                    gallery = gr.Gallery(label="Ratio sweep", columns=len(SWEEP_RATIOS), format="png",
                                         elem_id="sweep-gallery")
                    sweep_table = gr.Markdown(elem_id="sweep-table")

        settings_inputs = [prompt, seed, steps, size, guidance, ratio, alpha, semantic, max_downsample]
        panel = [overlay_image, r_map, s_map, e_map, detail]
        generate.click(
            page_event(functools.partial(on_compare, session), "compare"), settings_inputs,
            [comparison, baseline_image, turbo_image, summary, step, block, *panel],
            concurrency_limit=1, concurrency_id="pipeline",
        )
        for control in (step, block):
            control.change(_safely(on_inspect), [comparison, step, block], panel)
        sweep.click(
            page_event(functools.partial(on_sweep, session), "sweep"), settings_inputs, [gallery, sweep_table],
            concurrency_limit=1, concurrency_id="pipeline",
        )
    return app


def page_event(action: Callable[[Settings, Progress | None], Any], name: str) -> Callable[..., Any]:
    """The handler of a button that reads the settings column: ``action(settings, progress)`` with Gradio's
    progress tracking, every failure shown as a readable `gr.Error` (see `_safely`). Named ``name`` in the API."""

    @_safely
    def handler(prompt: str, seed: float, steps: float, size: float, guidance: float, ratio: float, alpha: float,
                semantic: str, max_downsample: str, progress: gr.Progress = gr.Progress()) -> Any:  # noqa: B008
        settings = from_page(prompt, seed, steps, size, guidance, ratio, alpha, semantic, max_downsample)
        return action(settings, _progress_of(progress))

    handler.__name__ = name
    return handler


def on_compare(session: DemoSession, settings: Settings, progress: Progress | None = None) -> tuple:
    """The Compare button: baseline and Turbo images, the summary, the step and block choices, and the panel."""
    result = session.compare(settings, progress)
    blocks = blocks_of(result.plans)
    shown_step = max(1, settings.steps // 2)
    return (result, result.baseline, result.turbo, summarize(result),
            gr.Slider(minimum=1, maximum=settings.steps, value=shown_step),
            gr.Dropdown(choices=blocks, value=blocks[0] if blocks else None),
            *inspection_panel(result, shown_step, blocks[0] if blocks else None))


def on_inspect(result: Comparison | None, step: float, block: str | None) -> tuple:
    """The step slider or block menu moved: redraw the panel from the stored plans (no generation)."""
    return inspection_panel(result, int(step), block)


def on_sweep(session: DemoSession, settings: Settings, progress: Progress | None = None) -> tuple:
    """The Sweep button: one image per ratio with its time and PSNR, and a table of the numbers."""
    busy = busy_warning()
    images = session.sweep(settings, SWEEP_RATIOS, progress)
    return [(item.image, sweep_caption(item, images[0].seconds)) for item in images], sweep_table(images, busy)


def summarize(result: Comparison) -> str:
    """The Compare tab's Markdown: each median time, the speed-up and what it rests on, PSNR and SSIM; a warning
    when the machine was busy or the runs varied too much to trust."""
    s, base, turbo = result.settings, result.baseline_timing, result.turbo_timing
    runs = (f"medians of {result.repeats} runs each, taking turns; spread {turbo.spread:.2f}x with Turbo, "
            f"{base.spread:.2f}x without" if result.repeats > 1 else "one run each: noise cannot be seen")
    text = (f"Baseline **{result.baseline_seconds:.2f} s**, Turbo **{result.turbo_seconds:.2f} s**: "
            f"**speed-up {result.speedup:.2f}x** ({runs}). "
            f"Turbo vs baseline: PSNR **{format_psnr(result.psnr)}**, SSIM **{result.ssim:.3f}**. "
            f"Seed {s.seed}, {s.steps} steps, {s.size} px, ratio {s.ratio:g}, alpha {s.alpha:g}, {s.semantic}.")
    return text + _warnings(result.busy, [t for t in (turbo, base) if t.noisy], result.repeats)


def _warnings(busy: str | None, noisy: list[Timing], repeats: int) -> str:
    """The busy machine's and the noisy runs' warnings as the page shows them (empty when there are none)."""
    advice = noisy_advice([t.name for t in noisy], repeats, f"`{DEMO_REPEATS_FLAG}`")
    lines = ([f"Note: {busy}."] if busy else []) + ([f"**Warning:** {advice}"] if advice else [])
    return "".join(f"\n\n{line}" for line in lines)


def inspection_panel(result: Comparison | None, step: int, block: str | None) -> tuple:
    """Overlay, R, S and E images and their description for 1-based denoising ``step`` of ``block``."""
    plan = pick(result.plans, step - 1, block) if result is not None else None
    if plan is None:
        text = "" if result is None else "Turbo merged nothing here (ratio 0): no plans to show."
        return None, None, None, None, text
    return (merge_overlay(result.turbo, plan.merged), heat_map(plan.redundancy), heat_map(plan.semantic),
            heat_map(plan.degree), describe(plan, result.settings.steps) + " The maps come from an untimed rerun "
            "of the Turbo generation (recording slows it), same seed, same plans.")


def sweep_caption(item: SweepImage, baseline_seconds: float) -> str:
    """Short enough for a gallery tile: ``"ratio 0.5: 1.31x, 28.4 dB"``; the baseline's ``"ratio 0 (baseline):
    1.20 s"``. The table below the gallery has the rest."""
    if item.ratio == 0:
        return f"ratio 0 (baseline): {item.seconds:.2f} s"
    return f"ratio {item.ratio:g}: {baseline_seconds / item.seconds:.2f}x, {format_psnr(item.psnr)}"


def sweep_table(images: list[SweepImage], busy: str | None = None) -> str:
    """A Markdown table of the sweep (ratio, median time, speed-up, spread, PSNR, SSIM), what the times rest on,
    and the warnings of `summarize`."""
    rows = ["| ratio | time (median) | speed-up | spread | PSNR | SSIM |", "|---|---|---|---|---|---|"]
    for item in images:
        rows.append(f"| {item.ratio:g} | {item.seconds:.2f} s | {images[0].seconds / item.seconds:.2f}x | "
                    f"{item.timing.spread:.2f}x | {format_psnr(item.psnr)} | {item.ssim:.3f} |")
    repeats = len(images[0].timing.seconds)
    rows.append("")
    rows.append(f"Medians of {repeats} runs per ratio, the ratios taking turns; spread: slowest over fastest run."
                if repeats > 1 else "One run per ratio: noise cannot be seen.")
    return "\n".join(rows) + _warnings(busy, [i.timing for i in images if i.timing.noisy], repeats)


def launch(model: str, port: int = 7860, device: str = "auto", dtype: str = "auto", block: bool = True) -> gr.Blocks:
    """Load ``model`` once, warm it up and serve the page on 127.0.0.1:``port`` (see `serve`)."""
    session = DemoSession(model, device, dtype)
    session.warm_up()
    return serve(build_app(session), port, block)


def serve(app: gr.Blocks, port: int, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve ``app`` on 127.0.0.1:``port``, requests queued. With ``block=False`` it returns the running app at
    once (stop it with ``app.close()``)."""
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=HOST, server_port=port, prevent_thread_lock=not block, quiet=quiet, theme=THEME, css=CSS,
               ssr_mode=False, footer_links=[], show_error=True)
    return app


def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id,
                    buttons=["download", "fullscreen"])


def _progress_of(progress: gr.Progress) -> Progress:
    return lambda done, total, what: progress((done, total), desc=f"{what}: step {done} of {total}")


def _safely(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with every failure shown on the page as a readable `gr.Error`, the server serving on: a bad
    setting as its own sentence (no traceback: nothing went wrong in the server), anything else as what failed,
    with its traceback on the server's stderr once (Gradio's own copy is switched off)."""

    @functools.wraps(handler)  # Gradio reads the inputs and the progress parameter from the signature
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err), print_exception=False) from err
        except Exception as err:  # noqa: BLE001 (any failure must reach the page, not kill the request silently)
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"Generation failed: {type(err).__name__}: {err}", print_exception=False) from err

    return run


__all__ = ["HOST", "build_app", "launch", "on_compare", "on_inspect", "on_sweep", "page_event", "serve"]
