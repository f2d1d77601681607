"""Where a restore run's outputs go: one name per input inside ``-o``, never an input, never mgfr's own outputs
taken for inputs, and what an earlier run already wrote (a stopped run resumes)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from mgfr_cli.errors import InputError, UsageError
from mgfr_cli.faces.inputs import InputItem, inside
from mgfr_cli.faces.io import Photo, output_format, plain_ext

if TYPE_CHECKING:
    from mgfr_cli.app.batch import RestoreJob


def output_path(job: RestoreJob, item: InputItem, photo: Photo | None) -> Path:
    """Where ``item``'s output goes; always inside ``job.output`` (checked, whatever the suffix or glob)."""
    ext = output_format(photo, job.ext, item.path) if photo is not None else plain_ext(job.ext, item.path)
    rel = item.relative
    target = job.output / rel.parent / f"{rel.stem}{job.suffix}.{ext}"
    if not inside(target, job.output.resolve()):
        raise InputError(f"{item.path}: its output {target} would be outside {job.output}; not written")
    return target


def output_candidates(job: RestoreJob, item: InputItem) -> list[Path]:
    """Every name ``item``'s output may take (``auto`` keeps the format, or falls back to PNG)."""
    rel = item.relative
    exts = [plain_ext(job.ext, item.path)] + (["png"] if job.ext == "auto" else [])
    return [job.output / rel.parent / f"{rel.stem}{job.suffix}.{ext}" for ext in exts]


def without_own_outputs(job: RestoreJob, items: list[InputItem]) -> list[InputItem]:
    """Photos an earlier run wrote into ``-o`` (its summary lists them) are outputs, never inputs: ``restore site
    -o site --suffix _r`` run twice does not restore ``a_r.jpg`` into ``a_r_r.jpg``."""
    import json

    from mgfr_cli.app.summary import summary_path

    try:
        rows = json.loads(summary_path(job.output)[0].read_text())
        written = {Path(r["output"]).resolve() for r in rows if isinstance(r, dict) and r.get("output")}
    except (OSError, ValueError, TypeError, KeyError):
        return items
    return [it for it in items if it.path.resolve() not in written]


def refuse_outputs_onto_inputs(job: RestoreJob, items: list[InputItem]) -> None:
    """``restore photos -o photos``: every output would be its own input. A usage error, said before any work
    (not a batch of photos skipped because their "output exists")."""
    inputs = {it.path.resolve() for it in items}
    for it in items:
        for candidate in output_candidates(job, it):
            if candidate.resolve() in inputs:
                raise UsageError(f"-o {job.output}: the output {candidate} would overwrite the input "
                                 f"{candidate.resolve() if candidate.resolve() != it.path.resolve() else it.path}; "
                                 f"choose another -o or a --suffix")


def existing_output(job: RestoreJob, item: InputItem) -> Path | None:
    """An output already written for ``item`` by an earlier run (any extension ``auto`` may choose)."""
    return next((p for p in output_candidates(job, item) if p.is_file()), None)


def remove_stale_temporaries(target: Path) -> None:
    """Temporary files of ``target`` left by a run that was killed mid-write (``atomic_write_bytes``)."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
