"""``mgfr doctor``: a truthful account of this machine: versions, devices, weights, what works."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mgfr_cli.weights.files import Manifest, entry_state
from mgfr_cli.weights.hub import where

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "facexlib",
            "insightface", "onnxruntime", "opencv-python", "typer", "rich", "PyYAML", "torchmetrics", "lpips", "spandrel",
            "open_clip_torch")


@dataclass
class Report:
    sections: dict = field(default_factory=dict)  # title -> [(ok, label, detail)]
    healthy: bool = True


def diagnose(root: Path, manifest: Manifest) -> Report:
    r = Report()
    r.sections["python"] = [(True, "python", f"{platform.python_version()} ({sys.executable})")]
    pkgs = []
    for name in PACKAGES:
        try:
            pkgs.append((True, name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            pkgs.append((False, name, "not installed"))
    r.sections["packages"] = pkgs
    r.sections["device"] = _devices()
    states = {}
    rows = []
    for e in manifest.entries:
        state = states[e.name] = entry_state(e, root)
        places = sorted({where(root / f.path).split(" (")[0] for f in e.files} - {"missing"})
        rows.append((state in ("verified", "unpinned"), e.name + (" (optional)" if e.optional else ""),
                     state + (f" in {', '.join(places)}" if places else "")
                     + ("" if state in ("verified",) else f" -> mgfr weights fetch {e.name}" if e.sources else f" -> {e.note}")))
    r.sections[f"weights in {root}"] = rows
    have = lambda n: states.get(n) in ("verified", "unpinned")  # noqa: E731
    detector = have("retinaface_resnet50") or have("retinaface_mobile0.25")
    adapter = have("mgfr-adapter") or (have("diffbir-v2") and have("swinir-face"))
    can_restore = detector and have("sd21-base") and adapter
    which = "MGFR adapter" if have("mgfr-adapter") else "public DiffBIR prior (no references)"
    works = [
        (all(ok for ok, _, _ in pkgs[:8]), "core packages import", ""),
        (detector, "mgfr align", "" if detector else "needs a RetinaFace detector"),
        (can_restore, "mgfr restore", which if can_restore else
         "needs a detector, sd21-base and an adapter (diffbir-v2 + swinir-face, fetched by the first restore)"),
        (have("sd21-base"), "mgfr train", "" if have("sd21-base") else "needs sd21-base"),
        (have("arcface"), "identity embeddings (references, eval identity)", "" if have("arcface") else "needs arcface"),
        (have("parsenet"), "parsing mask for paste-back", "" if have("parsenet") else "feathered square used instead"),
        (have("clip-rn50"), "eval without ground truth (CLIP-IQA)", "" if have("clip-rn50") else "needs clip-rn50"),
    ]
    r.sections["what works now"] = works
    r.healthy = works[0][0] and works[2][0]
    return r


def _devices():
    try:
        import torch
    except ImportError:
        return [(False, "torch", "not importable")]
    if not torch.cuda.is_available():
        return [(True, "cpu", f"torch {torch.__version__}; no CUDA device (restore runs on the CPU, slowly)")]
    rows = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append((True, f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"))
    return rows
