"""Video throughput and memory on the tiny models: frames per second and peak RSS for clips of two lengths.

    python benchmarks/bench_video.py --seconds 10 60

Each length runs in its own process (peak RSS is per process). Not a test: prints Markdown rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(seconds: int, steps: int) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import shutil

    import skimage.data

    from helpers import MOBILENET, tiny_adapter, tiny_base
    from test_video import FPS, make_clip
    from mgfr_cli.cli import main

    work = Path(tempfile.mkdtemp(prefix="mgfr-bench-video-"))
    root = work / "root"
    root.mkdir()
    shutil.copy(MOBILENET, root / MOBILENET.name)
    base = tiny_base()
    base.save(root / "sd21-base")
    tiny_adapter(base).save_pretrained(root / "mgfr-adapter")
    clip = make_clip(work / "clip.mp4", skimage.data.astronaut(), frames=seconds * FPS)
    start = time.perf_counter()
    sys.argv = ["mgfr", "restore", str(clip), "-o", str(work / "out"), "--model-root", str(root), "--steps", str(steps),
                "--detector", "retinaface_mobile0.25", "--device", "cpu"]
    try:
        main()
    except SystemExit:
        pass
    took = time.perf_counter() - start
    return {"seconds": seconds, "frames": seconds * FPS, "fps": seconds * FPS / took,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main_():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, nargs="+", default=[10, 60])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return
    print("| clip | frames | frames/s (restore, tiny models, CPU) | peak RSS |")
    print("|---|---|---|---|")
    for s in args.seconds:
        res = subprocess.run([sys.executable, __file__, "--one", str(s), "--steps", str(args.steps)],
                             capture_output=True, text=True, env={"MGFR_OFFLINE": "1", **__import__("os").environ})
        if res.returncode != 0 or not res.stdout.strip():
            sys.exit(res.stderr[-2000:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {s} s at 12 fps, 384x320, one face | {r['frames']} | {r['fps']:.1f} | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main_()
