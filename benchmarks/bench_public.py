"""Time the public-weights path with random weights of the real shapes: a DiffBIR-shaped LCA (no reference
branch) on the base, the SwinIR cleaner and the Real-ESRGAN x2 background upsampler (key layouts from
../shared/fixtures/spandrel). Prints Markdown for benchmarks/RESULTS.md; not a test.

    python benchmarks/bench_public.py --model mgfr-sd21 --device cuda          # one face, 50 steps; 12 MP x2
    python benchmarks/bench_public.py --model mgfr-tiny --device cpu --megapixels 0.5 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from helpers import FIXTURES, clip_tokenizer  # noqa: E402
from mgfr_cli.model.adapter import MgfrAdapter  # noqa: E402
from mgfr_cli.model.base import build_random_base  # noqa: E402
from mgfr_cli.model.cleaner import Cleaner  # noqa: E402
from mgfr_cli.faces.conditions import FaceConditions  # noqa: E402
from mgfr_cli.configs import load_model_config  # noqa: E402
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings  # noqa: E402
from mgfr_cli.model.upsampler import BackgroundUpsampler  # noqa: E402


def random_state(table: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for line in table.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        size = [int(x) for x in shape.split("x")] if shape else []
        out[key] = torch.zeros(size, dtype=getattr(torch, dtype)) if dtype.startswith("int") else torch.randn(size, generator=g) * 0.02
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mgfr-sd21")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50, help="DiffBIR's default")
    ap.add_argument("--megapixels", type=float, default=12.0, help="photo size for the background figure")
    args = ap.parse_args()
    dev = args.device
    dtype = torch.float16 if dev.startswith("cuda") else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="mgfr-bench-"))
    torch.save({"state_dict": random_state(FIXTURES / "spandrel" / "swinir_diffbir_keys.tsv")}, tmp / "swinir.ckpt")
    torch.save({"params_ema": random_state(FIXTURES / "spandrel" / "RealESRGAN_x2plus_keys.tsv")}, tmp / "x2.pth")
    cfg = load_model_config(args.model)
    torch.manual_seed(0)
    base = build_random_base(cfg, clip_tokenizer())
    lca = MgfrAdapter.from_unet(base.unet, use_reference=False, resolution=cfg.resolution)
    lca.register_to_config(source="diffbir-v2", stages_trained=[1])
    pipe = MgfrPipeline(base, lca, device=dev, dtype=dtype, cleaner=Cleaner(tmp / "swinir.ckpt", dev))
    up = BackgroundUpsampler(tmp / "x2.pth", 2, dev)
    face = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    settings = RestoreSettings(steps=args.steps, guidance_quality=pipe.profile.default_guidance)
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    print(f"# public path ({args.model}, DiffBIR-shaped LCA + SwinIR cleaner + Real-ESRGAN x2), {name}, {dtype}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| what | seconds | peak GiB |\n|---|---|---|")
    for label, fn in (
        ("warm-up face", lambda: pipe.restore([face], [FaceConditions()], settings)),
        (f"one 512 face, {args.steps} steps, guidance, cleaner", lambda: pipe.restore([face], [FaceConditions()], settings)),
        ("cleaner alone, one face", lambda: pipe.cleaner(pipe.to_tensor([face]))),
    ):
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(dev)
        start = time.perf_counter()
        fn()
        sync(dev)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else float("nan")
        print(f"| {label} | {time.perf_counter() - start:.2f} | {peak:.1f} |", flush=True)
    side = int((args.megapixels * 1e6) ** 0.5)
    photo = np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = up(photo, (2 * side, 2 * side))
    sync(dev)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else float("nan")
    print(f"| background x2 of a {side * side / 1e6:.1f} MP photo (tiled) -> {out.shape[1]}x{out.shape[0]} | "
          f"{time.perf_counter() - start:.2f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
