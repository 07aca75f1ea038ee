"""User-facing errors.

A :class:`GraftError` is a mistake the user can fix (bad config, path, data, request). The CLI
prints its message as one line and exits with status 2; it never shows a traceback for one.
"""

from __future__ import annotations


class GraftError(Exception):
    """A user mistake, with a message that says what to do."""


class ConfigError(GraftError):
    """A bad configuration value. The message names the key."""


class DataError(GraftError):
    """Unusable data: missing path, empty class, unknown class in val/test, ..."""


class TrainingDiverged(GraftError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
