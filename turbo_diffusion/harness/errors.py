"""The errors of a run that cannot go as asked. Each message is one line; the command line prints it after
``turbo-diffusion COMMAND: error:`` and exits with code 2. Importing this module imports nothing heavy."""

from __future__ import annotations


class HarnessError(ValueError):
    """Bad settings, a model that cannot be loaded or an output that cannot be written."""


class ModelLoadError(HarnessError):
    """The model could not be loaded (missing folder, unreachable Hub, not a UNet pipeline)."""


class OutputError(HarnessError):
    """An output path that cannot be written."""


class SavedElsewhere(OutputError):
    """The result could not be written where asked and was saved elsewhere; the message says where. The command
    line prints it and exits with code 1: the work is not lost, but not where it was asked for."""
