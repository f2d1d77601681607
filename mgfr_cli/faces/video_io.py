"""Reading clips with PyAV (it bundles FFmpeg): the container, and its frames upright as RGB arrays."""

from __future__ import annotations

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
