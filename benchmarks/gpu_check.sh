#!/usr/bin/env bash
# Device check for the GPU backends (cuda, triton), run from the repository root on the
# GPU machine (no internet): build, GPU tests, benchmark.  Everything it prints goes to
# $OUT/gpu_check.log (default OUT=./out), beside the benchmarks' results
# (gpu-h200.json/.md, kernels-h200.json/.md) and workers.tar.gz, the JSON/markdown of the
# benchmark's child processes (their folders are removed): a handful of files in all.  The
# whole script ends within DCPE_CHECK_SECONDS (default 570): the benchmark gets what the
# build and the tests left; expected about 8 minutes in all.  The benchmark rewrites its
# JSON/markdown after every row, so a cut-short run still leaves the figures measured so
# far.  If the build with the CUDA sources fails, the extension is rebuilt without them, so
# that the triton backend is still tested and measured (the script then exits non-zero).
set -euo pipefail

# DCPE_CHECK_SHORT=1: a check for a few minutes of device time (each knob below still wins
# when set): 320 s in all, the matrix-free engine's GPU tests of its kernels, its set-aside,
# its shorter pair lists, its pair store, its chunks and overflowed lists, its scans from
# the Gram matrix, the labels at N = 65,536 under 4 GiB and its peak memory under budgets
# of the preflight's count (plus some bytes), the dense rounds chained on
# the device and their peak memory within such budgets (cuda; triton's rounds are covered
# by the labels the benchmark checks at N = 16,384 and the hand-over of the 4 GiB test),
# k-means on CUDA tensors against the host's labels, a shorter kernel benchmark
# (with the scans from differences and from the Gram matrix), then the dense size 16,384 (no
# Algorithm 1) and the rows past the dense matrix: every d = 8 row first (seconds each),
# the issue's figures before the other rows, and 262,144 x 256 last, with what is left
# (DCPE_CHECK_SHORT=2 gives it a call of its own).
if [ "${DCPE_CHECK_SHORT:-0}" = 1 ]; then
  : "${DCPE_CHECK_SECONDS:=320}" "${DCPE_CHECK_TESTS:=linear_gpu:80 cuda:30 baselines:30}"
  : "${DCPE_CHECK_DENSE:=0}"
  k="pair_average or setting_aside or shorter or pair_store or chunks or overflow or gram"
  : "${DCPE_CHECK_K:=$k or 4gib or peak or chained or kmeans_on_cuda}"
  : "${DCPE_CHECK_SCALE:=262144x8 262144x8@24GiB 1048576x8 131072x8@16GiB 524288x8 \
262144x8@16GiB 16384x8@256MiB 262144x256}" "${DCPE_CHECK_DENSE_SIZES:=16384}"
  : "${DCPE_CHECK_KERNELS:=20}"
  : "${DCPE_CHECK_KERNEL_ARGS:=--token-pairs 33554432 --repeats 2 --scan-clusters 32768}"
fi
# DCPE_CHECK_SHORT=2: a second call right after a short check, on the same machine, for
# 262,144 x 256 alone (the row a short check is most likely not to finish), with 400 s in
# all: no tests, no kernel benchmark, no dense sizes, and no build when dcpe's CUDA
# extension already imports (DCPE_CHECK_BUILD=auto; 1 always builds).
if [ "${DCPE_CHECK_SHORT:-0}" = 2 ]; then
  : "${DCPE_CHECK_SECONDS:=400}" "${DCPE_CHECK_TESTS:=none}" "${DCPE_CHECK_DENSE:=0}"
  : "${DCPE_CHECK_SCALE:=262144x256}" "${DCPE_CHECK_DENSE_SIZES:=}" "${DCPE_CHECK_KERNELS:=0}"
  : "${DCPE_CHECK_BUILD:=auto}"
fi

DEADLINE="${DCPE_CHECK_SECONDS:-570}"
OUT="${OUT:-./out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
BUILD_LOG="$(mktemp)"
trap 'rm -f "$BUILD_LOG"' EXIT
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
} 2>&1 | tee "$LOG"

build() {  # build() SECONDS [VAR=VALUE...]: editable install of dcpe, its output logged
  local limit=$1 rc=0
  shift
  : >"$BUILD_LOG"
  env "$@" timeout "$limit" "$PY" -m pip install --no-build-isolation --no-deps -e . \
    >"$BUILD_LOG" 2>&1 || rc=$?
  cat "$BUILD_LOG" >>"$LOG"
  return "$rc"
}
build_errors() {  # the compiler's and CMake's messages first, then the output's end
  grep -i -E "error|fatal" "$BUILD_LOG" | grep -v -E "^\s*(File|raise) " | head -25 || true
  tail -8 "$BUILD_LOG"
}
status=0
if [ "${DCPE_CHECK_BUILD:-1}" = auto ] && "$PY" -c "import sys, dcpe._C as C; \
sys.exit(0 if C.has_cuda else 1)" >/dev/null 2>&1; then
  echo "== build: none (dcpe's CUDA extension already imports)" | tee -a "$LOG"
else
  echo "== build" | tee -a "$LOG"
  if ! build 150; then
    build_errors | tee -a "$LOG"
    status=1
    echo "== build without the CUDA sources" | tee -a "$LOG"
    build 120 DCPE_SKIP_CUDA=1 || { build_errors | tee -a "$LOG"; exit 1; }
  fi
