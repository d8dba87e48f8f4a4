"""`turbo-diffusion bench`: variants of one model timed interleaved in one process.

* `spec`: what to measure (`BenchSpec`, checked without importing torch) and the command repeating it;
* `variants`: methods under the names bench prints (default, turbo, tomesd, todo-nearest, bound);
* `timing`: the two workloads, a UNet step and a whole generation;
* `profile`: Turbo's plan/merge/attention/restore shares from torch.profiler;
* `run`: one benchmark run (`BenchSpec` -> `run_bench` -> `BenchResult`);
* `report`: Markdown tables, JSON and the speed-up plot.

Methods, interleaved timing, compilation and peak memory are `turbo_diffusion.harness`'s, shared with `compare`.

    from turbo_diffusion.bench import BenchSpec, run_bench, format_report
    result = run_bench(BenchSpec(model="sd15-arch", sizes=((768, 768),), ratios=(0.5, 0.7)))
    print(format_report(result))
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["PeakMemory", "peak_memory"], "..harness.memory"),
    **dict.fromkeys(["Timing", "time_interleaved"], "..harness.measure"),
    **dict.fromkeys(["Breakdown", "phase_breakdown", "variant_breakdown"], ".profile"),
    **dict.fromkeys(["format_report", "plot", "table", "to_json", "write_json"], ".report"),
    **dict.fromkeys(["BenchResult", "environment", "run_bench"], ".run"),
    **dict.fromkeys(["BenchSpec", "command_for", "parse_turbo_setting"], ".spec"),
    **dict.fromkeys(["time_generations", "time_variants"], ".timing"),
    **dict.fromkeys(["TokenDownsamplingProcessor", "Variant", "ZeroOverheadBoundProcessor", "bound_variant",
                     "default_variant", "todo_variant", "tomesd_variant", "turbo_variant"], ".variants"),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
