"""What the terminal shows: progress bars, outcome tables, download tables and notes.

Commands print through these two consoles only (stdout for results, stderr for progress and errors).
"""

from __future__ import annotations

from contextlib import contextmanager, suppress

from rich.console import Console
from rich.text import Text

# markup off: file names, prompts and reasons are printed as written ('IMG [edited].jpg' is not a style tag, and a
# folder 'a[/b]' never stops a run); colour is asked for with Text styles.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, markup=False)


def shown(path) -> str:
    """A path for the terminal: undecodable bytes of a file name (kept as surrogates) shown as U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def summary(outcomes, title: str, done: str = "restored") -> int:
    """Print the outcome counts and every photo not done with its reason; return the exit code."""
    from rich.table import Table

    from mgfr_cli.faces.inputs import FAILED, NO_FACE, OUTPUT_EXISTS, RESTORED, SKIPPED
    from mgfr_cli.faces.io import is_video_file

    counts = {s: sum(o.status == s for o in outcomes) for s in (RESTORED, SKIPPED, NO_FACE, FAILED)}
    table = Table(title=title, show_lines=False)
    table.add_column("outcome")
    clips = any(is_video_file(o.source) for o in outcomes)
    table.add_column("photos and clips" if clips else "photos", justify="right")
    for status, n in counts.items():
        table.add_row(done if status == RESTORED else status, str(n))
    out.print(table)
    problems = [o for o in outcomes if o.status in (FAILED, NO_FACE)
                or (o.status == SKIPPED and o.detail != OUTPUT_EXISTS)]  # resumed ones: counted
    noted = [o for o in outcomes if o.status == RESTORED and o.detail]  # e.g. frames of an animation dropped
    if noted:
        table = Table(title=f"{done}, with a note", show_lines=False)
        table.add_column("file", overflow="fold")
        table.add_column("note", overflow="fold")
        for o in noted:
            table.add_row(shown(o.source), shown(o.detail))
        out.print(table)
    judged = [(o, r) for o in outcomes for r in o.identity]
    if judged:
        table = Table(title="identity: similarity to the references (insightface w600k_r50, not the guiding network)")
        for col in ("file", "face", "before", "after", "references"):
            table.add_column(col, overflow="fold")
        for o, r in judged:
            table.add_row(shown(o.source.name), str(r["face"]), f"{r['before']:.3f}", f"{r['after']:.3f}",
                          ", ".join(r["references"]))
        out.print(table)
    if problems:
        detail = Table(title="not restored", show_lines=False)
        detail.add_column("file", overflow="fold")
        detail.add_column("outcome")
        detail.add_column("reason", overflow="fold")
        for o in problems:
            detail.add_row(shown(o.source), o.status, shown(o.detail))
        out.print(detail)
    return 1 if counts[FAILED] else 0


def open_library(folder, helper, pipeline, output, max_megapixels: float):
    """The reference library of ``--ref-library``, brought up to date (only new or changed photos embedded)."""
    from mgfr_cli.errors import ConfigError
    from mgfr_cli.faces.reference_library import OUT_CACHE, library_of

    if helper.detector is None:
        raise ConfigError("--ref-library finds faces in whole photos: it cannot be used with --has-aligned (give "
                          "--ref crops instead)")
    library = library_of(folder, helper, pipeline.recogniser, output / OUT_CACHE, max_megapixels)
    with err.status(Text(f"reference library {shown(folder)}: finding and embedding faces...")):
        update = library.refresh()
    notes([f"reference library {shown(folder)}: {len(library.rows)} face(s) in {len(library.files)} photo(s); "
           f"{update.embedded} embedded now, the rest from the cache in {shown(library.cache)}"])
    notes(f"reference library: {shown(p)} skipped ({why})" for p, why in update.unreadable)
    notes([f"reference library: its cache in {shown(library.cache)} not saved ({update.unsaved}): the faces are "
           f"found for this run, and embedded again by the next"] if update.unsaved else [])
    return library


def run_batch(job, helper, restorer, upsampler=None, judge=None, library=None, seen_shares=frozenset()) -> int:
    """Restore ``job`` with a progress bar, then the summary; under a multi-process launch, process 0 merges the
    shares written after ``seen_shares`` (:func:`~mgfr_cli.app.summary.shares_before`, taken at its start)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mgfr_cli.app.batch import BatchRestorer
    from mgfr_cli.app.summary import merge_summaries, summary_path, write_share, write_summary

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as progress:
        task = progress.add_task("photos", total=None)

        def on_outcome(o):
            progress.update(task, advance=1, description=f"{o.status}: {shown(o.source.name)}")

        batch = BatchRestorer(helper, restorer, upsampler, judge, library)
        outcomes = batch.run(job, on_outcome, lambda n: progress.update(task, total=n))
    rank, world = job.shard
    if world == 1:
        notes(batch.notes)
        path, note = summary_path(job.output)
        write_summary(path, outcomes, merge=True)
        notes([note] if note else [])
        return summary(outcomes, "mgfr restore")
    # Several processes: each writes its share (rows, notes, what its faces used); the first merges them once
    # all are there, and speaks for the launch.
    tally = restorer.tally() if hasattr(restorer, "tally") else {}
    write_share(job.output, rank, world, outcomes, batch.notes, tally)
    if rank != 0:
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    merged, missing, said, tallies, note = merge_summaries(job.output, world, seen_shares, on_wait=lambda n: err.print(
        f"waiting up to 10 minutes for {n} other process(es) to finish their share..."))
    for r, t in tallies.items():
        if r != 0 and hasattr(restorer, "absorb"):
            restorer.absorb(t)  # the launch's notes (references used, guidance idle) then speak for every face
    notes(said + ([note] if note else []))
    if missing:
        err.print(f"summary without processes {missing} (they did not finish)", style="yellow")
    return summary(merged, f"mgfr restore ({world} processes)") or (1 if missing else 0)


