"""File names at the file system's limit (255 bytes): a photo or a clip whose name fits gets its output, though the
names mgfr makes from it (the temporary file an output is written to, the claim beside it, a clip's pieces, face
crops, an output with --suffix) are longer than the user's."""

import json
import os
import tempfile
from fractions import Fraction

import cv2
import numpy as np
import pytest

FAST = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]
LONG_CJK = "宇" * 80  # 240 bytes: with '.jpg', 244 (a title a browser or a chat app names a saved picture after)
LONG_ASCII = "b" * 246  # with '.png', 250


def test_a_name_is_fitted_whole_characters_and_two_long_names_stay_two():
    from mgfr_cli.files import NAME_MAX, fit_name

    assert fit_name("photo", "_00.png") == "photo_00.png"  # a name that fits is kept as it is
    names = [LONG_CJK, LONG_CJK + "x", LONG_ASCII, "b" * 400, "é" * 200, os.fsdecode(b"\xff" * 250)]
    fitted = [fit_name(n, "_00_restored.png") for n in names]
    for name, short in zip(names, fitted):
        assert len(os.fsencode(short)) <= NAME_MAX and short.endswith("_00_restored.png")
        assert short.startswith(name[:20])
    assert fitted[0].encode("utf-8") and fitted[4].encode("utf-8")  # cut between characters, not inside one
    assert len(set(fitted)) == len(fitted)


def _write_clip(path, face, frames=4):
    import av

    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=Fraction(12))
    v.width, v.height, v.pix_fmt = 320, 320, "yuv420p"
    for _ in range(frames):
        out.mux(v.encode(av.VideoFrame.from_ndarray(face, format="rgb24")))
    out.mux(v.encode(None))
    out.close()


def test_photos_and_a_clip_with_long_names_are_restored_and_resumed(tiny_root, astronaut, tmp_path, cli):
    pytest.importorskip("av")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    face = np.ascontiguousarray(cv2.resize(astronaut[0:300, 80:380], (320, 320)))
    cv2.imwrite(str(src / f"{LONG_CJK}.jpg"), astronaut[:, :, ::-1])
    cv2.imwrite(str(src / f"{LONG_ASCII}.png"), astronaut[:, :, ::-1])
    cv2.imwrite(str(src / f"{LONG_ASCII}.jpg"), astronaut[:, :, ::-1])  # same stem: its output name gets '-jpg'
    _write_clip(src / f"{'c' * 250}.mp4", face)
    code, stdout, err = cli("restore", src, "-o", out, "--model-root", tiny_root, "--suffix", "_restored",
                            "--save-faces", *FAST)
    assert code == 0, stdout + err
    rows = json.loads((out / "mgfr-summary.json").read_text())
    assert sorted(r["status"] for r in rows) == ["restored"] * 4, rows
    outputs = [r["output"] for r in rows]
    assert len(set(outputs)) == 4 and all(os.path.isfile(p) for p in outputs)
    assert all("_restored." in os.path.basename(p) for p in outputs)
    crops = sorted((out / "_faces").iterdir())
    assert len(crops) == 6  # one face in each photo: aligned and restored
    made = [p for p in out.rglob("*")]
    assert not [p for p in made if p.name.startswith(".")], made  # no temporary, claim or clip piece left
    code, stdout, err = cli("restore", src, "-o", out, "--model-root", tiny_root, "--suffix", "_restored",
                            "--save-faces", *FAST)
    assert code == 0, stdout + err
    assert sorted(r["status"] for r in json.loads((out / "mgfr-summary.json").read_text())) == ["restored"] * 4

    code, stdout, err = cli("align", src, "-o", tmp_path / "faces", "--model-root", tiny_root, *FAST[2:])
    assert code == 0, stdout + err
    aligned = json.loads((tmp_path / "faces" / "faces.json").read_text())
    assert len(aligned) == 4 and all(os.path.isfile(r["crop"]) for r in aligned)


def test_a_killed_writes_temporary_of_a_long_name_is_removed_by_the_next_run(tmp_path):
    from mgfr_cli.app.outputs import remove_stale_temporaries
    from mgfr_cli.files import atomic_write_bytes, temp_prefix

    target = tmp_path / f"{LONG_CJK}_restored.jpg"
    atomic_write_bytes(target, b"restored")  # a name that fits: written, by a temporary whose name fits too
    assert target.read_bytes() == b"restored" and os.listdir(tmp_path) == [target.name]
    fd, stale = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=tmp_path)  # as a kill leaves it
    os.close(fd)
    users = tmp_path / f".{LONG_CJK[:10]}.tmp"
    users.write_bytes(b"the user's")
    remove_stale_temporaries(target)
    assert not os.path.exists(stale) and users.exists() and target.exists()


def test_a_long_named_output_is_claimed_and_a_second_run_sees_the_claim(tmp_path):
    from mgfr_cli.app.claims import Claims, claim_file

    target = tmp_path / f"{LONG_ASCII}_restored.png"
    first, second = Claims(), Claims()
    assert first.take(tmp_path / "in.png", target) is None
    assert claim_file(target).is_file()  # held (a claim that cannot be written is no claim: both would restore it)
    assert second.take(tmp_path / "in.png", target) is not None
    first.release_all()
    assert os.listdir(tmp_path) == []


