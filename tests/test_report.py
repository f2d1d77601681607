"""The review page shows what was written: each photo's "after" image is its output, not the input."""

import json

import cv2
import numpy as np


def test_review_page_after_image_is_the_written_output(tiny_root, astronaut, tmp_path, cli):
    inp = tmp_path / "in"
    inp.mkdir()
    small = np.ascontiguousarray(astronaut[:256, 100:356])
    for name, shift in (("a", 0), ("b", 30)):
        cv2.imwrite(str(inp / f"{name}.png"), np.ascontiguousarray(np.roll(small, shift, axis=1)[..., ::-1]))
    code, _, _ = cli("restore", inp, "-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1",
                     "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0
    entries = json.loads((tmp_path / "out" / "_report" / "entries.json").read_text())
    assert len(entries) == 2
    for e in entries:
        after = cv2.imread(str(tmp_path / "out" / e["after"])).astype(int)
        before = cv2.imread(str(tmp_path / "out" / e["before"])).astype(int)
        written = cv2.imread(e["output"]).astype(int)
        assert after.shape == written.shape
        # the output through a JPEG thumbnail (~4 of 255 here), far closer to it than to the input (~16)
        assert np.abs(after - written).mean() < np.abs(after - before).mean() / 2


def test_a_clips_link_reaches_its_file_whatever_its_name(tmp_path):
    """The page links each clip to its output by a URL: '#', '%', '?' and spaces in the name are encoded
    (a bare 'clip #1.mp4' linked to 'clip ' with a fragment)."""
    import html
    import re
    from urllib.parse import unquote, urljoin, urlparse

    from mgfr_cli.app.report import Report
    from mgfr_cli.faces.inputs import RESTORED, Outcome

    out = tmp_path / "out"
    names = ["clip #1.mp4", "50% off?.mp4", "a&b 'q'.mp4"]
    report = Report(out)
    for n in names:
        (out / "v").mkdir(parents=True, exist_ok=True)
        (out / "v" / n).write_bytes(b"")
        track = {"track": 0, "frames": 3, "flicker": {"input": 1.0, "restored": 0.5, "pairs": 2}}
        report.add(Outcome(tmp_path / n, RESTORED, "3 frames", out / "v" / n, 1, tracks=(track,)))
    report.flush()
    page = (out / "index.html").read_text()
    hrefs = [html.unescape(h) for h in re.findall(r"<a href='([^']*)'", page)]
    assert len(hrefs) == len(names)
    base = (out / "index.html").as_uri()
    reached = sorted(unquote(urlparse(urljoin(base, h)).path) for h in hrefs)
    assert reached == sorted(str(out / "v" / n) for n in names)


def test_a_users_report_folder_is_kept_and_where_the_images_went_is_said(tiny_root, astronaut, tmp_path, cli):
    """OUT/_report holding files of the user's: kept; the page's images go to _report-mgfr-2, and the run says so
    (it did so silently)."""
    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "a.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    mine = tmp_path / "out" / "_report" / "a.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    code, _, err = cli("restore", inp, "-o", tmp_path / "out", "--report", "--model-root", tiny_root, "--steps", "1",
                       "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0 and mine.read_bytes() == b"mine" and sorted(p.name for p in mine.parent.iterdir()) == ["a.jpg"]
    assert "page's images written to _report-mgfr-2" in " ".join(err.split()), err
    assert (tmp_path / "out" / "_report-mgfr-2" / "entries.json").is_file()


def test_the_page_shows_each_output_of_a_photo_and_a_fixed_failure_goes(tiny_root, astronaut, tmp_path, cli):
    """`--suffix _a` then `--suffix _b` into one folder: the page kept one entry per photo (the `_a` results
    vanished from it while the summary listed both); each output is now an entry with its own images. A photo
    that failed, then restored, is listed once, restored; a rerun that skips the done photos changes nothing."""
    inp = tmp_path / "in"
    inp.mkdir()
    small = np.ascontiguousarray(astronaut[:256, 100:356])
    cv2.imwrite(str(inp / "a.png"), np.ascontiguousarray(small[..., ::-1]))
    (inp / "b.png").write_bytes(b"not yet a photo")
    common = ("--model-root", tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu",
              "--report")
    assert cli("restore", inp, "-o", tmp_path / "out", "--suffix", "_a", *common)[0] == 1  # b.png fails
    cv2.imwrite(str(inp / "b.png"), np.ascontiguousarray(np.roll(small, 30, axis=1)[..., ::-1]))
    assert cli("restore", inp, "-o", tmp_path / "out", "--suffix", "_a", *common)[0] == 0
    assert cli("restore", inp, "-o", tmp_path / "out", "--suffix", "_b", *common)[0] == 0
    assert cli("restore", inp, "-o", tmp_path / "out", "--suffix", "_b", *common)[0] == 0  # all skipped as done
    entries = json.loads((tmp_path / "out" / "_report" / "entries.json").read_text())
    shown = sorted((e["name"], e["output"].rsplit("/", 1)[-1], e["status"]) for e in entries)
    assert shown == [("a.png", "a_a.png", "restored"), ("a.png", "a_b.png", "restored"),
                     ("b.png", "b_a.png", "restored"), ("b.png", "b_b.png", "restored")], shown
    assert len({e["after"] for e in entries}) == 4  # each output its own images
    for e in entries:
        after = cv2.imread(str(tmp_path / "out" / e["after"])).astype(int)
        assert np.abs(after - cv2.imread(e["output"]).astype(int)).mean() < 8, e
    page = (tmp_path / "out" / "index.html").read_text()
    assert "a_a.png" in page and "a_b.png" in page and "Not restored" not in page  # the failure gone


def test_an_older_pages_relative_outputs_are_the_same_outputs(tmp_path, monkeypatch):
    """Pages written before outputs were recorded resolved named them as typed (`out/a.png`): the same output
    restored again from elsewhere replaces that entry, it is not shown twice."""
    from mgfr_cli.app.report import Report
    from mgfr_cli.faces.inputs import RESTORED, Outcome
    from mgfr_cli.faces.io import Photo

    (tmp_path / "out" / "_report").mkdir(parents=True)
    (tmp_path / "out" / "a.png").write_bytes(b"written by the older run")
    older = [{"source": str(tmp_path / "in" / "a.png"), "name": "a.png", "status": "restored", "detail": "",
              "output": "out/a.png"}]
    (tmp_path / "out" / "_report" / "entries.json").write_text(json.dumps(older))
    monkeypatch.chdir(tmp_path / "out")  # not the folder the older run started in
    rgb = np.zeros((32, 32, 3), np.uint8)
    Report(tmp_path / "out").add(Outcome(tmp_path / "in" / "a.png", RESTORED, "", tmp_path / "out" / "a.png", 0),
                                 Photo(rgb), after=rgb)
    entries = json.loads((tmp_path / "out" / "_report" / "entries.json").read_text())
    assert [e["output"] for e in entries] == [str(tmp_path / "out" / "a.png")], entries


def test_a_large_page_is_not_rewritten_after_every_photo(tmp_path, monkeypatch):
    """The page was rewritten whole after every photo: at 10,000 entries that took 0.5 s a photo here (a
    10,000-photo batch spent ~40 min on it). Rewrites are spaced by ten times what the last one took; what was not
    written yet is written when the run ends."""
    from mgfr_cli.app import report as page
    from mgfr_cli.faces.inputs import NO_FACE, Outcome

    clock, writes = [1000.0], []
    real = page.atomic_write_bytes

    def slow_write(path, data):  # a large page: each file takes a quarter second
        clock[0] += 0.25
        writes.append(path.name)
        real(path, data)

    monkeypatch.setattr(page.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(page, "atomic_write_bytes", slow_write)
    report = page.Report(tmp_path / "out")
    for i in range(100):  # a photo every tenth of a second, for 10 s
        report.add(Outcome(tmp_path / f"{i}.png", NO_FACE, "no face detected"))
        clock[0] += 0.1
    assert writes.count("index.html") == 2, writes  # the first, then one 5 s after it (ten times its 0.5 s)
    report.flush()
    entries = json.loads((tmp_path / "out" / "_report" / "entries.json").read_text())
    assert len(entries) == 100 and "0 restored, 100 not restored" in (tmp_path / "out" / "index.html").read_text()


def test_a_runs_page_lists_every_photo_however_its_rewrites_are_spaced(tiny_root, astronaut, tmp_path, cli,
                                                                        monkeypatch):
    """The batch writes what the spacing held back when it ends (three photos, only the first add written)."""
    from mgfr_cli.app.report import Report

    monkeypatch.setattr(Report, "SPACING", 1e9)
    (tmp_path / "in").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), np.ascontiguousarray(astronaut[::4, ::4, ::-1]))
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, "--steps",
                         "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0, out + err
    assert "3 restored, 0 not restored" in (tmp_path / "out" / "index.html").read_text()


def test_a_stopped_runs_page_lists_what_it_did(tiny_root, astronaut, tmp_path, cli, monkeypatch):
    """Ctrl-C while the third photo is written: the page lists the two restored before it, though the spacing
    held the second's rewrite back."""
    from mgfr_cli.app import batch
    from mgfr_cli.app.report import Report

    monkeypatch.setattr(Report, "SPACING", 1e9)
    real = batch.write_image

    def stop_at_the_third(path, *args, **kwargs):
        if path.name.startswith("2"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "write_image", stop_at_the_third)
    (tmp_path / "in").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), np.ascontiguousarray(astronaut[::4, ::4, ::-1]))
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, "--steps",
                         "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code != 0
    assert "2 restored, 0 not restored" in (tmp_path / "out" / "index.html").read_text()


def test_a_killed_runs_temporary_files_of_the_page_are_removed(tmp_path):
    """A run killed while it wrote a face's thumbnail left '_report/.<name>.jpg.<random>.tmp' that no later run
    removed (its photo was done, so nothing rewrote that thumbnail). The page's files are made under its folder's
    lock, so a temporary one found while holding it was left by a killed run: the next run removes it."""
    from mgfr_cli.app.report import Report

    out = tmp_path / "out"
    (out / "_report").mkdir(parents=True)
    (out / "_report" / "entries.json").write_text(json.dumps([{"source": str(tmp_path / "a.png"), "name": "a.png",
                                                               "status": "no face", "detail": "", "output": None}]))
    left = [out / "_report" / ".bfa145684df2_00_a.jpg.6vnwb7kk.tmp", out / ".index.html.x1y2z3.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    (out / ".notes.tmp.txt").write_text("the user's")
    Report(out)
    assert not any(p.exists() for p in left) and (out / ".notes.tmp.txt").exists()
