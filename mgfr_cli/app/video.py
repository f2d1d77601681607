"""Video: every face of a clip restored, and a person stays the same person from frame to frame.

Two passes over the clip (decoded with PyAV, which bundles FFmpeg), so memory does not grow with its length:
1. detect faces in every frame and follow them as tracks (:mod:`faces.tracking`); landmarks are smoothed along
   each track;
2. decode again (in a background thread, a bounded queue of frames ahead), align each face with its track's
   smoothed landmarks, restore the faces of a window of frames together on the GPU (the batch machinery), paste
   them back and encode H.264 (``--crf``) with the input's timestamps (variable frame rate kept) and colour
   matrix; the audio streams are copied (:mod:`app.video_out`).
Every frame of a track starts from the same noise (seed + track index): with fresh noise per frame a diffusion
restorer invents a new face every frame. The summary gets, per track, the flicker figure: the mean absolute
difference between consecutive restored crops, against the same figure for the input crops. The clip is
encoded in pieces of ``SEGMENT_FRAMES`` frames, each renamed when whole, and joined (packets copied) into a
temporary file renamed when whole: a stopped run never leaves a half-written ``OUT/<name>.mp4``, and a later
run with the same input and settings continues after the last whole piece.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgfr_cli.app.video_out import Segments, SegmentWriter
from mgfr_cli.errors import InputError
from mgfr_cli.faces.inputs import NO_FACE, RESTORED, Outcome
from mgfr_cli.faces.video_io import colour_of, depth, frames, open_video, pixel_aspect
from mgfr_cli.files import resolved

SEGMENT_FRAMES = 96  # frames per encoded piece: what a stopped run keeps
WINDOW_FRAMES = 8  # frames restored together (and held in memory) at most
QUEUE_FRAMES = 8  # frames decoded ahead by the background thread


@dataclass
class Flicker:
    """Running mean absolute difference between consecutive crops of one track (input and restored)."""

    pairs: int = 0
    input_sum: float = 0.0
    restored_sum: float = 0.0
    last: tuple | None = field(default=None, repr=False)  # (frame, input crop, restored crop)

    def add(self, frame: int, crop: np.ndarray, restored: np.ndarray) -> None:
        if self.last is not None and self.last[0] == frame - 1:
            self.pairs += 1
            self.input_sum += float(np.abs(crop.astype(np.float32) - self.last[1]).mean())
            self.restored_sum += float(np.abs(restored.astype(np.float32) - self.last[2]).mean())
        self.last = (frame, crop.astype(np.float32), restored.astype(np.float32))

    def figures(self) -> dict:
        n = max(self.pairs, 1)
        return {"input": round(self.input_sum / n, 3), "restored": round(self.restored_sum / n, 3), "pairs": self.pairs}


def _background(iterator, size: int = QUEUE_FRAMES):
    """Items of ``iterator`` produced by a background thread, at most ``size`` ahead (bounded memory)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def run():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
        q.put(done)

    thread = threading.Thread(target=run, daemon=True, name="mgfr-decode")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def restore_clip(batch, job, item, inputs: set) -> Outcome:
    """One clip of a batch, whole; its output is ``OUT/<name>.mp4``, skipped when it exists (a resumed run)."""
    import errno

    from mgfr_cli.errors import STOPPING_WRITE_ERRORS, MgfrError, OutputError, unexpected
    from mgfr_cli.faces.conditions import FaceConditions, resolve_specs
    from mgfr_cli.app.outputs import named, skipped_as_done
    from mgfr_cli.faces.inputs import FAILED

    if job.has_aligned:
        return Outcome(item.path, FAILED, f"{item.path}: a clip is not an aligned face (--has-aligned is for 512 "
                                          f"face crops): restore clips without it")
    target = named(job.output, item.relative, f"{job.suffix}.mp4")

    def conditions(tracks: list, crops: dict, total: int) -> dict:
        """Each track's conditions, by its number among the clip's ``total`` tracks (kept or not); a track without
        references asks the library (if any) with its largest face."""
        cache: dict = {}
        specs = resolve_specs(item.path, job.flags, total)
        return {t.index: batch._conditions(crops[t.index], specs[t.index], job, cache) if t.index in crops
                else FaceConditions(specs[t.index].prompt, specs[t.index].negative_prompt,
                                    batch._references(specs[t.index], job, cache)) for t in tracks}

    try:
        if resolved(target) in inputs:
            return Outcome(item.path, FAILED, f"{item.path}: output {target} would overwrite an input")
        if target.exists() and not job.overwrite:
            return skipped_as_done(job, item.path, target, batch.recipes)
        return restore_video(batch, job, item, target, conditions, job.video_noise)
    except MgfrError as exc:
        return Outcome(item.path, FAILED, str(exc))
    except OSError as exc:
        if exc.errno in STOPPING_WRITE_ERRORS:
            raise OutputError(f"{job.output}: cannot write outputs ({exc.strerror}); stopped, inputs untouched, "
                              f"finished outputs kept") from None
        return Outcome(item.path, FAILED, unexpected(item.path, exc) if exc.errno == errno.ENAMETOOLONG
                       else f"{item.path}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - in a batch, one clip's surprise (PyAV's, FFmpeg's) must not stop the rest
        return Outcome(item.path, FAILED, unexpected(item.path, exc) + "; the pieces written are kept for a rerun")


def restore_video(batch, job, item, target: Path, conditions, seed_per: str = "track") -> Outcome:
    """Restore one clip into ``target``; ``conditions``: a callable giving each track's FaceConditions."""
    from mgfr_cli.app.batch import library_rows, restore_in_batches
    from mgfr_cli.app.paste import paste_back
    from mgfr_cli.faces.helper import DetectedFace
    from mgfr_cli.faces.tracking import Tracker, per_frame, select_tracks

    path = item.path
    aspect = pixel_aspect(path)  # an anamorphic clip's faces are aligned as shown, and it is written as it was
    broke: list[str] = []
    tracker = Tracker()
    count = 0
    largest: dict[int, tuple] = {}  # track -> (box area, its face aligned): what the library is asked with
    height = width = 0
    for index, _, _, rgb in frames(path, job.max_megapixels, broke):
        found = batch.helper.detect(rgb, per_frame(job.selection))  # which faces: whole tracks, below
        tracker.update(index, found)
        height, width = rgb.shape[:2]
        if batch.library is not None:
            _keep_largest(largest, tracker, index, found, rgb, batch.helper, path, aspect)
        count = index + 1
    if count == 0:
        raise InputError(f"{path}: no frame could be decoded" + (f" ({broke[0]})" if broke else ""))
    size = (round(width * job.upscale), round(height * job.upscale))  # paste_back's; H.264 (4:2:0) takes even sizes
    if size[0] % 2 or size[1] % 2:
        broke.append(f"written at {size[0] // 2 * 2}x{size[1] // 2 * 2}, not {size[0]}x{size[1]}: H.264 takes even "
                     f"sizes (the last column or row is cut)")
    tracks = tracker.finish()  # none: the clip is written all the same (its frames as a faceless photo's)
    total, tracks = len(tracks), select_tracks(tracks, job.selection, width, height)
    # a faceless clip reads no sidecar, as a faceless photo (its `tracks: {0: ...}` names no track here)
    conds = conditions(tracks, {k: crop for k, (_, crop) in largest.items()}, total) if tracks else {}
    flicker = {t.index: Flicker() for t in tracks}
    by_frame: dict[int, list] = {}
    for t in tracks:
        for f in t.frames:
            by_frame.setdefault(f, []).append(t)

    source = open_video(path)
    vin = source.streams.video[0]
    rate = vin.average_rate or vin.guessed_rate or 25
    if (bits := depth(vin)) > 8:  # (photos: 16 bits kept in PNG; H.264 here is 8-bit, as the restorer's frames)
        broke.append(f"{bits}-bit video written as 8-bit H.264")
    st = path.stat()
    colour = colour_of(vin)
    segments = Segments(target, "|".join(map(str, (resolved(path), st.st_size, st.st_mtime_ns, job.seed, job.crf,
                                                   job.upscale, seed_per, getattr(batch.restorer, "settings", None),
                                                   _conditions_key(conds), job.recipe, colour, aspect,
                                                   any(b.startswith("interlaced") for b in broke)))))
    try:
        writer = SegmentWriter(segments, rate, job.crf, flicker, colour, SEGMENT_FRAMES, aspect)
        window: list = []

        def flush():
            faces, owners = [], []
            for index, pts, tb, rgb in window:
                for t in by_frame.get(index, []):
                    det = DetectedFace(box=t.box_at(index), score=1.0, landmarks=t.smoothed[index])
                    faces.append(batch.helper.align(rgb, det, t.index, path, aspect))
                    owners.append((index, t))
            seeds = [job.seed + (t.index if seed_per == "track" else 1000 * index + t.index) for index, t in owners]
            restored = restore_in_batches(batch.restorer, [f.crop for f in faces], [conds[t.index] for _, t in owners],
                                          seeds, job.batch_size) if faces else []
            for f, r, (index, t) in zip(faces, restored, owners):
                flicker[t.index].add(index, f.crop, r)
            for index, pts, tb, rgb in window:
                mine = [(f, r) for f, r, (i, _) in zip(faces, restored, owners) if i == index]
                # every frame's background the same way, with faces or without (Real-ESRGAN, else Lanczos)
                pixels = paste_back(batch.helper, batch.upsampler, rgb, [f for f, _ in mine], [r for _, r in mine],
                                    job.upscale, job.face_upsample)
                writer.write(index, pts, tb, pixels)
            window.clear()

        for item_ in _background(frames(path, job.max_megapixels, [])):
            k = item_[0] // SEGMENT_FRAMES
            if segments.done(k):
                continue  # written by an earlier run: decoded, not restored again
            if window and window[0][0] // SEGMENT_FRAMES != k:
                flush()
            window.append(item_)
            if len(window) >= WINDOW_FRAMES:
                flush()
        flush()
        writer.close()
        broke += segments.join(target, source, -(-count // SEGMENT_FRAMES))
    finally:
        source.close()
    for k, pairs in segments.flicker().items():  # what earlier runs measured in the segments they wrote
        flicker[k].pairs += pairs[0]
        flicker[k].input_sum += pairs[1]
        flicker[k].restored_sum += pairs[2]
    segments.remove()
    if not tracks:
        why = job.selection.none_kept(total, "track") or f"no face in any of {count} frames"
        return Outcome(path, NO_FACE, "; ".join([f"{why} (written without restoring)"] + broke), target)
    figures = {t.index: flicker[t.index].figures() for t in tracks}
    note = "; ".join([f"{count} frames, {len(tracks)} track(s)"] + broke)
    frames_of = {t.index: len(t.frames) for t in tracks}
    return Outcome(path, RESTORED, note, target, len(tracks), library=library_rows(conds.keys(), conds.values()),
                   tracks=tuple({"track": k, "frames": frames_of[k], "flicker": v} for k, v in figures.items()))


def _conditions_key(conds: dict) -> str:
    """What each track is restored toward (prompts, references by content as a photo's outputs key them:
    ``outputs.refs_mark``): pieces restored toward something else are not continued."""
    from mgfr_cli.app.outputs import refs_mark

    def ref(face) -> str:
        src = getattr(face, "source", None)
        return refs_mark([src]) if src is not None else ""

    return repr([(c.prompt, c.negative_prompt, [ref(r) for r in c.references]) for c in conds.values()])


def _keep_largest(largest: dict, tracker, index: int, found: list, rgb, helper, path, aspect: float) -> None:
    """Per track, its largest face so far (the most detail), aligned."""
    by_box = {tuple(float(v) for v in f.box): f for f in found}
    for t in tracker.tracks:
        if t.frames[-1] == index:
            x1, y1, x2, y2 = t.boxes[-1]
            if (x2 - x1) * (y2 - y1) > largest.get(t.index, (0.0,))[0]:
                largest[t.index] = ((x2 - x1) * (y2 - y1),
                                    helper.align(rgb, by_box[t.boxes[-1]], t.index, path, aspect))