def announce_downloads(rows) -> None:
    from rich.table import Table

    table = Table(title="first run: the public weights restore needs (downloaded once; what your Hugging Face cache "
                        "already holds is used from there)")
    for col in ("entry", "size or source", "licence"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    err.print(table)


@contextmanager
def download_progress():
    """A ``progress(path, done, total)`` callback for downloads, drawn on stderr; stopped on leaving, also
    when a server gave no size (such a bar never reads as finished)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn,
                                TransferSpeedColumn)

    tasks, holder = {}, {}

    def on_bytes(path, done, total):
        if "p" not in holder:
            holder["p"] = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                                   TimeRemainingColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)
            holder["p"].start()
        p = holder["p"]
        if path not in tasks:
            tasks[path] = p.add_task(path, total=total)
        p.update(tasks[path], completed=done, total=total)
        if total is not None and done >= total:
            p.stop_task(tasks[path])
            if all(p.tasks[t].finished for t in tasks.values()):
                p.stop()
                holder.pop("p")
                tasks.clear()

    try:
        yield on_bytes
    finally:
        if "p" in holder:
            holder.pop("p").stop()


def notes(lines) -> None:
    """Said once per launch: under ``accelerate launch``/``torchrun`` by process 0 only (it says the other
    processes' notes too, from their shares)."""
    from mgfr_cli.app.options import shard

    if shard()[0] != 0:
        return
    for line in filter(None, lines):
        err.print(Text.assemble(("note:", "yellow"), f" {line}"))


def checklist(sections: dict) -> None:
    """``doctor``'s report: per section, a line per check (ok/no, what, why)."""
    for section, rows in sections.items():
        out.print(section, style="bold")
        for ok, label, detail in rows:
            out.print(Text.assemble("  ", ("ok", "green") if ok else ("no", "red"), f"  {label}"
                                    + (f": {detail}" if detail else "")))


@contextmanager
def stopping_signals():
    """SIGTERM (a batch system's time limit, ``docker stop``, systemd, ``timeout``) and SIGHUP (the terminal or the ssh
    session closed) stop the command as Ctrl-C does: claims released, the review page written as far as the run got,
    the line that says how to resume. Killed outright, a run left its claims (which a run on another host respects)
    and its page behind. Yields ``{"signum": ...}`` once one came; the handlers before are put back after."""
    import signal
    import threading

    stopped: dict = {}

    def stop(signum, frame):
        stopped["signum"] = signum
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():  # (a signal ignored, as under nohup, stays ignored)
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None))  # (Windows:
                    if s is not None and signal.getsignal(s) == signal.SIG_DFL}                    # no SIGHUP)
    try:
        yield stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def interrupted(argv: list[str], stopped: dict) -> int:
    """Say how a stopped command resumes; its exit code (128 + the signal: 130 for Ctrl-C, 143 for SIGTERM)."""
    again = " ".join(argv[1:]) + ("" if "--resume" in argv else " --resume")
    with suppress(OSError):  # (after SIGHUP the terminal may be gone)
        err.print(Text.assemble(("interrupted", "red"), f": the checkpoints written are kept; resume with: mgfr {again}"
                                if "train" in argv[1:2] else ": finished outputs are kept; run the same command again to "
                                                              "resume"))
    return 128 + int(stopped.get("signum", 2))
