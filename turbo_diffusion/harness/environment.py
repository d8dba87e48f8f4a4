"""Where and with what a run was made: date, machine, commit, versions and command, for the record of every tool."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("turbo_diffusion", "diffusers", "torch", "transformers", "tomesd")


def environment(device: Any, random_weights: bool, command: str) -> dict[str, Any]:
    """``date`` (ISO 8601, local time with offset), ``machine`` (the CUDA device name, or the CPU model with
    torch's thread count), ``cpu``, ``gpu`` (``None`` off CUDA), ``commit`` (`git_commit`), ``versions`` (of
    ``PACKAGES`` and python; ``None`` when not installed), ``command`` (an equivalent command with every option
    spelled out), ``invoked`` (this process's own command line) and ``weights`` (``"random weights"`` or
    ``"pretrained"``)."""
    import torch

    device = torch.device(device)
    threads = torch.get_num_threads()
    cpu = f"{cpu_model()}, {threads} torch thread{'s' if threads != 1 else ''} of {os.cpu_count()} logical CPUs"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": gpu or f"CPU {cpu}",
        "cpu": cpu,
        "gpu": gpu,
        "commit": git_commit(),
        "versions": {name: package_version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "command": command,
        "invoked": invoked_command(),
        "weights": "random weights" if random_weights else "pretrained",
    }


def invoked_command() -> str:
    """This process's command line as typed: ``python -m turbo_diffusion.cli bench ...``, ``turbo-diffusion bench
    ...``, ``python benchmarks/presets.py ...`` (or pytest's, in tests)."""
    if not sys.argv or not sys.argv[0]:
        return ""
    program = sys.argv[0]
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if Path(program).name == "__main__.py" and main_spec is not None:
        program = f"python -m {main_spec.name.removesuffix('.__main__')}"
    elif program.endswith(".py"):
        program = f"python {program}"
    else:
        program = Path(program).name
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> str:
    """Short hash of the checkout this package runs from, ``+dirty`` if it has uncommitted changes, ``unknown``
    outside git."""
    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
    """The running module's ``__version__`` when it has been imported, else the installed distribution's."""
    module = sys.modules.get(name)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None
