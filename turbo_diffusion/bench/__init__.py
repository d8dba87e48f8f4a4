"""`turbo-diffusion bench`: methods on one model, timed taking turns in one process.

* `spec`: what to measure (`BenchSpec`: methods, sizes, batches..., checked without importing torch), the command
  repeating it, and `flag_methods`, which spells the older flags (``--ratios/--variants/--turbo``) as methods;
* `timing`: the two workloads, a UNet step and a whole generation;
* `profile`: Turbo's plan/merge/attention/restore shares from torch.profiler;
* `run`: one benchmark run (`BenchSpec` -> `run_bench` -> `BenchResult`), a row per method under the names bench
  has always printed (default, turbo, tomesd, todo-nearest, bound);
* `report`: Markdown tables, JSON and the speed-up plot.

Methods, interleaved timing, compilation and peak memory are `turbo_diffusion.harness`'s, shared with `compare`.

    from turbo_diffusion.bench import BenchSpec, run_bench, format_report
    result = run_bench(BenchSpec(model="sd15-arch", sizes=((768, 768),), methods=("turbo@0.5", "bound@0.5")))
    print(format_report(result))
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["PeakMemory", "peak_memory"], "..harness.memory"),
    **dict.fromkeys(["Timing", "time_interleaved"], "..harness.measure"),
    **dict.fromkeys(["Breakdown", "phase_breakdown", "variant_breakdown"], ".profile"),
    **dict.fromkeys(["format_report", "plot", "table", "to_json", "write_json"], ".report"),
    **dict.fromkeys(["BenchResult", "environment", "row_name", "run_bench"], ".run"),
    **dict.fromkeys(["BenchSpec", "command_for", "flag_methods"], ".spec"),
    **dict.fromkeys(["time_generations", "time_variants"], ".timing"),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
