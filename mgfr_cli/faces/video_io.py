"""Reading clips with PyAV (it bundles FFmpeg): the container, and its frames upright as RGB arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgfr_cli.errors import InputError


def open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a video mgfr can read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream" + (" (audio only)" if container.streams.audio else ""))
    return container


UNSPECIFIED = 2  # FFmpeg's AVCOL_SPC/PRI/TRC_UNSPECIFIED
# AVColorSpace -> the matrix swscale converts RGB with (BT.709, FCC, BT.601 x2, SMPTE 240M, BT.2020 x2)
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


@dataclass(frozen=True)
class Colour:
    """A clip's colour tags (FFmpeg's colour space, primaries and transfer numbers). Frames are decoded with the
    matrix their tags name; the output is encoded with the same matrix and carries the same tags, so that a player
    shows input and output alike (most read an untagged HD clip as BT.709: BT.601 pixels would shift in hue)."""

    space: int = UNSPECIFIED
    primaries: int = UNSPECIFIED
    trc: int = UNSPECIFIED

    @property
    def matrix(self) -> int | None:
        """The matrix to encode with, or None for swscale's default (BT.601) when the clip names none it has."""
        return _MATRICES.get(self.space)


def colour_of(stream) -> Colour:
    cc = stream.codec_context
    return Colour(*(int(getattr(cc, k, UNSPECIFIED) or UNSPECIFIED)
                    for k in ("colorspace", "color_primaries", "color_trc")))


def pixel_aspect(path: Path) -> float:
    """A clip's pixel width over height (its sample aspect ratio: 32/27 for widescreen DV), 1 when square or unset."""
    from fractions import Fraction

    container = open_video(path)
    try:
        stream = container.streams.video[0]
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        return float(Fraction(sar)) if sar and Fraction(sar) > 0 else 1.0
    finally:
        container.close()


def frames(path: Path, max_megapixels: float, broke: list):
    """``(index, pts, time_base, rgb)`` of every frame, upright (rotation metadata applied). A stream that
    breaks mid-way ends the frames there, and ``broke`` gets the reason."""
    import av

    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.width * frame.height > max_megapixels * 1e6:
                    raise InputError(f"{path}: frames of {frame.width}x{frame.height} are over --max-megapixels "
                                     f"{max_megapixels:g}")
                rgb = frame.to_ndarray(format="rgb24")
                turns = int(round(getattr(frame, "rotation", 0) or 0)) // 90 % 4
                if turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, turns))
                yield index, frame.pts, frame.time_base, rgb
                index += 1
        except av.error.FFmpegError as exc:
            broke.append(f"the stream breaks after frame {index} ({str(exc).splitlines()[0]}); kept what decoded")
    finally:
        container.close()
