#!/usr/bin/env bash
# The side-by-side GPU measurement (README, "Measured"), as one command on a lent GPU machine, under 5 minutes:
#   run with carry [".gpu_bench"]:  bash bench/gpu.sh
# .gpu_bench/ (git-ignored, prepared beforehand; the GPU machine reaches no network): official/ (rohban-lab/PatchGuard
# at af39835: git archive | tar), official_speed.py (from ../shared/tools), wheels/ (`pip download` here: what
# requirements.txt needs beyond the machine's torch, e.g. timm, onnx, onnxruntime, onnxscript, plus the official
# code's noise, opencv-python-headless, rich), mpdd/metal_plate (a copy of the class folder).
# Results: $OUT/gpu.json, written after each part.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/patchguard-gpu-bench}
B=.gpu_bench
if [ -d "$B/wheels" ]; then
  python -m pip install -q --no-index --find-links "$B/wheels" "$B"/wheels/*.whl || true
  python -m pip install -q --no-index --find-links "$B/wheels" -r requirements.txt || true
fi
OFFICIAL=()
if [ -d "$B/official" ] && [ -f "$B/official_speed.py" ]; then OFFICIAL=(--official "$B/official" --official_tool "$B/official_speed.py"); fi
DATA=../shared/data/mpdd; [ -d "$B/mpdd" ] && DATA=$B/mpdd
PYTHONUNBUFFERED=1 timeout 290 python bench/gpu.py --out "$OUT" --data "$DATA" "${OFFICIAL[@]}" "$@"
