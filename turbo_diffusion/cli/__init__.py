"""The ``turbo-diffusion`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its arguments and sets
``func=run`` on the parser. Bad arguments end in a one-line error and exit code 2, as argparse does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__

SUBCOMMANDS = ("generate", "bench", "compare", "train-shapes")


class UsageError(Exception):
    """A bad argument found after parsing (e.g. a ratio out of range): one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turbo-diffusion",
        description="Turbo token merging for Stable Diffusion in diffusers: generate, benchmark, compare.",
    )
    parser.add_argument("--version", action="version", version=f"turbo-diffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            continue  # subcommand not written yet
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import about optional packages (torchvision) the CLI never uses. The variable covers a
    # transformers not yet imported, the logger level one already imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        parser.exit(2, f"turbo-diffusion {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
