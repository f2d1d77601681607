"""The run's record: ``mgfr-summary.json`` (one row per photo), merged across runs and across the processes
of a sharded run."""

from __future__ import annotations

import os
from pathlib import Path

from mgfr_cli.faces.inputs import Outcome


def write_summary(path: Path, outcomes, merge: bool = False) -> None:
    """The outcomes as JSON (mgfr-summary.json): what a later run, a script or a merge reads.

    ``merge``: keep the rows of other photos already in the file (another run into the same folder, even
    one running at the same time: the read-merge-write holds a lock), this run's rows replacing theirs."""
    import fcntl
    import json

    from mgfr_cli.faces.io import atomic_write_bytes

    rows = [{"source": str(o.source), "status": o.status, "detail": o.detail,
             "output": str(o.output) if o.output else None, "faces": o.faces} for o in outcomes]
    if not merge:
        atomic_write_bytes(path, json.dumps(rows, indent=1).encode())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock is on the folder itself: no lock file left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            old = json.loads(path.read_text()) if path.is_file() else []
            old = [r for r in old if isinstance(r, dict) and "source" in r]
        except (OSError, ValueError):
            old = []
        mine = {r["source"] for r in rows}
        atomic_write_bytes(path, json.dumps([r for r in old if r["source"] not in mine] + rows, indent=1).encode())
    finally:
        os.close(folder)  # closing releases the lock


def merge_summaries(output: Path, world: int, wait_s: float = 600.0, on_wait=lambda n: None):
    """Wait (up to ``wait_s``) for every process's summary file; return the merged outcomes and missing ranks.
    ``on_wait(n)`` is told once how many processes are still running, so the wait is never silent."""
    import json
    import time

    files = [output / f"mgfr-summary-{r}-of-{world}.json" for r in range(world)]
    if not all(f.is_file() for f in files):
        on_wait(sum(not f.is_file() for f in files))
    deadline = time.time() + wait_s
    while not all(f.is_file() for f in files) and time.time() < deadline:
        time.sleep(0.5)
    merged = []
    for f in files:
        if f.is_file():
            merged += [Outcome(Path(r["source"]), r["status"], r["detail"], Path(r["output"]) if r["output"] else None,
                               r["faces"]) for r in json.loads(f.read_text())]
    write_summary(output / "mgfr-summary.json", merged)
    return merged, [r for r, f in enumerate(files) if not f.is_file()]
