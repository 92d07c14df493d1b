#!/usr/bin/env bash
# GPU check (issue 15, item 3): on a bare CUDA host without network (the device tool's H200), install the carried
# wheels of scripts/gpu_wheels.sh and write one JSON, $OUT/gpu_check.json, with the versions, the bf16 relay
# numerics, tests/test_gpu.py -m gpu and the benchmark's GPU mode (ratio and fixed_budget). Logs go beside it.
#
#   bash scripts/gpu_wheels.sh            # first, here, where pip reaches the registry (-> .gpu_wheels/)
#   bash scripts/gpu_check.sh             # there: OUT is set by the device tool (default outputs/gpu_check)
#   bash scripts/gpu_check.sh --cpu-smoke # here: every part on the CPU, tiny sizes (plumbing only)
#
# Without a CUDA device it stops within seconds ("needs a CUDA GPU ..."), exit 2, after writing the JSON.
# Options (--budget-s, --bench-steps, ...): python3 scripts/gpu_check.py --help. docs/performance.md, "GPU check".
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$repo/outputs/gpu_check}"
mkdir -p "$out"
GPU_CHECK_T0="$(date +%s)"
export GPU_CHECK_T0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python="${GPU_CHECK_PYTHON:-python3}"
status=0
"$python" "$repo/scripts/gpu_check.py" --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log" || status=$?
exit "$status"