fi
"$PY" -c "import dcpe, dcpe._C as C; print('has_cuda', C.has_cuda); \
print(dcpe.backends.status())" 2>&1 | tee -a "$LOG"

# DCPE_CHECK_TESTS: the files and their seconds (default below); DCPE_CHECK_K: a pytest -k
# expression for all of them (a shorter check).  One pytest process per test file: a kernel
# fault that poisons the CUDA context of one process cannot fail the other files' tests.
# test_linear_gpu.py: the matrix-free engine (kernels of both backends against their
# references, labels at N = 65,536 under a 4 GiB budget against the cpu backend, and the
# device's peak memory within budgets of the preflight's count plus some bytes).
# test_baselines.py: its GPU tests only (k-means on CUDA tensors gives the host's labels,
# TF32 on or off); the others are the CPU suite's.
# DCPE_CHECK_TESTS=none: no tests.
tests="${DCPE_CHECK_TESTS:-triton:80 cuda:80 linear_gpu:110 baselines:40}"
[ "$tests" = none ] && tests=""
for t in $tests; do
  echo "== tests (${t%:*})" | tee -a "$LOG"
  marker=""
  [ "${t%:*}" = baselines ] && marker="-m gpu"
  timeout "${t#*:}" "$PY" -m pytest "tests/test_${t%:*}.py" $marker -q -rs --durations=10 \
    ${DCPE_CHECK_K:+-k "$DCPE_CHECK_K"} 2>&1 \
    | tee -a "$LOG" || status=$?
done

# The matrix-free engine's kernels alone (benchmarks/bench_kernels.py: token pairs and
# centroid pairs per second, tokens as rows against columns), for DCPE_CHECK_KERNELS
# seconds (default 60; 0 leaves it out), with DCPE_CHECK_KERNEL_ARGS.
kernels="${DCPE_CHECK_KERNELS:-60}"
if [ "$kernels" -gt 0 ]; then
  echo "== kernels (${kernels} s)" | tee -a "$LOG"
  # shellcheck disable=SC2086
  timeout $(( kernels + 30 )) "$PY" benchmarks/bench_kernels.py --out "$OUT" \
    --time-limit "$kernels" ${DCPE_CHECK_KERNEL_ARGS:-} 2>&1 | tee -a "$LOG" \
    || status=$?
fi

# --isolate: each backend's sizes in a child process of its own (same reason).
# The benchmark's own --time-limit is what is left before the deadline (at most 420 s).
elapsed=$SECONDS
left=$(( DEADLINE - elapsed - 20 ))
limit=$(( left < 420 ? left : 420 ))
echo "== benchmark (${limit} s after ${elapsed} s)" | tee -a "$LOG"
if [ "$limit" -lt 30 ]; then
  echo "no time left for the benchmark" | tee -a "$LOG"
  exit 1
fi
# The dense sizes, Algorithm 1 up to N = 8192 (its larger sizes are extrapolated), then the
# sizes past the dense matrix (--scale): d = 8 first (seconds each on an H200: 1,048,576 x 8
# took 6 s / 13 s), with the matrix-free engine at the dense sizes 16,384 and 131,072
# (forced by the limit, beside the dense rows of the same sizes above); 262,144 x 256 last,
# whose time is the hardest to predict (it did not finish in a worker's 184 s before the
# changes made for it), so that a run cut short loses it alone.
# DCPE_CHECK_DENSE=0 leaves out Algorithm 1 and the dense sizes but DCPE_CHECK_DENSE_SIZES
# (none by default); DCPE_CHECK_SCALE replaces the list of scale rows (a shorter check of the
# rows past the dense matrix).
dense=(--sizes 4096 16384 65536 131072 --torch-sizes 1024 2048 4096 8192)
# shellcheck disable=SC2206
[ "${DCPE_CHECK_DENSE:-1}" = 0 ] && dense=(--sizes ${DCPE_CHECK_DENSE_SIZES:-} \
  --providers cuda triton)
# shellcheck disable=SC2206
scale=(${DCPE_CHECK_SCALE:-262144x8 262144x8@24GiB 262144x8@16GiB 1048576x8 524288x8 \
  16384x8@256MiB 131072x8@16GiB 262144x256})
timeout $(( limit + 15 )) "$PY" benchmarks/bench_gpu.py --out "$OUT" --isolate \
  --time-limit "$limit" --budget 10 --repeats 3 "${dense[@]}" \
  --torch-budget 20 --torch-repeats 2 --scale "${scale[@]}" \
  --scale-cpu-dims 8 2>&1 | tee -a "$LOG" || status=$?
# the child processes' results (merged into gpu-h200.json/.md by the benchmark) in one
# archive, without their labels (.npy)
workers=()
for w in "$OUT"/worker-*/; do [ -d "$w" ] && workers+=("$(basename "$w")"); done
if [ "${#workers[@]}" -gt 0 ]; then
  (cd "$OUT" && find "${workers[@]}" -type f \( -name "*.json" -o -name "*.md" \) -print0 \
    | tar -czf workers.tar.gz --null -T -) && (cd "$OUT" && rm -rf "${workers[@]}")
fi
exit "$status"
