"""The Python API: the README's example runs as written, arrays and PIL images in and out, the CLI's errors."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example(mark: str = "<!-- api-example:") -> str:
    text = README.read_text()
    start = text.index(mark)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.fixture
def api_root(tiny_root, monkeypatch):
    """The tiny model root as the default one; the default detector name served by the mobilenet fixture."""
    from mgfr_cli.faces import helper

    monkeypatch.setenv("MGFR_HOME", str(tiny_root))
    monkeypatch.setitem(helper.DETECTORS, "retinaface_resnet50", helper.DETECTORS["retinaface_mobile0.25"])
    return tiny_root


def test_the_readme_example_runs_as_written(api_root, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "astronaut.jpg").write_bytes((README.parent / "examples" / "astronaut.jpg").read_bytes())
    exec(compile(_readme_example(), "README.md", "exec"), {})
    out = Image.open(tmp_path / "astronaut-restored.png")
    assert out.size == Image.open(tmp_path / "examples" / "astronaut.jpg").size
    assert re.match(r"0 \[\d+, \d+, \d+, \d+\] \(512, 512, 3\) None", capsys.readouterr().out)


def test_the_readme_files_example_runs_as_written(api_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "astronaut.jpg").write_bytes((README.parent / "examples" / "astronaut.jpg").read_bytes())
    code = _readme_example("<!-- api-example-files:").replace("steps=20", "steps=1")  # the tiny models: one step
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("restored astronaut.jpg -> restored/astronaut.jpg") and (tmp_path / "restored" / "astronaut.jpg").is_file()
    assert (tmp_path / "restored" / "mgfr-summary.json").is_file()


def test_arrays_in_arrays_out_and_the_clis_errors(api_root, astronaut, tmp_path):
    import cv2

    from mgfr_cli import Restorer
    from mgfr_cli.errors import ConfigError, InputError

    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    small = np.ascontiguousarray(astronaut[:256, 100:356])
    result = restorer.restore(small, steps=1, seed=3)
    assert isinstance(result.image, np.ndarray) and result.image.shape == small.shape and len(result.faces) == 1
    assert not np.array_equal(result.image, small)
    again = restorer.restore(small, steps=1, seed=3)
    assert np.array_equal(again.image, result.image)  # load once, restore many: the same seed, the same face
    with pytest.raises(ConfigError, match="--seed"):
        restorer.restore(small, steps=1, seed=-1)
    with pytest.raises(InputError, match="face 5 does not exist"):
        restorer.restore(small, steps=1, face_index=5)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)  # a clip given as a reference: named as the reference
    with pytest.raises(InputError, match=r"^reference .*clip.mp4: a clip, not a photo"):
        restorer.restore(small, steps=1, refs=[tmp_path / "clip.mp4"])
    blank = restorer.restore(np.full((64, 64, 3), 127, np.uint8), steps=1)
    assert blank.faces == [] and blank.notes == ["no face detected"]
    gradient = np.repeat(np.arange(0, 192, 3, dtype=np.uint8)[None, :, None], 48, axis=0).repeat(3, axis=2)
    larger = restorer.restore(gradient, steps=1, upscale=2).image  # no face: still the size asked for
    assert larger.shape == (96, 128, 3)
    assert np.array_equal(larger, cv2.resize(gradient, (128, 96), interpolation=cv2.INTER_LANCZOS4))
    aligned = restorer.restore(result.faces[0].aligned[::2, ::2], steps=1, has_aligned=True, upscale=2,
                               largest_face=True)
    assert aligned.image.shape == (512, 512, 3) and aligned.faces[0].restored.shape == (256, 256, 3)
    assert aligned.notes == ["largest_face: not used with has_aligned (the image is one aligned face)"]
    unused = restorer.restore(small, steps=1, identity_guidance=0.1, guidance_attribute=4.0).notes
    assert [n.split(":")[0] for n in unused] == ["identity_guidance", "guidance_attribute"], unused
    assert restorer.restore(small, steps=1, guidance_attribute=4.0, negative_prompt="eyeglasses").notes == []
    referenced = restorer.restore(small, steps=1, identity_guidance=0.1, refs=[small]).notes  # used by the RCA
    assert referenced == ["identity_guidance: not used (no recogniser was loaded: mgfr weights fetch arcface-irse50)"]
    with pytest.raises(InputError, match="upscale"):
        restorer.restore(small, steps=1, upscale=float("nan"))


def test_a_photo_given_by_path_with_a_sidecar_says_restore_does_not_read_it(api_root, astronaut, tmp_path):
    """restore() takes conditions from its arguments; a sidecar beside the path is named, not passed over."""
    import cv2

    from mgfr_cli import Restorer

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    assert restorer.restore(photo, steps=1).notes == []
    (tmp_path / "p.yaml").write_text("prompt: blue eyes\n")
    assert restorer.restore(photo, steps=1).notes == [
        f"{tmp_path / 'p.yaml'}: not read by restore(), which takes prompts and references from its arguments "
        "(restore_files() reads YAMLs, as mgfr restore does)"]


def test_importing_the_package_loads_no_torch():
    code = "import sys, mgfr_cli; mgfr_cli.Restorer; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_an_upscale_the_loaded_restorer_cannot_upsample_is_said(api_root, astronaut):
    """restore(upscale=2) on a Restorer loaded without Real-ESRGAN: the background is resized (Lanczos) and the
    result says so; with bg_upsampler='none' that is what was asked, and nothing is said."""
    from mgfr_cli import Restorer

    small = np.ascontiguousarray(astronaut[:256, 100:356])
    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    result = restorer.restore(small, steps=1, upscale=2)
    assert result.image.shape == (512, 512, 3)
    assert any(n.startswith("upscale 2: the background was resized with Lanczos") for n in result.notes), result.notes
    assert restorer.restore(small, steps=1).notes == []
    plain = Restorer.load(detector="retinaface_mobile0.25", device="cpu", bg_upsampler="none")
    assert plain.restore(small, steps=1, upscale=2).notes == []


def test_restore_batches_faces_and_halves_on_out_of_memory(api_root, group_photo, monkeypatch):
    """A group photo through restore(): faces go batch_size at a time, halved on out-of-memory as `mgfr restore`
    does (it was one batch of every face, and an out-of-memory ended it); each face restores as in any batch."""
    import torch

    from mgfr_cli import Restorer
    from mgfr_cli.model.pipeline import DiffusionRestorer

    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    photo = np.ascontiguousarray(group_photo[:, :, ::-1])
    whole = restorer.restore(photo, steps=1, batch_size=64)
    real, sizes = DiffusionRestorer.restore, []

    def small_memory(self, crops, conditions, seeds):
        sizes.append(len(crops))
        if len(crops) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, crops, conditions, seeds)

    monkeypatch.setattr(DiffusionRestorer, "restore", small_memory)
    halved = restorer.restore(photo, steps=1, batch_size=4)
    assert len(whole.faces) >= 5 and sizes[:2] == [4, 2] and max(sizes[1:]) <= 2
    assert np.array_equal(halved.image, whole.image)


def test_restore_files_says_what_the_cli_says_of_the_review_page(api_root, astronaut, tmp_path):
    """A page that could not go where it goes (a file or folder of the user's there) is said in the result's notes,
    as the CLI says it (the API said nothing)."""
    from PIL import Image

    from mgfr_cli import Restorer

    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(astronaut[:256, 100:356])).save(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "index.html").write_text("my page")
    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    result = restorer.restore_files([tmp_path / "in"], tmp_path / "out", steps=1, report=True)
    assert any(n.startswith("review page: ") and "index-mgfr.html" in n for n in result.notes), result.notes
    assert (tmp_path / "out" / "index.html").read_text() == "my page"


def test_control_strength_reaches_every_step_from_restore_and_restore_files(api_root, astronaut, tmp_path):
    import cv2

    from mgfr_cli import Restorer

    restorer = Restorer.load(device="cpu")
    seen, real = [], restorer.pipeline._predict_fn
    restorer.pipeline._predict_fn = lambda *a: (seen.append(a[7] if len(a) > 7 else 1.0), real(*a))[1]
    restorer.restore(astronaut, steps=2, control_strength=0.4)
    assert seen and set(seen) == {0.4}
    seen.clear()
    cv2.imwrite(str(tmp_path / "a.png"), np.ascontiguousarray(astronaut[:, :, ::-1]))
    restorer.restore_files([tmp_path / "a.png"], tmp_path / "out", steps=2, control_strength=1.5)
    assert seen and set(seen) == {1.5}


def test_face_upsample_reaches_every_path_and_is_said_when_it_cannot_act(tiny_root, astronaut, tmp_path, cli,
                                                                         monkeypatch):
    """--face-upsample (a face shown larger than its 512 crop is enlarged by Real-ESRGAN first) acts in photos and
    clips, from the CLI and from restore() and restore_files(); at --upscale 1 it loads realesrgan-x2 for the faces
    alone (the background stays the photo's); its outputs are another recipe; without a Real-ESRGAN it is said."""
    import shutil

    import av
    import cv2
    import torch
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    from mgfr_cli import Restorer
    from mgfr_cli.app import paste

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    torch.manual_seed(0)
    torch.save(RRDBNet(num_filters=16, num_blocks=1, scale=2, shuffle_factor=2).state_dict(),
               root / "RealESRGAN_x2plus.pth")
    big = np.ascontiguousarray(cv2.resize(astronaut[:256, 100:356], (1024, 1024), interpolation=cv2.INTER_CUBIC))
    cv2.imwrite(str(tmp_path / "big.png"), big[..., ::-1])  # the face shown at 1.3x its crop, at --upscale 1
    clip = av.open(str(tmp_path / "face.mp4"), "w")
    v = clip.add_stream("libx264", rate=10)
    v.width, v.height, v.pix_fmt = 1024, 1024, "yuv420p"
    for _ in range(2):
        clip.mux(v.encode(av.VideoFrame.from_ndarray(big, format="rgb24")))
    clip.mux(v.encode(None))
    clip.close()
    from mgfr_cli.model.upsampler import BackgroundUpsampler

    def brighter(self, rgb, size):  # the loaded Real-ESRGAN's place (its CPU time): Lanczos, one level brighter
        return np.clip(cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4).astype(int) + 1, 0, 255).astype(np.uint8)

    monkeypatch.setattr(BackgroundUpsampler, "__call__", brighter)
    calls = []
    original = paste.enlarged
    monkeypatch.setattr(paste, "enlarged", lambda *a: calls.append(a[2].shape) or original(*a))
    fast = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]

    code, text, err = cli("restore", tmp_path / "big.png", tmp_path / "face.mp4", "-o", tmp_path / "a",
                          "--model-root", root, "--face-upsample", *fast)
    assert code == 0 and "not used" not in err and calls == [(512, 512, 3)] * 3, (calls, text + err)  # photo, 2 frames
    with_it = cv2.imread(str(tmp_path / "a" / "big.png"))
    assert np.array_equal(with_it[:, :40], big[:, :40, ::-1])  # at 1x the background is the photo's own (not brighter)
    named = ("--model-root", root, "--bg-upsampler", "realesrgan-x2", *fast)  # the same models with it and without
    code, text, err = cli("restore", tmp_path / "big.png", "-o", tmp_path / "b", *named)
    code, text, err = cli("restore", tmp_path / "big.png", "-o", tmp_path / "b", "--face-upsample", *named)
    assert "made with other settings" in text, text + err

    calls.clear()
    restorer = Restorer.load(root, detector="retinaface_mobile0.25", device="cpu", face_upsample=True)
    result = restorer.restore(big, steps=1, face_upsample=True)
    assert calls == [(512, 512, 3)] and result.notes == [] and np.array_equal(result.image, with_it[..., ::-1])
    restorer.restore_files([tmp_path / "big.png"], tmp_path / "c", steps=1, face_upsample=True)
    assert len(calls) == 2

    calls.clear()  # no Real-ESRGAN: said, in the CLI and the API alike
    code, text, err = cli("restore", tmp_path / "big.png", "-o", tmp_path / "d", "--model-root", tiny_root,
                          "--face-upsample", *fast)
    assert code == 0 and "--face-upsample: not used: no Real-ESRGAN is loaded" in err and calls == [], err
    plain = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu", offline=True)
    assert plain.restore(big, steps=1, face_upsample=True).notes[0].startswith("face_upsample: not used")


