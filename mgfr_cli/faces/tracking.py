"""Faces across the frames of a clip: tracks by box overlap, and landmarks smoothed along each track.

A face in frame t joins the track whose box in its last frame overlaps it most (IoU at least ``MIN_IOU``,
each track taking at most one face per frame, best overlaps first); a face that joins none starts a new
track. Tracks are numbered in the order they first appear. A track's landmarks are then smoothed with a
Gaussian over neighbouring frames of the same track, so the aligned crop does not jitter from frame to frame
and the paste-back does not wobble. Face selection (``--face-index``, ``--largest-face``, ``--only-center-face``)
picks whole tracks (:func:`select_tracks`): picked per frame it would hop from one person to another.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace

import numpy as np

from mgfr_cli.errors import InputError

MIN_IOU = 0.3
MAX_GAP = 5  # frames a track may miss its face and still take it back
SMOOTH_SIGMA = 1.5  # frames


@dataclass
class Track:
    index: int
    frames: list[int] = field(default_factory=list)
    boxes: list[tuple] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    smoothed: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (5, 2) landmarks to align with

    def box_at(self, frame: int) -> tuple:
        return self.boxes[bisect_left(self.frames, frame)]  # frames are in order: no scan of a long track


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Feed each frame's detected faces in order with :meth:`update`; :meth:`finish` smooths and returns tracks."""

    def __init__(self):
        self.tracks: list[Track] = []

    def update(self, frame: int, faces) -> None:
        live = [t for t in self.tracks if frame - t.frames[-1] <= MAX_GAP]
        pairs = sorted(((iou(t.boxes[-1], f.box), ti, fi) for ti, t in enumerate(live) for fi, f in enumerate(faces)),
                       reverse=True)
        used_t, used_f = set(), set()
        for score, ti, fi in pairs:
            if score < MIN_IOU or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            self._add(live[ti], frame, faces[fi])
        for fi, f in enumerate(faces):
            if fi not in used_f:
                track = Track(len(self.tracks))
                self.tracks.append(track)
                self._add(track, frame, f)

    @staticmethod
    def _add(track: Track, frame: int, face) -> None:
        track.frames.append(frame)
        track.boxes.append(tuple(float(v) for v in face.box))
        track.landmarks.append(np.asarray(face.landmarks, np.float32))

    def finish(self, sigma: float = SMOOTH_SIGMA) -> list[Track]:
        for t in self.tracks:
            t.smoothed = dict(zip(t.frames, smooth(np.stack(t.landmarks), np.asarray(t.frames), sigma)))
        return self.tracks


def smooth(landmarks: np.ndarray, frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted average of ``(N, 5, 2)`` landmarks over the track's own frames (gaps respected)."""
    if sigma <= 0 or len(frames) < 2:
        return landmarks
    d = frames[:, None].astype(np.float64) - frames[None, :]
    w = np.exp(-0.5 * (d / sigma) ** 2)
    w /= w.sum(1, keepdims=True)
    return np.einsum("ij,jkl->ikl", w, landmarks.astype(np.float64)).astype(np.float32)


def per_frame(selection):
    """What of a :class:`FaceSelection` applies to each frame of a clip: the confidence floor; which faces to keep
    (the size floor too) is decided on whole tracks (:func:`select_tracks`)."""
    return replace(selection, only_center_face=False, largest_face=False, face_index=None, min_face_size=0.0)


def select_tracks(tracks: list[Track], selection, width: int, height: int) -> list[Track]:
    """The tracks ``selection`` keeps, as ``--face-index``/``--largest-face``/``--only-center-face`` keep faces of
    a photo (in that order of precedence), each with its own number (a sidecar's ``tracks: {K: ...}`` and the
    seed count every track). K counts a clip's tracks in the order they first appear (as ``mgfr align`` lists
    them). The largest (or centre) track is the one that is the largest (nearest the centre) face in the most
    frames: the main person, not one who is larger for a moment (ties: the earlier track). ``--min-face-size`` keeps
    the tracks whose face reaches it in some frame (all their frames restored: a person walking up to the camera is
    one person throughout), and changes no track's number."""
    kept = [t for t in tracks if max(float(np.linalg.norm(lm[0] - lm[1])) for lm in t.landmarks)
            >= selection.min_face_size]
    if selection.face_index is not None:
        if tracks and selection.face_index >= len(tracks):  # none at all: a faceless clip, as a faceless photo
            raise InputError(f"track {selection.face_index} does not exist ({len(tracks)} track"
                             f"{'s' if len(tracks) > 1 else ''} found; in a clip --face-index counts tracks from 0, "
                             f"in the order they first appear: mgfr align lists them)")
        kept = [t for t in kept if t.index == selection.face_index]
    elif (selection.largest_face or selection.only_center_face) and kept:
        best: dict[int, tuple] = {}  # frame -> (rank, -position) of the best face there
        for i, t in enumerate(kept):
            for frame, box in zip(t.frames, t.boxes):
                best[frame] = max(best.get(frame, (float("-inf"), 0)), (selection.rank(box, width, height), -i))
        votes = [0] * len(kept)
        for _, i in best.values():
            votes[-i] += 1
        kept = [kept[max(range(len(kept)), key=lambda i: (votes[i], -i))]]
    return kept
