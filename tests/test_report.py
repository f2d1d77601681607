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
