#!/usr/bin/env bash
# Device check for the GPU backends (cuda, triton), run from the repository root on the
# GPU machine (no internet): build, GPU tests, benchmark.  Logs and results go to $OUT
# (default ./out).  Worst case 9.2 minutes (every stage at its timeout); expected about 5.
# The benchmark rewrites its JSON/markdown after every row, so a cut-short run still
# leaves the figures measured so far.
set -euo pipefail

OUT="${OUT:-./out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET || true
export DCPE_BUILD_JOBS="${DCPE_BUILD_JOBS:-16}"
export DCPE_CUDA_ARCHS="${DCPE_CUDA_ARCHS:-90}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"

{
  echo "== $(date -u +%FT%TZ) environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
} 2>&1 | tee "$OUT/env.log"

echo "== build" | tee "$OUT/build.log"
timeout 150 "$PY" -m pip install --no-build-isolation --no-deps -e . >>"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
"$PY" -c "import dcpe, dcpe._C as C; print('has_cuda', C.has_cuda); \
print(dcpe.backends.status())" 2>&1 | tee -a "$OUT/build.log"

# One pytest process per backend: a kernel fault that poisons the CUDA context of one
# process cannot fail the other backend's tests.
status=0
for t in triton cuda; do
  echo "== tests ($t)" | tee -a "$OUT/tests.log"
  timeout 70 "$PY" -m pytest "tests/test_$t.py" -q -rs --durations=10 2>&1 \
    | tee -a "$OUT/tests.log" || status=$?
done

# --isolate: each backend's sizes in a child process of its own (same reason).
echo "== benchmark" | tee "$OUT/bench.log"
timeout 260 "$PY" benchmarks/bench_gpu.py --out "$OUT" --isolate --time-limit 240 \
  --budget 15 --torch-budget 30 --torch-repeats 2 2>&1 | tee -a "$OUT/bench.log" \
  || status=$?
exit "$status"
