"""The containers home videos come in (AVCHD camcorders, DVD and MPEG-2 camcorders, old phones, Windows Movie Maker,
iTunes exports) are restored as clips, not skipped as "not an image format"."""

import av
import numpy as np
import pytest

from helpers import mux_tone

FAST = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


def _home_video(path, fmt: str, vcodec: str, acodec: str, rate: int = 48000, frames: int = 8):
    """A faceless 160x120 clip at 25 fps with a 440 Hz tone, as ``fmt``'s muxer writes it."""
    y, x = np.mgrid[0:120, 0:160]
    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream(vcodec, rate=25)
    v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
    a = out.add_stream(acodec, rate=rate, layout="stereo")
    a.bit_rate = 128000
    for i in range(frames):
        frame = np.dstack([(x + 9 * i) % 256, y * 2, np.full_like(x, 80)]).astype(np.uint8)
        out.mux(v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(v.encode(None))
    mux_tone(out, a, 440, rate, rate * frames // 25, "stereo")
    out.close()
    return path


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("name, fmt, vcodec, acodec, rate", [
    ("camcorder.MTS", "mpegts", "libx264", "ac3", 48000),  # AVCHD
    ("dvd.mpg", "mpeg", "mpeg2video", "mp2", 48000),
    ("disc.vob", "vob", "mpeg2video", "ac3", 48000),
    ("phone.3gp", "3gp", "mpeg4", "aac", 48000),
    ("export.m4v", "ipod", "libx264", "aac", 48000),
    ("moviemaker.wmv", "asf", "wmv2", "wmav2", 44100),
])
def test_home_video_containers_are_restored_as_clips(tiny_root, tmp_path, cli, name, fmt, vcodec, acodec, rate):
    (tmp_path / "in").mkdir()
    src = _home_video(tmp_path / "in" / name, fmt, vcodec, acodec, rate)
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0 and "not an image format" not in out, out + err
    written = tmp_path / "out" / f"{src.stem}.mp4"
    before, after = _frames(src), _frames(written)
    assert len(after) == len(before) == 8, (len(before), len(after))
    assert max(np.abs(a.astype(float) - b).mean() for a, b in zip(before, after)) < 4  # the same pictures
    with av.open(str(written)) as c:
        assert len(c.streams.audio) == 1
        samples = sum(f.samples for f in c.decode(audio=0))
    assert samples >= rate * 8 // 25 * 0.9, samples  # the tone kept (copied, or re-encoded where MP4 cannot hold it)
