"""Video: a clip made here (a face moving and scaling over 24 frames, with an audio track, written with PyAV),
restored with the tiny models: frames, timing and audio kept; one track; per-track noise flickers less."""

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import mux_tone

av = pytest.importorskip("av")

FAST = ["--steps", "2", "--detector", "retinaface_mobile0.25", "--device", "cpu"]
FPS, N = 12, 24


def make_clip(path, astronaut, frames=N, audio=True):
    face = np.ascontiguousarray(astronaut[10:250, 110:350])
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 384, 320, "yuv420p"
    a = out.add_stream("aac", rate=16000) if audio else None
    if a is not None:
        a.layout = "mono"
    for i in range(frames):
        canvas = np.full((320, 384, 3), 110, np.uint8)
        k = i % N if (i // N) % 2 == 0 else N - 1 - i % N  # longer clips move back and forth
        s = 0.8 + 0.2 * k / N
        f = cv2.resize(face, None, fx=s, fy=s)
        x, y = 20 + 4 * k, 30 + k
        canvas[y : y + f.shape[0], x : x + f.shape[1]] = f[: 320 - y, : 384 - x]
        out.mux(v.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
    out.mux(v.encode(None))
    if a is not None:
        t = np.arange(int(16000 * frames / FPS)) / 16000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            out.mux(a.encode(frame))
        out.mux(a.encode(None))
    out.close()
    return path


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(v)]
        info = {"frames": len(frames), "rate": v.average_rate, "audio": len(c.streams.audio),
                "size": (v.width, v.height), "duration_s": float(frames[-1][0] * v.time_base)}
    audio = []
    if info["audio"]:
        with av.open(str(path)) as c:
            audio = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
    return info, frames, audio


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", astronaut)


def test_a_clip_keeps_its_frames_timing_and_audio_and_faces_are_restored(tiny_root, clip, tmp_path, cli):
    code, out, err = cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0 and "photos and clips" in out, out + err  # the summary counts a clip as a clip
    info_in, frames_in, audio_in = probe(clip)
    info_out, frames_out, audio_out = probe(tmp_path / "out" / "clip.mp4")
    assert info_out == info_in and [p for p, _ in frames_out] == [p for p, _ in frames_in]
    assert audio_out == audio_in and audio_in  # the audio packets, unchanged
    for (_, a), (_, b), i in zip(frames_in, frames_out, range(N)):
        diff = np.abs(a.astype(int) - b.astype(int)).mean(axis=2)
        x, y, s = 20 + 4 * i, 30 + i, 0.8 + 0.2 * i / N
        assert diff[y + int(60 * s) : y + int(160 * s), x + int(60 * s) : x + int(160 * s)].mean() > 5, i  # the face
        assert np.median(diff[:, -40:]) < 4  # far from it: the background, as encoded
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert row["status"] == "restored" and len(row["tracks"]) == 1 and row["tracks"][0]["frames"] == N
    code, _, _ = cli("restore", clip, "-o", tmp_path / "page", "--report", "--model-root", tiny_root, *FAST)
    page = (tmp_path / "page" / "index.html").read_text()
    assert code == 0 and "1 restored, 0 not restored" in page and "href='clip.mp4'" in page and "flicker" in page


def test_per_track_noise_flickers_less_than_per_frame_noise(tiny_root, clip, tmp_path, cli):
    """(Per frame through the Python API, Restorer.restore_files, which runs clips as `mgfr restore` does.)"""
    from mgfr_cli import Restorer

    code, out, err = cli("restore", clip, "-o", tmp_path / "track", "--video-noise", "track", "--model-root", tiny_root,
                         *FAST)
    assert code == 0, out + err
    restorer = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu")
    result = restorer.restore_files([clip], tmp_path / "frame", video_noise="frame", steps=2)
    assert [o.status for o in result.outcomes] == ["restored"] and result.outcomes[0].tracks
    assert probe(tmp_path / "frame" / "clip.mp4")[0] == probe(tmp_path / "track" / "clip.mp4")[0]
    figures = {}
    for mode in ("track", "frame"):
        row = json.loads((tmp_path / mode / "mgfr-summary.json").read_text())[0]
        figures[mode] = row["tracks"][0]["flicker"]
    assert figures["track"]["restored"] < 0.8 * figures["frame"]["restored"], figures
    assert figures["track"]["input"] == pytest.approx(figures["frame"]["input"])


def test_a_killed_run_leaves_no_half_clip_and_the_rerun_gives_the_same_frames(tiny_root, astronaut, tmp_path, cli):
    long_clip = make_clip(tmp_path / "long.mp4", astronaut, frames=32, audio=False)
    code, _, _ = cli("restore", long_clip, "-o", tmp_path / "once", "--model-root", tiny_root, *FAST)
    assert code == 0
    out = tmp_path / "killed"
    args = ["restore", str(long_clip), "-o", str(out), "--model-root", str(tiny_root), *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "mgfr_cli.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "MGFR_OFFLINE": "1"})
    pieces = out / ".long.mp4.segments"
    deadline = time.time() + 300
    while time.time() < deadline and not pieces.exists() and proc.poll() is None:  # pass 2 has begun
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: killed mid-clip
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert pieces.is_dir() and not (out / "long.mp4").exists()  # no half-written output
    code, _, err = cli("restore", long_clip, "-o", out, "--model-root", tiny_root, *FAST)
    assert code == 0, err
    a, b = probe(tmp_path / "once" / "long.mp4")[1], probe(out / "long.mp4")[1]
    assert len(a) == len(b) and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


@pytest.mark.parametrize("what", ["text", "audio_only", "empty"])
def test_bad_clips_are_one_line_and_the_batch_goes_on(tiny_root, clip, astronaut, tmp_path, cli, what):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clip.read_bytes())
    bad = folder / "bad.mp4"
    if what == "text":
        bad.write_text("not a video")
    elif what == "empty":
        bad.write_bytes(b"")
    else:
        out = av.open(str(bad), "w")
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(a.encode(frame))
        out.mux(a.encode(None))
        out.close()
    code, out, err = cli("restore", folder, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    text = " ".join(out.split())
    assert code == 1 and (tmp_path / "out" / "good.mp4").is_file()
    assert "bad.mp4" in text and ("no video stream" in text if what == "audio_only" else "not a video" in text), text


def test_align_lists_a_clips_tracks_with_a_crop_each(helper, tiny_root, clip, tmp_path, cli):
    code, out, err = cli("align", clip, "-o", tmp_path / "faces", "--model-root", tiny_root, "--detector",
                         "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0, out + err
    rows = json.loads((tmp_path / "faces" / "faces.json").read_text())
    assert [(r["face_index"], r["frame"], r["frames"]) for r in rows] == [(0, 0, N)]
    crop = cv2.imread(rows[0]["crop"])
    assert crop.shape == (512, 512, 3) and len(helper.detect(crop[:, :, ::-1].copy())) == 1


def test_a_stopped_clip_continues_after_its_last_whole_piece(tiny_root, astronaut, tmp_path, cli, monkeypatch):
    import mgfr_cli.app.video as video
    from mgfr_cli.model.pipeline import DiffusionRestorer

    monkeypatch.setattr(video, "SEGMENT_FRAMES", 8)
    clip = make_clip(tmp_path / "c.mp4", astronaut, frames=20, audio=False)
    assert cli("restore", clip, "-o", tmp_path / "once", "--model-root", tiny_root, *FAST)[0] == 0
    real, calls = DiffusionRestorer.restore, []

    def counting(self, crops, conditions, seeds):
        calls.append(len(crops))
        if stop_after and len(calls) > stop_after:
            raise KeyboardInterrupt  # stopped as Ctrl-C stops a run
        return real(self, crops, conditions, seeds)

    monkeypatch.setattr(DiffusionRestorer, "restore", counting)
    stop_after = 2  # two windows of 8 frames: the first piece (frames 0-7) whole, the second not
    code, _, _ = cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 130 and not (tmp_path / "out" / "c.mp4").exists()
    assert (tmp_path / "out" / ".c.mp4.segments" / "seg-00000.mp4").is_file()
    calls.clear()
    stop_after = 0
    assert cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)[0] == 0
    assert sum(calls) == 12  # frames 8-19 only: the first piece was kept
    a, b = probe(tmp_path / "once" / "c.mp4")[1], probe(tmp_path / "out" / "c.mp4")[1]
    assert [p for p, _ in a] == [p for p, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert not (tmp_path / "out" / ".c.mp4.segments").exists()


@pytest.mark.parametrize("change", ["prompt", "checkpoint", "reference", "reference_touched"])
def test_a_stopped_clip_is_not_continued_toward_another_prompt(tiny_root, astronaut, tmp_path, cli, monkeypatch,
                                                               change):
    """Pieces restored toward one prompt (with one checkpoint, one reference photo) are not joined to pieces
    restored toward another (another checkpoint of the same kind: a training run's later step; another photo saved
    under the reference's name): the clip starts again. The same reference saved again (a new time) continues."""
    from helpers import copied_adapter
    import mgfr_cli.app.video as video
    from mgfr_cli.model.pipeline import DiffusionRestorer

    monkeypatch.setattr(video, "SEGMENT_FRAMES", 8)
    clip = make_clip(tmp_path / "c.mp4", astronaut, frames=20, audio=False)
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), cv2.resize(astronaut[:, :, ::-1], (256, 256)))
    (tmp_path / "c.yaml").write_text(f"refs: [{ref}]\n")
    real, calls = DiffusionRestorer.restore, []

    def counting(self, crops, conditions, seeds):
        calls.append(len(crops))
        if stop and len(calls) > 2:  # the first piece (frames 0-7) whole, the second not
            raise KeyboardInterrupt
        return real(self, crops, conditions, seeds)

    monkeypatch.setattr(DiffusionRestorer, "restore", counting)
    stop = True
    assert cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)[0] == 130
    assert (tmp_path / "out" / ".c.mp4.segments" / "seg-00000.mp4").is_file()
    calls.clear()
    stop = False
    other = (["--prompt", "brown eyes"] if change == "prompt" else
             ["--checkpoint", copied_adapter(tiny_root / "mgfr-adapter", tmp_path / "later", moved=1e-3)]
             if change == "checkpoint" else [])
    if change.startswith("reference"):
        data = ref.read_bytes() if change == "reference_touched" else cv2.imencode(".png", cv2.flip(
            cv2.imread(str(ref)), 1))[1].tobytes()
        ref.write_bytes(data)
        os.utime(ref, ns=(ref.stat().st_atime_ns, ref.stat().st_mtime_ns + 10**9))
    code, out, err = cli("restore", clip, "-o", tmp_path / "out", *other, "--model-root", tiny_root, *FAST)
    # every frame again, toward the new prompt; only the frames after the whole piece for the same reference
    assert code == 0 and sum(calls) == (12 if change == "reference_touched" else 20), (calls, out + err)


