"""One exception family, so callers (and the CLI) can catch fedkt's own errors in one place.

Every error message names the thing that is wrong and says what to do about it.
"""

from __future__ import annotations


class FedktError(Exception):
    """Base class of every error fedkt raises on purpose."""


class ConfigError(FedktError):
    """A configuration file or value is wrong (unknown key, bad type, out of range)."""


class DataError(FedktError):
    """A data file is missing or a row is malformed."""


class ModelError(FedktError):
    """A model name, path or checkpoint cannot be resolved or loaded."""


class TokenizerMismatchError(ModelError):
    """Two models that must share a vocabulary do not."""
