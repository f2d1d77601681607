"""Reliability, round 2: a test per category of the hostile-user report (each failed on the old main)."""

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mgfr_cli.errors import ConfigError, MgfrError
from mgfr_cli.faces.io import read_image

FAST = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


@pytest.fixture
def small(astronaut):
    return np.ascontiguousarray(astronaut[:256, 100:356])


# -- hangs and unbounded reads --------------------------------------------------------------------
def test_fifo_and_dev_zero_do_not_hang_and_the_good_photo_is_restored(tiny_root, small, tmp_path, cli):
    inp = tmp_path / "in"
    _png(inp / "a.png", small)
    os.mkfifo(inp / "b.jpg")
    os.symlink("/dev/zero", inp / "z.jpg")
    result = {}
    t = threading.Thread(target=lambda: result.update(r=cli("restore", inp, "-o", tmp_path / "out",
                                                            "--model-root", tiny_root, *FAST)))
    t.start()
    t.join(timeout=300)
    if t.is_alive():  # unblock the FIFO reader so the suite can end, then fail
        with open(inp / "b.jpg", "wb"):
            pass
        pytest.fail("restore hung on a FIFO")
    code, out, _ = result["r"]
    text = " ".join(out.split())
    assert code == 1 and (tmp_path / "out" / "a.png").is_file()
    assert "b.jpg" in text and "not a regular file" in text and "z.jpg" in text


