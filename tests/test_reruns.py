"""A command run again into a folder it wrote: what earlier runs wrote there stays listed as mgfr's (a run over
other photos does not forget them), so a later run may write them again instead of calling them the user's."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

ALIGN = ["--detector", "retinaface_mobile0.25", "--device", "cpu"]


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


@pytest.fixture
def photos(astronaut, tmp_path):
    face = np.ascontiguousarray(astronaut[:256, 100:356])
    return _png(tmp_path / "in" / "a.png", face), _png(tmp_path / "in" / "b.png", np.ascontiguousarray(face[:, ::-1]))


def test_align_into_its_own_folder_keeps_earlier_crops_listed(tiny_root, photos, tmp_path, cli, monkeypatch):
    a, b = photos
    out = tmp_path / "faces"
    for photo in (a, b):
        code, text, err = cli("align", photo, "-o", out, "--model-root", tiny_root, *ALIGN)
        assert code == 0, text + err
    rows = json.loads((out / "faces.json").read_text())
    assert sorted(Path(r["crop"]).name for r in rows) == ["a_00.png", "b_00.png"]  # b's run kept a's row
    assert (out / "faces.csv").read_text().count("\n") == 3
    # a again, with -o spelled from another folder: its crop is mgfr's, written again (not "not written by")
    monkeypatch.chdir(tmp_path)
    code, text, err = cli("align", a, "-o", Path("faces/"), "--model-root", tiny_root, *ALIGN)
    assert code == 0 and "not written by" not in " ".join(text.split()), text + err
    assert sorted(Path(r["crop"]).name for r in json.loads((out / "faces.json").read_text())) == ["a_00.png",
                                                                                                 "b_00.png"]
    # a file of the user's at an unlisted crop name is still the user's
    mine = _png(out / "c_00.png", np.zeros((8, 8, 3), np.uint8))
    c = _png(tmp_path / "in" / "c.png", cv2.imread(str(a))[:, :, ::-1])
    code, text, _ = cli("align", c, "-o", out, "--model-root", tiny_root, *ALIGN)
    assert code == 1 and "not written by mgfr align" in " ".join(text.split())
    assert cv2.imread(str(mine)).shape == (8, 8, 3)


def test_degrade_into_its_own_folder_keeps_earlier_parameters(photos, tmp_path, cli):
    a, b = photos
    out = tmp_path / "lq"
    for photo in (a, b):
        code, text, err = cli("degrade", photo, "-o", out)
        assert code == 0, text + err
    first = (out / "a.png").read_bytes()
    assert sorted(json.loads((out / "params.json").read_text())) == ["a.png", "b.png"]  # b's run kept a's
    code, text, err = cli("degrade", a, "-o", out)  # a again: mgfr's own copy, written again (the same seed)
    assert code == 0 and "not written by" not in " ".join(text.split()), text + err
    assert (out / "a.png").read_bytes() == first
    (out / "b.png").unlink()  # a copy the user removed is no longer listed
    assert cli("degrade", a, "-o", out)[0] == 0
    assert sorted(json.loads((out / "params.json").read_text())) == ["a.png"]


def test_a_photo_without_a_face_is_written_and_stays_done(tiny_root, photos, tmp_path, cli):
    """A faceless photo is written as GFPGAN and CodeFormer write it (its background, resized by --upscale: Lanczos
    here), listed as `no face`; a rerun skips it and the summary and the page still say `no face`, not `skipped`;
    a rerun with other settings says so, as for restored photos, when they are settings it is made with (the
    upscale, not the sampling)."""
    a, _ = photos
    y, x = np.mgrid[0:45, 0:70]
    scene = np.dstack([x * 3, y * 5, (x + y) * 2]).astype(np.uint8)  # no face, and not flat: the resize shows
    _png(tmp_path / "in" / "scene.png", scene)
    out = tmp_path / "out"
    args = ("restore", a, tmp_path / "in" / "scene.png", "-o", out, "--model-root", tiny_root, "--upscale", "2",
            "--steps", "1", *ALIGN)
    code, text, err = cli(*args)
    assert code == 0 and "no face detected (written without restoring)" in text, text + err
    written = cv2.imread(str(out / "scene.png"))[..., ::-1]
    expected = cv2.resize(scene, (140, 90), interpolation=cv2.INTER_LANCZOS4)  # the background path, computed here
    assert written.shape == expected.shape and np.abs(written.astype(int) - expected).max() == 0
    rows = {Path(r["source"]).name: r for r in json.loads((out / "mgfr-summary.json").read_text())}
    assert rows["scene.png"]["status"] == "no face" and Path(rows["scene.png"]["output"]).name == "scene.png"
    assert rows["scene.png"]["recipe"] and rows["a.png"]["recipe"]
    stamp = (out / "scene.png").stat().st_mtime_ns

    code, text, err = cli(*args)  # resumed: both done
    assert code == 0 and (out / "scene.png").stat().st_mtime_ns == stamp, text + err
    rows = {Path(r["source"]).name: r for r in json.loads((out / "mgfr-summary.json").read_text())}
    assert rows["scene.png"]["status"] == "no face" and rows["a.png"]["status"] == "restored"
    page = (out / "index.html").read_text()
    assert page.count("data-status='no face'") == 1 and "data-status='skipped'" not in page

    code, text, err = cli(*args[:-len(ALIGN) - 2], "--steps", "2", *ALIGN)  # sampling: not what scene.png is made of
    lines = [line for line in text.splitlines() if "made with other settings" in line]
    assert code == 0 and len(lines) == 1 and "a.png" in lines[0], text + err
    code, text, err = cli(*args[:-len(ALIGN) - 4], "--upscale", "3", "--steps", "1", *ALIGN)  # both are
    assert code == 0 and text.count("made with other settings") == 2, text + err


def test_a_photo_changed_since_its_output_was_made_is_said(tiny_root, photos, tmp_path, cli):
    """A photo replaced by a new scan or an edit after it was restored: the rerun skipped it as done, unsaid, and its
    output stayed the old photo's. It is listed with the way to redo it; a copy of the folder that lost the files'
    times is the same photos (nothing listed). Older summaries (a recipe without the photo's mark) say nothing."""
    a, b = photos
    out = tmp_path / "out"
    args = ("restore", tmp_path / "in", "-o", out, "--model-root", tiny_root, "--steps", "1", *ALIGN)
    assert cli(*args)[0] == 0
    edited = cv2.imread(str(a))
    edited[:20] = 0  # (one band darkened: the file's size may not change, its bytes do)
    cv2.imwrite(str(a), edited)
    os.utime(b, ns=(1, 1))  # b's time lost (copied without -p), its bytes the same
    code, text, err = cli(*args)
    lines = [line for line in text.splitlines() if "earlier version" in line]
    assert code == 0 and len(lines) == 1 and "a.png" in lines[0] and "--overwrite to redo it" in lines[0], text + err
    rows = json.loads((out / "mgfr-summary.json").read_text())
    for r in rows:
        r["recipe"] = r["recipe"].split("/")[0]  # as a summary written before the photo's mark
    (out / "mgfr-summary.json").write_text(json.dumps(rows))
    code, text, err = cli(*args)
    assert code == 0 and "earlier version" not in text and "other settings" not in text, text + err
    code, text, err = cli(*args, "--overwrite")
    assert code == 0 and "│ restored │      2 │" in text, text + err
    assert "earlier version" not in cli(*args)[1]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_restore_into_the_input_folder_reads_it_whole_and_never_its_own_outputs(tiny_root, photos, tmp_path, cli,
                                                                               monkeypatch):
    """`-o` is the input folder: its subfolders (--recursive) and a pattern inside it are read, not dropped as "the
    output folder"; every output of every earlier run (two suffixes, the summary read from another folder) stays
    mgfr's, never an input; and a rerun gives each photo the name the first run gave it."""
    a, b = photos
    _png(tmp_path / "in" / "sub" / "c.png", cv2.imread(str(a))[:, :, ::-1])
    folder = tmp_path / "in"
    run = ("--model-root", tiny_root, "--steps", "1", *ALIGN)
    monkeypatch.chdir(tmp_path)  # relative spellings, as typed
    code, text, err = cli("restore", "in", "-o", "in", "--recursive", "--suffix", "_r", "--save-faces", *run)
    assert code == 0 and (folder / "sub" / "c_r.png").is_file(), text + err  # the subfolder was read
    assert (folder / "_faces").is_dir() and (folder / "_report").is_dir()  # mgfr's own: never read as inputs
    code, text, err = cli("restore", "in/*.png", "-o", "in", "--suffix", "_s", *run)
    assert code == 0 and (folder / "a_s.png").is_file() and (folder / "b_s.png").is_file(), text + err
    assert not (folder / "a_r_s.png").exists()
    rows = json.loads((folder / "mgfr-summary.json").read_text())
    assert sorted(Path(r["output"]).name for r in rows) == ["a_r.png", "a_s.png", "b_r.png", "b_s.png", "c_r.png"]
    before = _files(folder)
    monkeypatch.chdir(folder / "sub")  # the summary is read from another folder
    for again in (("--recursive", "--suffix", "_r"), ("--suffix", "_s")):
        code, text, err = cli("restore", "..", "-o", "..", *again, *run)
        assert code == 0 and _files(folder) == before, (again, text + err)
    code, text, err = cli("restore", "../a_r.png", "-o", "..", "--suffix", "_s", *run)  # an output named: said
    assert code == 0 and "an output, not an input" in " ".join(text.split()) and _files(folder) == before, text + err
    # the outputs' names are the inputs' own once an earlier output shares a stem (b.jpg -> b.png): kept on a rerun
    monkeypatch.chdir(tmp_path)
    jpg = tmp_path / "j"
    _png(jpg / "b.jpg", cv2.imread(str(b))[:, :, ::-1])
    for _ in range(2):
        code, text, err = cli("restore", jpg, "-o", jpg, "--ext", "png", *run)
        assert code == 0 and _files(jpg) == ["b.jpg", "b.png", "mgfr-summary.json"], text + err


def test_an_output_name_that_is_an_input_under_another_name_is_refused(tiny_root, photos, tmp_path, cli):
    """`B.jpg` for `B.JPG` is the same file in a case-insensitive folder (Windows and macOS drives, WSL's /mnt/c):
    the names are compared by the file they point to. A hard link stands for it here (this folder is
    case-sensitive)."""
    a, _ = photos
    src = _png(tmp_path / "p" / "B.JPG", cv2.imread(str(a))[:, :, ::-1])
    os.link(src, tmp_path / "p" / "B.jpg")
    kept = src.read_bytes()
    code, text, err = cli("restore", src, "-o", tmp_path / "p", "--overwrite", "--model-root", tiny_root,
                          "--steps", "1", *ALIGN)
    assert code == 2 and "would overwrite the input" in err and src.read_bytes() == kept, text + err


def test_an_output_that_is_another_photo_fails_that_photo_alone(tiny_root, photos, tmp_path, cli):
    """`restore site -o site --suffix _r` where the user has a photo named `a_r.png` beside `a.png`: `a.png`'s output
    would be that photo. It failed the whole run (a usage error meant for `-o photos` without a suffix); that photo
    fails in one line now, and the others (`a_r.png` itself, `b.png`) are restored."""
    a, b = photos
    users = _png(a.parent / "a_r.png", cv2.imread(str(b))[:, :, ::-1])
    kept = users.read_bytes()
    code, text, err = cli("restore", a.parent, "-o", a.parent, "--suffix", "_r", "--model-root", tiny_root,
                          "--steps", "1", *ALIGN)
    said = " ".join(text.split())
    assert code == 1 and "a.png: its output" in said and "would overwrite the input" in said, text + err
    assert "failed │ 1 " in said and "restored │ 2 " in said and "skipped │ 0 " in said  # one outcome a photo
    assert users.read_bytes() == kept and (a.parent / "a_r_r.png").is_file() and (a.parent / "b_r.png").is_file()


def test_degrade_and_align_into_the_input_folder_never_read_their_own_outputs(tiny_root, astronaut, tmp_path, cli):
    """`degrade in -o in` and `align in -o in` run twice: the second run finds the first's copy and crop listed in its
    table and leaves them out of the inputs (it degraded `a.png` into `a-png.png`, aligned `a_00.png` again)."""
    for command, extra, expected in (("degrade", (), ["a.jpg", "a.png", "params.json"]),
                                     ("align", ("--model-root", tiny_root, *ALIGN),
                                      ["a.jpg", "a_00.png", "faces.csv", "faces.json"])):
        folder = tmp_path / command
        _png(folder / "a.jpg", np.ascontiguousarray(astronaut[:256, 100:356]))
        for _ in range(2):
            code, text, err = cli(command, folder, "-o", folder, *extra)
            assert _files(folder) == expected, (command, text + err)


def test_a_clip_written_onto_itself_is_a_usage_error_as_a_photo_is(tiny_root, astronaut, tmp_path, cli):
    """`restore clips -o clips`: the clip's output (`clip.mp4`) is the clip; refused before any work, as photos are
    (it failed that clip alone, and the same file under another name was not seen)."""
    pytest.importorskip("av")
    from test_video import make_clip

    (tmp_path / "clips").mkdir()
    clip = make_clip(tmp_path / "clips" / "clip.mp4", astronaut, frames=3, audio=False)
    kept = clip.read_bytes()
    code, text, err = cli("restore", tmp_path / "clips", "-o", tmp_path / "clips", "--model-root", tiny_root,
                          "--steps", "1", *ALIGN)
    assert code == 2 and "the output" in err and "would overwrite the input" in err, text + err
    assert clip.read_bytes() == kept


def test_align_run_again_from_another_folder_knows_its_crops(tiny_root, photos, tmp_path, cli, monkeypatch):
    """The tables name crops by resolved path: `align a.png -o crops` run in one folder, then again from another
    (`-o ../w/crops`), writes its own crop again (it failed: "not written by mgfr align")."""
    a, _ = photos
    monkeypatch.chdir(a.parent)
    assert cli("align", a.name, "-o", "crops", "--model-root", tiny_root, *ALIGN)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, text, err = cli("align", a, "-o", Path("in") / "crops", "--model-root", tiny_root, *ALIGN)
    assert code == 0 and "not written by" not in " ".join(text.split()), text + err
    rows = json.loads((a.parent / "crops" / "faces.json").read_text())
    assert [r["crop"] for r in rows] == [str((a.parent / "crops" / "a_00.png").resolve())]


def test_the_summary_keeps_a_row_per_photo_and_output(tmp_path):
    """The merge rule of mgfr-summary.json, row by row: a result replaces the photo's failure and its own output's
    row, never a row of another output still on disk (`--suffix _r` then `_s`); a skip never replaces a result."""
    from mgfr_cli.app.summary import write_summary
    from mgfr_cli.faces.inputs import Outcome

    path, src = tmp_path / "mgfr-summary.json", tmp_path / "a.png"

    def merge(*outcomes):
        write_summary(path, outcomes, merge=True)
        return sorted((r["status"], Path(r["output"]).name if r["output"] else None)
                      for r in json.loads(path.read_text()))

    r_out, s_out = tmp_path / "a_r.png", tmp_path / "a_s.png"
    assert merge(Outcome(src, "failed", "boom")) == [("failed", None)]
    assert merge(Outcome(src, "restored", "", r_out, 1)) == [("restored", "a_r.png")]
    assert merge(Outcome(src, "restored", "", s_out, 1)) == [("restored", "a_r.png"), ("restored", "a_s.png")]
    assert merge(Outcome(src, "skipped", "output exists", r_out)) == [("restored", "a_r.png"), ("restored", "a_s.png")]
    assert merge(Outcome(src, "restored", "", r_out, 1)) == [("restored", "a_r.png"), ("restored", "a_s.png")]
