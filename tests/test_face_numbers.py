"""A face's number (a sidecar's `faces: {K: ...}`, --face-index, `mgfr align`'s crop names, the review page) is its
place among every face found, left to right, whatever --min-face-size keeps: it was counted among the kept ones,
so a sidecar written for one person (from `mgfr align` without the flag, say) gave its prompt and references to
another. A clip's tracks alike. And a photo whose faces are all under the floor says so (it said 'no face detected')."""

import json

import cv2
import numpy as np
import pytest

from mgfr_cli.faces.helper import FaceSelection

# the group photo's faces, left to right, as the mobilenet detector finds them: eye distances of about
# 47, 35, 53, 42, 29 and 44 px
FLOOR = 36.0  # leaves out faces 1 and 4


def _centres(numbered):
    return [(i, round((f.box[0] + f.box[2]) / 2)) for i, f in numbered]


def test_a_face_keeps_its_number_whatever_the_size_floor(helper, group_photo):
    everyone, total = helper.detect_numbered(group_photo)
    sizes = [f.eye_distance for _, f in everyone]
    assert total == 6 and [i for i, _ in everyone] == list(range(6))
    small = [i for i, s in enumerate(sizes) if s < FLOOR]
    assert small == [1, 4], sizes
    kept, total = helper.detect_numbered(group_photo, FaceSelection(min_face_size=FLOOR))
    assert total == 6 and _centres(kept) == [c for c in _centres(everyone) if c[0] not in small]
    five = helper.detect_numbered(group_photo, FaceSelection(face_index=5, min_face_size=FLOOR))[0]
    assert _centres(five) == _centres(everyone)[5:]  # face 5 is the rightmost person, with the floor or without
    assert helper.detect_numbered(group_photo, FaceSelection(face_index=4, min_face_size=FLOOR))[0] == []
    assert FaceSelection(face_index=4, min_face_size=FLOOR).none_kept(6) == \
        "face 4's eye distance is under --min-face-size 36 px"


def test_align_names_crops_and_restore_gives_a_sidecar_its_person_by_number(tiny_root, group_photo, tmp_path, cli):
    """The sidecar's prompt for face 5 reaches the rightmost person under --min-face-size (it went to nobody: face 5
    did not exist among the kept four); align's crops keep their numbers; a photo with faces only under the floor
    says why it has none to restore."""
    photos = tmp_path / "in"
    photos.mkdir()
    cv2.imwrite(str(photos / "g.png"), np.ascontiguousarray(group_photo[:, :, ::-1]))
    (photos / "g.yaml").write_text("faces:\n  5:\n    prompt: brown eyes\n  2:\n    prompt: beard\n")
    common = ("--model-root", tiny_root, "--detector", "retinaface_mobile0.25", "--device", "cpu",
              "--min-face-size", FLOOR)
    code, out, err = cli("align", photos, "-o", tmp_path / "al", *common)
    assert code == 0, out + err
    assert sorted(p.name for p in (tmp_path / "al").glob("*.png")) == [f"g_{k:02d}.png" for k in (0, 2, 3, 5)]
    code, out, err = cli("restore", photos, "-o", tmp_path / "out", "--steps", "1", "--report", *common)
    assert code == 0, out + err
    entry = json.loads((tmp_path / "out" / "_report" / "entries.json").read_text())[0]
    prompts = {f["index"]: f.get("prompt") for f in entry["faces"]}
    assert prompts == {0: None, 2: "beard", 3: None, 5: "brown eyes"}, prompts
    code, out, err = cli("restore", photos, "-o", tmp_path / "out2", "--steps", "1", *common[:-1], 500)
    assert code == 0 and "6 faces found, none with an eye distance of --min-face-size 500 px or more (written " \
                         "without restoring)" in " ".join(out.replace("│", " ").split()), out


def test_a_clips_tracks_keep_their_numbers_and_a_growing_face_is_one_person(tmp_path):
    """Tracks are numbered among every face tracked; --min-face-size keeps a track whose face reaches it in some
    frame (a person walking up to the camera: all their frames), and --face-index names a track by that number."""
    from mgfr_cli.faces.tracking import Track, select_tracks

    def track(index, eyes, x):
        marks = [np.array([[x, 100], [x + e, 100], [0, 0], [0, 0], [0, 0]], np.float32) for e in eyes]
        return Track(index, list(range(len(eyes))), [(x - 10, 80, x + e + 10, 160) for e in eyes], marks)

    tracks = [track(0, [20, 21, 20], 10), track(1, [50, 50, 50], 300), track(2, [20, 30, 40], 600)]
    pick = lambda **kw: [t.index for t in select_tracks(tracks, FaceSelection(**kw), 800, 400)]  # noqa: E731
    assert pick(min_face_size=35) == [1, 2] and pick() == [0, 1, 2]
    assert pick(face_index=2, min_face_size=35) == [2] and pick(face_index=0, min_face_size=35) == []
    assert pick(largest_face=True, min_face_size=35) == [1]


def test_align_names_a_clips_tracks_by_their_numbers_under_the_size_floor(detector_root, group_photo, tmp_path, cli):
    """The group photo as a six-frame clip: six tracks, numbered left to right as they first appear; under the floor
    align writes tracks 0, 2, 3 and 5 (it counted the four big faces only, as 0 to 3)."""
    av = pytest.importorskip("av")
    (tmp_path / "in").mkdir()
    out = av.open(str(tmp_path / "in" / "group.mp4"), "w")
    v = out.add_stream("libx264", rate=6)
    h, w = (s // 2 * 2 for s in group_photo.shape[:2])
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    for _ in range(6):
        out.mux(v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(group_photo[:h, :w]), format="rgb24")))
    out.mux(v.encode())
    out.close()
    code, text, err = cli("align", tmp_path / "in", "-o", tmp_path / "al", "--model-root", detector_root, "--detector",
                          "retinaface_mobile0.25", "--device", "cpu", "--min-face-size", FLOOR)
    assert code == 0, text + err
    assert sorted(p.name for p in (tmp_path / "al").glob("*.png")) == [f"group_track_{k:02d}.png" for k in (0, 2, 3, 5)]
