"""A reference photo holding several people: its largest face is taken, and that is said once, naming the file (in
a group photo the largest face may be someone else, whom identity guidance would then copy); it was taken unsaid.
From the CLI, the API and the web page."""

import cv2
import numpy as np


def _files(tmp_path, astronaut, group_photo):
    cv2.imwrite(str(tmp_path / "p.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    cv2.imwrite(str(tmp_path / "group.png"), np.ascontiguousarray(group_photo[:, :, ::-1]))
    cv2.imwrite(str(tmp_path / "solo.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1][:, ::-1]))
    return tmp_path / "p.png", tmp_path / "group.png", tmp_path / "solo.png"


SAID = "reference group.png (6 faces): the largest face taken from each (crop a reference to its person"


def test_restore_says_a_reference_holds_several_faces(tiny_root, astronaut, group_photo, tmp_path, cli):
    photo, group, solo = _files(tmp_path, astronaut, group_photo)
    common = ("-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25",
              "--device", "cpu")
    code, out, err = cli("restore", photo, "--ref", group, "--ref", solo, *common)
    assert code == 0, out + err
    err = " ".join(err.split())
    assert err.count(SAID) == 1 and "solo.png (" not in err, err
    code, out, err = cli("restore", photo, "--ref", solo, "--overwrite", *common)
    assert code == 0 and "the largest face taken" not in err


def test_the_api_and_the_web_page_say_it(tiny_root, astronaut, group_photo, tmp_path):
    from mgfr_cli import Restorer
    from mgfr_cli.app.ui import load_models, restore_one

    photo, group, solo = _files(tmp_path, astronaut, group_photo)
    restorer = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu")
    assert [n for n in restorer.restore(photo, refs=[group], steps=1).notes if n.startswith(SAID)]
    assert restorer.restore(photo, refs=[solo], steps=1).notes == []
    models = load_models(tiny_root, detector="retinaface_mobile0.25", base=None, checkpoint=None, cleaner="auto",
                         bg_upsampler="none", device="cpu", precision="auto", max_megapixels=100)
    *_, status = restore_one(models, str(photo), [str(group)], "", "", 4.0, 2.0, 1, 0, "every face", "wavelet", 1,
                             True, tmp_path / "w")
    assert f"Note: {SAID}" in status, status
