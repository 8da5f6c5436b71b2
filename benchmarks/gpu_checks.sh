#!/usr/bin/env bash
# The CUDA port's checks on a real GPU, in two calls that each fit a 10-minute limit:
#
#   bash benchmarks/gpu_checks.sh checks    # CUDA tests, kernel benchmark, step time vs PyTorch
#   bash benchmarks/gpu_checks.sh quality   # gpu preset, 5000 iterations: val loss <= 1.48
#                                           # (quality --resume continues a run the limit cut)
#
# For a machine with an NVIDIA GPU, cupy, numba and tqdm (and torch for the step-time peer).
# Nothing is installed: the scripts import the checkout, and pytest.ini puts it on the path.
# The quality run needs tiny Shakespeare: $TINYSHAKESPEARE, else out/data/tinyshakespeare.txt
# (copy it there; out/ is ignored by git).
# Logs and the summary go to $OUT (when set) or out/gpu_checks. Each step
# has its own time limit, so one stuck step cannot take the whole call; the summary is printed last.
# The [emulated] tests are left out here: CI runs them on every machine.
set -u
cd "$(dirname "$0")/.."
LOG="${OUT:-out/gpu_checks}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
SUMMARY="$LOG/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, one summary line
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$LOG/$name.log")" | tee -a "$SUMMARY"
}

case "${1:-}" in
  checks)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv >"$LOG/gpu.txt" 2>&1
    "$PY" -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'])" >>"$LOG/gpu.txt" 2>&1
    cat "$LOG/gpu.txt"
    step tests 330 "$PY" -m pytest -q -p no:cacheprovider -k "not emulated" \
      tests/cuda/test_cuda_kernels.py tests/cuda/test_cuda_engine.py tests/engine/test_gradcheck_ops.py tests/model/test_model.py
    step kernel_bench 90 "$PY" benchmarks/cuda_kernels.py
    step train_bench 150 "$PY" benchmarks/gpu_train.py --iters 50
    echo "--- kernel benchmark ---"; tail -n 12 "$LOG/kernel_bench.log"
    echo "--- training step ---"; tail -n 4 "$LOG/train_bench.log"
    ;;
  quality)
    DATA="${TINYSHAKESPEARE:-out/data/tinyshakespeare.txt}"
    # checkpoints every 500 iterations: a run cut by the time limit continues with
    #   bash benchmarks/gpu_checks.sh quality --resume      (extra arguments go to the example;
    # on a machine that keeps nothing between starts, bring out/gpu_checks back first)
    shift
    step quality 570 "$PY" examples/shakespeare.py --device cuda --preset gpu --max-iters 5000 \
      --eval-every 500 --no-progress --data "$DATA" --out "$LOG/shakespeare-gpu" "$@"
    grep -E "val loss|ms/iter|step " "$LOG/quality.log" | tail -n 14
    ;;
  *)
    echo "usage: bash benchmarks/gpu_checks.sh checks|quality" >&2
    exit 2
    ;;
esac
echo "--- summary ($LOG/summary.txt) ---"
cat "$SUMMARY"