def test_an_image_comes_back_in_its_own_form_as_the_cli_writes_it(api_root, astronaut, tmp_path):
    """Gray, gray+alpha, alpha and 16 bits: `restore()` gives them back as `mgfr restore` writes the same photo (it
    gave RGB uint8: the alpha and the depth lost without a word); a PIL image keeps its colour profile."""
    from PIL import Image, ImageCms

    from mgfr_cli import Restorer
    from mgfr_cli.errors import InputError
    from mgfr_cli.faces.io import read_image, write_image

    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    face = np.ascontiguousarray(astronaut[:256, 100:356])
    alpha = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))
    luma = np.rint(face.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    forms = {"rgba.png": np.dstack([face, alpha]), "gray16.png": luma.astype(np.uint16) * 257,
             "gray-alpha.png": np.dstack([luma, alpha])}
    for name, px in forms.items():
        write_image(tmp_path / "in" / name, px)
    for name, px in forms.items():
        restorer.restore_files([tmp_path / "in" / name], tmp_path / "out", steps=1)  # one by one: batches alike
        written = read_image(tmp_path / "out" / name).pixels
        written = written if px.ndim == 2 or px.shape[2] != 2 else np.dstack([written[:, :, 0], written[:, :, 3]])
        by_path, by_array = (restorer.restore(x, steps=1) for x in (tmp_path / "in" / name, px))
        assert len(by_path.faces) == len(by_array.faces) == 1, name
        assert by_path.image.dtype == px.dtype and by_path.image.shape == px.shape, name
        assert np.array_equal(by_path.image, written) and np.array_equal(by_array.image, written), name
        if px.ndim == 3:
            assert np.array_equal(by_path.image[:, :, -1], alpha), name  # the alpha as given
    crop = np.dstack([restorer.restore(face, steps=1).faces[0].aligned[::2, ::2], alpha])  # --has-aligned keeps it too
    write_image(tmp_path / "aligned" / "crop.png", crop)
    restorer.restore_files([tmp_path / "aligned" / "crop.png"], tmp_path / "out-aligned", steps=1, has_aligned=True)
    restored = restorer.restore(crop, steps=1, has_aligned=True).image
    assert restored.shape == crop.shape and np.array_equal(restored[:, :, 3], alpha)
    assert np.array_equal(restored, read_image(tmp_path / "out-aligned" / "crop.png").pixels)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pil = Image.fromarray(forms["rgba.png"])
    pil.info["icc_profile"] = icc
    out = restorer.restore(pil, steps=1).image
    forms_out = read_image(tmp_path / "out" / "rgba.png").pixels
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), forms_out)
    out.save(tmp_path / "saved.png")
    assert Image.open(tmp_path / "saved.png").info.get("icc_profile") == icc  # saved with the profile it came with
    assert restorer.restore(Image.fromarray(luma), steps=1).image.mode == "L" and forms_out.shape[2] == 4
    with pytest.raises(InputError, match=r"uint8 or uint16, not \(256, 256, 3\) float32"):
        restorer.restore(face.astype(np.float32), steps=1)


