"""Writing a restored clip: H.264 pieces (each renamed when whole, so a stopped run keeps them), joined with the
input's audio streams into a temporary file renamed when whole; the input's colour matrix and tags, pixel shape,
tags (creation time, place) and languages kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgfr_cli.faces.video_io import Colour
from mgfr_cli.files import hidden_beside

# tags a muxer writes of its own (and the rotation already applied to the pixels): never copied from the input
MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "handler_name", "vendor_id", "rotate",
              "duration", "DURATION", "ENCODER"}


class Segments:
    """The encoded pieces of one clip, each whole (renamed when finished) or absent, in a hidden folder beside the
    output, with what was measured in each; a later run with the same input and settings continues after the last
    whole piece. Joined (packets copied, nothing encoded again) into the output with the audio at the end."""

    def __init__(self, target: Path, key: str):
        self.dir = hidden_beside(target, ".segments")
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = self.dir / "key.txt"
        if stamp.is_file() and stamp.read_text() != key:  # another input or other settings: start again
            for p in self.dir.iterdir():
                p.unlink()
        stamp.write_text(key)

    def path(self, k: int) -> Path:
        return self.dir / f"seg-{k:05d}.mp4"

    def done(self, k: int) -> bool:
        return self.path(k).is_file() and self.path(k).with_suffix(".json").is_file()

    def flicker(self) -> dict[int, list]:
        import json

        totals: dict[int, list] = {}
        for p in sorted(self.dir.glob("seg-*.json")):
            for k, v in json.loads(p.read_text()).get("earlier", {}).items():
                totals[int(k)] = [a + b for a, b in zip(totals.get(int(k), [0, 0.0, 0.0]), v)]
        return totals

    def join(self, target: Path, source, n: int) -> list[str]:
        import av

        tmp = hidden_beside(target, ".partial.mp4")
        out = av.open(str(tmp), "w", format="mp4")
        try:
            first = av.open(str(self.path(0)))
            vout = out.add_stream_from_template(first.streams.video[0])
            first.close()
            # the clip's own tags (creation time, place, title) and its video stream's language; not the muxer's
            out.metadata.update({k: v for k, v in source.metadata.items() if k not in MUXER_TAGS})
            vout.metadata.update({k: v for k, v in source.streams.video[0].metadata.items() if k not in MUXER_TAGS})
            audio = AudioStreams(out, source)
            for k in range(n):
                with av.open(str(self.path(k))) as seg:
                    for packet in seg.demux(seg.streams.video[0]):
                        if packet.dts is not None:
                            packet.stream = vout
                            out.mux(packet)
            audio.mux()
            out.close()
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        return audio.notes

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)  # mgfr's own hidden folder of pieces, now joined


class AudioStreams:
    """Every audio stream of ``source`` into the MP4 ``out``: copied packet for packet, or re-encoded to AAC where
    MP4 cannot hold the codec (ADPCM of old cameras' AVIs, say); streams of other kinds are not copied (said)."""

    def __init__(self, out, source):
        import av

        self.copied, self.coded, self.notes = {}, {}, []
        for s in source.streams.audio:
            try:
                self.copied[s.index] = out.add_stream_from_template(s)
                self.copied[s.index].metadata.update({k: v for k, v in s.metadata.items() if k not in MUXER_TAGS})
            except ValueError:  # PyAV: "'mp4' format does not support '...' codec"
                cc = s.codec_context
                layout = {1: "mono", 2: "stereo"}.get(cc.layout.nb_channels, "5.1")  # named: AAC takes no bare count
                aac = out.add_stream("aac", rate=cc.sample_rate or 48000, layout=layout)
                aac.metadata.update({k: v for k, v in s.metadata.items() if k not in MUXER_TAGS})
                self.coded[s.index] = (aac, av.AudioResampler(format="fltp", layout=aac.layout, rate=aac.rate))
                self.notes.append(f"audio stream {s.index} ({cc.name}) re-encoded to AAC: MP4 cannot hold {cc.name}")
        other = [s for s in source.streams if s.type not in ("audio", "video")] + list(source.streams.video[1:])
        if other:
            kinds = sorted({s.type for s in other})
            self.notes.append(f"not copied: {len(other)} stream(s) of {', '.join(kinds)} (only video and audio are)")
        self.out, self.source = out, source

    def mux(self) -> None:
        if not self.source.streams.audio:
            return
        for packet in self.source.demux(*self.source.streams.audio):
            i = packet.stream.index
            if i in self.copied and packet.dts is not None:
                packet.stream = self.copied[i]
                self.out.mux(packet)
            elif i in self.coded:
                aac, resampler = self.coded[i]
                for frame in packet.decode():
                    for f in resampler.resample(frame):
                        self.out.mux(aac.encode(f))
        for aac, resampler in self.coded.values():  # the encoders' last packets
            for f in resampler.resample(None):
                self.out.mux(aac.encode(f))
            self.out.mux(aac.encode(None))


class SegmentWriter:
    """H.264 (no B-frames, so pieces join with increasing timestamps) into one piece at a time, limited range, in
    the input's colour matrix and with its tags (:class:`~mgfr_cli.faces.video_io.Colour`)."""

    def __init__(self, segments: Segments, rate, crf: int, flicker: dict, colour: Colour = Colour(),
                 piece: int = 96, aspect: float = 1.0):
        self.segments, self.rate, self.crf, self.flicker, self.colour = segments, rate, crf, flicker, colour
        self.piece, self.aspect = piece, aspect  # frames per piece; a pixel's width over its height
        self.k, self.out, self.stream, self.at_start = None, None, None, {}

    def write(self, index: int, pts, tb, pixels: np.ndarray) -> None:
        import av

        k = index // self.piece
        if k != self.k:
            self.close()
            self.k = k
            self.out = av.open(str(self.segments.path(k).with_suffix(".partial.mp4")), "w", format="mp4")
            self.stream = self.out.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = pixels.shape[1] // 2 * 2, pixels.shape[0] // 2 * 2
            self.stream.pix_fmt, self.stream.time_base = "yuv420p", tb
            self.stream.options = {"crf": str(self.crf), "bf": "0"}
            if self.aspect != 1.0:  # anamorphic: shown as the input is (widescreen DV, 720x480 shown 16:9)
                from fractions import Fraction

                self.stream.codec_context.sample_aspect_ratio = Fraction(self.aspect).limit_denominator(10000)
            if self.colour.matrix is not None:  # an untagged input stays untagged: read as the input is
                cc = self.stream.codec_context
                cc.colorspace, cc.color_range = self.colour.space, 1  # 1: limited (MPEG) range, as encoded
                cc.color_primaries, cc.color_trc = self.colour.primaries, self.colour.trc
            self.at_start = {t: (f.pairs, f.input_sum, f.restored_sum) for t, f in self.flicker.items()}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[: self.stream.height, : self.stream.width]),
                                           format="rgb24").reformat(format="yuv420p", dst_colorspace=self.colour.matrix,
                                                                    dst_color_range=1)
        frame.pts, frame.time_base = pts, tb
        self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Finish the open piece: flushed, closed, renamed whole, with the flicker measured while writing it."""
        import json

        if self.out is None:
            return
        self.out.mux(self.stream.encode(None))
        self.out.close()
        path = self.segments.path(self.k)
        path.with_suffix(".partial.mp4").replace(path)
        delta = {t: [f.pairs - self.at_start[t][0], f.input_sum - self.at_start[t][1],
                     f.restored_sum - self.at_start[t][2]] for t, f in self.flicker.items()}
        path.with_suffix(".json").write_text(json.dumps({"earlier": delta}))
        self.out = None
