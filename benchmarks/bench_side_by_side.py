"""Issue 23's sections of the GPU check: mgfr against DiffBIR on the same card (eager and compiled), the cost of
identity guidance, video, and the compiled step's profile. Called by benchmarks/gpu_check.py; not a test."""

from __future__ import annotations

import importlib.util
import itertools
import time

import numpy as np
import torch

from bench_common import Run, aligned, face_crop, steps_table
from bench_diffbir import DiffBIR, levels, mgfr_from, mgfr_restore
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings


def gib_on_gpu(*modules) -> float:
    """Bytes of the modules' parameters and buffers on the GPU (to leave the other tool's weights out of a peak)."""
    tensors = itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules)
    return sum(t.numel() * t.element_size() for t in tensors if t.is_cuda) / 2**30


class SideBySide:
    """DiffBIR's models and mgfr's pipeline on the same tensors, both on the card; the table's rows."""

    def __init__(self, run: Run):
        self.run, a = run, run.args
        start = time.perf_counter()
        self.db = DiffBIR(a.diffbir, run.dev, tiny=a.tiny)
        self.pipe = mgfr_from(self.db, run.tmp / "root", run.dev, run.dtype).optimize(channels_last=run.cuda)
        self.faces = [face_crop(i) for i in range(max(a.sbs_faces))]
        self.rows, self.per_face = [], {}
        run.say(f"- DiffBIR ({a.diffbir}) built with random weights of the real shapes, mgfr loaded from the same "
                f"tensors through its converters, in {time.perf_counter() - start:.0f} s; "
                f"{a.steps_sbs} steps, spaced/ddpm sampler, CFG scale 4, one aligned 512 face (astronaut crops)")

    def _modules(self, tool: str) -> tuple:
        if tool == "DiffBIR":
            return self.db.cldm, self.db.cleaner
        p = self.pipe
        return p.base.unet, p.base.vae, p.base.text_encoder, p.adapter, p.cleaner.model.desc.model

    def _other(self, tool: str) -> float:
        """GiB of the *other* tool's weights on the card (in every peak, not this tool's)."""
        return gib_on_gpu(*self._modules("mgfr" if tool == "DiffBIR" else "DiffBIR"))

    def row(self, tool: str, precision: str, compiled: str, n: int, fn, repeat: int = 1) -> None:
        run = self.run
        fn()  # warm-up (first-call allocations, cuDNN choices, a compile)
        run.reset_peak()
        sec, _ = run.timed(fn, repeat=repeat)
        peak = torch.cuda.max_memory_allocated() / 2**30 - self._other(tool) if run.cuda else float("nan")
        self.per_face[(tool, precision, compiled, n)] = sec / n
        base = self.per_face.get(("DiffBIR", "fp16", "no", 1)) or self.per_face.get(("DiffBIR", "fp32", "no", 1))
        ratio = f"{base / (sec / n):.2f}x" if base else ""
        row = f"| {tool} | {precision} | {compiled} | {n} | {sec:.2f} | {sec / n:.3f} | {peak:.2f} | {ratio} |"
        self.rows.append(row)
        run.say(row)

    def diffbir(self, precision: str, n: int) -> None:
        if precision == "fp16" and self.db.cldm.unet.dtype != torch.float16:
            self.db.half()
        dt = torch.float16 if precision == "fp16" else torch.float32
        pipe, faces, steps = self.db.pipeline(), self.faces[:n], self.run.args.steps_sbs
        self.row("DiffBIR", precision, "no", n, lambda: [self.db.restore(pipe, f, steps, dt) for f in faces])

    def mgfr(self, n: int, compiled: str = "no") -> None:
        faces, steps = self.faces[:n], self.run.args.steps_sbs
        self.row("mgfr", "fp16" if self.run.cuda else "fp32", compiled, n, lambda: mgfr_restore(self.pipe, faces, steps),
                 repeat=3 if n == 1 else 1)

    def parity(self) -> None:
        """The same weights and noise: DiffBIR (its noise drawn from mgfr's CPU generator) against mgfr."""
        steps, face = self.run.args.steps_sbs, self.faces[0]
        dt = torch.float16 if self.db.cldm.unet.dtype == torch.float16 else torch.float32
        theirs = self.db.restore(self.db.pipeline(), face, steps, dt, noise_seed=231)
        ours = mgfr_restore(self.pipe, [face], steps, seed=231)[0]
        self.run.say(f"\nSame weights, same noise (seed 231), {steps} steps, DiffBIR {dt} autocast against mgfr "
                     f"{self.pipe.dtype}: {levels(ours, theirs)} (0-255).")


