"""A run stopped before it writes its record (Ctrl-C, kill -9, the OOM killer) resumes with the same command.

`restore`, `align` and `degrade` knew which files were theirs from the record written at the end of a run
(mgfr-summary.json, faces.json, params.json). A run into its input folder (``restore site -o site --suffix _r``)
stopped part-way then refused its own resume ("the output site/p1_r.jpg would overwrite the input site/p1_r.jpg"),
and `align` and `degrade` failed every file done before the stop ("exists and was not written by mgfr"). Each output
is now journalled beside the record as it is written."""

import json
import os

import cv2
import numpy as np
import pytest

FAST = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


def _stop_at_second(monkeypatch, module, name):
    """``module.name`` raising KeyboardInterrupt (as Ctrl-C does) on its second call: one file done, then stopped."""
    real = getattr(module, name)

    def stopping(*args, **kw):
        stopping.calls += 1
        if stopping.calls == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    stopping.calls = 0
    monkeypatch.setattr(module, name, stopping)


def _photos(folder, astronaut, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.jpg"), np.ascontiguousarray(np.roll(astronaut, 40 * i, axis=1)[..., ::-1]))


def _hidden(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".")]


def test_a_restore_into_its_input_folder_stopped_part_way_resumes(tiny_root, astronaut, tmp_path, cli, monkeypatch):
    import mgfr_cli.app.batch as batch

    site = tmp_path / "site"
    _photos(site, astronaut)
    args = ("restore", site, "-o", site, "--suffix", "_r", "--batch-size", "1", "--model-root", tiny_root, *FAST)
    with monkeypatch.context() as m:
        _stop_at_second(m, batch, "write_image")
        code, out, err = cli(*args)
    assert code == 130 and sorted(p.name for p in site.glob("*_r.jpg")) == ["p0_r.jpg"]
    assert not (site / "mgfr-summary.json").exists()  # stopped before its record: as kill -9 leaves it
    first = (site / "p0_r.jpg").stat().st_mtime_ns
    code, out, err = cli(*args)
    assert code == 0, out + err
    assert sorted(p.name for p in site.glob("*.jpg")) == ["p0.jpg", "p0_r.jpg", "p1.jpg", "p1_r.jpg", "p2.jpg",
                                                          "p2_r.jpg"]  # p0_r.jpg was not taken for an input
    assert (site / "p0_r.jpg").stat().st_mtime_ns == first  # nor done again
    rows = json.loads((site / "mgfr-summary.json").read_text())
    assert sorted((os.path.basename(r["output"]), r["status"]) for r in rows) == [
        ("p0_r.jpg", "restored"), ("p1_r.jpg", "restored"), ("p2_r.jpg", "restored")]  # the stopped run's row too
    assert _hidden(site) == []  # the journal folded into the summary and removed


@pytest.mark.parametrize("command", ["align", "degrade"])
def test_align_and_degrade_stopped_part_way_resume(tiny_root, astronaut, tmp_path, cli, monkeypatch, command):
    import mgfr_cli.faces.align as align
    import mgfr_cli.training.degrade as degrade

    src, out = tmp_path / "in", tmp_path / "out"
    _photos(src, astronaut)
    args = (command, src, "-o", out, *(["--model-root", tiny_root, *FAST[2:]] if command == "align" else []))
    with monkeypatch.context() as m:
        _stop_at_second(m, *((align, "read_image") if command == "align" else (degrade, "degrade")))
        code, _, _ = cli(*args)
    assert code == 130 and len(list(out.glob("*.png"))) == 1
    code, stdout, err = cli(*args)
    said = " ".join((stdout + err).split())
    assert code == 0 and "not written by mgfr" not in said, said
    assert len(list(out.glob("*.png"))) == 3
    record = json.loads((out / ("faces.json" if command == "align" else "params.json")).read_text())
    assert len(record) == 3 and _hidden(out) == []


def test_a_journal_line_cut_short_by_a_kill_is_left_out(tmp_path, monkeypatch):
    import mgfr_cli.files as files

    journal = files.Journal(tmp_path / "mgfr-summary.json")
    journal.add({"source": "a.jpg", "value": np.float32(0.5)})
    with monkeypatch.context() as m:  # the last write of a killed run: half of it reached the file
        real = os.write
        m.setattr(files.os, "write", lambda fd, data: real(fd, data[: len(data) // 2]))
        journal.add({"source": "b.jpg"})
    assert journal.rows() == [{"source": "a.jpg", "value": 0.5}]
    journal.add({"source": "c.jpg"})  # the next run's line is whole
    assert journal.rows() == [{"source": "a.jpg", "value": 0.5}, {"source": "c.jpg"}]
    journal.clear()
    assert os.listdir(tmp_path) == []
    journal.path.mkdir()  # a journal that cannot be written (a full disk, say) never fails the output it records
    journal.add({"source": "d.jpg"})
    assert journal.rows() == []
