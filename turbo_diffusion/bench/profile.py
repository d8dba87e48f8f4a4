"""Where a Turbo step's time goes: planning, merge, attention and restore, from torch.profiler.

`TurboProcessor` wraps each phase of its merged self-attention path in a `record_function` label (``turbo::plan``:
partition, redundancy, semantic value, information degree and top-r selection; ``turbo::merge``;
``turbo::attention``: projections, attention kernel, output projection; ``turbo::restore``). `phase_breakdown`
runs one extra, untimed call under the profiler, inside a label of its own covering the whole call, and divides
each phase's total time by the whole call's. The timed calls never run under the profiler, whose overhead would
distort them.

On the CPU the times are the labels' wall-clock spans (``cpu_time_total``). On CUDA, where work is queued and the
spans only measure the launch, they are the GPU time of the kernels launched inside each label
(``device_time_total``), divided by the same for the whole call: shares of GPU busy time.

The profiler's own C++ chatter (``SyncActivityProfilerHandler.cpp:52] profiler_start``), which would land in the
progress bar, is filtered out of stderr (`quiet_profiler`); anything else written there still shows.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from ..harness.measure import Installable, eager, installed, synchronize
from ..processor import PROFILE_ATTENTION, PROFILE_MERGE, PROFILE_PLAN, PROFILE_RESTORE

PHASES = {"plan": PROFILE_PLAN, "merge": PROFILE_MERGE, "attention": PROFILE_ATTENTION, "restore": PROFILE_RESTORE}
WHOLE_CALL = "turbo_bench::call"
_CHATTER = re.compile(r"(ActivityProfiler|ActivityProfilerController|profiler_(start|stop))")


@dataclass
class Breakdown:
    """Share of one profiled call spent in each phase (0 to 1; together at most 1), and the call's total in
    milliseconds (CPU wall clock or GPU busy time, see the module docstring)."""

    shares: dict[str, float]
    total_ms: float
    clock: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.shares, "total_ms": self.total_ms, "clock": self.clock}


def phase_breakdown(call: Callable[[], Any], device: torch.device) -> Breakdown:
    """Profile one ``call()`` and split its time by the Turbo labels (all zero when none ran)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with quiet_profiler(), eager(), torch.inference_mode(), profile(activities=activities) as prof:
        with record_function(WHOLE_CALL):
            call()
        synchronize(device)
    # Only the CPU-side events of the labels: with CUDA, kineto also lists a GPU-side copy of each label, which
    # would count its time twice. A label's `device_time_total` sums the kernels launched inside it.
    totals = dict.fromkeys([*PHASES.values(), WHOLE_CALL], 0.0)
    for event in prof.events():
        if event.name in totals and event.device_type == DeviceType.CPU:
            totals[event.name] += event.device_time_total if cuda else event.cpu_time_total
    whole_us = totals[WHOLE_CALL]
    shares = {phase: (totals[label] / whole_us if whole_us > 0 else 0.0) for phase, label in PHASES.items()}
    clock = "GPU kernel time (device_time_total)" if cuda else "CPU wall clock (cpu_time_total)"
    return Breakdown(shares, whole_us / 1000, clock)


def variant_breakdown(model: Any, variant: Installable, call: Callable[[], Any], device: torch.device) -> Breakdown:
    """`phase_breakdown` of ``call`` with ``variant`` installed on ``model`` (run eagerly under ``--compile``,
    where the profiler's labels would not survive compilation)."""
    with installed(model, variant):
        return phase_breakdown(call, device)


@contextmanager
def quiet_profiler() -> Iterator[None]:
    """Run the block with the process's stderr (file descriptor 2, where the profiler's C++ code prints) going to
    a temporary file, then pass on every line but the profiler's start/stop chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not _CHATTER.search(line)]
            sys.stderr.write("".join(kept))
