"""The cleaner: a 1x SwinIR that removes degradations before the VAE encode, as DiffBIR does (DESIGN.md §7).

DiffBIR's IRControlNet was trained on latents of cleaned faces, not of raw low-quality ones, so a converted
DiffBIR LCA restores from ``E(clean(LQ))`` and the colour fix targets the cleaned face. The SwinIR files
load through spandrel; spandrel's SwinIR refuses fp16, so the cleaner runs in fp32 (it is small next to
the diffusion model: a 512 face is 64x64 tokens after its pixel-unshuffle).
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

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.run(((x.float() + 1) / 2).to(self.model.device))
        return (y * 2 - 1).to(x.device, x.dtype)
