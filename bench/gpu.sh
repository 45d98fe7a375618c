#!/usr/bin/env bash
# The side-by-side GPU measurement (README, "Measured"), as one command on a lent GPU machine, under 5 minutes:
#   run with carry [".gpu_bench"]:  bash bench/gpu.sh
# .gpu_bench/ (git-ignored, prepared beforehand): official/ (rohban-lab/PatchGuard at af39835: git archive | tar),
# official_speed.py (from ../shared/tools), wheels/ (noise, opencv-python-headless, rich and anything else the
# official code imports that the machine lacks), mpdd/metal_plate (a copy of the class folder).
# Results: $OUT/gpu.json, written after each part.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/patchguard-gpu-bench}
B=.gpu_bench
if [ -d "$B/wheels" ]; then python -m pip install -q --no-index --find-links "$B/wheels" "$B"/wheels/*.whl || true; fi
python -m pip install -q -r requirements.txt >/dev/null 2>&1 || true
OFFICIAL=()
if [ -d "$B/official" ] && [ -f "$B/official_speed.py" ]; then OFFICIAL=(--official "$B/official" --official_tool "$B/official_speed.py"); fi
DATA=../shared/data/mpdd; [ -d "$B/mpdd" ] && DATA=$B/mpdd
PYTHONUNBUFFERED=1 timeout 290 python bench/gpu.py --out "$OUT" --data "$DATA" "${OFFICIAL[@]}" "$@"
