"""Count the aten operations a piece of code dispatches: the cost that matters on a launch-bound GPU.

In eager mode every aten operation costs the host a dispatch (views included) and most launch a kernel, about
12-14 us each on an H200 whatever the tensor's size, so a small-image UNet step is as fast as its operation count
allows. Counts are exact and do not depend on the device, the image size or the machine's load: a CPU run proves
what a GPU run will dispatch, and a test may assert them.

    with OpCounter() as ops:
        unet(**inputs)
    ops.total, ops.launching, ops.syncs, ops.counts.most_common(5)
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that only allocate or reinterpret memory (no kernel), beyond those aten marks as views.
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "_unsafe_view", "alias", "lift_fresh", "detach",
              "_record_function_enter_new", "_record_function_exit"}
# Operations that read a device value on the host: on a GPU each stalls the host until the device catches up.
_HOST_READS = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "masked_select", "unique", "_unique",
               "_unique2", "unique_consecutive", "unique_dim"}


class OpCounter(TorchDispatchMode):
    """Counts every aten operation dispatched inside the ``with`` block.

    Attributes:
        counts: operations by name (``aten.mul``, ...).
        total: all operations, views included (each costs the host a dispatch).
        launching: those that launch a kernel on a GPU (not views, not allocations).
        syncs: those that read a device value on the host (``.item()``, ``bool(t)``, ``nonzero``, a copy to
            the CPU, ...): each would stall a GPU's host.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.total = self.launching = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.counts[f"aten.{name}"] += 1
        self.total += 1
        if not func.is_view and name not in _NO_KERNEL:
            self.launching += 1
        if name in _HOST_READS or (name == "_to_copy" and _to_host(args, kwargs)):
            self.syncs += 1
        return func(*args, **kwargs)


def _to_host(args: tuple, kwargs: dict) -> bool:
    """A copy from a device to the CPU. (On a CPU-only machine no tensor is on a device, so such copies cannot
    show there; ``.item()``, ``bool(t)`` and ``nonzero``, the usual host reads, do.)"""
    device = kwargs.get("device")
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return (device is not None and torch.device(device).type == "cpu" and source is not None
            and source.device.type != "cpu")


def count_ops(fn, *args, **kwargs) -> OpCounter:
    """Run ``fn(*args, **kwargs)`` under `torch.no_grad` and an `OpCounter`; returns the counter."""
    with torch.no_grad(), OpCounter() as counter:
        fn(*args, **kwargs)
    return counter
