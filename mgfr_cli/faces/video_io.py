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


def depth(stream) -> int:
    """Bits per sample of a video stream as coded (8 for most; 10 for HDR phone clips), 8 when unknown."""
    import av

    try:
        return max((c.bits for c in av.VideoFormat(stream.codec_context.pix_fmt).components), default=8)
    except (TypeError, ValueError):
        return 8


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
    """``(index, pts, time_base, rgb)`` of every frame, upright (rotation metadata applied), interlaced ones
    deinterlaced (:class:`Deinterlacer`; ``broke`` says so). A stream that breaks mid-way ends the frames there, and
    ``broke`` gets the reason."""
    import av

    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index, fields = 0, Deinterlacer(stream)
        try:
            for decoded in container.decode(stream):
                if decoded.width * decoded.height > max_megapixels * 1e6:
                    raise InputError(f"{path}: frames of {decoded.width}x{decoded.height} are over --max-megapixels "
                                     f"{max_megapixels:g}")
                for frame in fields.push(decoded):
                    yield index, frame.pts, frame.time_base, _upright(frame)
                    index += 1
            for frame in fields.push(None):
                yield index, frame.pts, frame.time_base, _upright(frame)
                index += 1
        except av.error.FFmpegError as exc:
            broke.append(f"the stream breaks after frame {index} ({str(exc).splitlines()[0]}); kept what decoded")
        if fields.graph is not None:
            broke.append("interlaced: deinterlaced (FFmpeg's bwdif, a frame for each frame) before faces were found")
    finally:
        container.close()


def _upright(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round(getattr(frame, "rotation", 0) or 0)) // 90 % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class Deinterlacer:
    """Frames as decoded, but interlaced ones (DV, camcorder captures: two moments woven line by line, combed where
    anything moves) through FFmpeg's bwdif, one frame out for each frame in, timestamps kept."""

    def __init__(self, stream):
        self.stream, self.graph = stream, None

    def push(self, frame) -> list:
        import av

        if self.graph is None:
            if frame is None or not frame.interlaced_frame:
                return [frame] if frame is not None else []
            self.graph = av.filter.Graph()
            source = self.graph.add_buffer(template=self.stream)
            bwdif = self.graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
            source.link_to(bwdif)
            bwdif.link_to(self.graph.add("buffersink"))
            self.graph.configure()
        self.graph.push(frame)
        out = []
        while True:
            try:
                f = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return out
            tb = self.stream.time_base  # bwdif counts in half the stream's time base (for field rate): back to it
            if f.pts is not None and f.time_base is not None and tb is not None and f.time_base != tb:
                f.pts, f.time_base = int(round(f.pts * f.time_base / tb)), tb
            out.append(f)
