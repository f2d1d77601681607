"""Two runs into one folder never restore the same photo at the same time (claim files beside the outputs)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mgfr_cli.app.claims import Claims, claim_file

FAST = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


@pytest.fixture
def two_photos(astronaut, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    small = np.ascontiguousarray(astronaut[:256, 100:356])
    for name, shift in (("a", 0), ("b", 30)):
        cv2.imwrite(str(inp / f"{name}.png"), np.ascontiguousarray(np.roll(small, shift, axis=1)[..., ::-1]))
    return inp, tmp_path / "out"


def _claim(out: Path, name: str, pid: int, host: str | None = None) -> Path:
    path = claim_file(out / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": time.time()}))
    return path


@pytest.fixture
def live_pid():
    """The process id of another live process (the run that holds a claim)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_photo_another_run_is_restoring_is_skipped_and_the_rest_restored(two_photos, live_pid, tiny_root, cli):
    inp, out = two_photos
    claim = _claim(out, "a.png", live_pid)
    code, stdout, _ = cli("restore", inp, "-o", out, "--model-root", tiny_root, *FAST)
    text = " ".join(stdout.split())
    assert code == 0
    assert (out / "b.png").is_file() and not (out / "a.png").exists()
    assert f"another mgfr run (process {live_pid}) is restoring it" in text
    assert claim.is_file(), "another run's claim must be left alone"
    rows = {Path(r["source"]).name: r for r in json.loads((out / "mgfr-summary.json").read_text())}
    assert rows["a.png"]["status"] == "skipped" and rows["b.png"]["status"] == "restored"


def test_a_claim_whose_run_is_gone_is_taken_over(two_photos, tiny_root, cli):
    inp, out = two_photos
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: this pid now belongs to no process
    _claim(out, "a.png", gone.pid)
    code, _, _ = cli("restore", inp, "-o", out, "--model-root", tiny_root, *FAST)
    assert code == 0 and (out / "a.png").is_file() and (out / "b.png").is_file()
    assert [p.name for p in out.rglob("*") if p.name.startswith(".")] == []  # no claim outlives the run


def test_a_claim_from_another_host_is_respected_and_says_how_to_clear_it(two_photos, tiny_root, cli):
    inp, out = two_photos
    claim = _claim(out, "a.png", 12345, host="render-node-7")
    code, stdout, _ = cli("restore", inp, "-o", out, "--model-root", tiny_root, *FAST)
    text = " ".join(stdout.split()).replace(" ", "")
    assert code == 0 and not (out / "a.png").exists() and (out / "b.png").is_file()
    assert "render-node-7" in text and f"delete{claim}".replace(" ", "") in text


def test_claims_within_one_process_and_half_written_ones(tmp_path):
    target, other = tmp_path / "x.png", tmp_path / "y.png"
    first, second = Claims(), Claims()
    assert first.take(Path("in/x.png"), target) is None
    assert "another restore in this process" in second.take(Path("in/x.png"), target)
    first.release(Path("in/x.png"))
    assert not claim_file(target).exists()
    assert second.take(Path("in/x.png"), target) is None
    second.release_all()
    # A claim file still empty (its writer between create and write) is respected for a while, then stale.
    claim_file(other).write_text("")
    assert second.take(Path("in/y.png"), other) is not None
    old = time.time() - 3600
    os.utime(claim_file(other), (old, old))
    assert second.take(Path("in/y.png"), other) is None
    second.release_all()
    assert list(tmp_path.iterdir()) == []


def test_a_photo_that_fails_after_its_claim_leaves_no_folder_behind(two_photos, tiny_root, cli):
    """The photo is claimed (its output folder made), then fails: its sidecar names a reference without a face."""
    inp, out = two_photos
    (inp / "sub").mkdir()
    (inp / "sub" / "a.png").write_bytes((inp / "a.png").read_bytes())
    cv2.imwrite(str(inp / "blank.png"), np.full((128, 128, 3), 127, np.uint8))
    (inp / "sub" / "a.yaml").write_text("refs: [../blank.png]\n")
    code, text, _ = cli("restore", inp, "-o", out, "--recursive", "--model-root", tiny_root, *FAST)
    assert code == 1 and (out / "a.png").is_file() and "blank.png: no face detected" in text, text
    assert not (out / "sub").exists()  # the claim's folder is removed again when nothing was written into it


def test_a_claim_stopped_while_being_written_leaves_nothing(tmp_path, monkeypatch):
    """kill -9 or Ctrl-C while a claim is written must not leave a half-written claim, which another run would
    read as held for a minute (seen: a resumed batch skipping a photo)."""
    from mgfr_cli.app import claims

    class Stopped(Exception):
        """stands for the process stopping mid-write"""

    def stopped(*a, **k):
        raise Stopped

    monkeypatch.setattr(claims.json, "dump", stopped)
    target = tmp_path / "out" / "a.png"
    with pytest.raises(Stopped):
        claims.Claims().take(tmp_path / "a.png", target)
    assert [p.name for p in target.parent.iterdir()] == []
    monkeypatch.undo()
    assert claims.Claims().take(tmp_path / "a.png", target) is None  # free to take at once
