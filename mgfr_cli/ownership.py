"""Only what mgfr wrote is ever replaced or removed.

Every command that writes into a folder the user names (``-o``) goes through these checks: a folder is
replaced only when it is one mgfr wrote (an adapter, a checkpoint), a file only when mgfr recognises it as
its own (the review page, the summary, the tables of ``align``), and nothing is ever written over the
model root, the file being converted, or a folder that holds the working directory. Anything else gets
another name (said so) or is refused with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from mgfr_cli.errors import OutputError
from mgfr_cli.files import resolved, temp_prefix

ADAPTER_FILES = frozenset({"config.json", "diffusion_pytorch_model.safetensors", "conversion.json"})
PAGE_MARK = '<meta name="generator" content="mgfr">'


def is_mgfr_adapter(folder: Path) -> bool:
    """A ``save_pretrained`` folder of an ``MgfrAdapter`` holding nothing but the files mgfr writes there."""
    try:
        names = {p.name for p in Path(folder).iterdir()}
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("_class_name") == "MgfrAdapter" and names <= ADAPTER_FILES


def is_empty_dir(folder: Path) -> bool:
    try:
        return Path(folder).is_dir() and not any(Path(folder).iterdir())
    except OSError:
        return False


def refuse_protected(out: Path, protected: dict[str, Path | None], flag: str = "-o") -> None:
    """Refuse ``out`` when it is, or holds, a protected path (the source, the model root, the working folder)."""
    target = resolved(out)
    for what, path in protected.items():
        if path is None:
            continue
        p = resolved(path)
        if p == target or target in p.parents:
            raise OutputError(f"{flag} {out}: would replace {what} ({path}); choose a new folder")


def replace_folder(tmp: Path, final: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Put the finished folder ``tmp`` at ``final``. An existing ``final`` is replaced only when ``is_ours`` says
    mgfr wrote it (or it is empty); otherwise ``tmp`` is removed and the user's folder is left as it was."""
    final = Path(final)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final}: exists and is not a folder mgfr wrote; not replaced (choose another name)")
    if final.exists() and not (is_empty_dir(final) or is_ours(final)):
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final}: holds files mgfr did not write (not {what}); not replaced: choose a new or "
                          f"empty folder")
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=temp_prefix(final) + "old-", dir=final.parent))
        os.replace(final, aside / final.name)
    os.replace(tmp, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)  # mgfr's own old folder, moved aside above


def temp_folder_beside(final: Path) -> Path:
    """A new, empty hidden folder beside ``final`` (never a name that already exists)."""
    Path(final).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(Path(final)), suffix=".tmp", dir=Path(final).parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the folder mgfr leaves gets the usual permissions
    return tmp


def own_or_free(path: Path, is_ours: Callable[[Path], bool]) -> tuple[Path, str]:
    """``path`` when it is free or mgfr's own file; else the first free ``NAME-mgfr[-N].EXT`` beside it, with a
    note saying why (a user's ``index.html`` is never replaced by a review page)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return path, ""
    if path.is_file() and not path.is_symlink() and is_ours(path):
        return path, ""
    for n in range(1, 1000):
        alt = path.with_name(f"{path.stem}-mgfr{'' if n == 1 else f'-{n}'}{path.suffix}")
        if (not alt.exists() and not alt.is_symlink()) or (alt.is_file() and is_ours(alt)):
            return alt, f"{path} is not a file mgfr wrote: kept, and this one written to {alt.name} instead"
    raise OutputError(f"{path}: no free name beside it for mgfr's file")


def is_mgfr_page(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return PAGE_MARK.encode() in fh.read(4096)
    except OSError:
        return False


def is_json_rows(path: Path, keys: set[str]) -> bool:
    """A JSON list of objects that all have ``keys`` (the summary, the tables of ``align``): mgfr's shape."""
    try:
        if path.stat().st_size > 512 << 20:
            return False
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and keys <= set(r) for r in rows)


def csv_header(path: Path) -> list[str]:
    """The first line of ``path`` split at commas ([] when it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip().split(",")
    except OSError:
        return []


def is_csv_with_header(path: Path, header: list[str]) -> bool:
    return csv_header(path) == list(header)


# -- what `mgfr restore` wrote into a folder: its outputs (listed in its summary) and the folders beside them -------
SUMMARY = "mgfr-summary.json"
SUMMARY_KEYS = {"source", "status", "detail", "output", "faces"}
RESTORE_FOLDERS = ("_faces", "_report", "_library-cache")  # beside its outputs (``_report-mgfr-N``: a user had one)


def is_restore_folder(name: str) -> bool:
    return name in RESTORE_FOLDERS or name.startswith("_report-mgfr-")


def recorded_output(value: str, folder: Path) -> Path:
    """A summary row's output, resolved. Rows are written with resolved paths; older ones hold a path relative to
    the folder their run started in, unknown now: read from here, else from the output ``folder`` or a folder above
    it, the first reading that names a file inside ``folder`` (``in/a.jpg`` recorded for ``-o in``, read from
    ``..``)."""
    path = Path(value)
    if path.is_absolute():
        return resolved(path)
    out = resolved(folder)
    for base in (Path.cwd(), out, *out.parents):
        candidate = resolved(base / path)
        if (candidate == out or out in candidate.parents) and candidate.is_file():
            return candidate
    return resolved(path)


def restore_outputs(folder: Path, names) -> set[Path] | None:
    """The outputs the restore summaries among ``names`` (files of ``folder``) list, resolved; None when none of
    them is an mgfr summary (``folder`` is not an output folder of ``mgfr restore``)."""
    rows = restore_rows(folder, names)
    return None if rows is None else set(rows)


def restore_rows(folder: Path, names) -> dict[Path, str] | None:
    """Output (resolved) -> the photo it was restored from, as the restore summaries among ``names`` list them."""
    found = None
    for name in names:
        path = Path(folder) / name
        if name.startswith("mgfr-summary") and name.endswith(".json") and is_json_rows(path, SUMMARY_KEYS):
            rows = json.loads(path.read_text())
            found = (found or {}) | {recorded_output(r["output"], folder): str(r["source"]) for r in rows
                                     if isinstance(r["output"], str)}
    return found