def test_flags_that_do_not_apply_to_clips_are_said_not_dropped(tiny_root, clip, tmp_path, cli):
    code, out, err = cli("restore", clip, "-o", tmp_path / "out", "--save-faces", "--ext", "png", "--model-root",
                         tiny_root, *FAST)
    text = " ".join(err.split())
    assert code == 0 and (tmp_path / "out" / "clip.mp4").is_file(), out + err
    assert text.count("--save-faces and --ext png: not for clips") == 1, text
    code, out, err = cli("restore", clip, "-o", tmp_path / "aligned", "--has-aligned", "--model-root", tiny_root,
                         *FAST)
    assert code == 1 and "a clip is not an aligned face" in " ".join((out + err).split())
    assert not (tmp_path / "aligned" / "clip.mp4").exists()


def test_a_rerun_with_another_crf_or_noise_says_so_for_clips_not_photos(tiny_root, astronaut, tmp_path, cli):
    """A finished clip rerun with another --crf or --video-noise is listed as made otherwise (its output would
    differ); a photo beside it is a plain resume (those flags do not touch photos)."""
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "c.mp4", astronaut, frames=4, audio=False)
    cv2.imwrite(str(tmp_path / "in" / "p.png"), np.ascontiguousarray(astronaut[:256, 96:352, ::-1]))
    other = "made with other settings (--overwrite to redo it)"

    def run(*extra):
        code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST,
                             *extra)
        assert code == 0, out + err
        return [line for line in out.splitlines() if other in line]

    run()
    rows = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())
    assert sorted((os.path.basename(r["source"]), r["status"]) for r in rows) == [("c.mp4", "restored"),
                                                                                  ("p.png", "restored")]
    assert run() == []
    for extra in (["--crf", "30"], ["--video-noise", "frame"]):
        listed = run(*extra)
        assert len(listed) == 1 and "c.mp4" in listed[0], listed


