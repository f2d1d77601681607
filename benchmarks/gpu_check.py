"""The GPU check in one process. Default: issue 23's sections (10-14: mgfr against DiffBIR's own pipeline on the
same card, identity guidance, video, the compiled step's profile; see bench_side_by_side.py). ``--sections 0 1 ..
9``: issue 13's (below). Issue 13's check so the full-size model is built once: fp16 correctness on the
tiny config, then speed and memory of the full-size architecture with random weights, the public-weights
path, the largest batch and the out-of-memory halving, torch.compile, and a profile. Sections run in order
of importance and are skipped once ``--budget`` seconds have passed; one that fails prints its error and the
next runs. Prints Markdown for benchmarks/RESULTS.md (also written to ``--out``). Not a test.

    python benchmarks/gpu_check.py --out gpu.md                               # on a GPU machine
    python benchmarks/gpu_check.py --model mgfr-tiny --device cpu --steps 3 --iters 1 --batches 1 2 \
        --e2e-batches 2 --oom-sizes 2 4 --megapixels 0.02 --profile-batches 1 2 \
        --sections 0 1 2 3 4 5 6 7 8 9                                        # a dry run of issue 13's paths (~2 min)
    python benchmarks/gpu_check.py --device cpu --tiny --model mgfr-tiny --diffbir ../shared/peers/diffbir-3f8b530 \
        --steps-sbs 2 --sbs-faces 1 2 --steps-guided 5 --video-seconds 1 --video-long 2 --profile-faces 2 \
        --iters 1 --budget 900                                                 # a dry run of issue 23's (~5 min)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench_common import HERE, Run, conditions, face_crop, steps_table  # also puts tests/ on the path
from bench_profile import layouts, stage_profile
from bench_public import public_path
from bench_side_by_side import (compiled_profile, identity_guidance, side_by_side_compiled, side_by_side_eager,
                                video)
from helpers import clip_tokenizer, randomize_zero_paths, tiny_pipeline
from mgfr_cli.app.batch import BatchRestorer, RestoreJob, restore_in_batches
from mgfr_cli.configs import load_model_config
from mgfr_cli.faces.conditions import ConditionSpec, FaceConditions
from mgfr_cli.faces.helper import FaceHelper
from mgfr_cli.model.adapter import MgfrAdapter
from mgfr_cli.model.base import build_random_base
from mgfr_cli.model.pipeline import DiffusionRestorer, MgfrPipeline, RestoreSettings



# -- 1. fp16 correctness on the tiny config --------------------------------------------------------
def tiny_checks(run: Run) -> None:
    crop = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    cond, settings = [FaceConditions("brown eyes")], RestoreSettings(steps=4)
    p = tiny_pipeline()
    randomize_zero_paths(p.adapter)
    cpu = p.restore([crop], cond, settings).images[0]
    half = MgfrPipeline(p.base, p.adapter, device=run.dev, dtype=run.dtype)
    out = half.restore([crop], cond, settings).images[0]
    diff = np.abs(out.astype(int) - cpu.astype(int))
    run.say(f"- tiny config, {run.dtype} on {run.dev} vs fp32 CPU, 4 steps: mean abs diff {diff.mean():.2f}, "
            f"99th percentile {np.percentile(diff, 99):.0f} (0-255)")
    # VAE overflow: latents large enough that the fp16 decoder overflows; the pipeline must redo it in fp32.
    z = torch.randn(2, 4, half.resolution // 8, half.resolution // 8, generator=torch.Generator().manual_seed(0))
    z = z * run.args.overflow_scale
    with torch.no_grad():
        raw = half.base.vae.decode(z.to(run.dev, half.dtype) / half.scaling).sample
        fixed = half.decode_latents(z.to(run.dev, half.dtype))
        after = half.base.vae.dtype  # the fallback must hand the VAE back in half precision
        vae32 = p.base.vae.float().to("cpu")
        ref = vae32.decode(z / half.scaling).sample.clamp(-1, 1)
    run.say(f"- VAE overflow, latents x{run.args.overflow_scale:g}: plain {half.dtype} decode has "
            f"{(~torch.isfinite(raw)).sum().item()} non-finite values; the pipeline's decode has "
            f"{(~torch.isfinite(fixed)).sum().item()}, max abs diff to an fp32 CPU decode "
            f"{(fixed.float().cpu() - ref).abs().max().item():.4f}; VAE dtype after it: {after}")


# -- 2. the full-size model -------------------------------------------------------------------------
def build(run: Run) -> MgfrPipeline:
    cfg = load_model_config(run.args.model)
    start = time.perf_counter()
    with torch.device(run.dev if run.cuda else "cpu"):  # random init on the GPU: minutes faster
        base = build_random_base(cfg, clip_tokenizer())
        adapter = MgfrAdapter.from_unet(base.unet, **cfg.adapter)
    randomize_zero_paths(adapter, scale=0.01)  # the reference/LQ paths then change the output, as trained ones do
    pipe = MgfrPipeline(base, adapter, device=run.dev, dtype=run.dtype).optimize(channels_last=run.cuda)
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    run.say(f"- {run.args.model}: UNet {n(base.unet):.0f} M, adapter {n(adapter):.0f} M, VAE {n(base.vae):.0f} M, "
            f"text {n(base.text_encoder):.0f} M parameters; built in {time.perf_counter() - start:.1f} s; "
            f"weights on the GPU {torch.cuda.memory_allocated() / 2**30 if run.cuda else 0:.2f} GiB")
    return pipe


def end_to_end(run: Run, pipe: MgfrPipeline, label: str = "eager") -> None:
    s = RestoreSettings(steps=run.args.steps)
    run.say(f"`pipe.restore` from aligned crops (cleaner none, VAE encode, {s.steps} steps, decode, colour fix); "
            "one reference per face. Median of 3 after a warm-up.\n")
    run.say("| path | faces | negative prompt | s total | s/face | peak GiB |\n|---|---|---|---|---|---|")
    for n, neg in [(1, False), (1, True)] + [(b, False) for b in run.args.e2e_batches]:
        crops, cond = [face_crop(i) for i in range(n)], conditions(n, negative=neg)
        pipe.restore(crops, cond, s)  # warm-up (also fills the reference and prompt caches)
        run.reset_peak()
        sec, _ = run.timed(lambda: pipe.restore(crops, cond, s), repeat=3 if n == 1 else 1)
        run.say(f"| {label} | {n} | {'yes' if neg else 'no'} | {sec:.2f} | {sec / n:.3f} | {run.peak()} |")


# -- 3. photos through the real batch path (detection, alignment, paste, write) ----------------------
def photos(run: Run, pipe: MgfrPipeline) -> None:
    import skimage.data

    root = Path(run.args.assets)
    helper = FaceHelper(root, "retinaface_mobile0.25", device=run.dev, use_parse=False)
    restorer = DiffusionRestorer(pipe, RestoreSettings(steps=run.args.steps))
    ref = run.tmp / "ref.png"
    cv2.imwrite(str(ref), skimage.data.astronaut()[:, :, ::-1])
    one = run.tmp / "astronaut.png"
    cv2.imwrite(str(one), skimage.data.astronaut()[:, :, ::-1])
    group = root / "t1.jpg"
    run.say(f"`BatchRestorer` as `mgfr restore PHOTO --ref ref.png --prompt 'brown eyes'` runs it: read, RetinaFace "
            f"mobilenet0.25 detection, alignment, {run.args.steps} steps, paste, write. After a warm-up photo.\n")
    run.say("| photo | faces | s | peak GiB |\n|---|---|---|---|")
    spec = ConditionSpec(prompt="brown eyes", refs=(ref,))
    BatchRestorer(helper, restorer).run(RestoreJob((str(one),), run.tmp / "warm", spec, report=False))
    for i, (label, path) in enumerate([("astronaut 512x512", one), ("group (insightface t1.jpg)", group)]):
        run.reset_peak()
        sec, out = run.timed(lambda: BatchRestorer(helper, restorer).run(
            RestoreJob((str(path),), run.tmp / f"out{i}", spec, batch_size=8, report=False)))
        faces = out[0].faces if out else 0
        run.say(f"| {label} | {faces} ({out[0].status if out else '?'}) | {sec:.2f} | {run.peak()} |")


# -- 4. memory: the largest batch, and the out-of-memory halving ---------------------------------------
def largest_batch(run: Run, pipe: MgfrPipeline) -> None:
    s = RestoreSettings(steps=1)
    run.say("One denoising step per size (the denoiser's memory does not grow with steps); VAE in chunks of 8.\n")
    run.say("| faces in one batch | fits | peak GiB | s (1 step) |\n|---|---|---|---|")
    first_oom = None
    for n in run.args.oom_sizes:
        if run.left() < 60:
            run.say(f"| {n} | not tried (budget) | | |")
            break
        crops, cond = [face_crop(0)] * n, conditions(n)
        run.reset_peak()
        try:
            sec, _ = run.timed(lambda: pipe.restore(crops, cond, s))
            run.say(f"| {n} | yes | {run.peak()} | {sec:.2f} |")
        except torch.OutOfMemoryError:
            run.say(f"| {n} | OOM | {run.peak()} | |")
            first_oom = n
            break
    if first_oom is None:
        return
    sizes = []
    restorer = DiffusionRestorer(pipe, s)
    real = restorer.restore
    restorer.restore = lambda c, k, sd: (sizes.append(len(c)), real(c, k, sd))[1]
    crops = [face_crop(0)] * first_oom
    torch.cuda.empty_cache()
    out = restore_in_batches(restorer, crops, conditions(first_oom), [0] * first_oom, batch_size=first_oom)
    run.say(f"\nOut-of-memory halving: {first_oom} faces asked for in one batch ran as chunks {sizes} "
            f"and returned {len(out)} faces.")


# -- 5. torch.compile (CUDA graphs) ---------------------------------------------------------------------
def compiled(run: Run, pipe: MgfrPipeline, batches) -> None:
    cp = MgfrPipeline(pipe.base, pipe.adapter, device=run.dev, dtype=run.dtype).optimize(compile=True)
    if 1 in batches:  # restore first: the step table below must then reuse its graph (no second compile)
        s = RestoreSettings(steps=run.args.steps)
        crop, cond = [face_crop(0)], conditions(1)
        start = time.perf_counter()
        cp.restore(crop, cond, s)
        warm = time.perf_counter() - start
        sec, _ = run.timed(lambda: cp.restore(crop, cond, s), repeat=3)
        run.say(f"Compiled, one face end to end ({s.steps} steps, guidance, one reference): {sec:.2f} s "
                f"(first call, compiling: {warm:.1f} s)\n")
    steps_table(run, cp, compiled=True, batches=batches, conds=(2,))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mgfr-sd21")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--e2e-batches", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--oom-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--overflow-scale", type=float, default=10000.0)
    ap.add_argument("--assets", default=str(HERE / ".bench"), help="folder with t1.jpg, spandrel/ tables, the detector")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped after it")
    ap.add_argument("--profile-batches", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--sections", nargs="*", default=["10", "11", "13", "12", "14"],
                    help="these sections, in this order (issue 13's: 0-9; issue 23's: 10-14, the default)")
    ap.add_argument("--diffbir", default=str(HERE / ".bench" / "diffbir"), help="DiffBIR's source folder")
    ap.add_argument("--tiny", action="store_true", help="issue 23's sections on small models (a dry run)")
    ap.add_argument("--steps-sbs", type=int, default=50, help="steps of the side-by-side (DiffBIR's face recipe)")
    ap.add_argument("--sbs-faces", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps-guided", type=int, default=50)
    ap.add_argument("--video-steps", type=int, default=4)
    ap.add_argument("--video-seconds", type=int, default=10)
    ap.add_argument("--video-long", type=int, default=60, help="seconds of the long clip (1 step: its memory)")
    ap.add_argument("--video-compiled", action="store_true")
    ap.add_argument("--profile-faces", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Run(args)
    name = torch.cuda.get_device_name() if run.cuda else "cpu"
    run.say(f"# mgfr GPU check: {name}, torch {torch.__version__}, {run.dtype}, random weights, "
            f"{time.strftime('%Y-%m-%d %H:%M')}")
    holder = {"build": lambda: holder["pipe"] if "pipe" in holder else holder.setdefault("pipe", build(run))}
    issue23 = {
        "10": ("mgfr against DiffBIR, same card, eager", side_by_side_eager, 0),
        "11": ("Identity guidance: guided against unguided steps", identity_guidance, 30),
        "12": ("Video: 720p clips", video, 60),
        "13": ("mgfr --compile against DiffBIR", side_by_side_compiled, 100),
        "14": ("The compiled step: time, profile, variants", compiled_profile, 60),
    }
    issue13 = {
        "0": ("fp16 correctness (tiny config)", lambda: tiny_checks(run), 0),
        "1": ("Guided denoiser step, eager", lambda: steps_table(run, holder["build"](), batches=args.batches), 0),
        "2": ("Faces end to end, eager", lambda: end_to_end(run, holder["build"]()), 40),
        "3": ("Where one face's time goes (eager)", lambda: stage_profile(run, holder["build"]()), 20),
        "9": ("Memory layout: channels_last or not (eager)", lambda: layouts(run, holder["build"]()), 20),
        "4": ("Photos through the batch path", lambda: photos(run, holder["build"]()), 30),
        "5": ("Public-weights path", lambda: public_path(run, holder["build"]().base, holder["build"]().resolution), 60),
        "6": ("Largest batch and out-of-memory halving", lambda: largest_batch(run, holder["build"]()), 60),
        "7": ("torch.compile (reduce-overhead), one face", lambda: compiled(run, holder["build"](), [1]), 120),
        "8": ("torch.compile, 16 faces", lambda: compiled(run, holder["build"](), [16]), 100),
    }
    for i in args.sections:
        if i in issue23:
            title, fn, needs = issue23[i]
            if i != "10" and "sbs" not in holder and i != "14":
                run.say(f"\n## {title}\n\nskipped: needs section 10's models")
                continue
            run.section(title, lambda: fn(run, holder), needs_s=needs)
        else:
            title, fn, needs = issue13[i]
            run.section(title, fn, needs_s=needs)
    run.say(f"\n(total {time.perf_counter() - run.t0:.0f} s)")


if __name__ == "__main__":
    main()