def fresh(pipe: MgfrPipeline, compile: bool = False) -> MgfrPipeline:
    """Another pipeline on the same models (eager, or compiled anew), as a new run of the command would have."""
    return MgfrPipeline(pipe.base, pipe.adapter, device=str(pipe.device), dtype=pipe.dtype,
                        cleaner=pipe.cleaner).optimize(compile=compile)


HEADER = ("| tool | precision | compiled | faces | s total | s/face | peak GiB (own) "
          "| speed vs DiffBIR 1 face fp16 (CPU: fp32) |\n|---|---|---|---|---|---|---|---|")


def side_by_side_eager(run: Run, holder: dict) -> None:
    sbs = holder["sbs"] = SideBySide(run)
    run.say("DiffBIR restores one face at a time (its loop runs one image per call); mgfr batches the faces. "
            "Peak memory: the tool's own (the other tool's weights, resident on the card, subtracted). Speed: "
            "DiffBIR fp16 one face's seconds per face over the row's.\n")
    run.say(HEADER)
    half = "fp16" if run.cuda else "fp32"  # a CPU (the dry run) has no fast fp16: its DiffBIR rows stay fp32
    sbs.diffbir("fp32", 1)
    if run.cuda:  # DiffBIR's fp32 rows before its models are cast to fp16 (in place, as its loader does)
        if run.left() > 300:
            sbs.diffbir("fp32", max(run.args.sbs_faces))
        sbs.diffbir("fp16", 1)
    for n in run.args.sbs_faces:
        sbs.mgfr(n)
    for n in run.args.sbs_faces[1:]:
        sbs.diffbir(half, n)
    sbs.parity()


def side_by_side_compiled(run: Run, holder: dict) -> None:
    sbs = holder["sbs"]
    sbs.pipe.optimize(compile=True)
    run.say(HEADER)
    for n in sorted(run.args.sbs_faces, reverse=True):  # the batch of many first: it is what --compile is for
        if run.left() < 100:
            run.say(f"| mgfr | | yes | {n} | not measured (budget) | | | |")
            continue
        start = time.perf_counter()
        sbs.mgfr(n, compiled="yes")
        run.say(f"(first call, compiling for {n} faces, included in the section: {time.perf_counter() - start:.0f} s)")
    run.say("\nAll rows of both tables:\n\n" + HEADER + "\n" + "\n".join(sbs.rows))


def identity_guidance(run: Run, holder: dict) -> None:
    """Seconds per guided step against unguided: restores with and without identity guidance, the difference
    spread over the steps inside the guidance window; full VAE decoder with gradient, facexlib's IR-SE50."""
    from mgfr_cli.model.recogniser import Recogniser, build_backbone
    from mgfr_cli.model.sampling import spaced_timesteps

    sbs = holder["sbs"]
    pipe = fresh(sbs.pipe)
    pipe.recogniser = Recogniser(build_backbone()).to(run.dev, run.dtype).eval()
    steps = run.args.steps_guided
    window = sum(0.2 <= t / 999 <= 0.8 for t in spaced_timesteps(steps))
    run.say(f"{steps} ddpm steps of which {window} inside the window (t/T 0.2-0.8) are guided; one reference per "
            f"face; eager.\n")
    run.say("| faces | s unguided | s guided | ms per guided step, extra | per face | peak GiB guided |\n"
            "|---|---|---|---|---|---|")
    ref = (aligned(face_crop(99)),)
    for n in run.args.sbs_faces:
        faces, cond = sbs.faces[:n], [FaceConditions(references=ref) for _ in range(n)]
        times = {}
        for g in (0.0, 0.05):
            s = RestoreSettings(steps=steps, scheduler="ddpm", guidance_quality=3.0, identity_guidance=g)
            pipe.restore(faces, cond, s)
            run.reset_peak()
            times[g], _ = run.timed(lambda: pipe.restore(faces, cond, s), repeat=3 if n == 1 else 1)
        extra = (times[0.05] - times[0.0]) / max(window, 1) * 1000
        run.say(f"| {n} | {times[0.0]:.2f} | {times[0.05]:.2f} | {extra:.0f} | {extra / n:.0f} | {run.peak()} |")


