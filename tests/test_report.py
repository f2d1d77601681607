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