def test_a_long_named_folder_is_replaced_through_temporary_folders_beside_it(tmp_path):
    from mgfr_cli.ownership import replace_folder, temp_folder_beside

    final = tmp_path / ("r" * 250)
    for text in ("first", "second"):  # made, then replaced (the old one moved aside first)
        tmp = temp_folder_beside(final)
        (tmp / "step.json").write_text(text)
        replace_folder(tmp, final, lambda p: (p / "step.json").is_file(), "a run")
    assert (final / "step.json").read_text() == "second" and os.listdir(tmp_path) == [final.name]


def test_an_output_path_over_the_systems_limit_fails_that_photo_alone(tiny_root, astronaut, tmp_path, cli):
    """A photo or clip deep in folders whose mirrored output path is over 4096 bytes (PATH_MAX) under -o: the look for
    its earlier output raised ENAMETOOLONG out of the batch, a traceback that stopped every photo. It fails alone."""
    deep = tmp_path / "in"
    for level in range(16):
        deep = deep / (f"{level:02d}" + "x" * 240)
    deep.mkdir(parents=True)
    face = np.ascontiguousarray(astronaut[:256, 100:356, ::-1])
    cv2.imwrite(str(deep / "a.png"), face)
    _write_clip(deep / "c.mp4", np.ascontiguousarray(cv2.resize(face, (320, 320))[..., ::-1]), frames=2)
    cv2.imwrite(str(tmp_path / "in" / "b.png"), face)
    out = tmp_path / ("o" * 240)
    assert len(os.fsencode(out / deep.relative_to(tmp_path / "in") / "a.png")) > 4096
    code, text, err = cli("restore", tmp_path / "in", "-r", "-o", out, "--model-root", tiny_root, *FAST)
    rows = {os.path.basename(r["source"]): r for r in json.loads((out / "mgfr-summary.json").read_text())}
    assert code == 1 and "Traceback" not in err and rows["b.png"]["status"] == "restored", text + err
    for name in ("a.png", "c.mp4"):  # a photo, and a clip (its own path through the batch)
        assert rows[name]["status"] == "failed"
        assert rows[name]["detail"].endswith(": a path of its output is too long for the file system (File name too "
                                             "long): give a shorter -o")


@pytest.fixture
def ecryptfs(tmp_path, monkeypatch):
    """A folder whose file system takes names of 143 bytes at most (eCryptfs, the encrypted home folder of older
    Ubuntu installs): every call that names a file there refuses a longer name, as the kernel does."""
    import errno

    home = tmp_path / "home"
    home.mkdir()
    limit, real_pathconf = 143, os.pathconf

    def check(path):
        path = os.fsencode(os.path.abspath(os.fsdecode(path))) if isinstance(path, (str, bytes, os.PathLike)) else b""
        if path.startswith(os.fsencode(str(home))) and any(len(p) > limit for p in path.split(b"/")):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(path))

    for name in ("open", "mkdir", "stat", "lstat", "replace", "rename", "unlink", "rmdir"):
        real = getattr(os, name)

        def guarded(path, *args, _real=real, **kwargs):
            check(path)
            for other in args[:1]:  # (replace and rename: the target too)
                if isinstance(other, (str, bytes, os.PathLike)):
                    check(other)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, guarded)
    monkeypatch.setattr(os, "pathconf", lambda p, n: limit if n == "PC_NAME_MAX" and str(p).startswith(str(home))
                        else real_pathconf(p, n))
    return home


def test_names_are_fitted_to_the_output_folders_own_limit(tiny_root, astronaut, tmp_path, cli, ecryptfs):
    """A photo named in 200 bytes (it fits 255: an ordinary disk), restored into an eCryptfs home: its output, the
    temporary it is written through, its claim, its saved faces and align's crops had names fitted to 255 bytes, which
    that file system refuses. Each is fitted to the folder's own limit (os.pathconf), and the rerun finds them."""
    name = "p" * 196 + ".png"
    cv2.imwrite(str(tmp_path / name), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    out = ecryptfs / "restored"
    code, text, err = cli("restore", tmp_path / name, "-o", out, "--model-root", tiny_root, "--save-faces", *FAST)
    assert code == 0 and "│ restored │      1 │" in text, text + err
    made = [p for p in out.rglob("*") if p.is_file()]
    assert len(made) >= 4 and all(len(os.fsencode(p.name)) <= 143 for p in made), made  # output, summary, 2 faces
    code, text, err = cli("restore", tmp_path / name, "-o", out, "--model-root", tiny_root, *FAST)
    assert code == 0 and "│ skipped  │      1 │" in text, text + err
    code, text, err = cli("align", tmp_path / name, "-o", ecryptfs / "crops", "--model-root", tiny_root, *FAST[2:4])
    crops = list((ecryptfs / "crops").glob("p*.png"))
    assert code == 0 and len(crops) == 1 and len(os.fsencode(crops[0].name)) <= 143, text + err
