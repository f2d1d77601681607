"""Broken symbolic links among a user's files: a link to itself (a loop) or to a file moved away. Python 3.11's
pathlib raises RuntimeError where it resolves a loop, which stopped a whole `restore` or `degrade` with a traceback;
a broken link is now one file that cannot be read, named with why, as any unreadable file."""

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

LOOP = "Too many levels of symbolic links"
RUN = ("--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu", "--identity-guidance", "0")


@pytest.fixture
def photos(tmp_path, astronaut):
    """A folder of one photo (a face), a link to itself and a link to a photo moved away."""
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "astro.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "moved.jpg").symlink_to(tmp_path / "gone.jpg")
    return folder


def _rows(out: Path) -> dict:
    return {Path(r["source"]).name: r for r in json.loads((out / "mgfr-summary.json").read_text())}


def test_resolved_is_resolve_that_never_raises_on_a_loop(photos, monkeypatch):
    from mgfr_cli.files import resolved

    monkeypatch.chdir(photos.parent)
    for p in (Path("photos/astro.png"), Path("photos/../photos/moved.jpg"), photos / "nothing", Path(".")):
        assert resolved(p) == p.resolve()
    if sys.version_info < (3, 13):  # (what it stands in for: 3.13's pathlib no longer raises)
        with pytest.raises(RuntimeError):
            (photos / "loop.png").resolve()
    assert resolved(photos / "loop.png") == photos / "loop.png"


def test_restore_of_a_folder_or_of_a_named_link_fails_the_link_alone(tiny_root, photos, tmp_path, cli):
    code, out, err = cli("restore", photos, "-o", tmp_path / "out", "--model-root", tiny_root, *RUN)
    assert code == 1 and "Traceback" not in err, out + err
    rows = _rows(tmp_path / "out")
    assert rows["astro.png"]["status"] == "restored" and (tmp_path / "out" / "astro.png").is_file()
    assert rows["loop.png"]["status"] == "failed" and LOOP in rows["loop.png"]["detail"]
    moved = rows["gone.jpg"]  # (a photo is recorded as the file it is: a link by its target)
    assert moved["status"] == "failed" and "moved.jpg: cannot read (No such file" in moved["detail"]
    code, out, err = cli("restore", photos / "loop.png", photos / "astro.png", "-o", tmp_path / "named",
                         "--model-root", tiny_root, *RUN)
    assert code == 1 and _rows(tmp_path / "named")["loop.png"]["status"] == "failed", out + err


@pytest.mark.parametrize("command", ["degrade", "align"])
def test_degrade_and_align_fail_the_link_alone(tiny_root, photos, tmp_path, cli, command):
    extra = ("--detector", "retinaface_mobile0.25", "--model-root", tiny_root) if command == "align" else ()
    code, out, err = cli(command, photos, "-o", tmp_path / "out", *extra)
    said = " ".join((out + err).split())
    assert code == 1 and "Traceback" not in said and f"loop.png: cannot read ({LOOP})" in said, said
    assert (tmp_path / "out" / ("astro.png" if command == "degrade" else "astro_00.png")).is_file()


def test_a_broken_link_as_a_reference_is_named_with_why(tiny_root, photos, tmp_path, cli):
    """--ref naming one: one line at the start. A references folder holding one: it fails the photos it is given
    for, as any unreadable reference does (it was left out unsaid). A sidecar naming one: its key and why."""
    ref = photos / "loop.png"
    code, _, err = cli("restore", photos / "astro.png", "-o", tmp_path / "a", "--ref", ref, "--model-root", tiny_root,
                       *RUN)
    assert code == 1 and f"--ref {ref}: a broken symbolic link ({LOOP})" in " ".join(err.split()), err
    refs = tmp_path / "refs"
    refs.mkdir()
    os.link(photos / "astro.png", refs / "her.png")
    (refs / "loop.png").symlink_to("loop.png")
    code, out, err = cli("restore", photos / "astro.png", "-o", tmp_path / "b", "--ref", refs / "her.png", "--ref",
                         refs, "--model-root", tiny_root, *RUN)
    detail = _rows(tmp_path / "b")["astro.png"]["detail"]
    assert code == 1 and f"reference {refs / 'loop.png'}: cannot read ({LOOP})" in detail, out + err
    side = tmp_path / "side"
    side.mkdir()
    os.link(photos / "astro.png", side / "astro.png")
    (side / "astro.yaml").write_text("refs: [loop.png]\n")
    (side / "loop.png").symlink_to("loop.png")
    code, out, err = cli("restore", side / "astro.png", "-o", tmp_path / "c", "--model-root", tiny_root, *RUN)
    detail = _rows(tmp_path / "c")["astro.png"]["detail"]
    assert code == 1 and f"key 'refs': {side / 'loop.png'}: a broken symbolic link ({LOOP})" in detail, out + err


