"""User-facing errors: each message names the file, the problem and the fix.

Library code raises these; only ``cli.main`` turns them into one red line and an exit code.
Anything else that escapes is a bug and keeps its traceback, but in a batch, where one file's surprise must not
stop the others: :func:`unexpected` makes it that file's one-line failure (``MGFR_DEBUG=1`` raises it instead).
"""

import errno
import os

# Write errors that no other file would escape (the disk, the folder or the mount, not one file): the run stops.
STOPPING_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class MgfrError(Exception):
    """An error the user can act on: bad input, bad config or missing weights."""


class InputError(MgfrError):
    """An input file (photo, reference, dataset image) cannot be used."""


class ConfigError(MgfrError):
    """A YAML file, model config or option value is invalid."""


class WeightsError(MgfrError):
    """A weight file is missing, corrupt or does not match its config."""


class OutputError(MgfrError):
    """The output folder cannot take files (read-only, no permission, disk full): the run stops."""


class UsageError(ConfigError):
    """The command line asks for something that cannot be done (exit code 2), e.g. outputs onto the inputs."""


def unexpected(path, exc: Exception, doing: str = "") -> str:
    """One line for an unexpected error of one file in a batch (the batch goes on); with ``MGFR_DEBUG=1`` set, the
    error itself is raised again, traceback and all (call it inside the ``except`` block)."""
    if os.environ.get("MGFR_DEBUG"):
        raise exc
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # (its path is the one too long: not repeated)
        return f"{path}: {doing}a path of its output is too long for the file system ({exc.strerror}): give a shorter -o"
    return f"{path}: {doing}unexpected {type(exc).__name__}: {exc} (MGFR_DEBUG=1 for a traceback)"


def known(exc: Exception) -> "MgfrError":
    """``exc`` as an error the user can act on, for ``cli.main``'s one line: an :class:`MgfrError`, or an ``OSError``
    of :data:`STOPPING_WRITE_ERRORS` (a full disk, a read-only folder) met where no stage said it in its own words.
    Anything else is raised again: a bug keeps its traceback (as does everything with ``MGFR_DEBUG=1``)."""
    if isinstance(exc, MgfrError):
        return exc
    if isinstance(exc, OSError) and exc.errno in STOPPING_WRITE_ERRORS and not os.environ.get("MGFR_DEBUG"):
        where = f"{exc.filename}: " if exc.filename else ""
        return OutputError(f"{where}{exc.strerror or exc}; stopped, finished files are kept")
    raise exc
