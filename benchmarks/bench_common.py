"""What the GPU check's sections share: the run (output, time budget, timing, peak memory), test faces and
the step table. Not a test."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE / "benchmarks"))

from bench_restore import time_steps  # noqa: E402
from mgfr_cli.faces.conditions import FaceConditions  # noqa: E402
from mgfr_cli.faces.helper import AlignedFace  # noqa: E402
from mgfr_cli.model.pipeline import MgfrPipeline  # noqa: E402


class Run:
    def __init__(self, args):
        self.args, self.dev, self.t0 = args, args.device, time.perf_counter()
        self.cuda = args.device.startswith("cuda")
        self.dtype = torch.float16 if self.cuda else torch.float32
        self.out = open(args.out, "w") if args.out else None
        self.tmp = Path(tempfile.mkdtemp(prefix="mgfr-gpu-"))

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if self.cuda else "-"

    def timed(self, fn, repeat: int = 1) -> tuple[float, object]:
        """Median seconds of ``repeat`` calls (after the caller's warm-up) and the last result."""
        times, out = [], None
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), out

    def section(self, title: str, fn, needs_s: float = 0.0) -> None:
        self.say(f"\n## {title}  (t = {time.perf_counter() - self.t0:.0f} s)\n")
        if self.left() < needs_s:
            self.say(f"skipped: {self.left():.0f} s of the budget left, this needs about {needs_s:.0f} s")
            return
        try:
            fn()
        except Exception:  # a failed section is reported and the next one runs
            self.say("FAILED:\n```\n" + traceback.format_exc(limit=6) + "```")
        finally:
            if self.cuda:
                torch.cuda.empty_cache()


def face_crop(seed: int = 0) -> np.ndarray:
    import skimage.data

    img = skimage.data.astronaut()  # a real face fills the middle of this crop
    crop = cv2.resize(img[0:300, 110:410], (512, 512), interpolation=cv2.INTER_CUBIC)
    return np.roll(crop, seed * 7, axis=1)


def aligned(crop: np.ndarray) -> AlignedFace:
    return AlignedFace(crop, np.zeros((5, 2)), np.array([[1.0, 0, 0], [0, 1.0, 0]]), 0)


def steps_table(run: Run, pipe: MgfrPipeline, compiled: bool = False, batches=(1, 8, 16, 32), conds=(2, 3)) -> None:
    run.say("| compiled | conditions | faces | ms/step | ms/face-step | ms/UNet-sample | peak GiB |")
    run.say("|---|---|---|---|---|---|---|")
    for k in conds:
        for b in batches:
            run.reset_peak()
            start = time.perf_counter()
            try:
                ms = time_steps(pipe, b, 1, run.dev, run.args.iters, conds=k)
            except torch.OutOfMemoryError:
                run.say(f"| {compiled} | {k} | {b} | OOM | | | |")
                continue
            first = f" (first call incl. compile: {time.perf_counter() - start:.0f} s)" if compiled else ""
            run.say(f"| {compiled} | {k} | {b} | {ms:.1f} | {ms / b:.2f} | {ms / (b * k):.2f} | {run.peak()} |{first}")


def conditions(n: int, refs: bool = True, negative: bool = False) -> list[FaceConditions]:
    ref = (aligned(face_crop(99)),) if refs else ()
    return [FaceConditions("brown eyes", "blue eyes" if negative else None, ref) for _ in range(n)]
