"""The run folder of ``mgfr train``: only mgfr's own, one training at a time, a bounded number of checkpoints.

``-o`` must be new, empty, or a folder a run made (every entry one a run writes). While a run trains, its main
process holds an exclusive lock on ``RUN_DIR/.mgfr-train.lock`` (``flock``: released when the process ends,
however it ends), so a second run into the same folder refuses at once, naming the process that holds it.
After each checkpoint the oldest complete ones beyond ``keep_checkpoints`` are removed; the newest complete
one never is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mgfr_cli.errors import InputError, OutputError
from mgfr_cli.files import resolved

LOCK = ".mgfr-train.lock"
BASE_RECORD = ".mgfr-base.json"  # the base a run trains against: its path and weights fingerprint
RUN_ENTRIES = {"config.yaml", "config-mgfr.yaml", "checkpoints", "adapter", "logs", "aligned-data",
               "identity-cache.safetensors", "latent-cache.safetensors"}


def check_run_folder(run_dir: Path) -> None:
    """``-o`` of ``mgfr train`` must be new, empty, or a run folder mgfr made: every entry in it one that a run
    writes (hidden temporaries aside). A folder of the user's own files is refused before any work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: -o names a file; give a folder for the run")
    if not run_dir.is_dir():
        return
    other = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES and not p.name.startswith("."))
    if other:
        raise InputError(f"-o {run_dir}: holds files that are not an mgfr run's (e.g. {other[0]}); nothing was changed: "
                         f"give a new or empty folder for the run")


def check_base(run_dir: Path, base_path: Path, resume: bool) -> str:
    """The fingerprint of the base weights this run trains against; a ``--resume`` on other weights than the run
    started with (``RUN_DIR/.mgfr-base.json``) is refused, naming the run's base: the adapter would go on learning
    against another UNet and VAE (and the latent cache hold another VAE's latents). Runs that recorded none
    resume as before."""
    from mgfr_cli.weights.files import fingerprint

    if not Path(base_path).exists():
        return ""  # loading it says what is missing
    mark = fingerprint([base_path])
    try:
        was = json.loads((Path(run_dir) / BASE_RECORD).read_text()) if resume else None
    except (OSError, ValueError):
        was = None
    if isinstance(was, dict) and was.get("fingerprint") not in (None, mark):
        raise InputError(f"{run_dir}: --resume continues the run on the base it was trained on ({was.get('path')}); "
                         f"{base_path} holds other weights: give --base {was.get('path')}, or start a new run folder")
    return mark


def record_base(run_dir: Path, base_path: Path, mark: str) -> None:
    from mgfr_cli.files import atomic_write_bytes

    record = {"path": str(resolved(base_path)), "fingerprint": mark}
    atomic_write_bytes(Path(run_dir) / BASE_RECORD, json.dumps(record).encode())


class RunLock:
    """An exclusive lock on the run folder for the life of a training run (main process only)."""

    def __init__(self, run_dir: Path):
        import fcntl
        import socket
        import time

        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(self.fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(self.fd)
            raise InputError(f"-o {run_dir}: another mgfr train (process {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')}) is training into this folder; wait for it or give "
                             f"another -o") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (removing it would race a new run)
            self.fd = None


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Remove the oldest complete checkpoints beyond the newest ``keep`` (0: keep all); returns those removed."""
    from mgfr_cli.training.checkpoints import checkpoints, is_checkpoint

    if keep <= 0:
        return []
    complete = [c for c in checkpoints(run_dir) if is_checkpoint(c)]
    removed = complete[:-keep]
    for c in removed:
        shutil.rmtree(c)  # a checkpoint this run folder's trainings wrote (is_checkpoint), never the newest
    return removed


def check_writable(run_dir: Path) -> None:
    """One line before any work when the run folder cannot take files (``/proc``, read-only, full)."""
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir) as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"-o {run_dir}: cannot write the run there ({exc.strerror or exc})") from None