def video(run: Run, holder: dict) -> None:
    """Frames per second of `mgfr restore clip.mp4` (decode, detection, tracking, restore, paste, encode) for 720p
    clips with one and four faces; GPU peak and process RSS for a short and a long clip."""
    import resource

    from mgfr_cli.app.batch import BatchRestorer, RestoreJob
    from mgfr_cli.faces.helper import FaceHelper
    from mgfr_cli.model.pipeline import DiffusionRestorer

    sbs, a = holder["sbs"], run.args
    if importlib.util.find_spec("av") is None:
        run.say("skipped: PyAV is not installed here (carry its wheel: benchmarks/gpu_check.sh says how)")
        return
    helper = FaceHelper(a.assets, "retinaface_mobile0.25", device=run.dev, use_parse=False)
    run.say(f"720p H.264 clips at 25 fps made here (astronaut faces moving), {a.video_steps} ddpm steps per face "
            f"(fps scales about inversely with steps), 8-frame windows, RetinaFace mobilenet0.25.\n")
    run.say("| clip | faces/frame | frames | compiled | frames/s | GPU peak GiB (this clip) | process peak RSS MB |\n"
            "|---|---|---|---|---|---|---|")
    settings = RestoreSettings(steps=a.video_steps, scheduler="ddpm", guidance_quality=3.0)
    plan = [(a.video_seconds, 1, "no"), (a.video_seconds, 4, "no"), (a.video_long, 1, "no")]  # the long one: 1 step
    if run.cuda and a.video_compiled:
        plan.append((a.video_seconds, 1, "yes"))
    for i, (seconds, faces, compiled) in enumerate(plan):
        if run.left() < 30 + seconds * 25 / 10:
            run.say(f"| {seconds} s | {faces} | | {compiled} | not measured (budget) | | |")
            continue
        clip = make_720p(run.tmp / f"clip{i}.mp4", seconds, faces)
        pipe = fresh(sbs.pipe, compile=compiled == "yes")
        s = settings if seconds == a.video_seconds else RestoreSettings(steps=1, scheduler="ddpm", guidance_quality=3.0)
        restorer = DiffusionRestorer(pipe, s, pad_to=8 * faces if compiled == "yes" else 0)
        run.reset_peak()
        sec, out = run.timed(lambda: BatchRestorer(helper, restorer).run(
            RestoreJob((str(clip),), run.tmp / f"video{i}", batch_size=8 * faces, report=False)))
        status = out[0].status if out else "?"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run.say(f"| {seconds} s ({status}, {s.steps} steps) | {faces} | {seconds * 25} | {compiled} | "
                f"{seconds * 25 / sec:.2f} | {run.peak()} | {rss:.0f} |")


def make_720p(path, seconds: int, faces: int, fps: int = 25):
    import av
    import cv2
    import skimage.data

    face = np.ascontiguousarray(skimage.data.astronaut()[10:250, 110:350])
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = 1280, 720, "yuv420p"
    for i in range(seconds * fps):
        canvas = np.full((720, 1280, 3), 110, np.uint8)
        k = (i % 50) if (i // 50) % 2 == 0 else 49 - i % 50  # back and forth
        f = cv2.resize(face, None, fx=1.2 + 0.004 * k, fy=1.2 + 0.004 * k)
        for j in range(faces):
            x, y = 20 + 310 * j + 2 * k, 150 + k
            canvas[y: y + f.shape[0], x: x + f.shape[1]] = f[: 720 - y, : 1280 - x]
        out.mux(v.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
    out.mux(v.encode(None))
    out.close()
    return path


def compiled_profile(run: Run, holder: dict) -> None:
    """The compiled MGFR step (LCA + RCA, mgfr-sd21) at 16 faces: its time and its kernels as compiled, after the
    eager step's kernels; then the variant the profile of issue 13 pointed at (attention: fused QKV projections)."""
    from bench_profile import kernels

    pipe, b = holder["build"](), run.args.profile_faces  # the full-size MGFR model of gpu_check.build
    run.say("Eager, for comparison:")
    kernels(run, pipe, b)
    for label, fuse in [("reduce-overhead (CUDA graphs), as --compile", False),
                        ("fused QKV projections (diffusers' fuse_qkv_projections), then reduce-overhead", True)]:
        if run.left() < 110:
            run.say(f"\n{label}: not measured (budget)")
            continue
        if fuse:
            run.say("\n" + fuse_qkv(pipe))
        cp = MgfrPipeline(pipe.base, pipe.adapter, device=run.dev, dtype=run.dtype).optimize(compile=True)
        run.say(f"\n{label}:\n")
        steps_table(run, cp, compiled=True, batches=[b], conds=(2,))
        run.say("\nIts kernels (CUDA-graph replays, as the profiler records them):")
        kernels(run, cp, b, label="compiled")


def fuse_qkv(pipe: MgfrPipeline) -> str:
    done = []
    for name, m in (("UNet", pipe.base.unet), ("adapter", pipe.adapter)):
        try:
            m.fuse_qkv_projections()
            done.append(f"{name}: fused")
        except Exception as exc:  # a module without it, or attention it cannot fuse: said, the rest goes on
            done.append(f"{name}: not fused ({type(exc).__name__}: {str(exc)[:80]})")
    return "; ".join(done)
