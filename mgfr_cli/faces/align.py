"""``mgfr align``: FFHQ-style crops of every face, and a table of where each came from.

It shares detection and alignment with ``restore`` (the same :class:`FaceHelper` calls) and the same
input collection, so a crop made here is exactly what the restorer would see.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable, Container

from mgfr_cli.faces.inputs import FAILED, NO_FACE, RESTORED, Outcome, collect_inputs
from mgfr_cli.errors import STOPPING_WRITE_ERRORS, MgfrError, OutputError, unexpected
from mgfr_cli.faces.helper import FaceHelper, FaceSelection
from mgfr_cli.faces.io import read_image, write_image
from mgfr_cli.files import Journal, atomic_write_bytes, check_output_folder, fit_name, name_max, resolved

FIELDS = ["source", "face_index", "crop", "score", "x1", "y1", "x2", "y2"] + [
    f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in ("x", "y")] + [
    "frame", "frames"]  # videos: face_index is the track, the crop is from its first frame; frames: its length


def align_inputs(helper: FaceHelper, inputs, output: Path, selection: FaceSelection, recursive: bool,
                 max_megapixels: float, on_note: Callable[[str], None] = lambda line: None) -> list[Outcome]:
    """Write ``OUT/<photo>_NN.png`` per face plus ``faces.csv`` and ``faces.json``; one outcome per photo."""
    check_output_folder(output)  # a file, a read-only mount: one line before any work
    tables = _table_paths(output)
    # the crops an earlier align wrote here (by resolved path): those may be written again, and are never inputs
    journal = Journal(tables[1])  # and those of a run stopped before it wrote the tables (Ctrl-C, kill -9)
    earlier = {_crop_key(r["crop"], output): r for r in _rows_listed(tables[1]) + journal.rows()
               if isinstance(r.get("crop"), str)}
    items, outcomes = collect_inputs(inputs, recursive, exclude=output, own=earlier.keys())
    rows = []
    try:
        for item in items:
            try:
                done = len(rows)
                _align_one(helper, item, output, selection, max_megapixels, rows, outcomes, earlier)
                for row in rows[done:]:
                    journal.add(row)
            except OSError as exc:
                if exc.errno in STOPPING_WRITE_ERRORS:
                    raise  # a full disk: below; else a name the folder refuses fails this photo, the rest go on
                outcomes.append(Outcome(item.path, FAILED, f"cannot write its crops: {exc.strerror or exc}"
                                                           + (f" ({exc.filename})" if exc.filename else "")))
            except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the rest
                outcomes.append(Outcome(item.path, FAILED, unexpected(item.path, exc)))
        _write_tables(tables, _merged(earlier, rows))
    except OSError as exc:  # a full disk mid-run: stop with one line; the table lists what was written
        try:
            _write_tables(tables, _merged(earlier, rows))
        except OSError:
            pass
        raise OutputError(f"{output}: cannot write ({exc.strerror or exc}); stopped after {len(rows)} crop(s)") from None
    if tables != (output / "faces.csv", output / "faces.json"):
        on_note(f"{output}: faces.csv or faces.json there is not a file mgfr wrote: kept, the tables written to "
                f"{tables[0].name} and {tables[1].name}")
    return outcomes


def _table_paths(output: Path) -> tuple[Path, Path]:
    """``faces.csv`` and ``faces.json``, or free names beside them when a file of the user's has the name."""
    from mgfr_cli.ownership import is_csv_with_header, is_json_rows, own_or_free

    csv_path, _ = own_or_free(output / "faces.csv", lambda p: is_csv_with_header(p, FIELDS))
    json_path, _ = own_or_free(output / "faces.json", lambda p: is_json_rows(p, set(FIELDS[:8])))
    return csv_path, json_path


def _rows_listed(table: Path) -> list[dict]:
    try:
        rows = json.loads(table.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("crop"), str)] if isinstance(rows, list) else []


def _crop_key(crop, output: Path) -> str:
    """A crop named from another spelling of the same folder (``-o out`` then ``-o ./out/``, or a run started in
    another folder) is the same crop: rows hold resolved paths (older rows, paths relative to where their run
    started: :func:`~mgfr_cli.ownership.recorded_output`)."""
    from mgfr_cli.ownership import recorded_output

    return str(recorded_output(str(crop), output))


def _merged(earlier: dict[str, dict], rows: list[dict]) -> list[dict]:
    """The tables after a run: the crops earlier runs wrote here (by resolved path) that are still there and were
    not written again (a run over other photos into the same folder keeps them listed: a later run may write them
    again), then this run's."""
    now = {r["crop"] for r in rows}  # resolved when written
    return [r for key, r in earlier.items() if key not in now and Path(key).is_file()] + rows


