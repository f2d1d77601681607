"""Inputs of a batch: files, folders and globs -> image files, each with the path its output mirrors.

Shared by ``restore``, ``align`` and ``degrade``, so all three agree on what is read and where its
output goes: only image files (one list of formats, :data:`io.IMAGE_EXTENSIONS`), never the output folder
itself, never a path that climbs out of the output folder, and never two inputs onto one output name.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

from mgfr_cli.faces.io import is_image_file, is_video_file
from mgfr_cli.files import is_file_or_link, resolved

RESTORED, SKIPPED, NO_FACE, FAILED = "restored", "skipped", "no face", "failed"


@dataclass(frozen=True)
class InputItem:
    path: Path
    relative: Path  # where its output goes under OUT


@dataclass(frozen=True)
class Outcome:
    source: Path
    status: str
    detail: str = ""
    output: Path | None = None
    faces: int = 0
    identity: tuple = ()  # per face with references: {"face", "before", "after", "references"} (the judge's cosines)
    library: tuple = ()  # per face that asked the reference library: {"face", "matches": [{"file", "similarity"}]}
    tracks: tuple = ()  # a video's tracks: {"track", "frames", "flicker": {"input", "restored", "pairs"}}
    recipe: str = ""  # what the output was made with (app.outputs.recipe): a rerun with other settings says so


def collect_inputs(inputs: Sequence[str], recursive: bool, exclude: Path | None = None, own: Collection[Path] = (),
                   own_dirs: Collection[Path] = ()) -> tuple[list[InputItem], list[Outcome]]:
    """Files, folders and globs -> image files with the relative path their output mirrors.

    Returns the items and the outcomes of inputs that name nothing. Symbolic links to folders are not
    followed (a link loop cannot trap the walk). ``exclude`` (the output folder) is never walked into from
    above (``restore photos -o photos/out``); a folder or pattern inside it (``restore photos -o photos``) is read
    whole, subfolders too, but for the command's own folders there (``own_dirs``). Files an earlier run of the
    command wrote (``own``, resolved paths) are never inputs, and they are dropped before names are given, so a
    rerun gives each input the name the first run gave it. Relative paths never climb out of the output
    folder (``..`` in a glob), and inputs whose outputs would share a name (``a.jpg`` and ``a.png``, the
    same name from two globs) get distinct names (``a-jpg``, ``a-png``), never each other's file.
    """
    items: list[InputItem] = []
    missing: list[Outcome] = []
    skip = resolved(exclude) if exclude is not None else None
    fences = [resolved(d) for d in own_dirs]
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            ignored: list[Path] = []
            fence = fences if inside(path, skip) else [skip]  # a folder inside -o: all of it but mgfr's own
            found = _walk(path, recursive, fence, ignored)
            items += found
            missing += [Outcome(p, SKIPPED, f"{NOT_AN_IMAGE} ({p.suffix or 'no extension'})") for p in ignored]
            if not found and not ignored:  # nothing at all: said, as for a pattern that matches nothing
                below = [] if recursive else _walk(path, True, fence)
                missing.append(Outcome(path, FAILED, "no photo or clip in this folder" + (
                    f"; {len(below)} in its subfolders (add --recursive)" if below else "")))
        elif path.exists() or path.is_symlink():
            items.append(InputItem(path, Path(path.name)))
            if own and resolved(path) in {Path(p) for p in own}:  # named, not found in a folder: said
                missing.append(Outcome(path, SKIPPED, OWN_OUTPUT))
        elif glob.has_magic(spec):
            matches = _glob(spec, recursive)
            root = _glob_root(spec)
            fence = fences if inside(root, skip) else [skip]
            for m in matches:
                mp = Path(m)
                if is_file_or_link(mp) and (is_image_file(mp) or is_video_file(mp)) \
                        and not any(inside(mp, f) for f in fence):  # (a broken link fails, as in a folder)
                    items.append(InputItem(mp, _relative(mp, root)))
            if not matches:
                missing.append(Outcome(path, FAILED, "no file matches this pattern"))
        else:
            missing.append(Outcome(path, FAILED, "not found"))
    own = {Path(p) for p in own}  # resolved: another spelling of an output is that output
    seen: set[Path] = set()
    unique = []
    for it in items:
        key = it.path.absolute()
        if key not in seen and not (own and resolved(it.path) in own):
            seen.add(key)
            unique.append(it)
    return _distinct_names(unique), missing


def _distinct_names(items: list[InputItem]) -> list[InputItem]:
    """Items whose outputs would collide (same folder and stem, any extension: ``auto`` may make both PNG)
    keep their source extension in the name."""
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((str(it.relative.parent), it.relative.stem.lower()), []).append(i)
    out = list(items)
    for members in groups.values():
        if len(members) > 1:
            for n, i in enumerate(members):
                rel = items[i].relative
                tag = rel.suffix.lstrip(".").lower() or "file"
                stem = f"{rel.stem}-{tag}"
                if sum(items[j].relative.suffix.lower() == rel.suffix.lower() for j in members) > 1:
                    stem += f"-{n + 1}"  # the same name and extension twice (two globs): number them
                out[i] = InputItem(items[i].path, rel.with_name(stem + rel.suffix))
    return out


def inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        resolved(path).relative_to(folder)
        return True
    except ValueError:
        return False


def _glob(pattern: str, recursive: bool) -> list[str]:
    """``glob.glob``'s matches, but ``**`` never goes into a linked folder, as folders are walked (glob's follows
    links: one to a folder above it, ``photos/all -> ..``, made it list without end)."""
    if not (recursive and "**" in pattern):
        return sorted(glob.glob(pattern, recursive=recursive))
    root = _glob_root(pattern)
    rest = Path(*Path(pattern).parts[len(root.parts):])
    if rest.name == "**":  # glob's `**` at the end also lists the files (pathlib's: folders only)
        rest = rest / "*"
    dots = any(part.startswith(".") for part in rest.parts)  # glob's rule: a wildcard never matches a dot name
    return sorted(str(m) for m in root.glob(str(rest))
                  if dots or not any(part.startswith(".") for part in m.parts[len(root.parts):]))


def _glob_root(pattern: str) -> Path:
    """The folder a pattern's matches are mirrored from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, root: Path) -> Path:
    """``path`` below ``root``, normalised; a path that would climb out (``..``) keeps only its name."""
    try:
        rel = Path(os.path.normpath(path.relative_to(root)))
    except ValueError:
        return Path(path.name)
    if rel.is_absolute() or rel.parts[:1] == ("..",):
        return Path(path.name)
    return rel