def test_frames_without_a_face_get_the_same_background_as_frames_with_one(tiny_root, astronaut, tmp_path, cli):
    """At --upscale 2 with Real-ESRGAN, a face that leaves the clip halfway must not change how the background is
    made: every frame's comes from the upsampler (frames without a face were only Lanczos-resized: the background
    jumped when the face left)."""
    import shutil

    import torch
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    torch.manual_seed(0)
    torch.save(RRDBNet(num_filters=16, num_blocks=1, scale=2, shuffle_factor=2).state_dict(),
               root / "RealESRGAN_x2plus.pth")
    face = np.ascontiguousarray(astronaut[10:250, 110:350])
    out = av.open(str(tmp_path / "leaves.mp4"), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 384, 320, "yuv420p"
    for i in range(12):
        canvas = np.full((320, 384, 3), 110, np.uint8)
        if i < 6:  # the face, then none
            canvas[30:270, 20:260] = face
        out.mux(v.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
    out.mux(v.encode(None))
    out.close()
    code, text, err = cli("restore", tmp_path / "leaves.mp4", "-o", tmp_path / "out", "--model-root", root,
                          "--upscale", "2", "--bg-upsampler", "realesrgan-x2", *FAST)
    assert code == 0, text + err
    info, frames, _ = probe(tmp_path / "out" / "leaves.mp4")
    assert info["frames"] == 12 and info["size"] == (768, 640)
    corner = [f[:, 560:, :].astype(float).mean() for _, f in frames]  # far from the face in every frame
    assert abs(corner[0] - 110) > 3  # the upsampler's own grey, not the input's
    assert max(corner) - min(corner) < 1.0, corner


def _two_people(path, astronaut, frames=12, leaves=4, mirror=False):
    """One face on the left for the whole clip; another, larger and nearer the centre, on the right for the first
    ``leaves`` frames only (picked per frame, --largest-face and --only-center-face would take it while there).
    ``mirror``: left and right swapped, so the brief face is track 0 and the lasting one track 1."""
    face = np.ascontiguousarray(astronaut[10:250, 110:350])
    a, b = cv2.resize(face, (200, 200)), cv2.resize(np.ascontiguousarray(face[:, ::-1]), (230, 230))
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 512, 320, "yuv420p"
    for i in range(frames):
        canvas = np.full((320, 512, 3), 110, np.uint8)
        canvas[60:260, 10:210] = a
        if i < leaves:
            canvas[45:275, 255:485] = b
        canvas = np.ascontiguousarray(canvas[:, ::-1]) if mirror else canvas
        out.mux(v.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
    out.mux(v.encode(None))
    out.close()
    return path


@pytest.mark.parametrize("flag", [("--face-index", "1"), ("--largest-face",), ("--only-center-face",)])
def test_face_selection_in_a_clip_picks_whole_tracks(tiny_root, astronaut, tmp_path, cli, flag):
    """Per frame, --face-index 1 failed the clip on the frames where one face was left (and --largest-face or
    --only-center-face could hop between people): a clip's selection keeps whole tracks."""
    clip = _two_people(tmp_path / "two.mp4", astronaut)
    own = 1 if flag[0] == "--face-index" else 0  # a picked track keeps its own number (its sidecar entry, its seed)
    (tmp_path / "two.yaml").write_text(f"tracks:\n  {own}: {{prompt: picked}}\n")
    code, text, err = cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, *flag, *FAST)
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert code == 0 and row["status"] == "restored" and [t["track"] for t in row["tracks"]] == [own], text + err
    _, frames_in, _ = probe(clip)
    _, frames_out, _ = probe(tmp_path / "out" / "two.mp4")
    left = [np.abs(a[110:210, 60:160].astype(int) - b[110:210, 60:160]).mean() for (_, a), (_, b) in
            zip(frames_in, frames_out)]
    right = [np.abs(a[110:210, 320:420].astype(int) - b[110:210, 320:420]).mean() for (_, a), (_, b) in
             zip(frames_in, frames_out)]
    if flag[0] == "--face-index":  # track 1: the face on the right, while it is there
        assert max(left) < 3 and min(right[:4]) > 5 and max(right[4:]) < 3, (left, right)
    else:  # the large face on the left, the whole clip; the other never
        assert min(left) > 5 and max(right) < 3, (left, right)
    code, _, _ = cli("align", clip, "-o", tmp_path / "faces", "--model-root", tiny_root, *flag, *FAST[2:])
    rows = json.loads((tmp_path / "faces" / "faces.json").read_text())  # align picks and numbers them alike
    assert code == 0 and [(r["face_index"], r["frame"], r["frames"]) for r in rows] == [
        (1, 0, 4) if flag[0] == "--face-index" else (0, 0, 12)]
    code, _, _ = cli("restore", clip, "-o", tmp_path / "none", "--model-root", tiny_root, "--face-index", "2", *FAST)
    row = json.loads((tmp_path / "none" / "mgfr-summary.json").read_text())[0]
    assert code == 1 and row["status"] == "failed" and "track 2 does not exist (2 tracks found" in row["detail"]


@pytest.mark.parametrize("flag", ["--largest-face", "--only-center-face"])
def test_the_lasting_track_is_picked_whatever_its_number(tiny_root, astronaut, tmp_path, cli, flag):
    """The same two people with left and right swapped: the brief face is now track 0, and the track picked is
    still the lasting one (track 1), in restore and in align."""
    clip = _two_people(tmp_path / "two.mp4", astronaut, mirror=True)
    code, text, err = cli("restore", clip, "-o", tmp_path / "out", "--model-root", tiny_root, flag, *FAST)
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert code == 0 and [(t["track"], t["frames"]) for t in row["tracks"]] == [(1, 12)], text + err
    code, _, _ = cli("align", clip, "-o", tmp_path / "faces", "--model-root", tiny_root, flag, *FAST[2:])
    rows = json.loads((tmp_path / "faces" / "faces.json").read_text())
    assert code == 0 and [(r["face_index"], r["frames"]) for r in rows] == [(1, 12)]


def test_a_clip_without_a_face_is_written_as_it_is(tiny_root, tmp_path, cli):
    """As a faceless photo: the clip is written (every frame, its timing, its size times --upscale), listed as
    `no face`; with --face-index 0 too (it failed: "track 0 does not exist"), in `restore` and `align` alike, and
    with a sidecar naming track 0 (read for no track, as a faceless photo's)."""
    y, x = np.mgrid[0:96, 0:128]
    out = av.open(str(tmp_path / "scene.mp4"), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 128, 96, "yuv420p"
    for i in range(10):
        frame = np.dstack([(x * 2 + 9 * i) % 256, y * 2, np.full_like(x, 80)]).astype(np.uint8)
        out.mux(v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(v.encode(None))
    out.close()
    (tmp_path / "scene.yaml").write_text("tracks: {0: {prompt: brown eyes}}\n")  # for a face that is not there
    code, text, err = cli("restore", tmp_path / "scene.mp4", "-o", tmp_path / "out", "--model-root", tiny_root,
                          "--upscale", "2", "--face-index", "0", *FAST)
    assert code == 0 and "no face in any of 10 frames (written without restoring)" in text, text + err
    info_in, frames_in, _ = probe(tmp_path / "scene.mp4")
    info, frames, _ = probe(tmp_path / "out" / "scene.mp4")
    assert info["frames"] == 10 and info["size"] == (256, 192) and info["rate"] == info_in["rate"]
    assert [p for p, _ in frames] == [p for p, _ in frames_in]
    for (_, a), (_, b) in zip(frames_in, frames):  # each frame the input's, Lanczos-resized (H.264 both ways)
        assert np.abs(cv2.resize(a, (256, 192), interpolation=cv2.INTER_LANCZOS4).astype(float) - b).mean() < 3
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert row["status"] == "no face" and row["output"].endswith("scene.mp4")
    code, text, err = cli("align", tmp_path / "scene.mp4", "-o", tmp_path / "faces", "--face-index", "0",
                          "--model-root", tiny_root, *FAST[2:])
    assert code == 0 and "no face in any frame" in text, text + err


def test_a_clip_keeps_its_colour_matrix_and_tags(tiny_root, tmp_path, cli):
    """A BT.709 clip (what cameras and phones tag HD video with) came out BT.601-coded and untagged: a player, which
    reads an untagged HD clip as BT.709, showed every colour shifted (green 160 -> 142). The output is coded with the
    input's matrix and carries its tags; read as they say, its colours are the input's."""
    from av.video.reformatter import ColorRange, Colorspace

    colours = np.zeros((96, 128, 3), np.uint8)
    colours[:, :44], colours[:, 44:88], colours[:, 88:] = (200, 40, 40), (40, 160, 90), (60, 80, 220)
    out = av.open(str(tmp_path / "hd.mp4"), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 128, 96, "yuv420p"
    cc = v.codec_context
    cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 2, 1, 1  # BT.709, full range
    for i in range(4):
        frame = av.VideoFrame.from_ndarray(colours, format="rgb24")
        out.mux(v.encode(frame.reformat(format="yuvj420p", dst_colorspace=Colorspace.ITU709,
                                        dst_color_range=ColorRange.JPEG)))
    out.mux(v.encode(None))
    out.close()
    code, text, err = cli("restore", tmp_path / "hd.mp4", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0, text + err
    with av.open(str(tmp_path / "out" / "hd.mp4")) as c:
        tags = c.streams.video[0].codec_context
        assert (tags.colorspace, tags.color_primaries, tags.color_trc, tags.color_range) == (1, 1, 1, 1)
        frame = next(c.decode(video=0))
        assert (frame.colorspace, frame.color_range) == (1, 1)
        as_tagged = frame.to_ndarray(format="rgb24", src_colorspace=Colorspace.ITU709,
                                     src_color_range=ColorRange.MPEG).astype(float)
    for x in (20, 64, 108):  # the middle of each band: within a few grey levels (H.264 twice)
        assert np.abs(as_tagged[48, x] - colours[48, x]).max() <= 4, (x, as_tagged[48, x], colours[48, x])


def _scene(path, size=(128, 96), audio=(), frames=6, tags=None):
    """A faceless clip of ``size`` with one audio stream per codec in ``audio`` (a tone each, 440 Hz and up, the
    first in French), and the container ``tags`` (with them, the video in French too)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    out = av.open(str(path), "w")
    out.metadata.update(tags or {})
    v = out.add_stream("mpeg4" if path.suffix == ".avi" else ("ffv1" if size[0] % 2 else "libx264"), rate=FPS)
    v.width, v.height, v.pix_fmt = *size, "yuv444p" if size[0] % 2 else "yuv420p"
    if tags:
        v.metadata["language"] = "fra"
    streams = [out.add_stream(codec, rate=16000, layout="mono") for codec in audio]
    if streams:
        streams[0].metadata["language"] = "fra"
    for i in range(frames):
        frame = np.dstack([(x * 2 + 9 * i) % 256, y * 2, np.full_like(x, 80)]).astype(np.uint8)
        out.mux(v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(v.encode(None))
    for k, a in enumerate(streams):
        mux_tone(out, a, 440 + 220 * k, 16000, 8000)
    out.close()
    return path


def _tones(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        n = len(c.streams.audio)
    tones = []
    for k in range(n):
        with av.open(str(path)) as c:
            tones.append(np.concatenate([f.to_ndarray().astype(np.float64).ravel() for f in c.decode(audio=k)]))
    return tones


def test_every_audio_stream_is_kept_and_odd_sizes_are_said(tiny_root, tmp_path, cli):
    """An old camera's AVI (ADPCM audio, which MP4 cannot hold) crashed the whole batch with a traceback after
    restoring the clip; a second audio stream (another language) was dropped unsaid; an odd size lost its last
    column unsaid. Now: ADPCM re-encoded to AAC (the same tone), every stream kept, the cut said; the batch goes on."""
    (tmp_path / "in").mkdir()
    _scene(tmp_path / "in" / "camera.avi", audio=["adpcm_ms"])
    _scene(tmp_path / "in" / "two.mp4", audio=["aac", "aac"])
    _scene(tmp_path / "in" / "odd.mkv", size=(127, 95))
    code, text, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0, text + err
    rows = {Path(r["source"]).name: r for r in json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())}
    assert sorted(rows) == ["camera.avi", "odd.mkv", "two.mp4"], rows
    assert all(r["status"] == "no face" for r in rows.values()), rows
    assert "audio stream 1 (adpcm_ms) re-encoded to AAC" in rows["camera.avi"]["detail"], rows["camera.avi"]
    for name, out in (("camera.avi", "camera.mp4"), ("two.mp4", "two.mp4")):
        given, kept = _tones(tmp_path / "in" / name), _tones(tmp_path / "out" / out)
        assert len(kept) == len(given), name
        for a, b in zip(given, kept):  # the same tone (AAC's priming delay aside): spectra peak alike
            assert np.argmax(np.abs(np.fft.rfft(a[:4096]))) == np.argmax(np.abs(np.fft.rfft(b[2048:6144]))), name
    assert probe(tmp_path / "out" / "odd.mp4")[0]["size"] == (126, 94)
    assert "written at 126x94, not 127x95: H.264 takes even sizes" in rows["odd.mkv"]["detail"], rows["odd.mkv"]


def test_a_clip_that_fails_in_ffmpeg_does_not_stop_the_batch(tiny_root, tmp_path, cli, monkeypatch):
    """One clip's surprise from PyAV or FFmpeg (an encoder that refuses, a muxer) fails that clip in one line, as a
    photo's does: the clips after it are restored, and its finished pieces are kept for a rerun."""
    from mgfr_cli.app import video_out

    write = video_out.SegmentWriter.write

    def failing(self, index, pts, tb, pixels):
        if self.segments.dir.name.startswith(".a."):
            raise ValueError("the encoder refused")  # what PyAV raises for, e.g., a codec the container cannot hold
        return write(self, index, pts, tb, pixels)

    monkeypatch.setattr(video_out.SegmentWriter, "write", failing)
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):
        _scene(tmp_path / "in" / name)
    code, text, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    rows = {Path(r["source"]).name: r for r in json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())}
    assert code == 1 and rows["a.mp4"]["status"] == "failed", text + err
    assert "unexpected ValueError: the encoder refused" in rows["a.mp4"]["detail"], rows
    assert rows["b.mp4"]["status"] == "no face" and probe(tmp_path / "out" / "b.mp4")[0]["frames"] == 6
    assert not (tmp_path / "out" / "a.mp4").exists() and (tmp_path / "out" / ".a.mp4.segments").is_dir()


def test_a_clips_date_place_and_languages_are_kept(tiny_root, tmp_path, cli):
    """A phone clip's creation time, place and title, and its audio's language, were dropped from the restored
    copy (a library then filed it under today); they are copied, re-encoded audio included."""
    tags = {"creation_time": "2001-02-03T04:05:06.000000Z", "title": "Grandma at 80", "location": "+48.8577+002.2950/"}
    _scene(tmp_path / "phone.mp4", audio=["aac"], tags=tags)
    _scene(tmp_path / "camera.mkv", audio=["pcm_u8"], tags={"title": "Grandma at 80"})  # MP4 takes no u8: AAC
    code, text, err = cli("restore", tmp_path / "phone.mp4", tmp_path / "camera.mkv", "-o", tmp_path / "out",
                          "--model-root", tiny_root, *FAST)
    assert code == 0, text + err
    with av.open(str(tmp_path / "out" / "phone.mp4")) as c:
        assert {k: c.metadata.get(k) for k in tags} == tags, c.metadata
        assert c.streams.audio[0].metadata.get("language") == c.streams.video[0].metadata.get("language") == "fra"
    with av.open(str(tmp_path / "out" / "camera.mp4")) as c:
        assert c.metadata.get("title") == "Grandma at 80" and c.streams.audio[0].metadata.get("language") == "fra"
        assert c.streams.audio[0].codec_context.name == "aac"


def test_an_anamorphic_clip_is_shown_as_it_was_and_its_faces_aligned_as_shown(tiny_root, helper, astronaut, tmp_path,
                                                                              cli, monkeypatch):
    """Widescreen DV (720x480 pixels shown 16:9, pixels 32/27 wide) came out without its pixel shape: players showed
    it squeezed to 3:2. And its faces were aligned as stored, 16% narrow. The output keeps the pixel shape; faces are
    aligned with their true proportions (restore, its library lookups and `align` alike)."""
    import shutil

    import cv2
    from helpers import random_recogniser

    from mgfr_cli.faces.helper import DetectedFace, FaceHelper

    # exact geometry: a face whose shown landmarks are the template itself, stored 27/32 narrower
    template = helper.template.astype(np.float64)
    stored = DetectedFace(box=(0, 0, 1, 1), score=1.0, landmarks=template * np.array([27 / 32, 1.0]))
    rgb = np.zeros((512, 512, 3), np.uint8)
    for aspect, exact in ((32 / 27, True), (1.0, False)):
        affine = helper.align(rgb, stored, 0, aspect=aspect).affine
        mapped = np.c_[stored.landmarks, np.ones(5)] @ affine.T
        assert (np.abs(mapped - template).max() < 1e-3) == exact, (aspect, mapped - template)
    canvas = np.full((320, 384, 3), 110, np.uint8)
    canvas[40:240, 90:290] = cv2.resize(astronaut[10:250, 110:350], (200, 200))
    out = av.open(str(tmp_path / "dv.mp4"), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 324, 320, "yuv420p"
    v.codec_context.sample_aspect_ratio = Fraction(32, 27)
    for _ in range(4):
        out.mux(v.encode(av.VideoFrame.from_ndarray(cv2.resize(canvas, (324, 320), interpolation=cv2.INTER_AREA),
                                                    format="rgb24")))
    out.mux(v.encode(None))
    out.close()
    aspects, align = [], FaceHelper.align

    def spy(self, rgb, face, index, source=None, aspect=1.0):
        if source is not None and Path(source).suffix == ".mp4":  # (the library's photos: square pixels)
            aspects.append(aspect)
        return align(self, rgb, face, index, source, aspect)

    monkeypatch.setattr(FaceHelper, "align", spy)
    root = tmp_path / "root"  # a recogniser, for the library's lookups (each track's largest face, aligned)
    shutil.copytree(tiny_root, root)
    random_recogniser(root)
    (tmp_path / "library").mkdir()
    cv2.imwrite(str(tmp_path / "library" / "her.png"), np.ascontiguousarray(canvas[..., ::-1]))
    code, text, err = cli("restore", tmp_path / "dv.mp4", "-o", tmp_path / "out", "--model-root", root,
                          "--ref-library", tmp_path / "library", *FAST)
    assert code == 0, text + err
    with av.open(str(tmp_path / "out" / "dv.mp4")) as c:
        assert c.streams.video[0].sample_aspect_ratio == Fraction(32, 27), c.streams.video[0].sample_aspect_ratio
    assert aspects and set(aspects) == {32 / 27}, aspects
    aspects.clear()
    code, text, err = cli("align", tmp_path / "dv.mp4", "-o", tmp_path / "faces", "--model-root", tiny_root, *FAST[2:])
    assert code == 0 and aspects and set(aspects) == {32 / 27}, (aspects, text + err)


def test_an_interlaced_clip_is_deinterlaced_before_faces_are_found(tiny_root, tmp_path, cli):
    """DV and camcorder captures weave two moments line by line: restored as stored, every moving face was combed
    (and the comb kept in the output). Interlaced frames go through FFmpeg's bwdif first, a frame for each frame,
    timestamps kept; said."""
    out = av.open(str(tmp_path / "dv.mp4"), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
    v.options = {"flags": "+ildct+ilme", "x264-params": "interlaced=1:tff=1", "crf": "10"}
    for i in range(6):  # a bright bar moving fast: each field sees it elsewhere
        first, second = np.full((96, 160, 3), 60, np.uint8), np.full((96, 160, 3), 60, np.uint8)
        first[:, 20 * i : 20 * i + 16], second[:, 20 * i + 10 : 20 * i + 26] = 220, 220
        first[1::2] = second[1::2]
        out.mux(v.encode(av.VideoFrame.from_ndarray(first, format="rgb24")))
    out.mux(v.encode(None))
    out.close()

    def comb(frames) -> float:  # each line against the mean of its neighbours
        return float(np.mean([np.abs(g[1:-1] - (g[:-2] + g[2:]) / 2).mean()
                              for g in (f.astype(float).mean(axis=2) for _, f in frames)]))

    code, text, err = cli("restore", tmp_path / "dv.mp4", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0 and "interlaced: deinterlaced" in " ".join(text.split()), text + err
    (_, given, _), (info, made, _) = probe(tmp_path / "dv.mp4"), probe(tmp_path / "out" / "dv.mp4")
    assert info["frames"] == 6 and [p for p, _ in made] == [p for p, _ in given]
    assert comb(given) > 10 and comb(made) < comb(given) / 10, (comb(given), comb(made))


def test_a_10_bit_clip_says_it_is_written_in_8_bits(tiny_root, tmp_path, cli):
    """A phone's HDR clip (10-bit HEVC, BT.2020) came out 8-bit without a word (a photo's 16 bits are kept, or said
    lost); it keeps its colour tags and says the depth it is written in."""
    out = av.open(str(tmp_path / "hdr.mov"), "w")
    v = out.add_stream("libx265", rate=FPS)
    v.width, v.height, v.pix_fmt = 64, 64, "yuv420p10le"
    v.codec_context.colorspace, v.codec_context.color_primaries, v.codec_context.color_trc = 9, 9, 18  # HLG
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i + 60, np.uint8), format="rgb24")
        out.mux(v.encode(frame.reformat(format="yuv420p10le", dst_colorspace=9, dst_color_range=1)))
    out.mux(v.encode(None))
    out.close()
    _scene(tmp_path / "sdr.mp4")
    code, text, err = cli("restore", tmp_path / "hdr.mov", tmp_path / "sdr.mp4", "-o", tmp_path / "out",
                          "--model-root", tiny_root, *FAST)
    rows = {Path(r["source"]).name: r for r in json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())}
    assert code == 0 and "10-bit video written as 8-bit H.264" in rows["hdr.mov"]["detail"], rows
    assert "8-bit" not in rows["sdr.mp4"]["detail"]
    with av.open(str(tmp_path / "out" / "hdr.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc) == (9, 9, 18)
