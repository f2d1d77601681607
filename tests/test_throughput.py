"""Batching across photos, the out-of-memory fallback, and sharding over processes (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import randomize_zero_paths, tiny_pipeline
from mgfr_cli.app.batch import RESTORED, BatchRestorer, RestoreJob
from mgfr_cli.model.pipeline import DiffusionRestorer, RestoreSettings

FAST = RestoreSettings(steps=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, group_photo):
    d = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(d / "astro.png"), astronaut[..., ::-1])
    cv2.imwrite(str(d / "group.png"), group_photo[..., ::-1])
    cv2.imwrite(str(d / "flip.png"), np.ascontiguousarray(astronaut[:, ::-1, ::-1]))
    return d


def test_batched_restore_equals_one_by_one(photos, helper, tmp_path):
    pipe = tiny_pipeline()
    randomize_zero_paths(pipe.adapter)
    runner = BatchRestorer(helper, DiffusionRestorer(pipe, FAST))
    calls = []
    original = runner.restorer.restore
    runner.restorer.restore = lambda c, k, s: (calls.append(len(c)), original(c, k, s))[1]
    big = runner.run(RestoreJob(inputs=(str(photos),), output=tmp_path / "big", batch_size=16))
    assert max(calls) >= 7  # faces of several photos went through together
    calls.clear()
    one = runner.run(RestoreJob(inputs=(str(photos),), output=tmp_path / "one", batch_size=1))
    assert set(calls) == {1}
    assert {o.status for o in big + one} == {RESTORED}
    for name in ("astro.png", "group.png", "flip.png"):
        a = cv2.imread(str(tmp_path / "big" / name)).astype(int)
        b = cv2.imread(str(tmp_path / "one" / name)).astype(int)
        assert np.abs(a - b).max() <= 2, name


class OomOverTwo:
    """A restorer that runs out of GPU memory on batches of more than two faces."""

    def __init__(self):
        self.sizes = []

    def restore(self, crops, conditions, seeds):
        self.sizes.append(len(crops))
        if len(crops) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [255 - c for c in crops]


def test_out_of_memory_halves_the_batch_and_finishes(photos, helper, tmp_path):
    restorer = OomOverTwo()
    outcomes = BatchRestorer(helper, restorer).run(RestoreJob(inputs=(str(photos),), output=tmp_path / "o", batch_size=8))
    assert {o.status for o in outcomes} == {RESTORED}
    assert restorer.sizes[:3] == [8, 4, 2] and max(restorer.sizes[3:]) <= 2


def test_two_process_shards_write_every_output_once(photos, tiny_root, tmp_path):
    """Two `mgfr restore` processes with RANK/WORLD_SIZE (as accelerate launch sets) split the inputs; process 0
    merges the record (keeping an earlier run's rows and every field) and speaks once for the launch."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        for src in photos.iterdir():
            (inputs / f"{i}_{src.name}").write_bytes(src.read_bytes())
    names = sorted(p.name for p in inputs.iterdir())
    (inputs / f"{Path(names[1]).stem}.yaml").write_text("negative_prompt: eyeglasses\n")  # process 1's photo only
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"source": str(tmp_path / "earlier.png"), "status": "restored", "detail": "", "output": None, "faces": 1}
    (out / "mgfr-summary.json").write_text(json.dumps([earlier]))  # an earlier run's record
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    args = [sys.executable, "-m", "mgfr_cli.cli", "restore", str(inputs), "-o", str(out), "--model-root", str(tiny_root),
            "--detector", "retinaface_mobile0.25", "--steps", "1", "--device", "cpu", "--report",
            "--ref-k", "5", "--crf", "20", "--guidance-attribute", "3"]  # flags this run cannot use: named once
    launcher = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}  # what torchrun / accelerate launch also set
    procs = [subprocess.Popen(args, env={**base_env, **launcher, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    shares = [json.loads((out / f"mgfr-summary-{r}-of-2.json").read_text())["rows"] for r in range(2)]
    sources = [row["source"] for share in shares for row in share]
    assert len(sources) == len(set(sources)) == 15 and all(shares)  # each photo once, both did work
    assert str(inputs / names[1]) in [row["source"] for row in shares[1]]  # the negative prompt went to process 1
    merged = json.loads((out / "mgfr-summary.json").read_text())
    assert sorted(r["source"] for r in merged) == sorted(sources + [earlier["source"]])
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in inputs.glob("*.png"))
    assert "(2 processes)" in " ".join(results[0][0].split())
    said = [" ".join(r[1].split()) for r in results]  # every note once, by process 0
    assert "--report: not written by a run over 2 processes" in said[0] and "--report" not in said[1]
    assert said[0].count("--ref-k: not used without --ref-library") == 1 and "--ref-k" not in said[1]
    assert said[0].count("--crf: not used") == 1 and "--crf" not in said[1]
    # process 0's faces had no negative prompt, process 1's had: the launch used --guidance-attribute
    assert "--guidance-attribute: not used" not in said[0] + said[1]
    assert not (out / "index.html").exists()


def test_process_0_never_reads_an_earlier_launchs_share(tmp_path):
    """Shares left by an earlier launch into the same folder (a rerun to resume) are not this launch's: process 0
    waits for the new ones, and the record keeps every field of a row (identity, library, tracks)."""
    from mgfr_cli.app.summary import merge_summaries, shares_before, write_share
    from mgfr_cli.faces.inputs import Outcome

    out = tmp_path / "out"
    out.mkdir()
    write_share(out, 1, 2, [Outcome(tmp_path / "stale.png", RESTORED, "", None, 1)], ["old note"])
    seen = shares_before(out, 2)  # process 0, at its start
    a = Outcome(tmp_path / "a.png", RESTORED, "", out / "a.png", 1,
                identity=({"face": 0, "before": 0.1, "after": 0.5, "references": ["r.png"]},),
                library=({"face": 0, "matches": [{"file": "lib/p.png", "similarity": 0.7}]},))
    write_share(out, 0, 2, [a], ["new note"], {"faces": 1})
    merged, missing, notes, tallies, _ = merge_summaries(out, 2, seen, wait_s=1.0)
    assert missing == [1] and [o.source.name for o in merged] == ["a.png"] and notes == ["new note"]
    assert merged[0] == a and tallies == {0: {"faces": 1}}
    write_share(out, 1, 2, [Outcome(tmp_path / "b.png", RESTORED, "", None, 2)], ["new note"], {"faces": 2})
    merged, missing, notes, tallies, _ = merge_summaries(out, 2, seen, wait_s=1.0)
    assert missing == [] and sorted(o.source.name for o in merged) == ["a.png", "b.png"] and notes == ["new note"]
    assert tallies[1] == {"faces": 2}


def test_a_reference_file_is_encoded_once_per_run(astronaut):
    from mgfr_cli.faces.conditions import FaceConditions
    from mgfr_cli.faces.helper import AlignedFace

    pipe = tiny_pipeline()
    crop = np.ascontiguousarray(astronaut[:512, :512])
    ref = AlignedFace(crop[::-1].copy(), np.zeros((5, 2)), np.eye(2, 3), 0, source=Path("ref.jpg"))
    sizes = []
    encode = pipe.encode_images
    pipe.encode_images = lambda x: (sizes.append(x.shape[0]), encode(x))[1]
    for _ in range(2):  # two batches that share the reference
        pipe.restore([crop, crop], [FaceConditions(references=(ref,))] * 2, FAST)
    assert sizes == [2, 1, 2]  # LQ faces, the reference once, LQ faces again


def test_a_share_of_another_launch_size_is_not_taken(tmp_path):
    """Process 1 of 2 and process 1 of 20 write different files: one is never read for the other."""
    from mgfr_cli.app.summary import merge_summaries, write_share
    from mgfr_cli.faces.inputs import Outcome

    write_share(tmp_path, 0, 2, [Outcome(tmp_path / "a.png", RESTORED, "", None, 1)])
    write_share(tmp_path, 1, 20, [Outcome(tmp_path / "z.png", RESTORED, "", None, 1)])
    merged, missing, *_ = merge_summaries(tmp_path, 2, wait_s=0.5)
    assert missing == [1] and [o.source.name for o in merged] == ["a.png"]


def test_a_process_tally_carries_every_count_to_process_0():
    """Process 0 speaks for the launch from the other processes' tallies: every count survives the trip (a face
    with references on process 1 only must not make process 0 say no face had any)."""
    from types import SimpleNamespace

    from mgfr_cli.model.pipeline import DiffusionRestorer, RestoreSettings

    def restorer():
        return DiffusionRestorer(SimpleNamespace(recogniser=None), RestoreSettings(identity_guidance=0.1))

    other, first = restorer(), restorer()
    other.faces, other.negatives, other.referenced, other.guided = 3, 1, 2, 0
    other.cut = {("negative prompt", "round long"): None}  # a prompt's words past the text encoder's length
    first.absorb(json.loads(json.dumps(other.tally())))  # as the share file carries it
    assert list(first.cut) == [("negative prompt", "round long")]
    assert first.tally() == other.tally() and first.idle() == other.idle()
    assert first.idle()["identity_guidance"].startswith("no recogniser") and "guidance_attribute" not in first.idle()