# Files that live beside photos and are not meant as images: not worth a line in the summary (.aae: an iPhone's
# edits, one beside each edited photo of an export; .thm: a camera's clip thumbnail; .pp3, .dop: raw editors')
COMPANION_FILES = (".yaml", ".yml", ".txt", ".json", ".csv", ".md", ".xmp", ".ini", ".db", ".html", ".aae", ".thm",
                   ".pp3", ".dop")
NOT_AN_IMAGE = "not an image format mgfr reads"
OUTPUT_EXISTS = "output exists (use --overwrite)"  # a resumed run's skip: counted, not listed
OWN_OUTPUT = "written here by an earlier run of this command (its record lists it): an output, not an input"


def _walk(folder: Path, recursive: bool, fence: list, ignored: list | None = None) -> list[InputItem]:
    """Image files in ``folder``, never below a folder of ``fence``; other files (but companions like sidecars)
    appended to ``ignored``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any(inside(Path(dirpath) / d, f) for f in fence)) if recursive else []
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                continue
            if is_image_file(p) or is_video_file(p):
                out.append(InputItem(p, p.relative_to(folder)))
            elif ignored is not None and p.suffix.lower() not in COMPANION_FILES:
                ignored.append(p)
    return out


def photos_below(folder: Path, outputs: bool = False, skip: Callable[[Path], bool] = lambda d: False) -> list[Path]:
    """The image files below ``folder`` that are the user's photos, sorted: hidden files and folders left out, folders
    ``skip`` names, and (unless ``outputs``) what ``mgfr restore`` wrote there: the outputs its summaries list and
    the folders it keeps beside them (restored faces are mgfr's inventions: never references, never data). Shared by
    the reference library and the training data."""
    from mgfr_cli.ownership import is_restore_folder, restore_outputs

    out, made = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        listed = restore_outputs(here, filenames)
        made |= listed or set()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not skip(here / d)
                             and not (listed is not None and is_restore_folder(d)))
        out += [here / n for n in filenames if not n.startswith(".") and is_image_file(here / n)]
    return sorted(p for p in out if outputs or resolved(p) not in made)
