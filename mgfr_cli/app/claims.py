"""One photo, one run at a time: while a run restores a photo it holds a claim file beside the output
(``.NAME.mgfr-claim``: process id, host, start time), so a second run into the same folder (another terminal,
a re-run while the first still works) skips that photo instead of restoring it again and racing the write.

A claim whose process is gone (killed, crashed) is stale and taken over; one from another host cannot be
checked and is respected, and the skip says which file to delete if that run is gone.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from mgfr_cli.files import hidden_beside, temp_prefix

SUFFIX = ".mgfr-claim"
UNWRITTEN_GRACE_S = 60.0  # a claim file still empty this long after its creation was left by a crash
_PROCESS_HELD: set[Path] = set()  # claims held by any run of this process (the web page and a batch, say)
_PROCESS_LOCK = threading.Lock()


def claim_file(target: Path) -> Path:
    return hidden_beside(target, SUFFIX)


class Claims:
    """The claims one run holds, by input photo; safe to use from the prefetch thread and the main thread."""

    def __init__(self):
        self._held: dict[Path, tuple[Path, list[Path]]] = {}  # input photo -> claim file, folders it made
        self._lock = threading.Lock()

    def take(self, key: Path, target: Path) -> str | None:
        """Claim ``target`` for input ``key``. None when this run now holds it (or when no claim can be written
        there: claims are advisory, and the output's own write then says what is wrong); otherwise who holds it."""
        path = claim_file(target)
        made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # folders to remove again
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        for _ in range(3):
            tmp = None
            try:  # written beside, then linked into place: a claim appears whole or not at all, even under kill -9
                fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=path.parent)
                with os.fdopen(fd, "w") as f:
                    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
                os.link(tmp, path)
            except FileExistsError:
                holder = self._holder(path)
                if holder is not None:
                    return holder
                path.unlink(missing_ok=True)  # stale: its run is gone
                continue
            except OSError:  # a full disk, a read-only folder, no hard links there
                return None
            finally:
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
            with self._lock, _PROCESS_LOCK:
                self._held[key] = (path, made)
                _PROCESS_HELD.add(path)
            return None
        return f"another mgfr run is restoring it (claim {path})"

    def release(self, key: Path) -> None:
        """Remove the claim, and the folders it created if nothing else was put in them (a photo that failed)."""
        with self._lock, _PROCESS_LOCK:
            path, made = self._held.pop(key, (None, []))
            if path is not None:
                _PROCESS_HELD.discard(path)
                path.unlink(missing_ok=True)
                for d in made:
                    try:
                        d.rmdir()
                    except OSError:  # not empty (the output is there): keep it and the folders above
                        break

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)

    def _holder(self, path: Path) -> str | None:
        """Who holds an existing claim, or None when it is stale."""
        try:
            info = json.loads(path.read_text())
            pid, host = int(info["pid"]), str(info["host"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # being written right now, or left half-written
            try:
                young = time.time() - path.stat().st_mtime < UNWRITTEN_GRACE_S
            except FileNotFoundError:
                return None
            return f"another mgfr run is restoring it (claim {path})" if young else None
        if host != socket.gethostname():
            return (f"a mgfr run on {host} (process {pid}) is restoring it; if that run is gone, delete {path}")
        if pid == os.getpid():  # held by a run of this process, or left by one that ended without releasing
            with _PROCESS_LOCK:
                held = path in _PROCESS_HELD
            return "another restore in this process is working on it" if held else None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return f"another mgfr run (process {pid}) is restoring it"
