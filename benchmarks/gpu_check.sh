#!/usr/bin/env bash
# The GPU check, as one command (for a session lent a GPU machine through the `device` tool):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# runs benchmarks/gpu_check.py: fp16 correctness on the tiny config, then the full-size architecture with
# random weights (eager and compiled steps, faces and photos end to end, a profile, the public-weights path,
# the largest batch and the out-of-memory halving). Prints Markdown for benchmarks/RESULTS.md.
#
# Prepare here, before the call (the GPU machine reaches no network and gets only the repository):
#   - .bench/: the face detector and spandrel tables from tests/fixtures and insightface's t1.jpg group
#     photo; this script makes it when those are beside it, so run it once here with PREPARE_ONLY=1.
#   - .whl/: wheels of what the GPU image lacks (diffusers, facexlib, filterpy, spandrel, pydantic and
#     pydantic_core, annotated-types, typing-inspection, typing_extensions, importlib_metadata, open_clip_torch,
#     ftfy, wcwidth), for CPython 3.12 (see the device tool's README); installed to /tmp/site first.
# Carry both: run(command="bash benchmarks/gpu_check.sh $OUT", carry=[".whl", ".bench"]).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .bench/t1.jpg ]; then
  mkdir -p .bench
  cp tests/fixtures/detection_mobilenet0.25_Final.pth .bench/
  cp -r tests/fixtures/spandrel .bench/
  python3 -c "import insightface, pathlib, shutil; shutil.copy(pathlib.Path(insightface.__file__).parent / 'data/images/t1.jpg', '.bench/')"
fi
[ -n "${PREPARE_ONLY:-}" ] && exit 0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
else
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MGFR_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
out="${1:-.}"
python3 benchmarks/gpu_check.py --out "$out/gpu_check.md" --budget "${BUDGET:-420}" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_check.log"