def test_stale_world_size_does_not_shard_a_plain_run(tiny_root, small, tmp_path, cli, monkeypatch):
    for i in range(3):
        _png(tmp_path / "in" / f"p{i}.png", np.roll(small, 30 * i, axis=1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, _ = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["p0.png", "p1.png", "p2.png"]
    assert not list((tmp_path / "out").glob("mgfr-summary-*-of-*.json"))


# -- data lost or written outside -o ----------------------------------------------------------------
def test_outputs_stay_inside_the_output_folder(tiny_root, small, tmp_path, cli):
    _png(tmp_path / "gx" / "a" / "x.png", small)
    _png(tmp_path / "gy" / "y.png", small)
    code, _, err = cli("restore", tmp_path / "gx", "-o", tmp_path / "out", "--suffix", "/../../ESCAPED", *FAST)
    assert code == 2 and "--suffix" in err
    pattern = str(tmp_path / "gx" / "*" / ".." / ".." / "gy" / "*.png")
    code, out, err = cli("restore", pattern, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0, out + err
    written = [p for p in tmp_path.rglob("*.png") if "gx" not in p.parts and "gy" not in p.parts]
    assert written and all((tmp_path / "out") in p.parents for p in written)


def test_name_collisions_get_distinct_outputs(tiny_root, small, tmp_path, cli):
    inp = tmp_path / "in"
    _png(inp / "a.png", small)
    cv2.imwrite(str(inp / "a.jpg"), np.ascontiguousarray(small[:, ::-1, ::-1]))
    Image.fromarray(small).save(inp / "anim.webp")
    Image.fromarray(small[:, ::-1]).save(inp / "anim.gif")
    code, out, err = cli("restore", inp, "-o", tmp_path / "out", "--model-root", tiny_root, "--ext", "png", *FAST)
    assert code == 0, out + err
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["a-jpg.png", "a-png.png", "anim-gif.png", "anim-webp.png"]
    assert "restored │ 4" in " ".join(out.split())
    # the same from align and degrade
    code, _, _ = cli("degrade", inp, "-o", tmp_path / "dg")
    assert code == 0 and len(list((tmp_path / "dg").glob("*.png"))) == 4


def test_tiff_outputs_are_recognised_as_done(tiny_root, small, tmp_path, cli):
    Image.fromarray(small).save(tmp_path / "p.tiff")
    args = ("restore", tmp_path / "p.tiff", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert cli(*args)[0] == 0
    first = (tmp_path / "out" / "p.tiff").stat().st_mtime_ns
    code, out, _ = cli(*args)
    assert code == 0 and "skipped │ 1" in " ".join(out.split())
    assert (tmp_path / "out" / "p.tiff").stat().st_mtime_ns == first


def test_output_inside_the_input_folder_is_not_read_back(tiny_root, small, tmp_path, cli):
    _png(tmp_path / "in" / "p.png", small)
    args = ("restore", tmp_path / "in", "-o", tmp_path / "in" / "out", "-r", "--model-root", tiny_root, *FAST)
    assert cli(*args)[0] == 0
    code, out, _ = cli(*args)
    assert code == 0 and not (tmp_path / "in" / "out" / "out").exists()
    assert "skipped │ 1" in " ".join(out.split())


def test_degrade_never_writes_over_an_input(tmp_path, small, cli):
    deep = (small.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "d.png"), np.ascontiguousarray(deep[..., ::-1]))
    before = (tmp_path / "d.png").read_bytes()
    code, out, _ = cli("degrade", tmp_path, "-o", tmp_path)
    assert code == 1 and "would overwrite an input" in " ".join(out.split())
    assert (tmp_path / "d.png").read_bytes() == before


def test_formats_keep_colour_profile_and_say_what_is_lost(tiny_root, small, tmp_path, cli):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (tmp_path / "in").mkdir()
    Image.fromarray(small).save(tmp_path / "in" / "c.jpg", icc_profile=icc, quality=95)
    frames = [Image.fromarray(np.roll(small, 20 * i, axis=1)) for i in range(3)]
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0, out + err
    assert Image.open(tmp_path / "out" / "c.jpg").info.get("icc_profile") == icc
    assert "only the first of 3 frames" in " ".join(out.split())
    # a float TIFF in 0..1 is not black
    Image.fromarray((small[..., 0] / 255.0).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    px = read_image(tmp_path / "f.tif").pixels
    assert abs(int(px.mean()) - int(small[..., 0].mean())) <= 1


# -- corrupt results are never "restored" -------------------------------------------------------------
def test_non_finite_values_are_refused(tiny_root, small, tmp_path, cli, monkeypatch):
    _png(tmp_path / "p.png", small)
    code, _, err = cli("restore", tmp_path / "p.png", "-o", tmp_path / "o", "--guidance-quality", "nan", *FAST)
    assert code == 2 and "finite" in err
    code, _, err = cli("restore", tmp_path / "p.png", "-o", tmp_path / "o", "--upscale", "nan", *FAST)
    assert code == 2
    code, _, err = cli("train", "--stage", "1", "--data", tmp_path, "-o", tmp_path / "run", "--learning-rate", "nan")
    assert code == 1 and "finite" in err and not (tmp_path / "run").exists()
    # a restore that yields NaN fails that photo instead of pasting a black square
    import torch

    from mgfr_cli.model.pipeline import MgfrPipeline

    monkeypatch.setattr(MgfrPipeline, "decode_latents", lambda self, z, **kw: torch.full((z.shape[0], 3, 128, 128), float("nan")))
    code, out, _ = cli("restore", tmp_path / "p.png", "-o", tmp_path / "o2", "--model-root", tiny_root, *FAST)
    assert code == 1 and "non-finite" in " ".join(out.split()) and not (tmp_path / "o2" / "p.png").exists()


def test_diverged_training_writes_no_checkpoint(tmp_path):
    import torch
    from diffusers.training_utils import EMAModel

    from mgfr_cli.errors import WeightsError
    from mgfr_cli.training.checkpoints import save_ema_adapter

    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(WeightsError, match="diverged"):
        save_ema_adapter(net, EMAModel(list(net.parameters())), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# -- one line, never a traceback ------------------------------------------------------------------
@pytest.mark.parametrize("args, code", [
    (["restore", "x.png", "-o", "o", "--seed", "18446744073709551616"], 2),
    (["degrade", "x.png", "-o", "o", "--seed", "-1"], 2),
])
def test_out_of_range_numbers_are_usage_errors(cli, tmp_path, args, code):
    got, _, err = cli(*args)
    assert got == code and "Traceback" not in err


def test_model_yaml_null_and_deep_yaml(tmp_path):
    from mgfr_cli.configs import load_model_config, read_yaml

    text = (Path(__file__).resolve().parents[1] / "models" / "mgfr-tiny.yaml").read_text()
    (tmp_path / "m.yaml").write_text(text.split("adapter:")[0] + "adapter: null\n")
    with pytest.raises(ConfigError, match="'adapter' must be a mapping"):
        load_model_config(tmp_path / "m.yaml")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=str(tmp_path / "deep.yaml")):
        read_yaml(tmp_path / "deep.yaml")


def test_output_problems_of_align_eval_and_weights(detector_root, small, tmp_path, cli, monkeypatch):
    _png(tmp_path / "in" / "p.png", small)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("MGFR_OFFLINE", "1")
    code, _, err = cli("align", tmp_path / "in", "-o", tmp_path / "afile", "--model-root", tmp_path / "empty")
    assert code == 1 and "afile: is a file, not a folder" in err  # before the (missing) detector is looked for
    code, _, err = cli("align", tmp_path / "in", "-o", tmp_path / "afile", "--detector", "retinaface_mobile0.25",
                       "--model-root", detector_root, "--device", "cpu")
    assert code == 1 and "afile: is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    # restore: said before any model loads (this root has no weights: their error would come first), the file kept
    code, _, err = cli("restore", tmp_path / "in", "-o", tmp_path / "afile", "--model-root", tmp_path / "empty",
                       "--offline")
    assert code == 1 and "afile: is a file, not a folder (-o names the folder" in err
    assert (tmp_path / "afile").read_text() == "x"
    code, _, err = cli("degrade", tmp_path / "in", "-o", tmp_path / "afile")
    assert code == 1 and "afile: is a file, not a folder" in err
    # -o named as a photo or a clip, not there yet: refused, not made a folder of that name; made first, it is used
    for command, name in (("restore", "p_restored.jpg"), ("align", "faces.PNG"), ("degrade", "lq.mp4")):
        extra = {"restore": ("--model-root", tmp_path / "empty", "--offline"),
                 "align": ("--model-root", tmp_path / "empty")}.get(command, ())
        code, _, err = cli(command, tmp_path / "in", "-o", tmp_path / name, *extra)
        assert code == 1 and f"{name}: named as a file ({Path(name).suffix}), and -o names the folder" in \
            " ".join(err.split()) and not (tmp_path / name).exists(), err
    (tmp_path / "lq.mp4").mkdir()
    code, _, err = cli("degrade", tmp_path / "in", "-o", tmp_path / "lq.mp4")
    assert code == 0 and (tmp_path / "lq.mp4" / "p.png").is_file(), err
    # a folder flag naming a file, or a library that is not there: a usage error before anything loads (the
    # recogniser's weights were asked for first, then the library said not a folder after the models loaded)
    for flag, path, said in (("--ref-library", "afile", "is a file"), ("--ref-library", "gone", "does not exist"),
                             ("--model-root", "afile", "is a file")):
        code, _, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", flag, tmp_path / path, "--offline")
        assert code == 2 and f"'{flag}'" in err and said in err, err
    for path, said in (("afile", "afile (there, but not an adapter folder"), ("gone", "gone (an adapter folder")):
        code, _, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--checkpoint", tmp_path / path,
                           "--model-root", detector_root, "--offline")
        assert code == 1 and said in err, err  # (a file named as the adapter was called missing)
    # eval: tiny images are listed, -o naming a folder is refused up front
    for d in ("pred", "gt"):
        _png(tmp_path / d / "big.png", small)
        _png(tmp_path / d / "tiny.png", small[:8, :8])
    code, out, _ = cli("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert code == 0 and "smaller than SSIM" in " ".join(out.split())
    code, _, err = cli("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "-o", tmp_path / "pred")
    assert code == 1 and "is a folder" in err
    # weights: a model root that cannot be created
    code, _, err = cli("weights", "fetch", "realesrgan-x2", "--model-root", tmp_path / "afile" / "sub")
    assert code == 1 and "cannot write weights there" in err and "Traceback" not in err


def test_training_problems_are_one_line(tmp_path, cli, small):
    (tmp_path / "afile").write_text("x")
    # --data and --init that are not there: said before the base and the recogniser are looked for (a user without
    # them fetched gigabytes before learning the data path was wrong)
    for flags, said in ((["--data", tmp_path / "gone"], "'--data': dir"), (["--data", tmp_path / "afile"], "is a file"),
                        (["--data", tmp_path, "--init", tmp_path / "gone"], "'--init': path")):
        code, _, err = cli("train", "--stage", "2", *flags, "-o", tmp_path / "run", "--model-root", tmp_path / "empty")
        assert code == 2 and said in err, err
    code, _, err = cli("train", "--stage", "1", "--data", tmp_path, "-o", tmp_path / "afile")
    assert code == 1 and "names a file" in err
    data = tmp_path / "data"
    _png(data / "good.png", small)
    (data / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (data / "worse.jpg").write_bytes(b"not a jpeg")
    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    with pytest.raises(MgfrError, match=r"2 unreadable image\(s\): .*bad\.png.*worse\.jpg"):
        FaceDataset(data, 1, 64, DegradeConfig(), PromptConfig())


def test_resume_skips_a_damaged_checkpoint(tmp_path):
    """A truncated newest checkpoint: resume falls back to the one before, saying so."""
    import shutil

    import torch

    from helpers import tiny_base
    from mgfr_cli.training.train import train
    from mgfr_cli.training.train_config import load_train_config

    base = tmp_path / "base"
    tiny_base().save(base)
    data = tmp_path / "data"
    for i in range(2):
        _png(data / f"{i}.png", (np.random.default_rng(i).random((128, 128, 3)) * 255).astype(np.uint8))
    kw = dict(model="mgfr-tiny", batch_size=1, num_workers=0, lr_warmup_steps=0, checkpoint_every=1, max_steps=2,
              learning_rate=1e-3)
    train(load_train_config(None, kw), base_path=base, data_dir=data, run_dir=tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "step-2" / "state" / "adapter.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (tmp_path / "run" / "checkpoints" / "step-1" / "state" / "optimizer.pt").write_bytes(b"")  # 0 bytes
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-2", tmp_path / "run" / "checkpoints" / "step-3")
    (tmp_path / "run" / "checkpoints" / "step-3" / "step.json").write_text("{}")  # a key missing
    from mgfr_cli.errors import WeightsError

    with pytest.raises(WeightsError, match="no checkpoint can be resumed"):
        train(load_train_config(None, {**kw, "max_steps": 4}), base_path=base, data_dir=data,
              run_dir=tmp_path / "run", resume=True)
    # restore step-1's optimiser from a fresh run: now it is whole, and the resume uses it
    train(load_train_config(None, {**kw, "max_steps": 1}), base_path=base, data_dir=data, run_dir=tmp_path / "fresh")
    shutil.copy(tmp_path / "fresh" / "checkpoints" / "step-1" / "state" / "optimizer.pt",
                tmp_path / "run" / "checkpoints" / "step-1" / "state" / "optimizer.pt")
    final = train(load_train_config(None, {**kw, "max_steps": 4}), base_path=base, data_dir=data,
                  run_dir=tmp_path / "run", resume=True)
    assert (final / "config.json").is_file() and torch.cuda.device_count() >= 0


# -- resources ------------------------------------------------------------------------------------
def test_max_megapixels_decides_over_pillow(tmp_path):
    Image.new("1", (14000, 13400)).save(tmp_path / "big.png")  # 187.6 MP, a few KB
    with pytest.raises(MgfrError, match="over the limit of 100"):
        read_image(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", max_megapixels=500).pixels.shape == (13400, 14000)


def test_detection_on_a_large_photo_uses_a_smaller_copy(helper, astronaut):
    big = cv2.resize(astronaut, (3072, 3072), interpolation=cv2.INTER_CUBIC)  # 9.4 MP
    small_faces = helper.detect(astronaut)
    seen = []
    real = helper.detector.detect_faces
    helper.detector.detect_faces = lambda img, **kw: seen.append(img.shape) or real(img, **kw)
    try:
        big_faces = helper.detect(big)
    finally:
        helper.detector.detect_faces = real
    assert seen[0][0] * seen[0][1] <= 4_000_000  # the detector saw a copy of at most 4 MP
    assert len(big_faces) == len(small_faces) == 1  # found where it is, in full-size coordinates
    assert np.abs(big_faces[0].landmarks / 6 - small_faces[0].landmarks).max() < 5  # eye distance is ~46 px


def test_many_references_are_encoded_in_chunks(small):
    import torch

    from helpers import tiny_pipeline

    pipe = tiny_pipeline()
    sizes = []
    real = pipe.encode_images
    pipe.encode_images = lambda x: sizes.append(x.shape[0]) or real(x)
    from mgfr_cli.faces.helper import AlignedFace

    refs = [AlignedFace(np.roll(small, i, axis=0), np.zeros((5, 2)), np.eye(2, 3), 0) for i in range(20)]
    out = pipe.encode_references(refs)
    assert len(out) == 20 and max(sizes) <= 8 and sum(sizes) == 20
    assert isinstance(out[0][0], torch.Tensor)


def test_two_runs_into_one_folder_keep_both_summaries(tiny_root, small, tmp_path, cli):
    import json

    _png(tmp_path / "a" / "x.png", small)
    _png(tmp_path / "b" / "y.png", small)
    for folder in ("a", "b"):
        assert cli("restore", tmp_path / folder, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)[0] == 0
    rows = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())
    assert sorted(Path(r["source"]).name for r in rows) == ["x.png", "y.png"]


def _png_ga16(path: Path, gray: np.ndarray, alpha: int) -> Path:
    """A 16-bit gray+alpha PNG written by hand (colour type 4): no library here writes one."""
    import struct
    import zlib

    px = np.dstack([gray, np.full_like(gray, alpha)]).astype(">u2")
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(px.shape[0]))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", px.shape[1], px.shape[0], 16, 4, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_gray_alpha_16_bit_comes_back_as_gray_alpha_16_bit(tiny_root, small, tmp_path, cli):
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    _png_ga16(tmp_path / "ga.png", gray, 50000)
    code, out, err = cli("restore", tmp_path / "ga.png", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0, out + err
    raw = (tmp_path / "out" / "ga.png").read_bytes()
    assert raw[24:26] == bytes([16, 4])  # IHDR: 16 bits, colour type 4 (gray + alpha)
    back = read_image(tmp_path / "out" / "ga.png")
    assert back.gray_alpha and back.pixels.dtype == np.uint16
    assert np.all(back.pixels[..., 3] == 50000)  # alpha kept exactly
    assert np.array_equal(back.pixels[..., 0], back.pixels[..., 1])  # gray: the channels agree


def test_folder_walk_says_which_files_it_skipped(tiny_root, small, tmp_path, cli):
    _png(tmp_path / "in" / "p.png", small)
    (tmp_path / "in" / "holiday.cr2").write_bytes(b"\0" * 100)
    (tmp_path / "in" / "p.yaml").write_text("prompt: brown eyes\n")  # a sidecar: not worth a line
    Image.fromarray(small).save(tmp_path / "in" / "download.jfif", "JPEG")  # a browser's JPEG saved on Windows
    Image.fromarray(small).save(tmp_path / "in" / "scan.JPE", "JPEG")
    (tmp_path / "in" / "IMG_E0001.AAE").write_text("<plist/>")  # an iPhone export's edits: a companion, unlisted
    code, out, _ = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    text = " ".join(out.split())
    assert code == 0 and "holiday.cr2" in text and "not an image format mgfr reads (.cr2)" in text
    assert "p.yaml" not in text and "jfif" not in text.lower() and "JPE" not in text, text  # read, not skipped
    assert "AAE" not in text, text
    for name in ("download.jpg", "scan.jpg"):  # written as JPEGs, as a .jpeg is
        assert Image.open(tmp_path / "out" / name).format == "JPEG", name
