"""The run's record: ``mgfr-summary.json`` (a row per photo and what it wrote), merged across runs and across the
processes of a sharded run."""

from __future__ import annotations

from pathlib import Path

from mgfr_cli.faces.inputs import NO_FACE, RESTORED, SKIPPED, Outcome
from mgfr_cli.files import resolved
from mgfr_cli.ownership import SUMMARY, recorded_output
from mgfr_cli.ownership import SUMMARY_KEYS as ROW_KEYS


def source_key(path) -> str:
    """How a photo is named in every record: its resolved path, so a relative and an absolute spelling of one
    file are one photo."""
    try:
        return str(resolved(path))
    except OSError:  # (a working folder that is gone)
        return str(Path(path).absolute())


def summary_path(output: Path, name: str = SUMMARY) -> tuple[Path, str]:
    """``OUT/mgfr-summary.json``, or another free name when a file of that name is not one mgfr wrote."""
    from mgfr_cli.ownership import is_json_rows, own_or_free

    return own_or_free(output / name, lambda p: is_json_rows(p, ROW_KEYS))


def row_of(o: Outcome) -> dict:
    return {"source": source_key(o.source), "status": o.status, "detail": o.detail,
            "output": source_key(o.output) if o.output else None, "faces": o.faces,  # resolved: read from anywhere
            **({"identity": list(o.identity)} if o.identity else {}),
            **({"library": list(o.library)} if o.library else {}),
            **({"tracks": list(o.tracks)} if o.tracks else {}),
            **({"recipe": o.recipe} if o.recipe else {})}


def _outcome(r: dict) -> Outcome:
    return Outcome(Path(r["source"]), r["status"], r["detail"], Path(r["output"]) if r["output"] else None,
                   r["faces"], tuple(r.get("identity", ())), tuple(r.get("library", ())), tuple(r.get("tracks", ())),
                   r.get("recipe", ""))


def wrote_output(row: dict) -> bool:
    """Whether a summary (or review page) row is a run's result on disk: a photo restored, or one without a face
    written as it is. A later skip of the same photo never replaces such a row."""
    return row.get("status") in (RESTORED, NO_FACE) and bool(row.get("output"))


def result_of(rows: dict, output: str | None) -> dict | None:
    """Of one photo's rows (``{output: row}``, None for a row without one), its result on disk for ``output``, or for
    any output when None (a skip because another run held the photo)."""
    return next((r for out, r in rows.items() if (output is None or out == output) and wrote_output(r)), None)


def place(rows: dict, output: str | None, row: dict) -> None:
    """Merge ``row`` (of ``output``) into one photo's ``rows``: a skip never replaces a result on disk; anything else
    replaces the row of the same output and the photo's row without one (a failure), and goes last."""
    if row["status"] == SKIPPED and result_of(rows, output):
        return
    rows.pop(None, None)
    rows.pop(output, None)
    rows[output] = row


def write_summary(path: Path, outcomes, merge: bool = False) -> None:
    """The outcomes as JSON (mgfr-summary.json): what a later run, a script or a merge reads.

    ``merge``: keep the rows already in the file (another run into the same folder, even one running at the same
    time: the read-merge-write holds a lock). A row is a photo and what it wrote: this run's row replaces the
    photo's row with the same output and its rows without one (a failure), never a row of another output still
    listed (``--suffix _a`` then ``--suffix _b``: both outputs are mgfr's, and a rerun must not take either for
    an input); a skip (the output existed, another run held the photo) never replaces a result: the record says
    what is on disk."""
    import json

    from mgfr_cli.files import Journal, atomic_write_bytes, folder_lock

    rows = [row_of(o) for o in outcomes]
    journaled = Journal(path)
    if not merge:
        atomic_write_bytes(path, json.dumps(rows, indent=1).encode())
        return

    def output_of(r: dict) -> str | None:
        return str(recorded_output(r["output"], path.parent)) if isinstance(r.get("output"), str) else None

    with folder_lock(path.parent):
        try:
            old = json.loads(path.read_text()) if path.is_file() else []
            old = [r for r in old if isinstance(r, dict) and isinstance(r.get("source"), str)]
        except (OSError, ValueError):
            old = []
        merged: dict[str, dict] = {}  # photo -> {its output (None: a row without one) -> row}
        for r in old:
            merged.setdefault(r["source"], {})[output_of(r)] = r
        stopped = [r for r in journaled.rows() if isinstance(r.get("source"), str)]  # runs stopped before their summary
        for r in stopped + rows:
            place(merged.setdefault(r["source"], {}), output_of(r), r)
        atomic_write_bytes(path, json.dumps([r for per in merged.values() for r in per.values()], indent=1).encode())
        journaled.clear()


