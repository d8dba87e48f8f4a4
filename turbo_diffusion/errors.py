"""The one family of errors for input that cannot be used (the tools', and the model names they check). Each
message is one line; the command line catches
`UsageError` once, prints it after ``turbo-diffusion COMMAND: error:`` and exits with code 2. Importing this module
imports nothing heavy."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input: an argument, a setting, a method, a model that cannot be loaded, an output that cannot be
    written. A `ValueError`, so library callers may catch that."""


class MethodError(UsageError):
    """A method string that cannot be used (`turbo_diffusion.harness.methods`)."""


class ModelLoadError(UsageError):
    """The model could not be loaded (missing folder, unreachable Hub, not a UNet pipeline)."""


class OutputError(UsageError):
    """An output path that cannot be written."""


class SavedElsewhere(OutputError):
    """The result could not be written where asked and was saved elsewhere; the message says where. The command
    line prints it and exits with code 1: the work is not lost, but not where it was asked for."""
