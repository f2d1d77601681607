"""Files written whole or not at all, and locks: what every stage that writes (restore, align, train, weights) shares.

A write goes to a hidden temporary name beside its target and is renamed into place, so an interrupted run never
leaves a half-written file; locks are ``flock`` on a descriptor, released when the process dies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from mgfr_cli.errors import OutputError

NAME_MAX = 255  # bytes in one file name (Linux and macOS file systems; Windows: 255 characters, more than enough)
TEMP_EXTRA = 12  # what mkstemp adds to a prefix: 8 random characters and '.tmp'


def resolved(path) -> Path:
    """``Path(path).resolve()``, but a symbolic link loop (``a.png -> a.png``, in a photo folder, a reference folder, a
    sidecar's list) is resolved as far as it goes instead of raising: the file then fails where it is read, as any
    unreadable file does ("Too many levels of symbolic links"), and never stops a whole run (Python 3.11's pathlib
    raises RuntimeError there; 3.13's does not)."""
    return Path(os.path.realpath(path))


def is_broken_link(path) -> bool:
    """A symbolic link to nothing (a file moved away, a drive not mounted) or to itself."""
    return os.path.islink(path) and not os.path.exists(path)


def is_file_or_link(path) -> bool:
    """A file, or a link that is no folder (a broken one included: read, it fails saying why, never passed over)."""
    return Path(path).is_file() or os.path.islink(path) and not os.path.isdir(path)


def why_missing(path) -> str:
    """Why a named file cannot be opened: ``not found``, or the broken symbolic link it is (to nothing, or a loop)."""
    if not os.path.islink(path):
        return "not found"
    try:
        os.stat(path)
    except OSError as exc:
        return f"a broken symbolic link ({exc.strerror})"
    return "not found"


def fit_name(name: str, tail: str = "", room: int = NAME_MAX) -> str:
    """``name + tail`` when it fits in ``room`` bytes, else ``name``'s start (whole characters) and 8 hex digits of its
    hash before ``tail``: a file mgfr names after a user's (a temporary beside it, a claim, a face crop, an output with
    --suffix) can be made whatever the length of the user's name, and two long names that start alike stay two."""
    size = len(os.fsencode(tail))
    if len(os.fsencode(name)) + size <= room:
        return name + tail
    head, used = "", 0
    for ch in name:
        used += len(os.fsencode(ch))
        if used > room - size - 9:
            break
        head += ch
    return f"{head}~{hashlib.sha1(os.fsencode(name)).hexdigest()[:8]}{tail}"


def name_max(folder: Path) -> int:
    """Bytes a file name may have in ``folder``: its file system's limit, at most :data:`NAME_MAX` (eCryptfs, the
    encrypted home folder of older Ubuntu installs, allows 143); asked of the nearest folder there is above it."""
    there = Path(folder).absolute()
    while there != there.parent:
        with suppress(OSError):  # (a path too long to ask about: the folder above is asked)
            if there.is_dir():
                break
        there = there.parent
    try:
        return min(NAME_MAX, os.pathconf(there, "PC_NAME_MAX"))
    except (OSError, ValueError):  # (a system that cannot say)
        return NAME_MAX


def hidden_beside(target: Path, tag: str) -> Path:
    """mgfr's own hidden file for ``target`` in its folder: ``.<name><tag>``, the name shortened where that would not
    fit."""
    return target.with_name("." + fit_name(target.name, tag, name_max(target.parent) - 1))


def temp_prefix(target: Path) -> str:
    """The start of the name of every temporary file made for ``target`` (``.<name>.``, shortened to fit)."""
    return "." + fit_name(target.name, ".", name_max(target.parent) - 1 - TEMP_EXTRA)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # mkstemp inside: a Ctrl-C right after it still removes the temporary file
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:  # a write's: named
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


@contextmanager
def disk_errors(path: Path):
    """safetensors reports a failed write (a full disk) as its own error, ``(os error N)`` in its text: raised as the
    OSError it is, naming ``path``, so a full disk under weights is said in one line as under any other file."""
    import re

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only safetensors' own error is looked into; the rest is raised as it is
        found = re.search(r"\(os error (\d+)\)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
        if found is None:
            raise
        raise OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(path)) from None


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


def not_a_file(output: Path) -> None:
    """Fail when ``-o`` names a file (``-o restored.jpg``, as another tool's output option may): it names a folder.
    One not there yet named as a photo or a clip is refused too (a folder ``restored.jpg`` was made)."""
    from mgfr_cli.faces.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: is a file, not a folder (-o names the folder the outputs are written into)")
    if is_broken_link(output):  # (mkdir said "File exists")
        raise OutputError(f"{output}: {why_missing(output)}: -o names the folder the outputs are written into")
    if not output.exists() and output.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        raise OutputError(f"{output}: named as a file ({output.suffix}), and -o names the folder the outputs are "
                          f"written into, each named as its input: give a folder (one of this name is used if it "
                          f"exists)")


def check_output_folder(output: Path) -> None:
    """Fail before any work when the output folder cannot take a file (a real probe: permission bits say
    nothing to root, and a read-only mount only shows on writing)."""
    not_a_file(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as exc:
        raise OutputError(f"{output}: output folder is not writable ({exc.strerror or exc})") from None


class Journal:
    """What a run has written so far, a JSON line a file, appended beside the record it ends in (``.NAME.journal``
    beside ``NAME``) as each file is made: a run stopped before it writes its record (Ctrl-C, ``kill -9``, the OOM
    killer, a power cut) still leaves the next run knowing which files are its outputs (never inputs, replaced
    only by mgfr). The record's writer folds the lines in and removes the journal (restore's under the folder's
    lock: several runs may write into one folder)."""

    def __init__(self, record: Path):
        self.path = hidden_beside(Path(record), ".journal")

    def add(self, row: dict) -> None:
        import json

        # each line after a newline of its own: one a kill cut short never swallows the next run's
        line = ("\n" + json.dumps(row, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))).encode()
        try:
            with folder_lock(self.path.parent):  # (never between another run's reading and removing it)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
        except OSError:  # a full disk: the output is written all the same; only a stopped run's resume is poorer
            pass

    def rows(self) -> list[dict]:
        """The rows appended (a line cut short by a kill left out)."""
        import json

        try:
            lines = self.path.read_bytes().splitlines()
        except OSError:
            return []
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in rows if isinstance(r, dict)]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
