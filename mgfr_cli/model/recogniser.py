"""A differentiable face recogniser for identity guidance: facexlib's IR-SE50 ArcFace, and the fixed warp from
mgfr's aligned 512 faces into its 112x112 input.

facexlib ships the architecture (``facexlib.recognition.arcface_arch.Backbone``, 50 layers, IR-SE units) and
releases the weights (``recognition_arcface_ir_se50.pth``); its own loader hard-codes CUDA and downloads by
itself, so mgfr builds the module, loads the file with ``weights_only=True`` and moves it to the pipeline's
device and dtype. The warp is the similarity that maps the FFHQ 5-point template (where every aligned face
has its landmarks) onto ArcFace's 112 template: insightface's ``estimate_norm``, the transform its
``norm_crop`` uses, applied with ``grid_sample`` so gradients flow back to the face.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mgfr_cli.errors import WeightsError

RECOGNISER_FILE = "recognition_arcface_ir_se50.pth"
ARCFACE_SIZE = 112


@lru_cache(maxsize=8)
def arcface_matrix(face_size: int = 512) -> np.ndarray:
    """The 2x3 similarity from an aligned ``face_size`` crop (FFHQ template) to ArcFace's 112 crop (estimated once
    per size: it is fixed, and the warp runs at every guided step). Read-only."""
    from mgfr_cli.faces.helper import FFHQ_TEMPLATE_512
    from mgfr_cli.faces.identity import insightface_align

    m = insightface_align().estimate_norm(FFHQ_TEMPLATE_512 * (face_size / 512.0), ARCFACE_SIZE).astype(np.float64)
    m.setflags(write=False)
    return m


def warp_to_arcface(faces: torch.Tensor) -> torch.Tensor:
    """``(B, 3, S, S)`` aligned faces -> ``(B, 3, 112, 112)`` ArcFace crops, bilinear, zeros outside (as
    ``norm_crop``'s border). Differentiable with respect to ``faces``."""
    size = faces.shape[-1]
    m = np.vstack([arcface_matrix(size), [0, 0, 1]])
    inv = np.linalg.inv(m)  # output pixel -> input pixel
    # pixel centres -> [-1, 1] (align_corners=False): u = (2 p + 1) / n - 1
    to_px_out = np.array([[ARCFACE_SIZE / 2, 0, (ARCFACE_SIZE - 1) / 2], [0, ARCFACE_SIZE / 2, (ARCFACE_SIZE - 1) / 2],
                          [0, 0, 1]])
    to_norm_in = np.array([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])
    theta = torch.tensor((to_norm_in @ inv @ to_px_out)[:2], dtype=faces.dtype, device=faces.device)
    grid = F.affine_grid(theta.expand(faces.shape[0], 2, 3), [faces.shape[0], 3, ARCFACE_SIZE, ARCFACE_SIZE],
                         align_corners=False)
    return F.grid_sample(faces, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def build_backbone() -> torch.nn.Module:
    from facexlib.recognition.arcface_arch import Backbone

    return Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")


class Recogniser(torch.nn.Module):
    """Aligned faces in [-1, 1] (any size, FFHQ template) -> ``(B, 512)`` unit embeddings, differentiable."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.weights = ""  # load(): the weights file's fingerprint (a library cache made with others is rebuilt)

    @classmethod
    def load(cls, path: Path, device="cpu", dtype=torch.float32) -> "Recogniser":
        from mgfr_cli.weights.convert import load_checkpoint

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"missing weight file {path} (get it with: mgfr weights fetch arcface-irse50)")
        net = build_backbone()
        try:
            net.load_state_dict(load_checkpoint(path), strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: not facexlib's IR-SE50 ArcFace ({str(exc).splitlines()[0]})") from None
        from mgfr_cli.weights.files import fingerprint

        recogniser = cls(net).to(device, dtype)
        recogniser.weights = fingerprint([path])
        return recogniser

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = warp_to_arcface(faces.to(next(self.backbone.parameters()).dtype))
        return F.normalize(self.backbone(x).float(), dim=-1)

    @torch.no_grad()
    def embed_crops(self, crops: list[np.ndarray], chunk: int = 8) -> torch.Tensor:
        """``(N, 512)`` embeddings of uint8 RGB aligned crops."""
        device = next(self.backbone.parameters()).device
        out = []
        for i in range(0, len(crops), chunk):
            x = torch.from_numpy(np.stack(crops[i : i + chunk])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            out.append(self(x.to(device)))
        return torch.cat(out) if out else torch.zeros(0, 512)