def _align_one(helper, item, output: Path, selection, max_megapixels, rows: list, outcomes: list,
               written: Container[str] = frozenset()) -> None:
    from mgfr_cli.faces.io import is_video_file

    if is_video_file(item.path):
        return _align_video(helper, item, output, selection, max_megapixels, rows, outcomes, written)
    try:
        rgb = read_image(item.path, max_megapixels).rgb8()
        faces, found = helper.align_faces(rgb, selection, item.path)
    except MgfrError as exc:
        outcomes.append(Outcome(item.path, FAILED, str(exc)))
        return
    if not faces:
        outcomes.append(Outcome(item.path, NO_FACE, selection.none_kept(found) or "no face detected"))
        return
    rel = item.relative
    crops = [output / rel.parent / fit_name(rel.stem, f"_{f.index:02d}.png", name_max(output / rel.parent))
             for f in faces]
    mine = next((c for c in crops if c.exists() and str(resolved(c)) not in written), None)
    if mine is not None:
        outcomes.append(Outcome(item.path, FAILED, f"{mine} exists and was not written by mgfr align; not replaced"))
        return
    for f, crop_path in zip(faces, crops):
        write_image(crop_path, f.crop)
        row = {"source": str(item.path), "face_index": f.index, "crop": str(resolved(crop_path)),
               "score": round(f.score, 4),
               **dict(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in f.box)))}
        row.update(dict(zip(FIELDS[8:18], (round(float(v), 2) for v in f.landmarks.reshape(-1)))))
        rows.append(row)
    outcomes.append(Outcome(item.path, RESTORED, "", output, len(faces)))


def _align_video(helper, item, output: Path, selection, max_megapixels, rows: list, outcomes: list,
                 written) -> None:
    """A clip's tracks, numbered as ``restore`` numbers them (the order they first appear): one crop per track
    from its first frame, so a user can write ``tracks: {K: ...}`` in the clip's sidecar."""
    from mgfr_cli.faces.helper import DetectedFace
    from mgfr_cli.faces.tracking import Tracker, per_frame, select_tracks
    from mgfr_cli.faces.video_io import frames, pixel_aspect

    tracker, firsts, broke, size = Tracker(), {}, [], (0, 0)
    try:
        aspect = pixel_aspect(item.path)  # an anamorphic clip's faces cropped as shown
        for index, _, _, rgb in frames(item.path, max_megapixels, broke):
            tracker.update(index, helper.detect(rgb, per_frame(selection)))  # which faces: whole tracks, below
            size = rgb.shape[1::-1]
            for t in tracker.tracks[len(firsts):]:
                firsts[t.index] = helper.align(rgb, DetectedFace(t.boxes[0], 1.0, t.landmarks[0]), t.index, item.path,
                                               aspect)
        tracks = select_tracks(tracker.tracks, selection, *size)  # each keeps its own number
    except MgfrError as exc:
        outcomes.append(Outcome(item.path, FAILED, str(exc)))
        return
    if not tracks:
        outcomes.append(Outcome(item.path, NO_FACE, selection.none_kept(len(tracker.tracks), "track")
                                or "no face in any frame"))
        return
    rel = item.relative
    for t in tracks:
        folder = output / rel.parent
        crop_path = folder / fit_name(rel.stem, f"_track_{t.index:02d}.png", name_max(folder))
        if crop_path.exists() and str(resolved(crop_path)) not in written:
            outcomes.append(Outcome(item.path, FAILED, f"{crop_path} exists and was not written by mgfr align; not replaced"))
            return
        write_image(crop_path, firsts[t.index].crop)
        row = {"source": str(item.path), "face_index": t.index, "crop": str(resolved(crop_path)), "score": "",
               **dict(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in t.boxes[0]))),
               "frame": t.frames[0], "frames": len(t.frames)}
        row.update(dict(zip(FIELDS[8:18], (round(float(v), 2) for v in t.landmarks[0].reshape(-1)))))
        rows.append(row)
    outcomes.append(Outcome(item.path, RESTORED, "; ".join(broke), output, len(tracks)))


def _write_tables(tables: tuple[Path, Path], rows: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    tables[0].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(tables[0], buf.getvalue().encode())
    atomic_write_bytes(tables[1], json.dumps(rows, indent=1).encode())
    Journal(tables[1]).clear()
