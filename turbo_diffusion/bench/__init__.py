"""Benchmark harness: variants of one model timed interleaved in one process.

* `variants`: the ways to run the UNet (default, Turbo, tomesd, ToDo-style K/V downsampling, zero-overhead bound);
* `timing`: interleaved timing of a UNet step or a whole generation;
* `memory`: peak memory of a call (CUDA allocator, or sampled RSS on the CPU);
* `profile`: Turbo's plan/merge/attention/restore shares from torch.profiler.
"""

from .memory import PeakMemory, peak_memory
from .profile import Breakdown, phase_breakdown, variant_breakdown
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
    "Breakdown", "PeakMemory", "Timing", "TokenDownsamplingProcessor", "Variant", "ZeroOverheadBoundProcessor",
    "bound_variant", "default_variant", "peak_memory", "phase_breakdown", "time_generations", "time_interleaved",
    "time_variants", "todo_variant", "tomesd_variant", "turbo_variant", "variant_breakdown",
]
