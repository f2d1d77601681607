"""What identity guidance and the reference library cost: a guided denoising step against an unguided one
(one face and a batch), and a library search over N faces.

    python benchmarks/bench_identity.py --model mgfr-tiny --device cpu --batch 1 4
    python benchmarks/bench_identity.py --model mgfr-sd21 --device cuda --batch 1 16 --dtype fp16

Random weights of the config's shapes and facexlib's IR-SE50 (random). Not a test: prints Markdown rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import clip_tokenizer  # noqa: E402
from mgfr_cli.configs import load_model_config  # noqa: E402
from mgfr_cli.model.base import build_random_base  # noqa: E402
from mgfr_cli.model.identity_guidance import IdentityGuidance  # noqa: E402
from mgfr_cli.model.recogniser import Recogniser, build_backbone  # noqa: E402


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def guided_step(model: str, device: str, dtype, batches, iters: int = 3):
    base = build_random_base(load_model_config(model), clip_tokenizer()).to(device, dtype)
    rec = Recogniser(build_backbone()).to(device, dtype)
    from diffusers import DDPMScheduler

    abar = DDPMScheduler.from_config(base.scheduler_config).alphas_cumprod
    guide = IdentityGuidance(rec, base.vae, 0.18215, abar, strength=0.05)
    res = 512
    rows = []
    for b in batches:
        x = torch.randn(b, 4, res // 8, res // 8, device=device, dtype=dtype)
        refs = [[np.random.default_rng(i).integers(0, 255, (res, res, 3), dtype=np.uint8)] for i in range(b)]
        target = guide.target(refs, device)
        eps = torch.randn_like(x)
        t = torch.tensor(500)
        guide.adjust(x, t, eps, target)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            guide.adjust(x, t, eps, target)
        sync(device)
        ms = (time.perf_counter() - start) / iters * 1000
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        rows.append(f"| {model} | {device} | {b} | {ms:.0f} ms | {ms / b:.0f} ms | {peak:.2f} GiB |")
    return rows


def library_search(n: int, k: int = 3):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, 512)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    q = matrix[123] + 0.1 * rng.standard_normal(512).astype(np.float32)
    start = time.perf_counter()
    for _ in range(10):
        sims = matrix @ q
        np.argsort(-sims)[:k]
    return (time.perf_counter() - start) / 10 * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mgfr-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--library", type=int, default=100_000)
    args = ap.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    print("| model | device | faces | guidance per step (decode + recogniser, forward and backward) | per face | peak |")
    print("|---|---|---|---|---|---|")
    for row in guided_step(args.model, args.device, dtype, args.batch):
        print(row)
    print(f"\nlibrary search over {args.library:,} faces (512-d, numpy, top 3): {library_search(args.library):.1f} ms")


if __name__ == "__main__":
    main()
