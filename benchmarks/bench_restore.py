"""Time the MGFR restorer with random weights: ms per denoising step, per sample-step, per face, and
faces per second end to end (detection + alignment + restore + paste), with peak GPU memory.

    python benchmarks/bench_restore.py --model mgfr-sd21 --device cuda --batch 1 8 16 32 --compile both
    python benchmarks/bench_restore.py --model mgfr-tiny --device cpu --batch 1 4

Not a test: it prints a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import clip_tokenizer  # noqa: E402  (a real CLIP tokenizer from the vocabulary open_clip ships)
from mgfr_cli.model.adapter import MgfrAdapter  # noqa: E402
from mgfr_cli.model.base import build_random_base  # noqa: E402
from mgfr_cli.faces.conditions import FaceConditions  # noqa: E402
from mgfr_cli.configs import load_model_config  # noqa: E402
from mgfr_cli.faces.helper import AlignedFace, FaceHelper  # noqa: E402
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings  # noqa: E402


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(pipe, batch, refs, device, iters, conds=2):
    """ms for one guided denoiser call: ``conds`` x batch through adapter + UNet (2: positive and
    negative-quality; 3: and the negative-attribute prompt)."""
    r = pipe.resolution // 8
    dt = pipe.dtype
    x = torch.randn(batch, 4, r, r, device=device, dtype=dt)
    text = torch.randn(conds * batch, 77, pipe.base.unet.config.cross_attention_dim, device=device, dtype=dt)
    z_lq = torch.randn(conds * batch, 4, r, r, device=device, dtype=dt)
    ref = None
    # identity tokens only where the pipeline has ArcFace, as in restore (the compiled graph's shapes match)
    ids = torch.randn(batch, refs, 512, device=device, dtype=dt) if pipe.identity is not None else None
    if refs:
        with torch.no_grad():
            ref = pipe.adapter.prepare_reference(z_lq[:batch], torch.randn(batch, refs, 4, r, r, device=device, dtype=dt),
                                                 ids, text[:batch]).repeat(conds)
    w_na = torch.full((batch, 1, 1, 1), 2.0 if conds == 3 else 0.0, device=device, dtype=dt)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        for _ in range(3):
            pipe._predict_fn(x, t, text, z_lq, ref, 4.0, w_na)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            pipe._predict_fn(x, t, text, z_lq, ref, 4.0, w_na)
        sync(device)
    return (time.perf_counter() - start) / iters * 1000


def time_faces(pipe, helper, photo, batch, steps, device):
    """Seconds for restoring ``batch`` faces end to end: detection + alignment + restore + paste."""
    settings = RestoreSettings(steps=steps)
    sync(device)
    start = time.perf_counter()
    faces = []
    while len(faces) < batch:
        if helper.detector is not None:
            helper.detect(photo)  # detection cost (random weights find nothing: the crop below stands in)
        faces.append(AlignedFace(photo[:512, :512].copy(), np.zeros((5, 2)), np.array([[1.0, 0, 0], [0, 1.0, 0]]), 0))
    out = pipe.restore([f.crop for f in faces], [FaceConditions("brown eyes")] * batch, settings).images
    helper.paste(photo, faces, out)
    sync(device)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mgfr-sd21")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp16 | bf16 | fp32 (default fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--refs", type=int, default=1, help="references per face (0: stage-1 path)")
    ap.add_argument("--steps", type=int, default=30, help="denoising steps for the end-to-end figure")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--detector-root", default=None, help="model root with real RetinaFace weights (else no detection)")
    ap.add_argument("--detector", default="retinaface_resnet50")
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")]
    cfg = load_model_config(args.model)
    torch.manual_seed(0)
    base = build_random_base(cfg, clip_tokenizer())
    adapter = MgfrAdapter.from_unet(base.unet, **cfg.adapter)
    photo = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    # Detection needs real weights to be timed fairly (random ones "find" thousands of boxes for NMS):
    # with --detector-root it runs on the photo once per face; without it, e2e excludes detection.
    if args.detector_root:
        helper = FaceHelper(Path(args.detector_root), args.detector, device=args.device, use_parse=False)
        import skimage.data

        photo = np.ascontiguousarray(np.pad(skimage.data.astronaut(), ((0, 512), (0, 512), (0, 0)), mode="edge"))
    else:
        helper = FaceHelper(Path("."), None, device=args.device, use_parse=False)
    print(f"# {args.model}, {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or platform.machine()}), "
          f"{dtype}, torch {torch.__version__}, refs/face {args.refs}, "
          f"e2e {'with ' + args.detector if args.detector_root else 'without detection'}, {time.strftime('%Y-%m-%d')}")
    print("| compiled | batch | ms/step | ms/sample-step | face e2e s (steps) | faces/s e2e | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for compiled in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
        pipe = MgfrPipeline(base, adapter, device=args.device, dtype=dtype)
        pipe.optimize(compile=compiled, channels_last=args.device.startswith("cuda"))
        for b in args.batch:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            try:
                ms = time_steps(pipe, b, args.refs, args.device, args.iters)
                e2e = float("nan") if args.no_e2e else time_faces(pipe, helper, photo, b, args.steps, args.device)
            except torch.OutOfMemoryError:
                print(f"| {compiled} | {b} | OOM | | | | |")
                torch.cuda.empty_cache()
                continue
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
            print(f"| {compiled} | {b} | {ms:.1f} | {ms / b:.2f} | {e2e / b:.2f} ({args.steps}) | {b / e2e:.2f} | {peak:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
