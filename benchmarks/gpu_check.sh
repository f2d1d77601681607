#!/usr/bin/env bash
# The GPU check, as one command (for a session lent a GPU machine through the `device` tool):
#   correctness of the fp16 CUDA path on the tiny config, then timings of the full-size architecture
#   with random weights, eager and compiled, batch 1/8/16/32. Prints Markdown for benchmarks/RESULTS.md.
# Then the public-weights path (DiffBIR-shaped LCA + SwinIR cleaner + Real-ESRGAN x2 on a 12 MP photo).
# The GPU machine has torch, transformers, accelerate, safetensors, opencv, onnxruntime but not diffusers,
# facexlib, insightface, spandrel, pydantic (if missing) or open_clip_torch (whose BPE vocabulary builds the CLIP tokenizer): carry them as
# wheels in .whl/ (see the device tool's README; open_clip also needs ftfy, wcwidth and timm, which may be
# missing there too) and this script installs them to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
else
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import sys, torch
sys.path.insert(0, "tests")
import numpy as np
from helpers import randomize_zero_paths, tiny_pipeline
from mgfr_cli.faces.conditions import FaceConditions
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings
crop = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
cond, settings = [FaceConditions("brown eyes")], RestoreSettings(steps=4)
p = tiny_pipeline()
randomize_zero_paths(p.adapter)
cpu = p.restore([crop], cond, settings).images[0]
out = MgfrPipeline(p.base, p.adapter, device="cuda", dtype=torch.float16).restore([crop], cond, settings).images[0]
print(f"tiny fp16 CUDA vs fp32 CPU: mean abs diff {np.abs(out.astype(int) - cpu.astype(int)).mean():.2f} (0-255)")
PY
python3 benchmarks/bench_restore.py --model mgfr-sd21 --device cuda --batch 1 8 16 32 --compile both --steps 30
python3 benchmarks/bench_public.py --model mgfr-sd21 --device cuda --steps 50 --megapixels 12
