"""Colour correction of the decoded face toward the input (docs/design.md §5, ours): wavelet, AdaIN or none.

Diffusion decoders drift in colour; the low-quality input still carries the right colours at low
frequency. Tensors are ``(B, 3, H, W)``; both corrections are linear in the image, so they give the same
result on the [-1, 1] or the [0, 1] scale (the pipeline uses [0, 1], as DiffBIR does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("wavelet", "adain", "none")


def adain(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each channel's mean and standard deviation to ``reference``'s."""
    mu_i, sd_i = image.mean((2, 3), keepdim=True), image.std((2, 3), keepdim=True) + 1e-5
    mu_r, sd_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return (image - mu_i) / sd_i * sd_r + mu_r


def _low_frequency(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The coarse part of a dilated (a trous) wavelet decomposition with a 3x3 binomial kernel."""
    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
    k = k.expand(x.shape[1], 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k, groups=x.shape[1], dilation=d)
    return x


def wavelet(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep the image's high frequencies, take the low frequencies (colour, shading) from ``reference``."""
    return image - _low_frequency(image) + _low_frequency(reference)


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    if method == "wavelet":
        return wavelet(image.float(), reference.float()).to(image.dtype)
    if method == "adain":
        return adain(image.float(), reference.float()).to(image.dtype)
    if method == "none":
        return image
    raise ValueError(f"unknown colour correction {method!r}; choose one of {', '.join(METHODS)}")


def to_uint8(x01: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """``[0, 1]`` images -> uint8 after one clamp: rounded, or truncated toward zero as DiffBIR does."""
    x = (x01.float() * 255).clamp(0, 255)
    return (x if truncate else x.round()).to(torch.uint8)
