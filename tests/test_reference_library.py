"""The reference library: faces found in whole photos once, cached beside the library, searched per face.

Retrieval is checked with a stand-in embedding (a normalised 24x24 grey thumbnail of the aligned face), since
no trained recogniser can be downloaded here: what is tested is the library's own work (finding every face,
the cache, incremental updates, ranking, thresholds, unreadable files), which does not depend on the network.
"""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mgfr_cli.faces.reference_library import CACHE, ReferenceLibrary


class CountingEmbed:
    def __init__(self):
        self.faces = 0

    def __call__(self, crops):
        self.faces += len(crops)
        rows = []
        for c in crops:
            g = cv2.cvtColor(c[96:416, 96:416], cv2.COLOR_RGB2GRAY)
            v = cv2.resize(g, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            v -= v.mean()
            rows.append(v / max(np.linalg.norm(v), 1e-6))
        return np.stack(rows)


@pytest.fixture(scope="module")
def people(helper, group_photo):
    """One crop per person of the group photo (only that person in it), left to right."""
    rgb = group_photo[:, :, ::-1].copy()
    faces = helper.detect(rgb)
    assert len(faces) >= 5
    crops = []
    for f in faces:
        x1, y1, x2, y2 = (int(v) for v in f.box)
        w, h = x2 - x1, y2 - y1
        crops.append(rgb[max(0, y1 - h // 2): y2 + h // 3, max(0, x1 - w // 4): x2 + w // 4].copy())
    return crops


def _save(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def _library(tmp_path, people, astronaut):
    lib = tmp_path / "family"
    for k, crop in enumerate(people):
        big = cv2.resize(crop, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
        _save(lib / f"person{k}" / "a.png", big)  # two photos of each person: scaled, and brighter with a border
        _save(lib / f"person{k}" / "b.jpg", cv2.copyMakeBorder(np.clip(big * 1.1, 0, 255).astype(np.uint8),
                                                               40, 0, 60, 0, cv2.BORDER_REFLECT))
    _save(lib / "misc" / "astronaut.png", astronaut)
    (lib / "misc" / "broken.jpg").write_text("not an image")
    (lib / "misc" / "loop.png").symlink_to("loop.png")  # broken links: a loop, and a photo moved away
    (lib / "misc" / "moved.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    return lib


def test_each_degraded_face_finds_its_own_person_first(helper, people, astronaut, tmp_path):
    lib = _library(tmp_path, people, astronaut)
    embed = CountingEmbed()
    library = ReferenceLibrary(lib, helper, embed, tmp_path / "out" / "_library-cache")
    update = library.refresh()
    assert [p.name for p, _ in update.unreadable] == ["broken.jpg", "loop.png", "moved.jpg"]  # listed, not fatal
    assert "loop.png: cannot read (Too many levels of symbolic links)" in update.unreadable[1][1]
    assert library.cache == lib / CACHE and (lib / CACHE / "index.json").is_file()
    n_faces = len(library.rows)
    assert n_faces >= 2 * len(people) + 1 and embed.faces == n_faces
    for k, crop in enumerate(people):
        face = helper.detect_and_align(crop)[0]
        small = cv2.resize(face.crop, (48, 48), interpolation=cv2.INTER_AREA)
        degraded = cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC)
        refs, matches = library.find(degraded, k=2, threshold=0.3)
        assert [m.file.parent.name for m in matches] == [f"person{k}"] * 2, (k, matches)
        assert len(refs) == 2 and refs[0].crop.shape == (512, 512, 3)
    assert library.find(np.full((512, 512, 3), 128, np.uint8), k=2, threshold=0.99)[1] == ()  # no match: none

    # a second run embeds nothing; a photo added is embedded alone; a photo removed is dropped
    again = ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "x")
    assert again.refresh().embedded == 0 and len(again.rows) == n_faces
    _save(lib / "new" / "c.png", cv2.resize(people[0], None, fx=2.0, fy=2.0))
    (lib / "person1" / "b.jpg").unlink()
    third_embed = CountingEmbed()
    third = ReferenceLibrary(lib, helper, third_embed, tmp_path / "x")
    update = third.refresh()
    assert update.files_read == 2 and third_embed.faces == update.embedded == 1  # c.png (broken.jpg is retried)
    assert not any(rel.startswith("person1/b") for rel, _ in third.rows)


def test_a_cache_made_with_another_detector_or_recogniser_is_rebuilt(helper, people, tmp_path):
    """Embeddings of two recognisers do not compare: a cache made with other weights (another --detector, a new
    recogniser file) is embedded again, not searched with this run's faces (it matched them to strangers)."""
    from types import SimpleNamespace

    from mgfr_cli.faces.reference_library import library_of

    lib = tmp_path / "lib"
    _save(lib / "p.png", cv2.resize(people[0], None, fx=2.0, fy=2.0))

    def embedded(made_with):
        return ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "x", made_with=made_with).refresh().embedded

    assert (embedded("mobile; w1"), embedded("mobile; w1"), embedded("mobile; w2"), embedded("mobile; w2")) == (1, 0, 1, 0)
    keys = {library_of(lib, h, SimpleNamespace(weights=w), tmp_path / "x").made_with
            for h, w in ((helper, "w1"), (helper, "w2"), (SimpleNamespace(detector=1, detector_name="other"), "w1"))}
    assert len(keys) == 3  # keyed by both the detector and the recogniser's weights


def test_a_read_only_library_keeps_its_cache_under_the_output(helper, people, astronaut, tmp_path, monkeypatch):
    import mgfr_cli.faces.reference_library as rl

    lib = tmp_path / "lib"
    _save(lib / "p.png", cv2.resize(people[0], None, fx=2.0, fy=2.0))
    monkeypatch.setattr(rl, "_writable", lambda folder: False)
    library = ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "out" / "_library-cache")
    library.refresh()
    assert (tmp_path / "out" / "_library-cache" / "index.json").is_file() and not (lib / CACHE).exists()


def test_a_torn_cache_is_rebuilt_not_misread(helper, people, tmp_path):
    """An index whose rows do not match the embeddings beside it (a copy caught between its two files) is not
    read: the faces are embedded again, never a row of another face taken for theirs."""
    lib = tmp_path / "lib"
    for k in range(2):
        _save(lib / f"p{k}.png", cv2.resize(people[k], None, fx=2.0, fy=2.0))
    first = ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "x")
    first.refresh()
    np.save(lib / CACHE / "embeddings.npy", first.matrix[:1])  # one face's row lost
    embed = CountingEmbed()
    again = ReferenceLibrary(lib, helper, embed, tmp_path / "x")
    assert again.refresh().embedded == embed.faces == len(first.rows) == 2
    np.testing.assert_allclose(again.matrix, first.matrix, atol=1e-6)


def test_runs_sharing_a_library_take_turns(helper, people, tmp_path):
    """While another run holds the cache (refreshing it), a refresh waits, then finds its faces embedded."""
    import threading

    from mgfr_cli.files import folder_lock

    lib = tmp_path / "lib"
    _save(lib / "p.png", cv2.resize(people[0], None, fx=2.0, fy=2.0))
    ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "x").refresh()
    _save(lib / "q.png", cv2.resize(people[1], None, fx=2.0, fy=2.0))  # new: the next refresh embeds it
    started = threading.Event()

    class Signalling(CountingEmbed):
        def __call__(self, crops):
            started.set()
            return super().__call__(crops)

    embed = Signalling()
    waiting = ReferenceLibrary(lib, helper, embed, tmp_path / "x")
    with folder_lock(lib / CACHE):
        t = threading.Thread(target=waiting.refresh)
        t.start()
        assert not started.wait(5.0), "a refresh ran while another held the library's cache"
    t.join(120)
    assert not t.is_alive() and embed.faces == 1 and len(waiting.rows) == 2


@pytest.fixture
def world(tiny_root, people, astronaut, tmp_path):
    """A model root with a (random) recogniser, a library of two people and a photo of the first."""
    from helpers import random_recogniser

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    random_recogniser(root)
    photo = tmp_path / "in" / "p.png"
    _save(photo, people[0])
    return root, _library(tmp_path, people[:2], astronaut), photo


def test_restore_with_a_library_lists_what_it_found(world, tmp_path, cli):
    root, lib, photo = world
    code, out, err = cli("restore", photo, "-o", tmp_path / "out", "--ref-library", lib, "--ref-threshold", "-1",
                         "--ref-k", "2", "--model-root", root, "--steps", "1", "--detector", "retinaface_mobile0.25",
                         "--device", "cpu", "--report")
    assert code == 0, out + err
    assert "reference library" in err and "embedded now" in " ".join(err.split())
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert row["library"][0]["face"] == 0 and len(row["library"][0]["matches"]) == 2
    assert "library: " in (tmp_path / "out" / "index.html").read_text()


def test_flags_without_what_they_act_on_are_named_once(world, tmp_path, cli):
    """--ref-k/--ref-threshold without a library, --identity-guidance with no reference anywhere, --crf/--video-noise
    with no clip, --guidance-attribute with no negative prompt: each is said once (they were dropped without a word);
    given what they act on, nothing is said."""
    root, lib, photo = world
    common = ["--model-root", root, "--steps", "3", "--detector", "retinaface_mobile0.25", "--device", "cpu"]
    code, out, err = cli("restore", photo, "-o", tmp_path / "out", "--ref-k", "5", "--ref-threshold", "0.5",
                         "--identity-guidance", "0.1", "--crf", "30", "--video-noise", "frame", "--guidance-attribute", "4",
                         *common)
    assert code == 0, out + err
    said = " ".join(err.split())
    for line in ("--ref-k, --ref-threshold: not used without --ref-library",
                 "--identity-guidance: not used (no face had references", "--crf, --video-noise: not used (for clips",
                 "--guidance-attribute: not used (it steers away from a negative prompt"):
        assert said.count(line) == 1, said
    code, out, err = cli("restore", photo, "-o", tmp_path / "out2", "--ref-library", lib, "--ref-k", "2",
                         "--ref-threshold", "-1", "--identity-guidance", "0.1", "--guidance-attribute", "4",
                         "--negative-prompt", "eyeglasses", *common)
    assert code == 0 and "not used" not in err, out + err
    assert "identity guidance (strength 0.1" in " ".join(err.split())
    code, out, err = cli("restore", photo, "-o", tmp_path / "out3", "--ref-library", lib, "--ref-threshold", "-1",
                         "--identity-guidance", "0.1", *common[:2], "--steps", "1", *common[4:])
    said = " ".join(err.split())  # references the adapter used, but one step is outside guidance's window
    assert code == 0 and said.count("--identity-guidance: not used (no step of 1 fell in its window") == 1, said
    code, out, err = cli("restore", photo, "-o", tmp_path / "out", "--identity-guidance", "0.1",
                         "--guidance-attribute", "4", *common)
    assert code == 0 and "not used" not in err, out + err  # every output done: no face to say anything of
    shutil.rmtree(lib / ".mgfr-library")
    code, out, err = cli("restore", photo, "-o", tmp_path / "out4", "--ref", photo, "--ref-library", lib,
                         "--ref-k", "2", *common[:2], "--steps", "1", *common[4:])
    said = " ".join(err.split())  # --ref wins for every face: the library is never asked, nor embedded
    assert code == 0 and said.count("--ref-library, --ref-k: not used with --ref") == 1, said
    assert not (lib / ".mgfr-library").exists() and "reference library" not in said
    assert "library" not in json.loads((tmp_path / "out4" / "mgfr-summary.json").read_text())[0]


def test_the_web_page_names_library_flags_without_a_library(tmp_path, cli, monkeypatch):
    """`mgfr ui --ref-k 5` without --ref-library: said once (the page itself is not started here)."""
    from mgfr_cli.app import ui

    started = []
    monkeypatch.setattr(ui, "offline_environment", lambda: None)  # it sets process-wide variables
    monkeypatch.setattr(ui, "load_models", lambda *a, **k: ui.UiModels(missing="nothing here"))
    monkeypatch.setattr(ui, "build_app", lambda models: type("Demo", (), {"mgfr_tmp": tmp_path})())
    monkeypatch.setattr(ui, "serve", lambda *a, **k: started.append(a))
    code, out, err = cli("ui", "--ref-k", "5", "--model-root", tmp_path)
    assert code == 0 and started, out + err
    assert " ".join(err.split()).count("--ref-k: not used without --ref-library") == 1, err


def test_the_web_page_asks_the_library_for_faces_without_uploaded_references(world, tmp_path, cli):
    from mgfr_cli.app.terminal import open_library
    from mgfr_cli.app.ui import load_models, restore_one

    assert "--ref-library" in " ".join(cli("ui", "--help")[1].split())
    root, lib, photo = world
    models = load_models(root, detector="retinaface_mobile0.25", base=None, checkpoint=None, cleaner="auto",
                         bg_upsampler="none", device="cpu", precision="fp32", max_megapixels=100.0, library=True)
    assert not models.missing, models.missing
    models.library = open_library(lib, models.helper, models.pipeline, tmp_path / "ui", 100.0)
    models.ref_k, models.ref_threshold = 2, -1.0

    def page(refs):
        return restore_one(models, str(photo), refs, "", "", 3.0, 2.0, 1, 0, "every face", "wavelet", 1.0, True,
                           tmp_path / f"work{len(refs or [])}")[3]

    status = page(None)
    assert "Reference library:" in status and status.count(".png (") + status.count(".jpg (") == 2, status
    assert "Reference library" not in page([str(lib / "person1" / "a.png")])  # uploaded references win
    upload = tmp_path / "upload" / "mine.png"  # the page's upload of a library photo: not its own reference
    upload.parent.mkdir()
    shutil.copy(lib / "person0" / "a.png", upload)
    models.ref_k = 10
    listed = restore_one(models, str(upload), None, "", "", 3.0, 2.0, 1, 0, "every face", "wavelet", 1.0, True,
                         tmp_path / "work-upload")[3]
    assert listed.count(".png (") + listed.count(".jpg (") == 4, listed  # the library's 5 faces but its own


def test_a_clip_asks_the_library_once_per_track(world, astronaut, tmp_path, cli):
    """`restore clip.mp4 --ref-library`: each track without references gets the library's matches for its largest
    face (the flag is not dropped for clips), listed in the summary as for photos."""
    pytest.importorskip("av")
    from test_video import make_clip

    root, lib, _ = world
    clip = make_clip(tmp_path / "in" / "clip.mp4", astronaut, frames=6, audio=False)
    code, out, err = cli("restore", clip, "-o", tmp_path / "out", "--ref-library", lib, "--ref-threshold", "-1",
                         "--ref-k", "2", "--model-root", root, "--steps", "1", "--detector", "retinaface_mobile0.25",
                         "--device", "cpu")
    assert code == 0, out + err
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert row["status"] == "restored" and len(row["tracks"]) == 1
    assert row["library"][0]["face"] == 0 and len(row["library"][0]["matches"]) == 2, row  # (from the conditions
    # the track was restored with: the summary lists what restoring was given)


def test_the_python_api_restores_with_a_library_as_the_cli_does(world, tmp_path, cli):
    """Restorer.open_library / restore(library=...) / restore_files(library=...) against `mgfr restore
    --ref-library` on the same photo and seed: the same matches and the same pixels."""
    from mgfr_cli import Restorer
    from mgfr_cli.faces.io import read_image

    root, lib, photo = world
    code, out, err = cli("restore", photo, "-o", tmp_path / "cli", "--ref-library", lib, "--ref-k", "2",
                         "--ref-threshold", "-1", "--model-root", root, "--steps", "1",
                         "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0, out + err
    cli_row = json.loads((tmp_path / "cli" / "mgfr-summary.json").read_text())[0]
    written = read_image(tmp_path / "cli" / "p.png").pixels
    restorer = Restorer.load(root, detector="retinaface_mobile0.25", device="cpu", library=True)
    library = restorer.open_library(lib)
    result = restorer.restore(photo, library=library, ref_k=2, ref_threshold=-1, steps=1)
    assert result.faces[0].library == cli_row["library"][0]["matches"] and len(result.faces[0].references) == 2
    assert np.array_equal(result.image, written)
    files = restorer.restore_files([photo], tmp_path / "api", library=library, ref_k=2, ref_threshold=-1, steps=1)
    assert [o.status for o in files.outcomes] == ["restored"] and files.summary == tmp_path / "api" / "mgfr-summary.json"
    assert np.array_equal(read_image(tmp_path / "api" / "p.png").pixels, written)
    assert json.loads(files.summary.read_text())[0]["library"] == cli_row["library"]
    again = restorer.restore_files([photo], tmp_path / "api", steps=1, ref_k=4, crf=20, upscale=2)
    assert [o.status for o in again.outcomes] == ["skipped"]  # finished: a rerun resumes, nothing rewritten
    assert "ref_k: not used without a library" in again.notes and any(n.startswith("crf: not used") for n in again.notes)
    assert any(n.startswith("upscale 2: the background was resized with Lanczos") for n in again.notes)
    with_refs = restorer.restore(photo, refs=[photo], library=library, ref_k=2, steps=1)
    assert with_refs.notes[:1] == ["library, ref_k: not used with refs (they give every face its references; a "
                                   "library serves faces that have none)"] and not with_refs.faces[0].library
    with pytest.raises(TypeError, match="stepz"):
        restorer.restore_files([photo], tmp_path / "api", stepz=1)


def test_a_face_is_never_its_own_reference_nor_one_mgfr_made(world, people, tmp_path, cli):
    """Restoring the library's own photos (`restore family/... --ref-library family`): a face's own photo (or a copy
    of it: the same bytes) is not among its matches, and what restore wrote into the library (outputs, the review
    page's images) is never embedded as a reference: those faces are mgfr's inventions."""
    root, lib, _ = world
    common = ["--ref-library", lib, "--ref-threshold", "-1", "--ref-k", "10", "--model-root", root, "--steps", "1",
              "--detector", "retinaface_mobile0.25", "--device", "cpu", "--report"]
    shutil.copy(lib / "person0" / "a.png", lib / "misc" / "a (1).png")  # a copy, as photo libraries have
    everyone = {"person0/a.png", "person0/b.jpg", "person1/a.png", "person1/b.jpg", "misc/astronaut.png",
                "misc/a (1).png"}
    for photo, out, itself in (("person0/a.png", "restored", {"person0/a.png", "misc/a (1).png"}),
                               ("person1/a.png", "restored-again", {"person1/a.png"})):
        code, text, err = cli("restore", lib / photo, "-o", lib / out, *common)
        assert code == 0, text + err
        row = json.loads((lib / out / "mgfr-summary.json").read_text())[0]
        found = {str(Path(m["file"]).relative_to(lib)) for m in row["library"][0]["matches"]}
        assert found == everyone - itself, found
    assert (lib / "restored" / "a.png").is_file() and any((lib / "restored" / "_report").glob("*.jpg"))
    embedded = json.loads((lib / CACHE / "index.json").read_text())["files"]
    assert set(embedded) == everyone, sorted(embedded)
    from mgfr_cli import Restorer  # the Python API alike, given the photo's path

    restorer = Restorer.load(root, detector="retinaface_mobile0.25", device="cpu", library=True)
    result = restorer.restore(lib / "person0" / "b.jpg", library=restorer.open_library(lib), ref_k=10,
                              ref_threshold=-1, steps=1)
    assert {str(Path(m["file"]).relative_to(lib)) for m in result.faces[0].library} == everyone - {"person0/b.jpg"}
    outs = tmp_path / "outs"  # a library of restore's outputs only (its summary lists them): used, as asked
    _save(outs / "x.png", people[1])
    (outs / "mgfr-summary.json").write_text(json.dumps([{"source": str(lib / "person1" / "a.png"), "status": "restored",
                                                         "detail": "", "output": str(outs / "x.png"), "faces": 1}]))
    assert list(restorer.open_library(outs).files) == ["x.png"]


def test_a_references_folder_holding_the_photo_gives_it_the_others(world, people, tmp_path, cli):
    """`restore fam/a.png --ref fam/`: a.png's face is guided by the folder's other photos only, not by itself or a
    copy of it (the same pixels as `--ref fam/b.png`), said once; a file named as its own reference is used as
    named (other pixels)."""
    root, _, _ = world
    fam = tmp_path / "fam"
    _save(fam / "a.png", people[0])
    _save(fam / "b.png", people[1])
    shutil.copy(fam / "a.png", fam / "a copy.png")  # a copy of the photo is the photo too
    common = ["--model-root", root, "--steps", "4", "--identity-guidance", "0.5", "--detector", "retinaface_mobile0.25",
              "--device", "cpu"]
    written = {}
    for name, refs in (("folder", [fam]), ("other", [fam / "b.png"]), ("named", [fam / "a.png", fam / "b.png"])):
        code, text, err = cli("restore", fam / "a.png", "-o", tmp_path / name,
                              *[a for r in refs for a in ("--ref", r)], *common)
        said = " ".join(err.split())
        assert code == 0 and said.count("a.png: left out of its own references") == (name == "folder"), said
        written[name] = cv2.imread(str(tmp_path / name / "a.png"))
    assert np.array_equal(written["folder"], written["other"])
    assert not np.array_equal(written["named"], written["other"])  # its own face would have changed the result
    # restore's outputs written into the folder (a_r.png, listed in its summary there) are not references either
    assert cli("restore", fam / "a.png", "-o", fam, "--suffix", "_r", "--ref", fam, *common)[0] == 0
    assert cli("restore", fam / "a.png", "-o", tmp_path / "again", "--ref", fam, *common)[0] == 0
    assert np.array_equal(cv2.imread(str(tmp_path / "again" / "a.png")), written["other"])
    from mgfr_cli import Restorer  # the Python API alike

    restorer = Restorer.load(root, detector="retinaface_mobile0.25", device="cpu", references=True)
    result = restorer.restore(fam / "a.png", refs=[fam], steps=1)
    assert [Path(r).name for r in result.faces[0].references] == ["b.png"], result.faces[0].references
    assert any("left out of its own references" in n for n in result.notes)
    outs = tmp_path / "outs"  # a folder of restore's outputs only (its summary lists them): used, as asked
    _save(outs / "x.png", people[1])
    (outs / "mgfr-summary.json").write_text(json.dumps([{"source": str(fam / "b.png"), "status": "restored",
                                                         "detail": "", "output": str(outs / "x.png"), "faces": 1}]))
    result = restorer.restore(fam / "a.png", refs=[outs], steps=1)
    assert [Path(r).name for r in result.faces[0].references] == ["x.png"], result.faces[0].references
