"""`turbo-diffusion bench`: variants of one model timed interleaved in one process.

* `variants`: the ways to run the UNet (default, Turbo, tomesd, ToDo-style K/V downsampling, zero-overhead bound);
* `timing`: interleaved timing of a UNet step or a whole generation;
* `memory`: peak memory of a call (CUDA allocator, or sampled RSS on the CPU);
* `profile`: Turbo's plan/merge/attention/restore shares from torch.profiler;
* `run`: one benchmark run (`BenchSpec` -> `run_bench` -> `BenchResult`);
* `report`: header, Markdown tables, JSON and the speed-up plot.

    from turbo_diffusion.bench import BenchSpec, run_bench, format_report
    result = run_bench(BenchSpec(model="sd15-arch", sizes=((768, 768),), ratios=(0.5, 0.7)))
    print(format_report(result))
"""

from .memory import PeakMemory, peak_memory
from .profile import Breakdown, phase_breakdown, variant_breakdown
from .report import command_for, environment, format_report, plot, table, to_json, write_json
from .run import BenchResult, BenchSpec, parse_turbo_setting, run_bench
from .timing import Timing, time_generations, time_interleaved, time_variants
from .variants import (
    TokenDownsamplingProcessor,
    Variant,
    ZeroOverheadBoundProcessor,
    bound_variant,
    default_variant,
    todo_variant,
    tomesd_variant,
    turbo_variant,
)

__all__ = [
    "BenchResult", "BenchSpec", "Breakdown", "PeakMemory", "Timing", "TokenDownsamplingProcessor", "Variant",
    "ZeroOverheadBoundProcessor", "bound_variant", "command_for", "default_variant", "environment",
    "format_report", "parse_turbo_setting", "peak_memory", "phase_breakdown", "plot", "run_bench", "table",
    "time_generations", "time_interleaved", "time_variants", "to_json", "todo_variant", "tomesd_variant",
    "turbo_variant", "variant_breakdown", "write_json",
]
