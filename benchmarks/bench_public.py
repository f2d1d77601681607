"""Time the public-weights path with random weights of the real shapes: a DiffBIR-shaped LCA (no reference
branch) on the base, the SwinIR cleaner and the Real-ESRGAN x2 background upsampler (key layouts from
tests/fixtures/spandrel), one face and a whole 12 MP photo ``--upscale 2``. A section of
benchmarks/gpu_check.py; alone (assets: ``PREPARE_ONLY=1 bash benchmarks/gpu_check.sh``):

    python benchmarks/bench_public.py --model mgfr-sd21 --device cuda
    python benchmarks/bench_public.py --model mgfr-tiny --device cpu --megapixels 0.05 --steps 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from bench_common import HERE, Run, face_crop  # also puts tests/ on the path
from helpers import clip_tokenizer
from mgfr_cli.app.batch import BatchRestorer, RestoreJob
from mgfr_cli.configs import load_model_config
from mgfr_cli.faces.conditions import ConditionSpec, FaceConditions
from mgfr_cli.faces.helper import FaceHelper
from mgfr_cli.model.adapter import MgfrAdapter
from mgfr_cli.model.base import build_random_base
from mgfr_cli.model.cleaner import Cleaner
from mgfr_cli.model.pipeline import DiffusionRestorer, MgfrPipeline, RestoreSettings
from mgfr_cli.model.upsampler import BackgroundUpsampler


def random_state(table: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for line in table.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        size = [int(x) for x in shape.split("x")] if shape else []
        out[key] = torch.zeros(size, dtype=getattr(torch, dtype)) if dtype.startswith("int") else torch.randn(size, generator=g) * 0.02
    return out


def public_path(run: Run, base, resolution: int, steps: int = 50) -> None:
    """One face at DiffBIR's defaults, the cleaner alone, the background alone, and a whole 12 MP photo."""
    torch.save({"state_dict": random_state(Path(run.args.assets) / "spandrel" / "swinir_diffbir_keys.tsv")},
               run.tmp / "swinir.ckpt")
    torch.save({"params_ema": random_state(Path(run.args.assets) / "spandrel" / "RealESRGAN_x2plus_keys.tsv")},
               run.tmp / "x2.pth")
    with torch.device(run.dev if run.cuda else "cpu"):
        lca = MgfrAdapter.from_unet(base.unet, use_reference=False, resolution=resolution)
    lca.register_to_config(source="diffbir-v2", stages_trained=[1])
    pub = MgfrPipeline(base, lca, device=run.dev, dtype=run.dtype, cleaner=Cleaner(run.tmp / "swinir.ckpt", run.dev))
    pub.optimize(channels_last=run.cuda)
    up = BackgroundUpsampler(run.tmp / "x2.pth", 2, run.dev)
    s = RestoreSettings(steps=steps, guidance_quality=pub.profile.default_guidance)
    face = [face_crop(0)]
    pub.restore(face, [FaceConditions()], s)
    run.say(f"DiffBIR-shaped LCA (no RCA) + SwinIR cleaner, DiffBIR's defaults ({s.steps} steps, guidance "
            f"{s.guidance_quality:g}); Real-ESRGAN x2 (tiled) for the background.\n")
    run.say("| what | s | peak GiB |\n|---|---|---|")
    run.reset_peak()
    sec, _ = run.timed(lambda: pub.restore(face, [FaceConditions()], s), repeat=3)
    run.say(f"| one 512 face, aligned crop, cleaner + {s.steps} steps | {sec:.2f} | {run.peak()} |")
    run.reset_peak()
    sec, _ = run.timed(lambda: pub.cleaner(pub.to_tensor(face)))
    run.say(f"| cleaner alone (SwinIR, one face) | {sec:.3f} | {run.peak()} |")
    img = cv2.imread(str(Path(run.args.assets) / "t1.jpg"))
    h, w = img.shape[:2]
    f = (run.args.megapixels * 1e6 / (h * w)) ** 0.5
    big = run.tmp / "big" / "group12mp.jpg"
    big.parent.mkdir()
    cv2.imwrite(str(big), cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 95])
    bh, bw = round(h * f), round(w * f)
    run.reset_peak()
    sec, _ = run.timed(lambda: up(np.zeros((bh, bw, 3), np.uint8), (2 * bw, 2 * bh)))
    run.say(f"| background alone: Real-ESRGAN x2 of {bw}x{bh} ({bw * bh / 1e6:.1f} MP) | {sec:.2f} | {run.peak()} |")
    helper = FaceHelper(Path(run.args.assets), "retinaface_mobile0.25", device=run.dev, use_parse=False)
    restorer = DiffusionRestorer(pub, s)
    run.reset_peak()
    sec, out = run.timed(lambda: BatchRestorer(helper, restorer, upsampler=up).run(RestoreJob(
        (str(big),), run.tmp / "bigout", ConditionSpec(), upscale=2.0, max_megapixels=100, ext="jpg", report=False)))
    o = out[0]
    run.say(f"| `mgfr restore` {bw}x{bh} group photo --upscale 2 (detect, {o.faces} faces, x2 background, paste, "
            f"write JPEG): {o.status} | {sec:.2f} | {run.peak()} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mgfr-sd21")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50, help="DiffBIR's default")
    ap.add_argument("--megapixels", type=float, default=12.0, help="photo size for the whole-photo figure")
    ap.add_argument("--assets", default=str(HERE / ".bench"), help="folder with t1.jpg, spandrel/ tables, the detector")
    ap.add_argument("--budget", type=float, default=3600.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Run(args)
    cfg = load_model_config(args.model)
    with torch.device(args.device if run.cuda else "cpu"):
        base = build_random_base(cfg, clip_tokenizer())
    public_path(run, base.to(args.device, run.dtype), cfg.resolution, args.steps)


if __name__ == "__main__":
    main()
