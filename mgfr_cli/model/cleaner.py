"""The cleaner: a 1x SwinIR that removes degradations before the VAE encode, as DiffBIR does (docs/design.md §7).

DiffBIR's IRControlNet was trained on latents of cleaned faces, not of raw low-quality ones, so a converted
DiffBIR LCA restores from ``E(clean(LQ))`` and the colour fix targets the cleaned face. The SwinIR files
load through spandrel; spandrel's SwinIR refuses fp16, so the cleaner runs in fp32 (it is small next to
the diffusion model: a 512 face is 64x64 tokens after its pixel-unshuffle). As in DiffBIR, the network
runs bare (spandrel's descriptor call would clamp to [0, 1]; the output is left as it is, and the values
outside [0, 1] reach the VAE and the colour fix) on the face zero-padded right and bottom to its size
multiple, then cropped back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mgfr_cli.model.upsampler import SpandrelModel

CLEANERS = {  # --cleaner name -> (manifest entry, weight file in the model root)
    "swinir-codeformer": ("swinir-codeformer", "codeformer_swinir.ckpt"),
    "swinir-face": ("swinir-face", "face_swinir_v1.ckpt"),
}


class Cleaner:
    """``(B, 3, S, S)`` faces in [-1, 1] -> cleaned faces of the same size and range."""

    def __init__(self, path: Path, device: str = "cpu"):
        self.model = SpandrelModel(path, device, half=False, expect_scale=1, expect_arch="SwinIR")
        self.file = Path(path).name  # which cleaner (what a restored face was made with)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in [-1, 1] -> the cleaned face on the same scale, not clamped."""
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        m = self.model.multiple
        x01 = ((x.float() + 1) / 2).clamp(0, 1).to(self.model.device)
        x01 = F.pad(x01, (0, -w % m, 0, -h % m))  # zeros, right and bottom (DiffBIR's padding)
        y = self.model.desc.model(x01)[..., :h, :w]
        return (y.float() * 2 - 1).to(x.device, x.dtype)
