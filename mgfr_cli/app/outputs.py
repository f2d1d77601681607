"""Where a restore run's outputs go: one name per input inside ``-o``, never an input, never mgfr's own outputs
taken for inputs, and what an earlier run already wrote (a stopped run resumes)."""

from __future__ import annotations

import glob
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mgfr_cli.errors import InputError, UsageError
from mgfr_cli.faces.inputs import FAILED, InputItem, Outcome, inside
from mgfr_cli.faces.io import Photo, output_format, plain_ext
from mgfr_cli.files import fit_name, name_max, resolved, temp_prefix

if TYPE_CHECKING:
    from mgfr_cli.app.batch import RestoreJob


def output_path(job: RestoreJob, item: InputItem, photo: Photo | None) -> Path:
    """Where ``item``'s output goes; always inside ``job.output`` (checked, whatever the suffix or glob)."""
    ext = output_format(photo, job.ext, item.path) if photo is not None else plain_ext(job.ext, item.path)
    target = named(job.output, item.relative, f"{job.suffix}.{ext}")
    if not inside(target, resolved(job.output)):
        raise InputError(f"{item.path}: its output {target} would be outside {job.output}; not written")
    return target


def output_candidates(job: RestoreJob, item: InputItem) -> list[Path]:
    """Every name ``item``'s output may take (``auto`` keeps the format, or falls back to PNG; a clip's is MP4)."""
    from mgfr_cli.faces.io import is_video_file

    rel = item.relative
    if is_video_file(item.path):
        exts = ["mp4"]
    else:
        exts = [plain_ext(job.ext, item.path)] + (["png"] if job.ext == "auto" else [])
    return [named(job.output, rel, f"{job.suffix}.{ext}") for ext in exts]


def named(folder: Path, rel: Path, tail: str) -> Path:
    """``folder/rel``'s folder, and ``rel``'s stem with ``tail`` (a suffix and extension) as its name, shortened where
    a name that long cannot be made (the stem's start and a hash: a long input name still gets its output)."""
    return folder / rel.parent / fit_name(rel.stem, tail, name_max(folder / rel.parent))


def earlier_rows(path: Path) -> list[dict]:
    """The rows of the output folder's summary ``path`` (what earlier runs wrote, and with what), then its journal's
    (what a run stopped before writing its summary wrote)."""
    import json

    from mgfr_cli.files import Journal

    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        rows = []
    rows = (rows if isinstance(rows, list) else []) + Journal(path).rows()
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("source"), str)]


def own_outputs(earlier: list[dict], output: Path) -> set[Path]:
    """Photos an earlier run wrote into ``-o`` (its summary lists them: ``earlier``), resolved: outputs, never inputs
    (``restore site -o site --suffix _r`` run twice does not restore ``a_r.jpg`` into ``a_r_r.jpg``)."""
    from mgfr_cli.ownership import recorded_output

    return {recorded_output(r["output"], output) for r in earlier if isinstance(r.get("output"), str) and r["output"]}


def own_folders(output: Path) -> list[Path]:
    """The folders restore keeps in ``-o`` beside its outputs: never inputs (``-o`` may be the input folder)."""
    from mgfr_cli.app.report import report_folder
    from mgfr_cli.faces.reference_library import OUT_CACHE

    return [output / FACES_DIR, output / OUT_CACHE, report_folder(output)]


def refuse_outputs_onto_inputs(job: RestoreJob, items: list[InputItem]) -> tuple[set[InputItem], list[Outcome]]:
    """``restore photos -o photos``: every output would be its own input. A usage error, said before any work
    (not a batch of photos skipped because their "output exists"). An output name that already is an input under
    another name (``B.jpg`` for ``B.JPG`` in a case-insensitive folder: Windows and macOS drives, WSL's ``/mnt/c``,
    SMB; a hard link) is the same file too: compared by what the names point to, not by their spelling.
    An output that is *another* input (``a.jpg``'s ``a_r.jpg`` under ``--suffix _r``, where a photo of the user's has
    that name) fails that photo alone: returned are the inputs to restore and the outcomes of those that fail."""
    by_path = {resolved(it.path): it.path for it in items}
    by_file = {fid: it.path for it in items if (fid := _file_id(it.path)) is not None}
    clashed: dict[Path, Outcome] = {}
    for it in items:
        for candidate in output_candidates(job, it):
            fid = _file_id(candidate)
            same = by_path.get(resolved(candidate)) or (by_file.get(fid) if fid is not None else None)
            if same is not None and _file_id(same) == _file_id(it.path):
                raise UsageError(f"-o {job.output}: the output {candidate} would overwrite the input {same}; "
                                 f"choose another -o or a --suffix")
            if same is not None and it.path not in clashed:
                clashed[it.path] = Outcome(it.path, FAILED, f"{it.path}: its output {candidate} would overwrite the "
                                                            f"input {same}; not restored (choose another --suffix)")
    return {it for it in items if it.path not in clashed}, list(clashed.values())


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file a name points to (device, inode), or None where nothing is there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def existing_output(job: RestoreJob, item: InputItem) -> Path | None:
    """An output already written for ``item`` by an earlier run (any extension ``auto`` may choose)."""
    return next((p for p in output_candidates(job, item) if p.is_file()), None)