def test_training_data_with_a_broken_link_is_listed_not_a_traceback(photos, tmp_path):
    """`train --align` lists its data by name and size: a broken link there was an OSError; it is skipped as
    unreadable (the list of images, and whether the aligned copy is of them, still known)."""
    from mgfr_cli.training.data import _listing, list_images, unreadable

    images = list_images(photos)
    assert [p.name for p in images] == ["astro.png", "loop.png", "moved.jpg"]
    assert _listing(photos, images) != _listing(photos, images[:1])
    assert [r.split(": ", 1)[0] for r in unreadable(images)] == [str(photos / "loop.png"), str(photos / "moved.jpg")]


def test_a_recursive_pattern_never_goes_into_a_linked_folder(tmp_path, monkeypatch):
    """`restore 'photos/**/*.png' --recursive` with a link to a folder above (`again -> .`): glob followed it, and
    listed the photo 41 times (again/again/...; two such links: without end); as the folder walk, links to folders
    are not followed. A wildcard still never matches a hidden name; patterns without `**` are glob's."""
    from mgfr_cli.faces.inputs import collect_inputs

    folder = tmp_path / "photos"
    (folder / "2019" / ".thumbs").mkdir(parents=True)
    for name in ("a.png", "2019/b.png", "2019/.thumbs/b.png", "2019/.c.png"):
        (folder / name).write_bytes(b"")
    (folder / "again").symlink_to(".")
    monkeypatch.chdir(tmp_path)
    for spec in ("photos/**/*.png", str(folder / "**" / "*.png"), "photos/**"):
        items, missing = collect_inputs([spec], recursive=True)
        assert sorted(str(it.relative) for it in items) == ["2019/b.png", "a.png"] and not missing, spec
    items, _ = collect_inputs(["photos"], recursive=True)
    assert sorted(str(it.relative) for it in items) == ["2019/b.png", "a.png"]
    items, _ = collect_inputs(["photos/*/*.png"], recursive=False)  # named levels: as the shell, through the link
    assert sorted(str(it.relative) for it in items) == ["2019/b.png", "again/a.png"]
    (folder / "moved.png").symlink_to(tmp_path / "gone.png")  # a broken link: an input (it fails, said) as in a folder
    for spec in ("photos/*.png", "photos/**/*.png", "photos"):
        items, _ = collect_inputs([spec], recursive=True)
        assert "moved.png" in [str(it.relative) for it in items], spec


def test_a_sidecar_or_folder_yaml_that_is_a_broken_link_is_said_not_passed_over(tiny_root, photos, tmp_path, cli):
    """Sidecars linked to one shared file, then that file moved: the photos were restored without their prompt and
    references, unsaid (a sidecar was looked for with is_file). Each fails, naming the link and why."""
    (photos / "astro.yaml").symlink_to(tmp_path / "shared" / "prompt.yaml")
    code, out, err = cli("restore", photos / "astro.png", "-o", tmp_path / "a", "--model-root", tiny_root, *RUN)
    detail = _rows(tmp_path / "a")["astro.png"]["detail"]
    assert code == 1 and detail == f"{photos / 'astro.yaml'}: a broken symbolic link (No such file or directory)", detail
    (photos / "astro.yaml").unlink()
    (photos / "mgfr.yaml").symlink_to("mgfr.yaml")
    code, out, err = cli("restore", photos / "astro.png", "-o", tmp_path / "b", "--model-root", tiny_root, *RUN)
    detail = _rows(tmp_path / "b")["astro.png"]["detail"]
    assert code == 1 and detail == f"{photos / 'mgfr.yaml'}: a broken symbolic link ({LOOP})", detail


@pytest.mark.parametrize("command", ["restore", "align", "degrade"])
def test_an_output_folder_that_is_a_broken_link_is_said_so(tiny_root, photos, tmp_path, cli, command):
    """-o a link to a drive not mounted: it said `output folder is not writable (File exists)`."""
    out = tmp_path / "out"
    out.symlink_to("/media/usb-drive/restored")
    extra = {"restore": ("--model-root", tiny_root, *RUN), "align": ("--model-root", tiny_root)}.get(command, ())
    code, _, err = cli(command, photos / "astro.png", "-o", out, *extra)
    assert code == 1 and f"{out}: a broken symbolic link (No such file or directory): -o names the folder" in \
        " ".join(err.split()), err


def test_a_model_root_that_is_a_broken_link_is_said_so(tmp_path, cli, monkeypatch):
    """Weights kept on a drive not mounted: every weight was "missing" and a fetch said it could not write there."""
    root = tmp_path / "weights"
    root.symlink_to("/media/usb-drive/mgfr-weights")
    said = f"the model root {root}: a broken symbolic link (No such file or directory): mount or fix what it points to"
    for args in (("weights", "list", "--model-root", root), ("restore", tmp_path, "-o", tmp_path / "o", "--offline",
                                                               "--model-root", root)):
        code, _, err = cli(*args)
        assert code == 1 and said in " ".join(err.split()), err
    monkeypatch.setenv("MGFR_HOME", str(root))
    code, _, err = cli("weights", "list")
    assert code == 1 and said in " ".join(err.split()), err
