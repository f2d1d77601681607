"""The identity embedding: insightface's ArcFace (ONNX) on 112x112 crops (docs/design.md §2, §3).

The crop is made from the same five landmarks the face pipeline found (no second detector): an
aligned face already has its landmarks on the FFHQ template, so the template is the crop's landmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgfr_cli.errors import WeightsError
from mgfr_cli.faces.helper import FFHQ_TEMPLATE_512

ARCFACE_FILE = "arcface_w600k_r50.onnx"


def insightface_align():
    """insightface's ``face_align`` module, without the FutureWarning it prints on every run through scikit-image's
    deprecated ``SimilarityTransform.estimate`` (insightface's to update; nothing a user can act on)."""
    import warnings

    warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning)
    from insightface.utils import face_align

    return face_align


def providers_for(device) -> list:
    """onnxruntime providers for a torch device string: ``cuda:K`` runs on GPU K (each process of a
    multi-GPU run on its own GPU, not all on GPU 0), anything else on the CPU."""
    device = str(device)
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.split(":")[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class IdentityEncoder:
    """``embed(crops)`` -> ``(N, 512)`` L2-normalised ArcFace embeddings of aligned RGB face crops."""

    def __init__(self, onnx_path: Path, device: str = "cpu"):
        from insightface.model_zoo import model_zoo

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise WeightsError(f"missing weight file {onnx_path} (get it with: mgfr weights fetch arcface)")
        providers = providers_for(device)
        try:
            model = model_zoo.ModelRouter(str(onnx_path)).get_model(providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad model file
            raise WeightsError(f"{onnx_path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        if model is None or getattr(model, "taskname", None) != "recognition":
            raise WeightsError(f"{onnx_path}: not an ArcFace-shaped recognition model (112x112 in, embedding out)")
        self.model = model
        self.size = model.input_size[0]

    def crop(self, aligned: np.ndarray) -> np.ndarray:
        """The ArcFace crop (BGR, as insightface expects) of an aligned RGB face of any size."""
        kps = FFHQ_TEMPLATE_512 * (aligned.shape[0] / 512.0)
        return insightface_align().norm_crop(np.ascontiguousarray(aligned[:, :, ::-1]), kps, self.size)

    def embed(self, aligned: list[np.ndarray]) -> np.ndarray:
        if not aligned:
            return np.zeros((0, 512), np.float32)
        feats = np.asarray(self.model.get_feat([self.crop(a) for a in aligned]), np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def similarity_report(judge: IdentityEncoder, faces, conditions, restored) -> tuple:
    """Per face with references: its identity similarity to them (cosine to their mean embedding) before and
    after restoring, measured by ``judge`` (insightface's w600k_r50, never the network that guided)."""
    rows = []
    for face, cond, out in zip(faces, conditions, restored):
        if not cond.references:
            continue
        refs = judge.embed([r.crop for r in cond.references]).mean(0)
        refs = refs / max(float(np.linalg.norm(refs)), 1e-12)
        before, after = judge.embed([face.crop, out]) @ refs
        rows.append({"face": face.index, "before": round(float(before), 4), "after": round(float(after), 4),
                     "references": [r.source.name if r.source is not None else "" for r in cond.references]})
    return tuple(rows)
