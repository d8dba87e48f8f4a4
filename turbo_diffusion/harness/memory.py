"""Peak memory of one call, on CUDA or on the CPU.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. ``peak_mib`` is that peak minus
  ``memory_allocated`` just before the call (what the call itself needed: activations, workspaces), ``total_mib``
  the peak itself (weights and inputs included). Exact, as counted by PyTorch's caching allocator.
* CPU: the process's resident set size (RSS), sampled by a background thread every ``interval`` seconds with
  psutil while the call runs. ``peak_mib`` is the highest sample minus the RSS just before the call, ``total_mib``
  the highest sample. Before the call, Python's garbage is collected and, on glibc, freed heap pages are handed
  back to the system (``malloc_trim``), so memory cached from earlier calls is not mistaken for headroom. Sampling
  can miss a spike shorter than ``interval``, and RSS counts pages touched, not bytes asked for: read CPU numbers
  as +-a few MiB and compare variants measured in the same run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch

MIB = 2**20
CPU_METHOD = "peak RSS (psutil, sampled every {ms:g} ms) minus RSS before the call"
CUDA_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated before the call"


@dataclass
class PeakMemory:
    """Peak memory of one call in MiB: ``peak_mib`` above what was held before it, ``total_mib`` in all."""

    peak_mib: float = float("nan")
    total_mib: float = float("nan")
    method: str = ""


@contextmanager
def peak_memory(device: torch.device | str, interval: float = 0.001) -> Iterator[PeakMemory]:
    """Measure the peak memory of the code in the ``with`` block on ``device``; the yielded `PeakMemory` is filled
    in when the block ends. ``interval`` (seconds, CPU only) trades sampling overhead against missed spikes."""
    device = torch.device(device)
    reading = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield reading
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        reading.peak_mib, reading.total_mib, reading.method = (peak - before) / MIB, peak / MIB, CUDA_METHOD
        return
    gc.collect()
    _trim_heap()
    sampler = _RssSampler(interval)
    before = sampler.process.memory_info().rss
    sampler.start()
    try:
        yield reading
    finally:
        peak = sampler.stop()
    reading.peak_mib = max(peak - before, 0) / MIB
    reading.total_mib = peak / MIB
    reading.method = CPU_METHOD.format(ms=interval * 1000)


class _RssSampler(threading.Thread):
    """Polls this process's RSS until stopped; `stop` returns the highest value seen (bytes)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            if self._done.wait(self.interval):
                return

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def _trim_heap() -> None:
    """Return freed heap memory to the system where the C library can (glibc's ``malloc_trim``); else nothing."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
