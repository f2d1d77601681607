"""CLIP-IQA (no-reference quality) against piq's CLIP-IQA, an independent implementation, on the same weights;
and ``mgfr eval`` without ground truth."""

import cv2
import numpy as np
import pytest
import torch

from helpers import tiny_clip
from mgfr_cli.training.quality import PROMPTS, ClipIqa


def piq_clipiqa(folder, rgb8):
    """piq's CLIP model (OpenAI's CLIP code) built from the same weights, scored as piq's ``CLIPIQA`` scores: the
    image at its own size without positional embedding, "Good photo." against "Bad photo."."""
    import open_clip
    from piq.feature_extractors import clip
    from safetensors.torch import load_file

    state = load_file(folder / "open_clip_model.safetensors")
    model = clip.build_model(dict(state)).float()
    model.load_state_dict(state)  # again in fp32: build_model loads into fp16 weights
    tokens = open_clip.tokenize(list(PROMPTS))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))
    x = torch.from_numpy(rgb8).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        text = model.encode_text(tokens).float()
        image = model.encode_image((x - mean) / std, pos_embedding=False).float()
        logits = model.logit_scale.exp() * (image / image.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    return float(logits.softmax(dim=-1)[0, 0])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("root") / "clip-rn50")


def test_clipiqa_matches_piq_at_any_size(clip_dir, astronaut):
    metric = ClipIqa(clip_dir)
    images = [astronaut[:96, :128], astronaut[100:300, 150:300], cv2.GaussianBlur(astronaut[:96, :128], (0, 0), 3)]
    ours = [metric(np.ascontiguousarray(im)) for im in images]
    theirs = [piq_clipiqa(clip_dir, np.ascontiguousarray(im)) for im in images]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert all(0 < s < 1 for s in ours) and len({round(s, 4) for s in ours}) == 3  # the image matters


def test_eval_without_ground_truth(tmp_path, clip_dir, astronaut, cli):
    root, pred = clip_dir.parent, tmp_path / "pred"
    (pred / "sub").mkdir(parents=True)
    cv2.imwrite(str(pred / "a.png"), astronaut[:, :, ::-1])
    cv2.imwrite(str(pred / "sub/b.jpg"), cv2.GaussianBlur(astronaut, (0, 0), 4)[:, :, ::-1])
    cv2.imwrite(str(pred / "tiny.png"), astronaut[:16, :16, ::-1])
    args = ("eval", "--pred", pred, "-o", tmp_path / "q.csv", "--model-root", root, "--device", "cpu")
    code, out, _ = cli(*args)
    assert code == 0, out
    text = " ".join(out.split())
    assert "3 images" in text and "smaller than CLIP-IQA's 32 px" in text and "clipiqa (" not in text
    lines = (tmp_path / "q.csv").read_text().splitlines()
    assert lines[0] == "name,clipiqa" and [ln.split(",")[0] for ln in lines[1:]] == ["a", "sub/b", "tiny", "MEAN"]
    metric = ClipIqa(clip_dir)
    a, b = (float(ln.split(",")[1]) for ln in lines[1:3])
    assert a == pytest.approx(metric(astronaut), abs=1e-5) and b != pytest.approx(a, abs=1e-4)
    assert lines[3] == "tiny," and float(lines[4].split(",")[1]) == pytest.approx((a + b) / 2, abs=1e-5)
    assert cli(*args)[0] == 0 and not (tmp_path / "q-mgfr.csv").exists()  # its own table: replaced on a rerun

    (tmp_path / "empty/clip-rn50").mkdir(parents=True)  # a fetch stopped before the weights file: not there
    (tmp_path / "empty/clip-rn50/open_clip_config.json").write_text("{}")
    code, _, err = cli("eval", "--pred", pred, "--model-root", tmp_path / "empty", "--device", "cpu")
    assert code == 1 and "without --gt" in err and "mgfr weights fetch clip-rn50" in " ".join(err.split())


def test_eval_with_ground_truth_scores_the_prediction_as_it_is(tmp_path, clip_dir, astronaut, cli):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(gt / "a.png"), astronaut[:, :, ::-1])
    cv2.imwrite(str(pred / "a.png"), small[:, :, ::-1])  # half the size: resized for PSNR, not for CLIP-IQA
    code, out, _ = cli("eval", "--pred", pred, "--gt", gt, "-o", tmp_path / "r.csv", "--model-root", clip_dir.parent,
                       "--device", "cpu")
    assert code == 0, out
    header, row = (tmp_path / "r.csv").read_text().splitlines()[:2]
    assert header == "name,psnr,ssim,clipiqa"
    assert float(row.split(",")[3]) == pytest.approx(ClipIqa(clip_dir)(small), abs=1e-5)


def test_a_folder_that_is_not_clip_says_so(tmp_path):
    from mgfr_cli.errors import WeightsError

    with pytest.raises(WeightsError, match="mgfr weights fetch clip-rn50"):
        ClipIqa(tmp_path)


def test_eval_without_ground_truth_compares_with_references(tmp_path, astronaut, cli):
    from helpers import arcface_onnx
    from mgfr_cli.faces.identity import ARCFACE_FILE

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    face = np.ascontiguousarray(astronaut[20:276, 120:376, ::-1])
    cv2.imwrite(str(pred / "a.png"), face)
    cv2.imwrite(str(pred / "b.png"), face)
    cv2.imwrite(str(ref / "a.png"), face)  # b has no reference
    arcface_onnx(tmp_path / ARCFACE_FILE)
    code, out, _ = cli("eval", "--pred", pred, "--ref", ref, "-o", tmp_path / "r.csv", "--model-root", tmp_path,
                       "--device", "cpu")
    assert code == 0, out
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "name,ref_identity" and lines[2] == "b,"
    assert float(lines[1].split(",")[1]) == pytest.approx(1.0, abs=1e-4)  # the same face
    text = " ".join(out.split())
    assert "no reference at this path" in text and "clipiqa (mgfr weights fetch clip-rn50)" in text