def dropped_note(ext: str, dropped: list[tuple[Path, list[str]]]) -> list[str]:
    """``--ext jpg`` on photos with alpha or 16 bits: written without them (the format cannot hold them), said once."""
    if not dropped:
        return []
    names = ", ".join(f"{p.name} ({' and '.join(what)})" for p, what in dropped[:5])
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    return [f"--ext {ext}: written without what a .{ext} file cannot hold: {names}{more} (--ext auto or png keeps it)"]


FACES_DIR = "_faces"


def save_face_crops(job: RestoreJob, item: InputItem, faces, restored) -> str:
    """``--save-faces``: ``OUT/_faces/<photo>_NN_aligned.png`` and ``_restored.png``. A file already at such a name
    is replaced only under ``--overwrite`` (a photo restored now has no crops of mgfr's yet: it is the user's);
    otherwise kept, and the note returned says so."""
    from mgfr_cli.faces.io import write_image

    rel, kept = item.relative, []
    for f, r in zip(faces, restored):
        for path, pixels in ((named(job.output / FACES_DIR, rel, f"_{f.index:02d}_aligned.png"), f.crop),
                             (named(job.output / FACES_DIR, rel, f"_{f.index:02d}_restored.png"), r)):
            if (path.exists() or path.is_symlink()) and not job.overwrite:
                kept.append(path.name)
            else:
                write_image(path, pixels)
    return f"{', '.join(kept)}: not written, a file is there ({FACES_DIR}/; --overwrite replaces it)" if kept else ""


