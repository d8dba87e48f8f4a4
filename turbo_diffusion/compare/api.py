"""`compare`: a spec (`spec.make_spec`), generation (`runner.generate`), scoring (`scoring`) and a result
(`results.CompareResult`), tied together by `run_compare`; `compare` takes them as keywords."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SavedElsewhere
from ..harness.environment import environment, invoked_command
from ..harness.loading import load_model, loading_message, resolve_device
from ..harness.measure import noisy_advice
from ..harness.output import check_writable, fallback_path
from ..harness.output import write_json as write_json_file
from ..model_names import RANDOM_WEIGHTS_NOTE
from ..models import uses_random_weights
from . import report
from .results import CompareResult, summarize
from .runner import check_output_dir, generate, generation_size, write_config
from .scoring import Scorer, add_fid, load_scorers, score_images
from .spec import DEFAULT_CLIP_MODEL, DEFAULT_METHODS, OPTIONAL_METRICS, CompareError, CompareSpec, make_spec

__all__ = ["DEFAULT_METHODS", "OPTIONAL_METRICS", "Scoring", "compare", "run_compare"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Scoring:
    """How images are scored (`turbo_diffusion.compare.scoring`).

    Attributes:
        metrics: optional built-in metrics to try, among ``"lpips"``, ``"clip_score"``, ``"fid"``; PSNR and SSIM
            always run.
        scorers: custom scorers, run after the built-in ones on every image.
        clip_model: CLIP model for the CLIP score: a local folder or a Hub id (cache or download).
        fid_reference: folder of reference images for FID; default: the baseline's images.
        fid_weights: local path of torch-fidelity's InceptionV3 weights.
        fid_feature_extractor: a feature module to use instead of InceptionV3 (not the standard FID; named in the
            report).
    """

    metrics: Sequence[str] = OPTIONAL_METRICS
    scorers: Sequence[Scorer] = ()
    clip_model: str = DEFAULT_CLIP_MODEL
    fid_reference: str | os.PathLike | None = None
    fid_weights: str | None = None
    fid_feature_extractor: torch.nn.Module | None = None

    def check(self) -> None:
        unknown = sorted(set(self.metrics) - set(OPTIONAL_METRICS))
        if unknown:
            raise CompareError(f"unknown metric(s) {', '.join(unknown)}; optional metrics: "
                               f"{', '.join(OPTIONAL_METRICS)}")
        if self.fid_reference is not None and not Path(self.fid_reference).is_dir():
            raise CompareError(f"FID reference folder {str(self.fid_reference)!r} does not exist")


def compare(
    model: str,
    prompts: str | Sequence[str | Mapping[str, Any]] = "smoke",
    seeds: Sequence[int] | None = None,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    out_dir: str | os.PathLike = "outputs/compare",
    force: bool = False,
    dtype: str = "auto",
    max_prompts: int | None = None,
    metrics: Sequence[str] = OPTIONAL_METRICS,
    clip_model: str = DEFAULT_CLIP_MODEL,
    fid_reference: str | os.PathLike | None = None,
    fid_weights: str | None = None,
    fid_feature_extractor: torch.nn.Module | None = None,
    pipeline: Any = None,
    progress: bool = True,
    scorers: Sequence[Scorer] = (),
    device: str = "auto",
    log: Log | None = None,
    repeats: int | None = None,
) -> CompareResult | None:
    """Generate every prompt x seed with every method and compare them with the baseline.

    Args:
        model: a built-in name (``tiny``, ``sd15-arch``, ...), a local folder or a Hub id (see
            `turbo_diffusion.models.load_pipeline`); with ``pipeline`` given, only its name in the report.
        prompts: a preset (``"paper"``, ``"smoke"``), a ``.jsonl`` file of prompt records, a text file with one
            prompt per line, or a list of prompts or records ``{"prompt": ..., **metadata}``.
        seeds: seeds, one image per prompt and seed; default: the preset's, else ``[0]``.
        methods: ``"baseline,turbo@0.3,turbo@0.5:alpha=2,tome@0.5,todo@0.5,bound@0.5"`` or a list of such strings
            (`turbo_diffusion.harness.methods`); the baseline is added when missing.
        steps, guidance, height, width: generation settings; default: the preset's, else the model's own
            (`turbo_diffusion.model_names.defaults_for`: 20 steps and guidance 7.5 at its native size where the
            model is not built in).
        out_dir: output folder. Existing images of the same configuration are reused; a folder holding another
            configuration is refused unless ``force``.
        force: regenerate every image and overwrite a report of another configuration.
        dtype: ``"auto"`` (float16 on CUDA, else float32), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        max_prompts: keep only the first prompts (e.g. a quick run of the ``paper`` preset).
        metrics, clip_model, fid_reference, fid_weights, fid_feature_extractor, scorers: see `Scoring`.
        pipeline: an already loaded pipeline to use instead of loading ``model`` (its scheduler is swapped for the
            run when the preset asks for another, then put back).
        progress: show progress bars.
        device: ``"auto"`` (the accelerate process's device), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        log: called with a line before each long stage (loading, warm-up, generating, scoring).
        repeats: timed runs per method at least, for the speed-up (see `runner.generate`); ``None``: 3 where a
            run takes under 10 s, else 1. Images beyond the prompts x seeds are timed, not kept.

    Returns:
        The `CompareResult` (also written to ``out_dir``) on the main process; ``None`` on the others under
        ``accelerate launch``.

    Raises:
        turbo_diffusion.errors.UsageError: bad settings, an occupied or unwritable folder, a model that
            cannot be loaded (one-line message), before any image is generated.
    """
    device = pipeline.device if pipeline is not None else (
        process_state(None).device if device == "auto" else resolve_device(device))
    spec = make_spec(model, prompts, seeds, methods, steps, guidance, height, width, dtype, device.type, max_prompts)
    scoring = Scoring(tuple(metrics), tuple(scorers), clip_model, fid_reference, fid_weights, fid_feature_extractor)
    return run_compare(spec, out_dir, scoring, pipeline=pipeline, device=device, force=force, progress=progress,
                       log=log, repeats=repeats)


def run_compare(spec: CompareSpec, out_dir: str | os.PathLike, scoring: Scoring = Scoring(), *, pipeline: Any = None,
                device: torch.device | None = None, force: bool = False, progress: bool = True,
                log: Log | None = None, repeats: int | None = None) -> CompareResult | None:
    """Generate, score and report ``spec`` in ``out_dir`` (see `compare`). ``device`` defaults to the
    pipeline's, else the accelerate process's."""
    from accelerate.utils import gather_object

    say = log or (lambda _: None)
    device = device or (pipeline.device if pipeline is not None else None)
    state = process_state(device)
    device = device or state.device
    scoring.check()
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise CompareError(f"repeats must be a whole number >= 1 or None, got {repeats!r}")
    out = Path(out_dir)
    check_writable(out, "output folder", folder=True)
    check_output_dir(out, spec, force)
    if pipeline is None:
        say(loading_message(spec.model))
    pipe = pipeline if pipeline is not None else load_model(spec.model, spec.dtype, device)
    random_note = RANDOM_WEIGHTS_NOTE if uses_random_weights(pipe) else None
    saved_scheduler = pipe.scheduler
    if spec.scheduler == "pndm":
        from diffusers import PNDMScheduler

        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    scheduler_name = type(pipe.scheduler).__name__
    try:
        records, extra_seconds = generate(
            pipe, spec, out, process_share(state, len(spec.prompts)), force=force, progress=progress,
            position=state.process_index, random_note=random_note,
            on_first_image=(lambda: write_config(out, spec)) if state.is_main_process else None,
            log=say if state.is_main_process else None, repeats=repeats)
    finally:
        pipe.scheduler = saved_scheduler

    say(f"scoring {len(records)} images")
    skipped: dict[str, str] = {}
    scorers = load_scorers(scoring.metrics, scoring.clip_model, device, skipped) + list(scoring.scorers)
    score_images(records, out, spec.prompts, spec.methods[0].label, scorers)
    if state.num_processes > 1:
        records = gather_object(records)
        extra_seconds = _merged(gather_object([extra_seconds]))
    if not state.is_main_process:
        state.wait_for_everyone()
        return None
    order = {m.label: i for i, m in enumerate(spec.methods)}
    records.sort(key=lambda r: (r.prompt_index, spec.seeds.index(r.seed), order[r.method]))
    result = CompareResult(
        out_dir=out,
        configuration={**spec.configuration(), "scheduler": scheduler_name,
                       "size": list(generation_size(pipe, spec))},
        fingerprint=spec.fingerprint(),
        random_weights=random_note is not None,
        device=str(device),
        methods=summarize(records, spec.methods, extra_seconds),
        images=records,
        skipped=skipped,
        environment=environment(device, random_note is not None, invoked_command()),
    )
    result.notes += _notes(spec, records, extra_seconds, result.methods)
    if "fid" in scoring.metrics:
        add_fid(result, spec.methods, scoring.fid_reference, scoring.fid_weights, scoring.fid_feature_extractor,
                device)
    else:
        skipped["fid"] = "not requested"
    _write_outputs(result, spec, random_note)
    state.wait_for_everyone()
    return result


def process_state(device: torch.device | None) -> Any:
    """accelerate's `PartialState` for a run on ``device`` (``None``: wherever accelerate puts this process).

    A run on the CPU, or on a machine with no accelerator, passes ``cpu=True``: without it accelerate finds no
    distributed set-up under ``accelerate launch``/``torchrun`` on a CPU-only machine, and every process would
    generate every image (the same files, written twice, for no speed-up)."""
    from accelerate import PartialState

    cpu = device.type == "cpu" if device is not None else not torch.accelerator.is_available()
    return PartialState(cpu=cpu)


def process_share(state: Any, count: int) -> list[int]:
    """The prompt indices this process generates: every ``num_processes``-th from its own index, so the processes
    advance through the prompts together and a stopped run has finished a prefix of them (read it with
    ``max_prompts``), where contiguous halves would leave two half-done blocks."""
    return list(range(state.process_index, count, state.num_processes))


def _merged(parts: Sequence[Mapping[str, list[float]]]) -> dict[str, list[float]]:
    """Extra timed runs of every process, per method."""
    merged: dict[str, list[float]] = {}
    for part in parts:
        for label, seconds in part.items():
            merged.setdefault(label, []).extend(seconds)
    return merged


def _notes(spec: CompareSpec, records: list[Any], extra_seconds: Mapping[str, list[float]],
           methods: Sequence[Any]) -> list[str]:
    notes = ["Peak memory is that of each method's warm-up generation: the CUDA allocator's peak on CUDA, the "
             "process's peak resident memory on the CPU."]
    extra = max((len(s) for s in extra_seconds.values()), default=0)
    if extra:
        notes.append(f"Besides its images, each method was timed on {extra} more generation{'s' if extra > 1 else ''}"
                     " of the first prompt and seed (not kept), so that every speed-up rests on at least "
                     f"{min(m.timed_runs for m in methods)} runs.")
    advice = noisy_advice([m.method for m in methods if m.noisy], min(m.timed_runs for m in methods) or 1)
    if advice:
        notes.append(f"Warning: {advice}")
    reused = sum(r.reused for r in records)
    if reused:
        notes.append(f"{reused} of {len(records)} images were reused from an earlier run in this folder; their "
                     "timings are from that run.")
    bounds = [m.label for m in spec.methods if m.kind == "bound"]
    if bounds:
        notes.append(f"{', '.join(bounds)}: the zero-overhead bound's images are meaningless by design (it drops "
                     "tokens and copies one into their place); only its speed counts.")
    return notes


def _write_outputs(result: CompareResult, spec: CompareSpec, random_note: str | None) -> None:
    """The folder's record, grids, plot, metrics.json/.csv and reports; when the folder cannot be written any
    more, metrics.json goes to a safe place and `SavedElsewhere` says where."""
    try:
        write_config(result.out_dir, spec)  # again: a run whose images were all reused may have lost its record
        grids = report.write_grids(result, random_note)
        try:
            plot = report.write_plot(result, random_note)
        except ImportError:
            plot = None
            result.skipped["plot"] = "matplotlib is not installed (pip install 'turbo-diffusion[metrics]')"
        report.write_json(result)
        report.write_csv(result)
        report.write_markdown(result, grids, plot, random_note)
        report.write_html(result, grids, plot, random_note)
    except OSError as err:
        safe = fallback_path("metrics.json")
        write_json_file(safe, result.to_json())
        raise SavedElsewhere(f"could not write the report in {result.out_dir} ({err.strerror or err}); "
                             f"saved metrics.json to {safe}") from err