# -- the processes of one launch (accelerate launch / torchrun) ------------------------------------------
SHARE_MARK = "mgfr process share"


def _share_files(output: Path, rank: int, world: int) -> list[Path]:
    """Where process ``rank`` may have written its share: its name, or the free name beside a user's file
    (``...-mgfr[-N].json``; never another launch size's: ``1-of-2`` is not ``1-of-20``)."""
    name = f"mgfr-summary-{rank}-of-{world}"
    return sorted(p for p in [output / f"{name}.json", *output.glob(f"{name}-mgfr*.json")] if p.is_file())


def _read_share(path: Path) -> dict | None:
    """A process's share (mgfr's marked JSON object), or None for anything else."""
    import json

    try:
        data = json.loads(path.read_text()) if path.stat().st_size < 512 << 20 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("mgfr") == SHARE_MARK else None


def shares_before(output: Path, world: int) -> set[tuple]:
    """The shares already in ``output`` when this launch begins (an earlier launch's: their file identity),
    taken by process 0 before it loads anything, so that it waits for this launch's and never reads those."""
    seen = set()
    for rank in range(world):
        for f in _share_files(output, rank, world):
            try:
                st = f.stat()
            except OSError:
                continue
            seen.add((f.name, st.st_ino, st.st_mtime_ns))
    return seen


def write_share(output: Path, rank: int, world: int, outcomes, notes=(), tally=None) -> None:
    """This process's share of a launch: its rows, its notes and what its faces used (``tally``), for process 0
    to merge. Written whole in one step (process 0 never reads half a file); a user's file of that name is kept."""
    import json

    from mgfr_cli.files import atomic_write_bytes
    from mgfr_cli.ownership import is_json_rows, own_or_free

    path, _ = own_or_free(output / f"mgfr-summary-{rank}-of-{world}.json",  # also an earlier version's (rows)
                          lambda p: _read_share(p) is not None or is_json_rows(p, ROW_KEYS))
    data = {"mgfr": SHARE_MARK, "rows": [row_of(o) for o in outcomes], "notes": list(notes), "tally": tally or {}}
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def merge_summaries(output: Path, world: int, seen: set = frozenset(), wait_s: float = 600.0, on_wait=lambda n: None):
    """Wait (up to ``wait_s``) for every process's share written after ``seen`` (:func:`shares_before`); merge
    their rows into ``mgfr-summary.json`` (as a single run does: other runs' rows kept).

    Returns the merged outcomes, the ranks missing, the shares' notes (each once, in order), their tallies by rank
    and the summary's own note. ``on_wait(n)`` is told once how many processes are still running."""
    import time

    def fresh(rank):
        for f in _share_files(output, rank, world):
            try:
                st = f.stat()
            except OSError:
                continue
            if (f.name, st.st_ino, st.st_mtime_ns) not in seen and (share := _read_share(f)) is not None:
                return share
        return None

    shares = {r: fresh(r) for r in range(world)}
    if any(v is None for v in shares.values()):
        on_wait(sum(v is None for v in shares.values()))
    deadline = time.time() + wait_s
    while any(v is None for v in shares.values()) and time.time() < deadline:
        time.sleep(0.5)
        shares.update({r: fresh(r) for r, v in shares.items() if v is None})
    got = [v for v in shares.values() if v is not None]
    merged = [_outcome(r) for share in got for r in share["rows"]]
    path, note = summary_path(output)
    write_summary(path, merged, merge=True)
    notes = list(dict.fromkeys(n for share in got for n in share["notes"]))
    tallies = {r: v["tally"] for r, v in shares.items() if v is not None}
    return merged, [r for r, v in shares.items() if v is None], notes, tallies, note
