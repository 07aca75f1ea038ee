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


class PeerFailed(GraftError):
    """A training worker stops because another one failed, or with an error rank 0 reports
    too (several processes): the CLI prints nothing for it, so the user reads each error once,
    and exits with :data:`PEER_EXIT`."""


def check_whole(name: str, value: object, least: int = 1) -> None:
    """An argument that is None or a whole number of at least ``least``; anything else (a
    float, a string, a bool, a smaller number) is the caller's mistake, named."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < least):
        raise GraftError(f"{name}={value!r}: a whole number, {least} or more")


def check_flags(**flags: object) -> None:
    """Yes/no arguments must be True or False: a string such as ``"no"`` would count as yes."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise GraftError(f"{name}={value!r}: True or False")


PEER_EXIT = 0
"""The exit status of a worker that only followed another's error or death. Not a failure of
its own: torchrun's agent stops every worker at the first one that fails, and a follower that
failed before the one it follows had exited got that one killed (SIGTERM) and reported instead
of its error; the one it follows fails with its own status (2: an error it printed; a signal:
the death ``graft train --nproc`` reports)."""


class BadInput(Exception):
    """One input that cannot be used (a file that is no image, an empty text); ``reason`` is
    short and human-readable, ``code`` says which kind (e.g. ``bad_image``, ``empty_text``,
    ``too_many_pixels``: graft serve answers 413 for that one, 400 for the others)."""

    def __init__(self, reason: str, code: str = "bad_input") -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code
