"""A reference library: a folder of someone's (or a family's) photos that finds each face's references itself.

Every face of every photo in the folder (any layout, whole photos) is detected and embedded once. The cache
lives beside the library, in ``DIR/.mgfr-library/`` (``index.json``: per file its size, modification time
and faces with their landmarks; ``embeddings.npy``: one row per face), so every run and every output folder
shares it; when the library folder is read-only it goes to ``OUT/_library-cache/`` instead. A later run
embeds only the files that are new or changed and drops the ones that are gone; a cache made with another
detector or recogniser (their weights) is rebuilt, as embeddings of two networks do not compare. A search is
one matrix product over the unit embeddings (numpy): 100 000 faces take milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from mgfr_cli.errors import InputError, MgfrError
from mgfr_cli.faces.io import read_image, same_photo
from mgfr_cli.files import atomic_write_bytes, folder_lock

CACHE = ".mgfr-library"
OUT_CACHE = "_library-cache"  # in the output folder, when the library folder is read-only
VERSION = 1


@dataclass(frozen=True)
class Match:
    file: Path
    face: int
    similarity: float


@dataclass
class LibraryUpdate:
    embedded: int = 0  # faces embedded by this refresh (0 when the cache held everything)
    files_read: int = 0
    unreadable: list = field(default_factory=list)  # (path, reason)
    unsaved: str = ""  # why the cache could not be written (a full disk): the faces are embedded all the same


class ReferenceLibrary:
    """``embed(list of aligned uint8 crops) -> (N, D) unit rows``; ``helper``: a FaceHelper with a detector."""

    def __init__(self, folder: Path, helper, embed: Callable[[list[np.ndarray]], np.ndarray], fallback_cache: Path,
                 max_megapixels: float = 100.0, made_with: str = ""):
        self.folder = Path(folder)
        self.made_with = made_with  # the detector and recogniser weights: a cache made with others is rebuilt
        if not self.folder.is_dir():
            raise InputError(f"--ref-library {folder}: not a folder")
        self.helper = helper
        self.embed = embed
        self.max_megapixels = max_megapixels
        self.cache = self.folder / CACHE if _writable(self.folder) else Path(fallback_cache)
        self.files: dict[str, dict] = {}  # relative path -> {"size", "mtime", "faces": [landmarks...], "rows": [...]}
        self.matrix = np.zeros((0, 0), np.float32)
        self.rows: list[tuple[str, int]] = []  # matrix row -> (relative path, face index)
        self._rows_of: dict[str, list[int]] = {}
        self._by_size: dict[int, list[str]] = {}
        self.update = LibraryUpdate()  # what the last refresh did

    # -- building ------------------------------------------------------------------------------
    def refresh(self) -> LibraryUpdate:
        """Bring the cache up to date with the folder: embed new or changed files only. Runs sharing the library
        (the processes of a multi-GPU launch, the page and a restore) take turns: the cache's two files are
        read and written as one, and a run that waited finds the other's faces embedded."""
        with folder_lock(self.cache):
            self.update = self._refresh()
        return self.update

    def _refresh(self) -> LibraryUpdate:
        old_files, old_matrix = self._load()
        update = LibraryUpdate()
        files, vectors = {}, []
        for path in self._images():
            rel = str(path.relative_to(self.folder))
            try:
                st = path.stat()
            except OSError as exc:  # a broken link: said with the unreadable files
                update.unreadable.append((path, f"{path}: cannot read ({exc.strerror})"))
                continue
            known = old_files.get(rel)
            if known is not None and known["size"] == st.st_size and known["mtime"] == st.st_mtime_ns:
                rows = known["rows"]
                files[rel] = {**known, "rows": list(range(len(vectors), len(vectors) + len(rows)))}
                vectors += [old_matrix[r] for r in rows]
                continue
            update.files_read += 1
            try:
                rgb = read_image(path, self.max_megapixels).rgb8()
                faces = [self.helper.align(rgb, f, i, path) for i, f in enumerate(self.helper.detect(rgb))]
            except MgfrError as exc:
                update.unreadable.append((path, str(exc)))
                continue
            embedded = self.embed([f.crop for f in faces]) if faces else np.zeros((0, 0), np.float32)
            update.embedded += len(faces)
            files[rel] = {"size": st.st_size, "mtime": st.st_mtime_ns,
                          "faces": [f.landmarks.tolist() for f in faces],
                          "rows": list(range(len(vectors), len(vectors) + len(faces)))}
            vectors += list(np.asarray(embedded, np.float32))
        self.files = files
        self.matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
        self.rows = [(rel, k) for rel, info in files.items() for k in range(len(info["rows"]))]
        self._rows_of = {rel: info["rows"] for rel, info in files.items()}  # a file -> its rows of the matrix
        self._by_size: dict[int, list[str]] = {}  # (copies of the photo being restored are found by size, then bytes)
        for rel, info in files.items():
            self._by_size.setdefault(info["size"], []).append(rel)
        if update.files_read or set(files) != set(old_files):
            try:
                self._save()
            except OSError as exc:  # (a torn pair of files is never read: _load checks they match)
                update.unsaved = exc.strerror or str(exc)
        return update

    def _images(self) -> list[Path]:
        """The library's photos: every image file but what ``mgfr restore`` wrote into it beside them (restored faces
        are mgfr's inventions, never references); a library of outputs only is used as asked."""
        from mgfr_cli.faces.inputs import photos_below

        return photos_below(self.folder) or photos_below(self.folder, outputs=True)

    def _load(self) -> tuple[dict, np.ndarray]:
        try:
            index = json.loads((self.cache / "index.json").read_text())
            matrix = np.load(self.cache / "embeddings.npy", allow_pickle=False)
            rows = sorted(r for info in index["files"].values() for r in info["rows"])
            if index.get("version") != VERSION or matrix.ndim != 2 or rows != list(range(len(matrix))):
                return {}, np.zeros((0, 0), np.float32)  # not one cache (another tool's, or a torn copy): rebuilt
            if index.get("made_with", "") != self.made_with:  # another recogniser's embeddings do not compare
                return {}, np.zeros((0, 0), np.float32)
            return index["files"], matrix
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}, np.zeros((0, 0), np.float32)

    def _save(self) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, self.matrix, allow_pickle=False)
        atomic_write_bytes(self.cache / "embeddings.npy", buf.getvalue())
        atomic_write_bytes(self.cache / "index.json", json.dumps({"version": VERSION, "made_with": self.made_with,
                                                                  "files": self.files}).encode())

    # -- searching -----------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, threshold: float, skip: Collection[Path] = ()) -> list[Match]:
        """Up to ``k`` library faces whose cosine to ``query`` (a unit vector) is at least ``threshold``, best first;
        never a face of the files in ``skip`` or of a copy of one (the photo being restored: a face is not its own
        reference)."""
        if not len(self.rows):
            return []
        sims = self.matrix @ np.asarray(query, np.float32)
        for rel in self._copies_of(skip):
            sims[self._rows_of.get(rel, [])] = -np.inf
        top = np.argsort(-sims)[:k]
        return [Match(self.folder / self.rows[i][0], self.rows[i][1], float(sims[i])) for i in top if sims[i] >= threshold]

    def _copies_of(self, photos: Collection[Path]) -> list[str]:
        """The library's files that are one of ``photos``: the file itself, or a copy (the same bytes:
        ``IMG_1 (1).jpg``, the page's upload of a library photo)."""
        out = []
        for photo in photos:
            try:
                size = Path(photo).stat().st_size
            except OSError:
                continue
            out += [rel for rel in self._by_size.get(size, []) if same_photo(self.folder / rel, photo)]
        return out

    def find(self, crop: np.ndarray, k: int, threshold: float, skip: Collection[Path] = ()
             ) -> tuple[tuple, tuple[Match, ...]]:
        """The references of one aligned face (of a file in ``skip``): its best library matches and their crops."""
        query = np.asarray(self.embed([crop]), np.float32)[0]
        matches = tuple(self.search(query, k, threshold, skip))
        return tuple(self.reference(m) for m in matches), matches

    def reference(self, match: Match):
        """The aligned crop of a matched face (aligned again from its stored landmarks: no crops are cached)."""
        from mgfr_cli.faces.helper import DetectedFace

        rel = str(match.file.relative_to(self.folder))
        landmarks = np.asarray(self.files[rel]["faces"][match.face], np.float32)
        rgb = read_image(match.file, self.max_megapixels).rgb8()
        return self.helper.align(rgb, DetectedFace(box=(0, 0, 0, 0), score=1.0, landmarks=landmarks), 0, match.file)


def library_of(folder: Path, helper, recogniser, fallback_cache: Path, max_megapixels: float = 100.0) -> ReferenceLibrary:
    """A library whose faces are found by ``helper``'s detector and embedded by ``recogniser`` (identity guidance's
    network): what ``--ref-library``, the page and :meth:`mgfr_cli.api.Restorer.open_library` open (not refreshed)."""
    from mgfr_cli.errors import ConfigError, WeightsError

    if helper.detector is None:
        raise ConfigError("a reference library finds faces in whole photos: load the Restorer with a detector")
    if recogniser is None:
        raise WeightsError("a reference library needs the recogniser: Restorer.load(library=True) fetches it "
                           "(mgfr weights fetch arcface-irse50)")
    return ReferenceLibrary(folder, helper, lambda crops: recogniser.embed_crops(crops).cpu().numpy(), fallback_cache,
                            max_megapixels, f"{helper.detector_name}; {getattr(recogniser, 'weights', '')}")


def _writable(folder: Path) -> bool:
    import tempfile

    try:
        (folder / CACHE).mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=folder / CACHE):
            pass
        return True
    except OSError:
        return False
