"""One exception hierarchy for finsent. Every message says what went wrong *and* how to fix it."""

from __future__ import annotations


class FinsentError(Exception):
    """Base class of every error finsent raises on purpose."""


class ConfigError(FinsentError, ValueError):
    """A configuration value is missing, unknown or invalid (the message names the field)."""


class DataError(FinsentError, ValueError):
    """A data file is missing or a line in it cannot be used (the message names file and line)."""


class ModelDirError(FinsentError, FileNotFoundError):
    """A model or base-model directory is missing or incomplete (the message names the file)."""


class InputError(FinsentError, ValueError):
    """A text given for prediction cannot be classified (empty, not a string, too long...)."""
