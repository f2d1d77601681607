"""Training and evaluation tell the truth: one test per row of issue 24 (each failed on the old main)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from mgfr_cli.errors import InputError, OutputError, WeightsError
from mgfr_cli.training.evaluate import PSNR_CAP, evaluate
from mgfr_cli.training.train import train
from test_train import _cfg, world  # noqa: F401  (the tiny base and data of the training tests)


def _img(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


# -- eval: rows 1-4 -------------------------------------------------------------------------------------
def test_eval_pairs_an_identity_tree_by_relative_path(world, tmp_path):
    crops = world["crops"]
    for ident, k in (("id07", 0), ("id08", 1)):  # two people whose files share names
        _img(tmp_path / "gt" / ident / "a.png", crops[k])
        _img(tmp_path / "pred" / ident / "a.png", crops[k])
    _img(tmp_path / "pred" / "id09" / "a.png", crops[2])  # no ground truth for it
    report = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert sorted(r["name"] for r in report.rows) == ["id07/a", "id08/a"]
    assert all(r["psnr"] == PSNR_CAP for r in report.rows)  # each against its own ground truth
    assert [(p.parts[-2], why.split(":")[0]) for p, why in report.problems] == [("id09", "no ground truth at id09/a.* in " + str(tmp_path / "gt"))]


def test_eval_lists_ambiguous_files_and_refuses_another_aspect_ratio(world, tmp_path):
    face = cv2.resize(world["crops"][0], (512, 512))
    _img(tmp_path / "gt" / "a.png", face)
    _img(tmp_path / "pred" / "a.png", face)
    _img(tmp_path / "pred" / "a.jpg", face)
    _img(tmp_path / "gt" / "wide.png", face)
    _img(tmp_path / "pred" / "wide.png", cv2.resize(face, (1024, 256)))
    _img(tmp_path / "gt" / "big.png", face)
    _img(tmp_path / "pred" / "big.png", cv2.resize(face, (1024, 1024)))
    report = evaluate(tmp_path / "pred", tmp_path / "gt")
    why = {p.name: w for p, w in report.problems}
    assert "ambiguous" in why["a.png"] and "ambiguous" in why["a.jpg"]
    assert "another aspect ratio, not scored" in why["wide.png"]
    assert [r["name"] for r in report.rows] == ["big"]
    assert "resized" in report.notes[0][1]


def test_eval_a_missing_reference_drops_only_its_own_metric(world, tmp_path):
    from helpers import arcface_onnx
    from mgfr_cli.faces.identity import IdentityEncoder

    crops = world["crops"]
    for name, k in (("a", 0), ("b", 1)):
        _img(tmp_path / "gt" / f"{name}.png", crops[k])
        _img(tmp_path / "pred" / f"{name}.png", cv2.GaussianBlur(crops[k], (0, 0), 1 + k))
    _img(tmp_path / "ref" / "a.png", crops[0])
    ident = IdentityEncoder(arcface_onnx(tmp_path / "arc.onnx"))
    report = evaluate(tmp_path / "pred", tmp_path / "gt", identity=ident, ref_dir=tmp_path / "ref")
    assert len(report.rows) == 2
    means = report.mean()
    assert means["psnr"] == pytest.approx(np.mean([r["psnr"] for r in report.rows]))
    assert np.isfinite(means["ref_identity"]) and means["ref_identity"] == pytest.approx(report.rows[0]["ref_identity"])


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_eval_ref_that_is_not_a_folder_of_images_is_one_line(world, tmp_path, cli, what):
    _img(tmp_path / "gt" / "a.png", world["crops"][0])
    _img(tmp_path / "pred" / "a.png", world["crops"][0])
    ref = tmp_path / "ref"
    if what == "empty":
        ref.mkdir()
    elif what == "file":
        ref.write_text("x")
    code, out, err = cli("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--ref", ref,
                         "-o", tmp_path / "r.csv", "--device", "cpu")
    assert code == 1 and err.startswith("error: --ref") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.csv").exists()


def test_eval_and_train_outputs_that_cannot_be_written_fail_before_any_work(world, tmp_path, cli):
    _img(tmp_path / "gt" / "a.png", world["crops"][0])
    _img(tmp_path / "pred" / "a.png", world["crops"][0])
    code, _, err = cli("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "-o", "/proc/mgfr/eval.csv")
    assert code == 1 and "cannot write there" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "--stage", "1", "--data", world["s1"], "-o", "/proc/mgfr-run", "--base", world["base"])
    assert code == 1 and "cannot write the run there" in err and len(err.strip().splitlines()) == 1


# -- train: rows 5-12 -----------------------------------------------------------------------------------
def test_two_trainings_into_one_run_folder_the_second_refuses(world, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--stage", "1", "--data", world["s1"], "-o", run, "--base", world["base"], "--max-steps", "100000",
            "--model", "mgfr-tiny", "--batch-size", "1", "--num-workers", "0", "--checkpoint-every", "100000"]
    first = subprocess.Popen([sys.executable, "-m", "mgfr_cli.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        lock = run / ".mgfr-train.lock"
        deadline = time.time() + 300
        while time.time() < deadline and not (lock.is_file() and lock.stat().st_size > 0):
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.1)
        assert lock.is_file(), "the first run never took its lock"
        second = subprocess.run([sys.executable, "-m", "mgfr_cli.cli", *map(str, args)], capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 1, second.stderr
        assert f"another mgfr train (process {first.pid}" in " ".join(second.stderr.split())
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)


def test_the_latent_cache_follows_changed_images(world, tmp_path, monkeypatch):
    import shutil

    from mgfr_cli.model.base import load_base
    from mgfr_cli.training.caches import encode_latents, latent_cache
    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    data = tmp_path / "data"
    shutil.copytree(world["s1"], data)
    base = load_base(world["base"])
    scaling = float(base.vae.config.scaling_factor)
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    said = []

    def cache(folder=data):
        ds = FaceDataset(folder, 1, 64, DegradeConfig(), PromptConfig())
        return ds, latent_cache(ds, base, scaling, tmp_path / "run", torch.float32, "cpu", acc, said.append)

    ds, first = cache()
    changed = ds.images[2]
    _img(changed, np.ascontiguousarray(world["crops"][2][::-1]))  # the same name, another picture
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    ds, second = cache()
    n = len(ds.images)
    fresh = encode_latents(base, ds.clean_tensor(2)[None], scaling, "cpu", torch.float32)[0]
    assert torch.allclose(second[2], fresh, atol=1e-5) and not torch.allclose(first[2], second[2], atol=1e-3)
    others = [i for i in range(2 * n) if i not in (2, 2 + n)]
    assert torch.equal(first[others], second[others])
    assert said == [f"latent cache: 1 of {n} image(s) new or changed since it was made; encoding those again"]
    monkeypatch.chdir(data)  # the same data spelled from elsewhere (a resume in another folder): nothing encoded
    _, third = cache(Path("..") / "data")
    assert torch.equal(third, second) and len(said) == 1, said


def test_unreadable_training_images_are_all_listed_before_the_first_step(world, tmp_path):
    import shutil
    import zlib

    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    data = tmp_path / "data"
    shutil.copytree(world["s1"], data)
    jpg = cv2.imencode(".jpg", world["crops"][0])[1].tobytes()
    (data / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    png = bytearray(cv2.imencode(".png", world["crops"][1])[1].tobytes())
    start = png.index(b"IDAT") + 4  # broken zlib data, CRC made valid again: a header check passes it
    length = int.from_bytes(png[start - 8 : start - 4], "big")
    png[start + 10 : start + 20] = b"\xff" * 10
    png[start + length : start + length + 4] = zlib.crc32(bytes(png[start - 4 : start + length])).to_bytes(4, "big")
    (data / "zlib.png").write_bytes(bytes(png))
    cv2.imwrite(str(data / "huge.png"), np.zeros((3200, 3200), np.uint8))
    with pytest.raises(InputError) as info:
        FaceDataset(data, 1, 64, DegradeConfig(), PromptConfig(), max_megapixels=10)
    text = str(info.value)
    assert "3 unreadable image(s)" in text and all(n in text for n in ("cut.jpg", "zlib.png", "huge.png"))
    assert "--max-megapixels" in text


def test_checkpoints_are_pruned_and_a_diverged_run_writes_no_adapter(world, tmp_path):
    run = tmp_path / "run"
    train(_cfg(stage=1, max_steps=5, checkpoint_every=1, keep_checkpoints=2), base_path=world["base"],
          data_dir=world["s1"], run_dir=run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-5"]
    assert (run / "adapter" / "config.json").is_file()
    with pytest.raises(WeightsError, match="diverged"):
        train(_cfg(stage=1, max_steps=4, learning_rate=1e30, lr_warmup_steps=0, log_every=1),
              base_path=world["base"], data_dir=world["s1"], run_dir=tmp_path / "boom")
    assert not (tmp_path / "boom" / "adapter").exists() and not list((tmp_path / "boom").glob("checkpoints/step-*"))


@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_a_full_disk_leaves_no_partial_checkpoint(world, tmp_path, monkeypatch, writer):
    """A full disk under either writer (safetensors says it as its own error type): one line, nothing partial."""
    import errno

    import safetensors.torch

    import mgfr_cli.training.checkpoints as ck

    def full(*a, **k):
        if writer == "torch":
            raise OSError(errno.ENOSPC, "No space left on device")
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    if writer == "torch":
        monkeypatch.setattr(ck.torch, "save", full)
    else:
        monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match="No space left"):
        train(_cfg(stage=1, max_steps=2, checkpoint_every=1), base_path=world["base"], data_dir=world["s1"],
              run_dir=tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == []


def test_run_folders_are_never_walked_as_data(world, tmp_path):
    import shutil

    from mgfr_cli.training.data import FaceDataset, PromptConfig, list_images
    from mgfr_cli.training.degrade import DegradeConfig

    photos = tmp_path / "photos"
    shutil.copytree(world["s1"], photos)
    run = photos / "run"
    _img(run / "aligned-data" / "face0.png", world["crops"][0])
    (run / "aligned-data" / ".mgfr-aligned.json").write_text('{"skipped": []}')
    (run / "config.yaml").write_text("stage: 1\n")
    (run / "checkpoints").mkdir()
    assert all("run" not in p.relative_to(photos).parts for p in list_images(photos))
    s2 = tmp_path / "s2"
    shutil.copytree(world["s2"], s2)
    (s2 / "empty").mkdir()
    ds = FaceDataset(s2, 2, 64, DegradeConfig(), PromptConfig())
    assert ds.skipped_identities == ["solo"]  # an empty folder is no identity at all


def test_words_of_ctrl_c_and_of_a_resume_of_another_stage(world, tmp_path, cli, monkeypatch):
    run = tmp_path / "run"
    train(_cfg(stage=1, max_steps=1, checkpoint_every=1), base_path=world["base"], data_dir=world["s1"], run_dir=run)
    from mgfr_cli.training.checkpoints import run_processes

    assert run_processes(run) == 1  # the checkpoint says how many processes wrote it (a resume checks the batch)
    code, _, err = cli("train", "--stage", "2", "--data", world["s2"], "-o", run, "--base", world["base"], "--resume")
    assert code == 1 and "is a stage-1 run and this is stage 2" in err and f"--init {run}" in " ".join(err.split())

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("mgfr_cli.training.train.train", interrupted)
    code, _, err = cli("train", "--stage", "1", "--data", world["s1"], "-o", tmp_path / "r2", "--base", world["base"],
                       "--detector", "retinaface_mobile0.25")
    assert code == 130 and "resume with: mgfr train --stage 1" in " ".join(err.split()) and "--resume" in err
    assert " ".join(err.split()).count("--detector: not used without --align") == 1  # said, not dropped


def test_a_resume_on_other_base_weights_is_refused(world, tmp_path, monkeypatch):
    """A run resumes on the base it started with (a copy of it elsewhere is that base); other weights of the same
    shapes are refused before a step, naming the run's base (the adapter went on learning against another UNet,
    and cached latents of another VAE were reused)."""
    import re
    import shutil
    from dataclasses import replace

    import mgfr_cli.training.train as training
    from helpers import tiny_base
    from mgfr_cli.weights.files import fingerprint

    marks, cache = [], training.latent_cache
    monkeypatch.setattr(training, "latent_cache", lambda *a: marks.append(a[-1]) or cache(*a))
    run = tmp_path / "run"
    cfg = _cfg(stage=1, max_steps=1, checkpoint_every=1, cache_latents=True)
    train(cfg, base_path=world["base"], data_dir=world["s1"], run_dir=run)
    assert marks == [fingerprint([world["base"]])]  # the latents are keyed by the base's weights
    other = tmp_path / "other"
    tiny_base(seed=1).save(other)
    with pytest.raises(InputError, match=re.escape(f"trained on ({Path(world['base']).resolve()})")):
        train(replace(cfg, max_steps=2), base_path=other, data_dir=world["s1"], run_dir=run, resume=True)
    with pytest.raises(WeightsError, match="base model not found"):  # missing is missing, not "other weights"
        train(replace(cfg, max_steps=2), base_path=tmp_path / "gone", data_dir=world["s1"], run_dir=run, resume=True)
    shutil.copytree(world["base"], tmp_path / "copy")
    train(replace(cfg, max_steps=2), base_path=tmp_path / "copy", data_dir=world["s1"], run_dir=run, resume=True)
    assert (run / "checkpoints" / "step-2").is_dir()


def test_a_run_config_written_before_the_mark_is_still_the_runs(tmp_path):
    """Runs made before configs were marked as mgfr's: their config.yaml (an older version's keys) is the copy their
    checkpoints hold, so it is the run's and a resume reads it; a file of the user's there is not."""
    from mgfr_cli.training.train_config import run_config_path

    run = tmp_path / "run"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    old = "stage: 1\nbatch_size: 3\n"
    (run / "config.yaml").write_text(old)
    (run / "checkpoints" / "step-2" / "config.yaml").write_text(old)
    assert run_config_path(run) == (run / "config.yaml", "")
    (run / "config.yaml").write_text("# mine\nbatch_size: 3\n")
    assert run_config_path(run)[0] == run / "config-mgfr.yaml"


def test_a_latent_cache_of_another_base_is_encoded_again(world, tmp_path):
    from mgfr_cli.model.base import load_base
    from mgfr_cli.training.caches import latent_cache
    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    base = load_base(world["base"])
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    ds = FaceDataset(world["s1"], 1, 64, DegradeConfig(), PromptConfig())
    said = []
    for mark in ("base A", "base A", "base B"):
        latent_cache(ds, base, 1.0, tmp_path / "run", torch.float32, "cpu", acc, said.append, mark)
    n = len(ds.images)
    assert said == [f"latent cache: {n} of {n} image(s) new or changed since it was made; encoding those again"]


def test_a_resume_continues_the_run_as_configured(tmp_path, cli, monkeypatch):
    """--resume takes the run's own config (not the defaults, nor a config file left out); knobs of how far or how
    often may change (said); a change to what the run learns is refused, naming it; --init is said unused."""
    import yaml

    from mgfr_cli.training.train_config import resume_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(_cfg(stage=1, batch_size=3, learning_rate=2e-4, max_steps=10), run / "config.yaml")
    cfg, said = resume_config(run / "config.yaml", None, {"stage": 1, "max_steps": 20})
    assert (cfg.batch_size, cfg.learning_rate, cfg.max_steps, cfg.model) == (3, 2e-4, 20, "mgfr-tiny")
    assert said == ["--resume: max_steps is now 20 (the run had 10)"]
    with pytest.raises(Exception, match=r"changes learning_rate 0\.1 \(the run has 0\.0002\)"):
        resume_config(run / "config.yaml", None, {"stage": 1, "learning_rate": 0.1})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"batch_size": 8, "max_steps": 10}))
    with pytest.raises(Exception, match="samples of a step to 8 .* so give --batch-size 3"):
        resume_config(run / "config.yaml", tmp_path / "other.yaml", {"stage": 1})

    seen = {}

    def fake_train(cfg, **kw):  # stands in for the training loop: what it was handed is what is checked
        seen["cfg"] = cfg
        return run / "adapter"

    monkeypatch.setattr("mgfr_cli.training.train.train", fake_train)
    args = ["train", "--stage", "1", "--data", tmp_path, "-o", run, "--resume"]
    code, _, err = cli(*args, "--learning-rate", "0.1")
    assert code == 1 and "learning_rate 0.1 (the run has 0.0002)" in " ".join(err.split()) and "cfg" not in seen
    code, _, err = cli(*args, "--max-steps", "30", "--init", tmp_path)
    text = " ".join(err.split())
    assert code == 0 and seen["cfg"].batch_size == 3 and seen["cfg"].max_steps == 30, err
    assert "max_steps is now 30 (the run had 10)" in text and "--init: not used with --resume" in text


def test_a_resume_keeps_the_samples_of_a_step(tmp_path):
    """Batch size x gradient accumulation x processes is what a step learns from: two GPUs with batch 4 may resume
    as one with batch 8; as one with batch 4 (half the batch, other samples per step) is refused, saying what to
    give."""
    import json

    from mgfr_cli.training.checkpoints import run_processes
    from mgfr_cli.training.train_config import resume_config, save_config

    run = tmp_path / "run"
    (run / "checkpoints" / "step-4" / "state").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "step.json").write_text(json.dumps({"step": 4, "processes": 2}))
    assert run_processes(run) == 2
    save_config(_cfg(stage=1, batch_size=4), run / "config.yaml")
    cfg, said = resume_config(run / "config.yaml", None, {"stage": 1, "batch_size": 8}, world=1, run_world=2)
    assert cfg.batch_size == 8 and said == ["--resume: batch_size is now 8 (the run had 4)"]
    with pytest.raises(Exception, match=r"the run took 8 = 4 x 1 x 2, so give --batch-size 8"):
        resume_config(run / "config.yaml", None, {"stage": 1}, world=1, run_world=2)
    with pytest.raises(Exception, match="to 16 .batch_size 8 x grad_accum 1 x 2 process"):
        resume_config(run / "config.yaml", None, {"stage": 1, "batch_size": 8}, world=2, run_world=2)
    assert resume_config(run / "config.yaml", None, {"stage": 1}, world=2, run_world=2)[0].batch_size == 4


def test_what_restore_wrote_into_the_data_is_never_trained_on(tmp_path):
    """`restore data -o data --suffix _r` (or `--report`) into a training folder: its outputs (the summary lists them)
    and its `_report/` are not data, while the photos beside them still are (the folder used to be skipped whole
    when it held a summary, and the outputs of one at the top were trained on as clean faces)."""
    import json

    from mgfr_cli.training.data import FaceDataset, PromptConfig, list_images
    from mgfr_cli.training.degrade import DegradeConfig

    face = np.full((64, 64, 3), 128, np.uint8)
    data = tmp_path / "data"
    mine = [_img(data / n, face) for n in ("id1/a.png", "id1/b.png", "id2/c.png", "id2/d.png")]
    made = [_img(data / n, face) for n in ("id1/a_r.png", "id2/c_r.png", "_report/x_before.jpg", "_report/x_after.jpg")]
    rows = [{"source": str(p), "status": "restored", "detail": "", "output": str(o), "faces": 1}
            for p, o in zip(mine[::2], made[:2])]
    (data / "mgfr-summary.json").write_text(json.dumps(rows))
    assert list_images(data) == sorted(mine)
    assert list_images(data, outputs=True) == sorted(mine + made[:2])  # eval's predictions
    ds = FaceDataset(data, 2, 64, DegradeConfig(), PromptConfig())
    assert sorted(ds.images) == sorted(mine) and len(ds.groups) == 2
    (data / "id2" / "mgfr-summary.json").write_text(json.dumps([]))  # a restore's folder holding your photos
    assert list_images(data) == sorted(mine)


def test_a_folder_of_restore_outputs_only_is_named_as_such(tmp_path):
    """`--data out` where `out` holds only what `mgfr restore` wrote: "no usable training images" alone left the user
    wondering (the folder is full of faces); the error says they are restore outputs, which are never data."""
    import json

    from mgfr_cli.errors import InputError
    from mgfr_cli.training.data import FaceDataset, PromptConfig
    from mgfr_cli.training.degrade import DegradeConfig

    face = np.full((64, 64, 3), 128, np.uint8)
    out = tmp_path / "out"
    made = [_img(out / n, face) for n in ("a.png", "b.png")]
    rows = [{"source": str(tmp_path / "in" / p.name), "status": "restored", "detail": "", "output": str(p), "faces": 1}
            for p in made]
    (out / "mgfr-summary.json").write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"no usable training images: its 2 image\(s\) are `mgfr restore` outputs"):
        FaceDataset(out, 1, 64, DegradeConfig(), PromptConfig())
    (out / "mgfr-summary.json").unlink()  # the same faces, no longer listed as outputs: data as any
    assert len(FaceDataset(out, 1, 64, DegradeConfig(), PromptConfig()).images) == 2