def test_a_phone_photo_opened_with_pil_is_restored_upright_as_its_path_is(api_root, astronaut, tmp_path):
    """`Image.open` keeps a phone photo's pixels as stored (sideways) with an EXIF orientation: restore() took them
    as they were (no face found in a sideways head) while the same photo by path was turned upright. Both are now
    restored upright alike; the caller's image is left untouched; the result carries the EXIF, orientation 1."""
    from PIL import Image

    from mgfr_cli import Restorer

    restorer = Restorer.load(detector="retinaface_mobile0.25", device="cpu")
    upright = np.ascontiguousarray(astronaut[:256, 100:356])
    exif = Image.Exif()
    exif[0x0112], exif[0x0132] = 6, "2024:05:06 07:08:09"
    motion = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" GCamera:MotionPhoto="1"/>'
              b'</rdf:RDF></x:xmpmeta>')  # a Pixel's motion photo: its clip appended to the file
    Image.fromarray(np.ascontiguousarray(np.rot90(upright[:, :200], 1))).save(tmp_path / "phone.jpg",
                                                                             exif=exif.tobytes(), xmp=motion, quality=95)
    photo = Image.open(tmp_path / "phone.jpg")
    by_pil, by_path = restorer.restore(photo, steps=1), restorer.restore(tmp_path / "phone.jpg", steps=1)
    for result in (by_pil, by_path):  # what it is restored without is said, as mgfr restore's summary says it
        assert any("its motion photo's clip not kept" in n for n in result.notes), result.notes
    assert len(by_pil.faces) == len(by_path.faces) == 1 and by_pil.image.size == (200, 256)
    assert np.array_equal(np.asarray(by_pil.image), by_path.image)
    assert photo.size == (256, 200) and photo.getexif()[0x0112] == 6  # the caller's image as it was
    kept = Image.Exif()
    kept.load(by_pil.image.info["exif"])
    assert kept[0x0112] == 1 and kept[0x0132] == "2024:05:06 07:08:09"
