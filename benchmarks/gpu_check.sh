#!/usr/bin/env bash
# The GPU session's one command (device tool, carry [".whl"], timeout_s 540), from the repo root:
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
# Installs the carried wheels (.whl/*.whl: onnx-graphsurgeon, see gpu_check.py's docstring) into
# /tmp/site, then runs benchmarks/gpu_check.py with its results in $OUT (./gpu_check_out without).
# GPU_TESTS=1 first runs the gpu-marked tests (at most 120 s, log in $OUT/pytest_gpu.log) and
# takes their time off gpu_check's budget, so the whole command still ends within ~8 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
budget=420
if [ "${GPU_TESTS:-0}" = 1 ]; then
  start=$(date +%s)
  timeout 120 python3 -m pytest -p no:cacheprovider -m gpu \
    tests/test_torch_cuda.py tests/test_latency.py >"$OUT/pytest_gpu.log" 2>&1
  echo "gpu tests: exit $? ($(tail -n 1 "$OUT/pytest_gpu.log"))"
  budget=$((budget - ($(date +%s) - start)))
fi
exec timeout $((budget + 80)) python3 benchmarks/gpu_check.py --out "$OUT" --budget-s "$budget" "$@"
