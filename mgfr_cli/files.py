"""Files written whole or not at all, and locks: what every stage that writes (restore, align, train, weights) shares.

A write goes to a hidden temporary name beside its target and is renamed into place, so an interrupted run never
leaves a half-written file; locks are ``flock`` on a descriptor, released when the process dies.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mgfr_cli.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # mkstemp inside: a Ctrl-C right after it still removes the temporary file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def folder_lock(folder: Path):
    """An exclusive lock held on ``folder`` itself (``flock`` on its descriptor: no lock file left behind), across
    processes and across threads; released when the block ends, or when the process dies."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with _flocked(os.open(folder, os.O_RDONLY)):
        yield


@contextmanager
def file_lock(path: Path):
    """:func:`folder_lock` on a lock file of its own (made empty where missing, and left in place): for a file
    replaced whole on each write (its inode changes, so a lock on it guards nothing), in a folder whose own lock
    another step already holds."""
    with _flocked(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)):
        yield


@contextmanager
def _flocked(fd: int):
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_output_folder(output: Path) -> None:
    """Fail before any work when the output folder cannot take a file (a real probe: permission bits say
    nothing to root, and a read-only mount only shows on writing)."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as exc:
        raise OutputError(f"{output}: output folder is not writable ({exc.strerror or exc})") from None
