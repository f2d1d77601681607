"""The run's record: ``mgfr-summary.json`` (one row per photo), merged across runs and across the processes
of a sharded run."""

from __future__ import annotations

from pathlib import Path

from mgfr_cli.faces.inputs import RESTORED, SKIPPED, Outcome


SUMMARY = "mgfr-summary.json"
ROW_KEYS = {"source", "status", "detail", "output", "faces"}


def source_key(path) -> str:
    """How a photo is named in every record: its resolved path, so a relative and an absolute spelling of one
    file are one photo."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return str(Path(path).absolute())


def summary_path(output: Path, name: str = SUMMARY) -> tuple[Path, str]:
    """``OUT/mgfr-summary.json``, or another free name when a file of that name is not one mgfr wrote."""
    from mgfr_cli.ownership import is_json_rows, own_or_free

    return own_or_free(output / name, lambda p: is_json_rows(p, ROW_KEYS))


def write_summary(path: Path, outcomes, merge: bool = False) -> None:
    """The outcomes as JSON (mgfr-summary.json): what a later run, a script or a merge reads.

    ``merge``: keep the rows of other photos already in the file (another run into the same folder, even
    one running at the same time: the read-merge-write holds a lock), this run's rows replacing theirs,
    except that a skip (the output existed, another run held the photo) never replaces a result: the record
    says what is on disk."""
    import json

    from mgfr_cli.faces.io import atomic_write_bytes, folder_lock

    rows = [{"source": source_key(o.source), "status": o.status, "detail": o.detail,
             "output": str(o.output) if o.output else None, "faces": o.faces,
             **({"identity": list(o.identity)} if o.identity else {}),
             **({"library": list(o.library)} if o.library else {}),
             **({"tracks": list(o.tracks)} if o.tracks else {})} for o in outcomes]
    if not merge:
        atomic_write_bytes(path, json.dumps(rows, indent=1).encode())
        return
    with folder_lock(path.parent):
        try:
            old = json.loads(path.read_text()) if path.is_file() else []
            old = [r for r in old if isinstance(r, dict) and "source" in r]
        except (OSError, ValueError):
            old = []
        merged = {r["source"]: r for r in old}
        for r in rows:
            if r["status"] == SKIPPED and merged.get(r["source"], {}).get("status") == RESTORED:
                continue
            merged[r["source"]] = r
        atomic_write_bytes(path, json.dumps(list(merged.values()), indent=1).encode())


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
    write_summary(summary_path(output)[0], merged)
    return merged, [r for r, f in enumerate(files) if not f.is_file()]
