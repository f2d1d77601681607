"""``mgfr align``: FFHQ-style crops of every face, and a table of where each came from.

It shares detection and alignment with ``restore`` (the same :class:`FaceHelper` calls) and the same
input collection, so a crop made here is exactly what the restorer would see.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mgfr_cli.faces.inputs import FAILED, NO_FACE, RESTORED, Outcome, collect_inputs
from mgfr_cli.errors import MgfrError, OutputError
from mgfr_cli.faces.helper import FaceHelper, FaceSelection
from mgfr_cli.faces.io import atomic_write_bytes, check_output_folder, read_image, write_image

FIELDS = ["source", "face_index", "crop", "score", "x1", "y1", "x2", "y2"] + [
    f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in ("x", "y")]


def align_inputs(helper: FaceHelper, inputs, output: Path, selection: FaceSelection, recursive: bool,
                 max_megapixels: float) -> list[Outcome]:
    """Write ``OUT/<photo>_NN.png`` per face plus ``faces.csv`` and ``faces.json``; one outcome per photo."""
    check_output_folder(output)  # a file, a read-only mount: one line before any work
    items, outcomes = collect_inputs(inputs, recursive, exclude=output)
    rows = []
    try:
        for item in items:
            _align_one(helper, item, output, selection, max_megapixels, rows, outcomes)
        _write_tables(output, rows)
    except OSError as exc:  # a full disk mid-run: stop with one line; the table lists what was written
        try:
            _write_tables(output, rows)
        except OSError:
            pass
        raise OutputError(f"{output}: cannot write ({exc.strerror or exc}); stopped after {len(rows)} crop(s)") from None
    return outcomes


def _align_one(helper, item, output: Path, selection, max_megapixels, rows: list, outcomes: list) -> None:
    try:
        rgb = read_image(item.path, max_megapixels).rgb8()
        faces = helper.detect_and_align(rgb, selection, item.path)
    except MgfrError as exc:
        outcomes.append(Outcome(item.path, FAILED, str(exc)))
        return
    if not faces:
        outcomes.append(Outcome(item.path, NO_FACE, "no face detected"))
        return
    for f in faces:
        rel = item.relative
        crop_path = output / rel.parent / f"{rel.stem}_{f.index:02d}.png"
        write_image(crop_path, f.crop)
        row = {"source": str(item.path), "face_index": f.index, "crop": str(crop_path), "score": round(f.score, 4),
               **dict(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in f.box)))}
        row.update(dict(zip(FIELDS[8:], (round(float(v), 2) for v in f.landmarks.reshape(-1)))))
        rows.append(row)
    outcomes.append(Outcome(item.path, RESTORED, "", output, len(faces)))


def _write_tables(output: Path, rows: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / "faces.csv", buf.getvalue().encode())
    atomic_write_bytes(output / "faces.json", json.dumps(rows, indent=1).encode())
