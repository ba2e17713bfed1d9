#!/usr/bin/env bash
# The prepared GPU check of the Triton backend (issue 14), for a machine with one CUDA GPU:
# a smoke test, the CUDA tests, then the CUDA benchmark. Each step is capped (timeout,
# 120 + 240 + 210 s) so that the whole script ends within 10 minutes.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # from the repository root; logs in OUT_DIR
#   bash benchmarks/gpu_check.sh --dry-run     # on a CPU: the same steps, tiny, in Triton's
#                                              # interpreter (checks the script, measures nothing;
#                                              # about 3 minutes on 2 cores)
#
# Every step runs even when an earlier one failed; the exit status is non-zero if any failed.
# Record the benchmark's tables (OUT_DIR/bench.txt) in benchmarks/README.md.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
    shift
fi
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
OUT_DIR="$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
status=0
: > "$OUT_DIR/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time cap, log to OUT_DIR/NAME.txt
    local name="$1" seconds="$2"
    shift 2
    echo "== $name (at most ${seconds}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$OUT_DIR/summary.txt"
    [[ $rc -eq 0 ]] || status=1
}

if [[ $DRY -eq 1 ]]; then
    export TRITON_INTERPRET=1
    step syntax 60 "$PY" -m py_compile src/deformconv/ops/_triton/*.py \
        benchmarks/bench_deform_conv.py benchmarks/bench_deform_conv_cuda.py
    # --small: the interpreter takes minutes per full-size conv call on 2 cores
    step smoke 300 env DEFORMCONV_BACKEND=triton "$PY" benchmarks/triton_smoke.py cpu --small
    step tests 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/ops/test_triton.py \
        -k "1x1 or no_rois or half_precision and DeformPSRoIPool"
    step bench 180 "$PY" benchmarks/bench_deform_conv.py --device cuda --dry-run
    cat "$OUT_DIR/summary.txt"
    exit $status
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT_DIR/environment.txt"
step smoke 120 "$PY" benchmarks/triton_smoke.py cuda
step tests 240 "$PY" -m pytest -q -p no:cacheprovider -n 4 --durations=10 \
    tests/ops/test_triton.py tests/ops/test_dispatch.py tests/ops/test_devices.py \
    tests/ops/test_roi_pool_devices.py tests/models/test_zoo_cuda.py
step bench 210 "$PY" benchmarks/bench_deform_conv.py --device cuda
cat "$OUT_DIR/summary.txt"
exit $status
