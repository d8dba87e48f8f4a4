"""The ``turbo-diffusion`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its arguments and sets ``func=run``.
Arguments are parsed and checked before torch, diffusers or transformers are imported, so ``--help`` and bad
arguments answer at once. Every error ends the command in one line: exit code 2 for bad arguments and for runs
that cannot go as asked (one family: `turbo_diffusion.errors.UsageError`), 1 when a result had to be saved
somewhere else than asked (the line says where).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from .. import __version__
from . import bench, compare, demo, generate, train_shapes
from .common import UsageError, quiet_libraries

__all__ = ["UsageError", "build_parser", "main"]

TOOL_PACKAGES = ("tqdm", "psutil")  # the [cli] extra: the library itself needs neither


class _Parser(argparse.ArgumentParser):
    """argparse, but an argument error is one line (``turbo-diffusion generate: error: ...``), not the usage."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="turbo-diffusion",
        description="Turbo token merging for Stable Diffusion in diffusers: generate, benchmark, compare, demo.",
    )
    parser.add_argument("--version", action="version", version=f"turbo-diffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (generate, bench, compare, demo, train_shapes):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import about optional packages (torchvision) the CLI never uses. The variable covers a
    # transformers not yet imported, the logger level one already imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_progress", False):
        with quiet_libraries():
            return _run(parser, args)
    return _run(parser, args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..errors import SavedElsewhere

    try:
        missing = [name for name in TOOL_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise UsageError(f"the command line needs {', '.join(missing)}: pip install 'turbo-diffusion[cli]'")
        return int(args.func(args) or 0)
    except SavedElsewhere as err:
        print(f"turbo-diffusion {args.command}: {err}", file=sys.stderr)
        return 1
    except UsageError as err:
        parser.exit(2, f"turbo-diffusion {args.command}: error: {' '.join(str(err).split())}\n")
    except KeyboardInterrupt:
        # On a line of its own (a progress bar may be half drawn), with what was kept and how to go on.
        kept = getattr(sys.modules[args.func.__module__], "interrupted", None)
        print(f"\nturbo-diffusion {args.command}: interrupted" + (f": {kept(args)}" if kept else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