def remove_stale_temporaries(target: Path) -> None:
    """Temporary files of ``target`` left by a run that was killed mid-write (``atomic_write_bytes``)."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f"{glob.escape(temp_prefix(target))}*.tmp"):
            stale.unlink(missing_ok=True)


# -- what an output was made with: a rerun with other settings does not pass their outputs off as its own -----------
OTHER_SETTINGS = "output exists, made with other settings (--overwrite to redo it)"
OTHER_SOURCE = "output exists, made from an earlier version of this file (--overwrite to redo it)"


LATER_DEFAULTS = {"control_strength": 1.0}  # settings added after outputs were made: at their default, not written


def recipe_text(settings, models: str, flags, upscale: float, selection, has_aligned: bool, library, ref_k: int,
                ref_threshold: float, face_upsample: bool = False) -> str:
    """The run's settings an output depends on (sampling, the models and their weights: ``Restorer.models()``, prompts
    and references given as flags, upscale, face selection, the library), as one canonical string:
    ``RestoreJob.recipe``. Paths are resolved (the same files named from another folder are the same settings)."""
    import json
    from dataclasses import asdict

    refs = sorted(str(resolved(r)) for r in flags.refs) if flags.refs else None
    sampling = {k: v for k, v in asdict(settings).items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}
    what = {"settings": sampling, "models": models, "prompt": flags.prompt, "negative": flags.negative_prompt,
            "refs": refs, "ref_images": refs_mark(refs) if refs else None,  # another photo under the same name
            "upscale": upscale, "selection": asdict(selection), "has_aligned": has_aligned,
            "library": [str(resolved(library)), ref_k, ref_threshold] if library is not None else None,
            **({"face_upsample": True} if face_upsample else {})}  # added later: absent at its default
    return json.dumps(what, sort_keys=True, default=str)


FACELESS_KEYS = ("models", "upscale", "selection", "has_aligned")  # what a photo without a face is written with


def recipe(job: RestoreJob, source: Path, faceless: bool = False) -> str:
    """What ``source``'s output is made with: the run's settings, a clip's ``--crf`` and ``--video-noise``, the
    text of the photo's sidecar and folder ``mgfr.yaml`` and the reference images they name; then, after a ``/``,
    what the photo itself is (:func:`source_mark`). Empty when the job states no settings (a test's job, the web
    page's one photo). ``faceless``: of an output written without a face, only what it depends on (the models,
    detector and upsampler included, the upscale, which faces are kept): another ``--steps`` or ``--prompt`` does
    not make it "made with other settings"."""
    import hashlib
    import json

    from mgfr_cli.faces.conditions import FOLDER_YAML, sidecar_path
    from mgfr_cli.faces.io import is_video_file

    if not job.recipe:
        return ""
    text = job.recipe
    if faceless:
        text = "faceless " + json.dumps({k: v for k, v in json.loads(text).items() if k in FACELESS_KEYS},
                                        sort_keys=True)
    h = hashlib.sha1(text.encode("utf-8", "surrogateescape"))
    if is_video_file(source):
        h.update(f"clip crf={job.crf} noise={job.video_noise}".encode())
    for p in () if faceless else (sidecar_path(Path(source)), Path(source).parent / FOLDER_YAML):
        try:
            h.update(p.read_bytes()[: 1 << 20] if p is not None else b"")
            st = p.stat() if p is not None else None
        except OSError:
            st = None
        h.update(b"\0" + (refs_mark(_sidecar_refs(p, st.st_size, st.st_mtime_ns)).encode() if st is not None else b""))
    return f"{h.hexdigest()[:16]}/{source_mark(source)}"


def source_mark(path: Path) -> str:
    """What a photo or clip is, read cheaply: its size and its first and last 16 KB. A new scan, an edit, a re-export
    changes them (its output is then from an earlier version); a copy that lost its file times does not."""
    import hashlib
    import os

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(1 << 14)
            f.seek(max(size - (1 << 14), len(head)))
            tail = f.read(1 << 14)
    except OSError:
        return ""
    return hashlib.sha1(f"{size}\0".encode() + head + tail).hexdigest()[:12]


@lru_cache(maxsize=4096)
def _sidecar_refs(path: Path, size: int, mtime_ns: int) -> tuple:
    """The references a sidecar or folder YAML names (parsed once per version of the file: a folder's mgfr.yaml
    serves every photo in it); none when it cannot be read (its photos say why)."""
    from mgfr_cli.errors import MgfrError
    from mgfr_cli.faces.conditions import FOLDER_YAML, read_sidecar

    try:
        side = read_sidecar(path, allow_faces=path.name != FOLDER_YAML)
    except MgfrError:
        return ()
    return tuple(r for spec in (side.top, *side.faces.values()) for r in (spec.refs or ()))


def refs_mark(refs) -> str:
    """What reference images are (the files a restore takes from them: ``expand_refs``): a content fingerprint,
    computed once per version of the files in a process (keyed by their size and time); '' for none."""
    from mgfr_cli.errors import MgfrError
    from mgfr_cli.faces.conditions import expand_refs

    try:
        files = expand_refs(tuple(map(Path, refs)))
    except MgfrError:  # missing or empty: the photo fails with that, whatever its recipe
        files = tuple(map(Path, refs))
    key = []
    for f in files:
        try:
            st = f.stat()
            key.append((str(f), st.st_size, st.st_mtime_ns))
        except OSError:
            key.append((str(f), -1, -1))
    return _files_mark(tuple(key)) if key else ""


@lru_cache(maxsize=4096)
def _files_mark(key: tuple) -> str:
    from mgfr_cli.weights.files import fingerprint

    return fingerprint([k[0] for k in key])


def earlier_recipes(earlier: list[dict], output: Path) -> dict[str, tuple[str, bool]]:
    """Output (resolved) -> what it was made with and whether it was written without a face, as the folder's
    summary records it (rows of older runs have none)."""
    from mgfr_cli.faces.inputs import NO_FACE
    from mgfr_cli.ownership import recorded_output

    return {str(recorded_output(r["output"], output)): (r["recipe"], r.get("status") == NO_FACE) for r in earlier
            if isinstance(r.get("recipe"), str) and r["recipe"] and isinstance(r.get("output"), str)}


def skipped_as_done(job: RestoreJob, source: Path, done: Path, recipes: dict) -> Outcome:
    """The skip of a file whose output exists (a resumed run), said apart when that output was made with other
    settings than this run's (another --prompt, --steps, sidecar...): listed with the way to redo it."""
    from mgfr_cli.faces.inputs import OUTPUT_EXISTS, SKIPPED

    made, faceless = recipes.get(str(resolved(done)), ("", False))
    if not (made and job.recipe):
        return Outcome(source, SKIPPED, OUTPUT_EXISTS, done)
    (settings, _, was), (now, _, source_now) = made.partition("/"), recipe(job, source, faceless).partition("/")
    detail = OTHER_SETTINGS if settings != now else OTHER_SOURCE if was and source_now and was != source_now \
        else OUTPUT_EXISTS  # (a record of before the photo's own mark: its settings alone)
    return Outcome(source, SKIPPED, detail, done)
