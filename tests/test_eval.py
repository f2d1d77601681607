import cv2
import numpy as np
import pytest
import torch

from helpers import arcface_onnx
from mgfr_cli.training.evaluate import PSNR_CAP, Lpips, evaluate, psnr, ssim


@pytest.fixture(scope="module")
def face(astronaut):
    return np.ascontiguousarray(astronaut[20:276, 120:376])


def test_identical_images(face):
    assert psnr(face, face) == PSNR_CAP
    assert ssim(face, face) == pytest.approx(1.0, abs=1e-6)


def test_known_noise_level_gives_the_known_psnr():
    gray = np.full((256, 256, 3), 128, np.uint8)
    noisy = np.clip(128 + np.random.default_rng(0).normal(0, 10, gray.shape).round(), 0, 255).astype(np.uint8)
    assert psnr(noisy, gray) == pytest.approx(20 * np.log10(255 / 10), abs=0.1)  # 28.13 dB


def test_ssim_falls_as_blur_grows(face):
    values = [ssim(cv2.GaussianBlur(face, (0, 0), s), face) for s in (0.5, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_lpips_with_trunk_from_the_model_root(tmp_path, face):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pth")  # real layout, random values
    metric = Lpips(tmp_path / "alex.pth")
    assert metric(face, face) == pytest.approx(0.0, abs=1e-6)
    assert metric(cv2.GaussianBlur(face, (0, 0), 4), face) > metric(cv2.GaussianBlur(face, (0, 0), 1), face)


def test_identity_cosine_same_photo_beats_two_people(tmp_path, astronaut, group_photo, helper):
    from mgfr_cli.faces.identity import IdentityEncoder

    enc = IdentityEncoder(arcface_onnx(tmp_path / "arc.onnx"))
    a = helper.detect_and_align(astronaut)[0].crop
    others = [f.crop for f in helper.detect_and_align(group_photo)[:3]]
    ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 60])
    same = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    e = enc.embed([a, same, *others])
    assert all(e[0] @ e[1] > e[0] @ o for o in e[2:])


def test_eval_pairs_by_name_and_reports_the_rest(tmp_path, face, cli):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    cv2.imwrite(str(gt / "a.png"), face)
    cv2.imwrite(str(pred / "a.jpg"), cv2.GaussianBlur(face, (0, 0), 2))
    cv2.imwrite(str(gt / "b.png"), face)
    cv2.imwrite(str(pred / "c.png"), face)
    (pred / "b.png").write_bytes(b"broken")
    report = evaluate(pred, gt)
    assert [r["name"] for r in report.rows] == ["a"]
    reasons = " ".join(why for _, why in report.problems)
    assert "no ground truth" in reasons and "not a readable image" in reasons
    code, out, _ = cli("eval", "--pred", pred, "--gt", gt, "-o", tmp_path / "r.csv", "--model-root", tmp_path, "--device", "cpu")
    assert code == 0 and "lpips (mgfr weights fetch lpips-alex)" in " ".join(out.split())
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "name,psnr,ssim" and lines[-1].startswith("MEAN,")
    again = ("eval", "--pred", pred, "--gt", gt, "-o", tmp_path / "r.csv", "--model-root", tmp_path, "--device", "cpu")
    assert cli(*again)[0] == 0 and not (tmp_path / "r-mgfr.csv").exists()  # its own table: replaced
    (tmp_path / "r.csv").write_text("my,spreadsheet\n1,2\n")
    code, _, err = cli(*again)  # a file of the user's at that name: kept, the table beside it (said)
    assert code == 0 and "kept, and this one written to r-mgfr.csv" in " ".join(err.split()), err
    assert (tmp_path / "r.csv").read_text() == "my,spreadsheet\n1,2\n"
    assert (tmp_path / "r-mgfr.csv").read_text().splitlines()[0] == "name,psnr,ssim"


def test_eval_pairs_a_restores_outputs_by_the_photo_they_came_from(tiny_root, astronaut, tmp_path, cli):
    """`restore lq -o lq --suffix _r`, then `eval --pred lq --gt gt`: each output goes by the name of the photo it
    was restored from (its summary says which), so a_r.png pairs with gt/a.png, and the low-quality inputs beside
    the outputs are not taken for predictions. The PSNR is the one computed here from the two files."""
    from mgfr_cli.faces.io import read_image

    face = np.ascontiguousarray(astronaut[:256, 100:356])
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    lq.mkdir()
    gt.mkdir()
    cv2.imwrite(str(gt / "a.png"), face[..., ::-1])
    cv2.imwrite(str(lq / "a.png"), cv2.GaussianBlur(face, (0, 0), 2)[..., ::-1])
    code, out, err = cli("restore", lq, "-o", lq, "--suffix", "_r", "--model-root", tiny_root, "--steps", "1",
                         "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0 and (lq / "a_r.png").is_file(), out + err
    report = evaluate(lq, gt)
    assert [r["name"] for r in report.rows] == ["a"] and not report.problems, report.problems
    mse = np.mean((read_image(lq / "a_r.png").rgb8() / 255.0 - face / 255.0) ** 2)
    assert report.rows[0]["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
