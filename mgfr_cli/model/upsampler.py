"""Image-to-image models loaded through spandrel (MIT), and the Real-ESRGAN background upsampler.

spandrel recognises an architecture from its state dict (SwinIR, ESRGAN/RRDBNet, ...) and builds it; we
only unwrap the usual checkpoint wrappers first (``params_ema``, ``state_dict``, ``module.``) and load
with ``weights_only=True``. Large photos are run in overlapping tiles blended with linear ramps, so memory
stays bounded whatever the photo's size (what GFPGAN and CodeFormer users expect of ``--bg-upsampler``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mgfr_cli.errors import WeightsError

UPSAMPLERS = {  # --bg-upsampler name -> (manifest entry, weight file in the model root, scale)
    "realesrgan-x2": ("realesrgan-x2", "RealESRGAN_x2plus.pth", 2),
    "realesrgan-x4": ("realesrgan-x4", "RealESRGAN_x4plus.pth", 4),
}


class SpandrelModel:
    """One spandrel image model: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``."""

    def __init__(self, path: Path, device: str = "cpu", half: bool = True, expect_scale: int | None = None,
                 expect_arch: str | None = None):
        from spandrel import ModelLoader, UnsupportedModelError

        from mgfr_cli.weights.convert import load_checkpoint

        state = load_checkpoint(path)  # a fresh dict: spandrel renames some keys of the dict it is given
        try:
            desc = ModelLoader(torch.device(device)).load_from_state_dict(state)
        except (UnsupportedModelError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsError(f"{path}: not an image model spandrel recognises ({str(exc).splitlines()[0]})") from None
        if expect_arch is not None and desc.architecture.id != expect_arch:
            raise WeightsError(f"{path}: is a {desc.architecture.id} model, expected {expect_arch}")
        if expect_scale is not None and desc.scale != expect_scale:
            raise WeightsError(f"{path}: upscales x{desc.scale}, expected x{expect_scale}")
        self.desc = desc.eval()
        self.device = torch.device(device)
        # fp16 on CUDA where the architecture allows it (spandrel knows: SwinIR does not), else fp32.
        self.dtype = torch.float16 if half and self.device.type == "cuda" and desc.supports_half else torch.float32
        self.desc.to(self.device, self.dtype)
        self.scale = int(desc.scale)
        self.multiple = int(desc.size_requirements.multiple_of or 1)
        self.minimum = int(desc.size_requirements.minimum or 1)
        self.name = desc.architecture.id

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The model on one padded-then-cropped batch (sides padded by reflection to what it accepts)."""
        h, w = x.shape[-2:]
        y = self.desc(self._pad(x).to(self.device, self.dtype)).float()
        return y[..., : h * self.scale, : w * self.scale].clamp(0, 1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Sides padded (reflection) up to the model's minimum and multiple."""
        h, w = x.shape[-2:]
        th = max(self.minimum, -(-h // self.multiple) * self.multiple)
        tw = max(self.minimum, -(-w // self.multiple) * self.multiple)
        pad = (0, tw - w, 0, th - h)
        if not any(pad):
            return x
        return F.pad(x, pad, mode="reflect" if min(h, w) > max(pad) else "replicate")

    @torch.no_grad()
    def run_tiled(self, x: torch.Tensor, tile: int = 512, overlap: int = 16, context: int = 32) -> torch.Tensor:
        """``run`` over ``tile`` x ``tile`` windows, each seen with ``context`` pixels of its surroundings
        and blended with its neighbours by linear ramps over ``overlap`` pixels (bounded memory)."""
        b, c, h0, w0 = x.shape
        if h0 <= tile and w0 <= tile:
            return self.run(x)
        # Pad the whole photo once, as ``run`` would, and keep every window on the model's size grid, so
        # tiles see exactly the borders the untiled run sees.
        m = self.multiple
        tile, overlap, context = (-(-v // m) * m for v in (tile, overlap, context))
        x = self._pad(x)
        h, w = x.shape[-2:]
        s = self.scale
        out = torch.zeros(b, c, h * s, w * s)
        weight = torch.zeros(1, 1, h * s, w * s)
        for y0 in _starts(h, tile, tile - overlap):
            for x0 in _starts(w, tile, tile - overlap):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                cy0, cx0 = max(y0 - context, 0), max(x0 - context, 0)
                cy1, cx1 = min(y1 + context, h), min(x1 + context, w)
                piece = self.run(x[..., cy0:cy1, cx0:cx1]).cpu()
                piece = piece[..., (y0 - cy0) * s : (y1 - cy0) * s, (x0 - cx0) * s : (x1 - cx0) * s]
                ramp = _ramp(y1 - y0, overlap * s, y0 > 0, y1 < h, s)[:, None] * \
                    _ramp(x1 - x0, overlap * s, x0 > 0, x1 < w, s)[None, :]
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] += piece * ramp
                weight[..., y0 * s : y1 * s, x0 * s : x1 * s] += ramp
        return (out / weight.clamp(min=1e-6))[..., : h0 * s, : w0 * s]


def _starts(n: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, max(n - tile, 0) + 1, step))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


def _ramp(n: int, overlap: int, fade_in: bool, fade_out: bool, scale: int) -> torch.Tensor:
    """Weights along one side of a tile: rising over the overlap where a neighbour precedes it, falling
    where one follows (never zero, so every output pixel has weight)."""
    length = n * scale
    r = torch.ones(length)
    k = min(overlap, length // 2)
    if k > 0:
        edge = (torch.arange(k, dtype=torch.float32) + 0.5) / k
        if fade_in:
            r[:k] = torch.minimum(r[:k], edge)
        if fade_out:
            r[-k:] = torch.minimum(r[-k:], edge.flip(0))
    return r


class BackgroundUpsampler:
    """Real-ESRGAN on the whole photo (8-bit RGB), then resized to exactly the ``--upscale`` size. ``chosen``: asked
    for by name (``--bg-upsampler realesrgan-x4``), so it cleans the background at every ``--upscale``, 1 included,
    as GFPGAN's and CodeFormer's do; chosen by ``auto`` it runs only where the photo is enlarged."""

    def __init__(self, path: Path, scale: int, device: str = "cpu", tile: int = 400, overlap: int = 16,
                 context: int = 32):
        self.model = SpandrelModel(path, device, expect_scale=scale, expect_arch="ESRGAN")
        self.tile, self.overlap, self.context = tile, overlap, context
        self.chosen = False  # set by whoever loads it for a named --bg-upsampler (``api.Restorer.load``)

    def applies(self, upscale: float) -> bool:
        return upscale > 1 or self.chosen

    def __call__(self, rgb8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``rgb8``: ``(H, W, 3)`` uint8; ``size``: the output ``(width, height)``."""
        import cv2

        x = torch.from_numpy(np.array(rgb8)).permute(2, 0, 1)[None].float() / 255.0
        y = self.model.run_tiled(x, self.tile, self.overlap, self.context)
        up = (y[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        if (up.shape[1], up.shape[0]) != tuple(size):
            shrink = up.shape[1] > size[0]
            up = cv2.resize(up, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        return up
