"""Small builders the tests share: a real CLIP tokenizer, tiny models, an ArcFace-shaped ONNX."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # in the repository: a clone runs every test
MOBILENET = FIXTURES / "detection_mobilenet0.25_Final.pth"


def clip_tokenizer_files(out: Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` for CLIP's BPE from the vocabulary open_clip ships.

    The vocabulary order is CLIP's own (bytes, bytes + ``</w>``, merges, two special tokens), so the
    ids match the real CLIP tokenizer's.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    import tempfile

    return clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="mgfr-clip-")))


def clip_tokenizer():
    from transformers import CLIPTokenizer

    d = _tokenizer_dir()
    return CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=77)


def tiny_base(seed: int = 0):
    from mgfr_cli.model.base import build_random_base
    from mgfr_cli.configs import load_model_config

    return build_random_base(load_model_config("mgfr-tiny"), clip_tokenizer(), seed=seed)


def tiny_adapter(base, seed: int = 0):
    import torch

    from mgfr_cli.model.adapter import MgfrAdapter
    from mgfr_cli.configs import load_model_config

    torch.manual_seed(seed)
    return MgfrAdapter.from_unet(base.unet, **load_model_config("mgfr-tiny").adapter)


def copied_adapter(src: Path, dest: Path, moved: float = 0.0) -> Path:
    """A copy of the adapter folder ``src``; ``moved``: every tensor shifted by it, as a later training step."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    for f in Path(src).iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    if moved:
        weights = dest / "diffusion_pytorch_model.safetensors"
        with safe_open(weights, "pt") as fh:
            metadata = fh.metadata()
        save_file({k: v + moved for k, v in load_file(weights).items()}, weights, metadata=metadata)
        assert weights.stat().st_size == (Path(src) / weights.name).stat().st_size  # only the values moved
    return dest


def arcface_onnx(path: Path, seed: int = 0) -> Path:
    """Export a small random network shaped like ArcFace (1x3x112x112 in, 512 out) to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.PReLU(8), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.PReLU(16),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 512),
    ).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
    return path


def tiny_pipeline(seed: int = 0, identity=None):
    from mgfr_cli.model.pipeline import MgfrPipeline

    base = tiny_base(seed)
    return MgfrPipeline(base, tiny_adapter(base, seed), identity=identity)


def randomize_zero_paths(adapter, seed: int = 1, scale: float = 0.05):
    """Give every zero-initialised weight small random values (what training would do): whole zero modules,
    and the zero halves of the branches' input convs (the LQ and reference latents enter through them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            zero = p == 0
            if bool(zero.any()):
                p.copy_(torch.where(zero, (torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype), p))


@lru_cache(maxsize=1)
def _random_recogniser_file() -> Path:
    """facexlib's IR-SE50 with random weights (and random batch-norm statistics), saved once per session."""
    import tempfile

    import torch

    from mgfr_cli.model.recogniser import RECOGNISER_FILE, build_backbone

    torch.manual_seed(0)
    net = build_backbone()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = Path(tempfile.mkdtemp(prefix="mgfr-rec-")) / RECOGNISER_FILE
    torch.save(net.state_dict(), path)
    return path


def random_recogniser(root: Path) -> Path:
    """Put the random IR-SE50 into a model root (a link: the file is 175 MB) and return its path."""
    src = _random_recogniser_file()
    dst = Path(root) / src.name
    if not dst.exists():
        dst.symlink_to(src)
    return dst


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A small CLIP with OpenAI's ResNet image tower and text transformer (random weights), saved as open_clip
    saves a model for the Hub (``open_clip_config.json`` + ``open_clip_model.safetensors``): CLIP-IQA's layout.
    The text tower is 64 wide (one head of 64), as OpenAI's and piq's builders infer heads from widths."""
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = {"embed_dim": 32,  # no quick_gelu: OpenAI's CLIP (and piq's) use QuickGELU, the loader must too
           "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


class LanczosUpsampler:
    """A stand-in for the background upsampler (``upsampler.BackgroundUpsampler``): a Lanczos resize to the size
    asked for, recording each size (the background's, then each face enlarged by ``--face-upsample``)."""

    def __init__(self):
        self.sizes = []

    def applies(self, upscale: float) -> bool:
        return upscale > 1

    def __call__(self, rgb, size):
        import cv2

        self.sizes.append(size)
        return cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4)


def mux_tone(out, stream, freq: float, rate: int, samples: int, layout: str = "mono") -> None:
    """Encode ``samples`` of a ``freq`` Hz tone into the audio ``stream`` of the PyAV container ``out`` (resampled to
    the codec's sample format and frame size), then flush it."""
    from fractions import Fraction

    import av
    import numpy as np

    tone = (0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([tone] * (2 if layout == "stereo" else 1)), format="fltp",
                                       layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout=layout, rate=rate,
                                  frame_size=stream.codec_context.frame_size or None)
    for f in [*resampler.resample(frame), *resampler.resample(None)]:
        out.mux(stream.encode(f))
    out.mux(stream.encode(None))


def cmyk_profile(cyan_lab: tuple[float, float, float]) -> bytes:
    """A small ICC v2 CMYK printer profile (one lut8 A2B0 table, 2 grid points): no ink is white paper, full cyan
    shows as ``cyan_lab``, any other full ink as black; built here because no CMYK profile ships with this machine."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def lab(L: float, a: float, b: float) -> bytes:  # lut8's PCS encoding
        return bytes([round(L * 255 / 100), round(a + 128), round(b + 128)])

    ramp = bytes(range(256))
    clut = b"".join(lab(100, 0, 0) if not any((c, m, y, k)) else lab(*cyan_lab) if (c, m, y, k) == (1, 0, 0, 0)
                    else lab(0, 0, 0) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1))
    a2b0 = (b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
            + ramp * 4 + clut + ramp * 3)
    text = b"test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    wtpt = b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    tags, body, at = [], b"", 128 + 4 + 12 * 3
    for sig, data in ((b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)):
        tags.append(sig + struct.pack(">II", at + len(body), len(data)))
        body += data + bytes(-len(data) % 4)
    size = at + len(body)
    header = (struct.pack(">I", size) + bytes(4) + b"\x02\x10\0\0" + b"prtrCMYKLab " + bytes(12) + b"acsp"
              + bytes(28) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return header + struct.pack(">I", 3) + b"".join(tags) + body
