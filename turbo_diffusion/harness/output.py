"""Writing results: output paths checked before any work, one JSON policy, atomic writes, a safe fallback.

JSON has no infinity or NaN. Every tool writes them as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (a PSNR of
``"inf"`` means identical images; ``null`` always means "not measured").
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``"inf"``/``"-inf"``/``"nan"``, tuples as lists and paths as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (see the module docstring for non-finite numbers), atomically."""
    atomic_write_text(Path(path), json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a half-written file is never taken for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_writable(path: str | os.PathLike, option: str, folder: bool = False) -> None:
    """Check, before any work, that the file (or with ``folder``, the folder) ``path`` can be written: missing
    folders are created and a probe file written, then all of it is removed again. Raises `OutputError`
    (``"--out /proc/x.png: cannot write in /proc (...)"``) naming ``option``."""
    target = Path(path).expanduser()
    directory = target if folder else target.parent
    if target.is_dir() and not folder:
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a folder")
    created: list[Path] = []
    try:
        for missing in reversed([d for d in (directory, *directory.parents) if not d.exists()]):
            missing.mkdir()
            created.append(missing)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".turbo-diffusion-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write in {directory} ({err.strerror or err})") from None
    finally:
        for made in reversed(created):
            made.rmdir()


def fallback_path(path: str | os.PathLike) -> Path:
    """Where to save a result whose own path could not be written: the system's temporary folder."""
    folder = Path(tempfile.gettempdir()) / "turbo-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(path).name}"
