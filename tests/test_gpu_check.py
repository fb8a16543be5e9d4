"""``benchmarks/gpu_check.sh``, the one script run on a lent GPU machine: its control flow.

The script is run with a stand-in for Python (``PYTHON``) that records each call and
answers at once, so the stages' order, the fallback build without the CUDA sources, the
exit status and the benchmark's share of the time limit are checked here, in a second,
without building or a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

if shutil.which("bash") is None or shutil.which("timeout") is None:
    pytest.skip("needs bash and timeout", allow_module_level=True)

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python: logs the call (with DCPE_SKIP_CUDA) and plays the part asked for
echo "skip_cuda=${DCPE_SKIP_CUDA:-} $*" >> "$FAKE_LOG"
case "$*" in
  "-c import sys, dcpe._C"*)  # is the CUDA extension built?
    if [ -n "${FAKE_NO_EXT:-}" ]; then exit 1; fi ;;
  "benchmarks/bench_gpu.py"*)  # a child process's files, as the benchmark leaves them
    mkdir -p "$OUT/worker-cuda-scale"
    echo "{}" > "$OUT/worker-cuda-scale/worker.json"
    echo "| row |" > "$OUT/worker-cuda-scale/worker.md"
    echo "labels" > "$OUT/worker-cuda-scale/labels-cuda-scale-262144x8.npy" ;;
  "-m pip install"*)
    if [ -n "${FAKE_BUILD_FAILS:-}" ] && { [ -z "${DCPE_SKIP_CUDA:-}" ] ||
        [ "$FAKE_BUILD_FAILS" = always ]; }; then
      echo "nvcc fatal   : something the compiler said"; exit 1
    fi ;;
  "-m pytest"*)
    if [ -n "${FAKE_TESTS_FAIL:-}" ]; then echo "1 failed"; exit 1; fi
    echo "1 passed" ;;
esac
exit 0
"""


def run_check(tmp_path: Path, **env: str) -> tuple[int, str, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DCPE_", "FAKE_"))}
    full_env.update(PYTHON=str(fake), OUT=str(tmp_path / "out"), FAKE_LOG=str(log), **env)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, log.read_text().splitlines()


def stages(calls: list[str]) -> list[str]:
    names = []
    for call in calls:
        words = call.split()
        if words[1:4] == ["-m", "pip", "install"]:
            names.append("build-no-cuda" if words[0] == "skip_cuda=1" else "build")
        elif words[1:3] == ["-m", "pytest"]:
            names.append("test-" + words[3].removeprefix("tests/test_").removesuffix(".py"))
        elif words[1] == "benchmarks/bench_gpu.py":
            names.append("bench")
        elif words[1] == "benchmarks/bench_kernels.py":
            names.append("kernels")
    return names


def time_limit(calls: list[str]) -> float:
    (bench,) = [c for c in calls if "bench_gpu.py" in c]
    words = bench.split()
    return float(words[words.index("--time-limit") + 1])


def elapsed_before_bench(out: str) -> int:
    """The seconds the script says had gone by when the benchmark started."""
    (line,) = [ln for ln in out.splitlines() if ln.startswith("== benchmark (")]
    return int(line.split(" after ")[1].split(" s)")[0])


def test_all_stages_in_order(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path)
    assert rc == 0, out
    assert stages(calls) == ["build", "test-triton", "test-cuda", "test-linear_gpu",
                             "test-baselines", "kernels", "bench"]
    assert time_limit(calls) == 420
    (kernels,) = [c for c in calls if "bench_kernels.py" in c]
    assert kernels.split("--time-limit ")[1].split()[0] == "60"
    assert "--isolate" in [c for c in calls if "bench_gpu.py" in c][0]
    # one log of every stage; the child processes' results in one archive, no labels
    out_dir = tmp_path / "out"
    assert sorted(p.name for p in out_dir.iterdir()) == ["gpu_check.log", "workers.tar.gz"]
    log = (out_dir / "gpu_check.log").read_text()
    for section in ("environment", "== build", "== tests (triton)", "== tests (linear_gpu)",
                    "== kernels (60 s)", "== benchmark ("):
        assert section in log, section
    with tarfile.open(out_dir / "workers.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["worker-cuda-scale/worker.json",
                                          "worker-cuda-scale/worker.md"]


def test_failed_cuda_build_falls_back_and_still_measures_triton(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path, FAKE_BUILD_FAILS="cuda")
    assert rc == 1
    assert stages(calls) == ["build", "build-no-cuda", "test-triton", "test-cuda",
                             "test-linear_gpu", "test-baselines", "kernels", "bench"]
    assert "nvcc fatal" in out  # the compiler's message is shown, not only the log's end
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "nvcc fatal" in log and "== build without the CUDA sources" in log


def test_failed_build_stops_before_tests(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path, FAKE_BUILD_FAILS="always")
    assert rc == 1
    assert stages(calls) == ["build", "build-no-cuda"]


def test_failed_tests_fail_the_check_but_the_benchmark_runs(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path, FAKE_TESTS_FAIL="1")
    assert rc != 0
    assert stages(calls) == ["build", "test-triton", "test-cuda", "test-linear_gpu",
                             "test-baselines", "kernels", "bench"]


@pytest.mark.parametrize("deadline,expected", [(100, 80), (400, 380), (600, 420)])
def test_benchmark_gets_the_time_left_before_the_deadline(tmp_path: Path, deadline: int,
                                                          expected: int) -> None:
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SECONDS=str(deadline))
    assert rc == 0, out
    # what is left of the deadline when the benchmark starts, less 20 s, at most 420 s
    assert time_limit(calls) == min(deadline - elapsed_before_bench(out) - 20, 420)
    assert time_limit(calls) <= expected


def test_no_benchmark_without_time_for_it(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SECONDS="40")
    assert rc == 1
    assert "bench" not in stages(calls)
    assert "no time left for the benchmark" in out


def test_short_check_for_a_few_minutes(tmp_path: Path) -> None:
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SHORT="1")
    assert rc == 0, out
    assert stages(calls) == ["build", "test-linear_gpu", "test-cuda", "test-baselines",
                             "kernels", "bench"]
    tests = [c for c in calls if "-m pytest" in c]
    assert [t.split("tests/")[1].split()[0] for t in tests] == ["test_linear_gpu.py",
                                                                "test_cuda.py",
                                                                "test_baselines.py"]
    for test in tests:
        assert "-k pair_average or setting_aside" in test
        assert test.rstrip().endswith("4gib or peak or chained or kmeans_on_cuda")
    # the baselines' GPU tests only
    assert [("-m gpu" in t) for t in tests] == [False, False, True]
    (kernels,) = [c for c in calls if "bench_kernels.py" in c]
    assert "--time-limit 20 --token-pairs 33554432" in kernels
    # the short deadline (320 s), not the default 570
    assert time_limit(calls) == 320 - elapsed_before_bench(out) - 20
    (bench,) = [c for c in calls if "bench_gpu.py" in c]
    scale = bench.split("--scale ")[1].split(" --")[0].split()
    # every row past the dense matrix, the d = 8 ones first and 262,144 x 256 last
    assert scale[-1] == "262144x256" and all(s.split("@")[0].endswith("x8") for s in scale[:-1])
    assert {"262144x8", "262144x8@24GiB", "1048576x8", "131072x8@16GiB", "524288x8",
            "262144x8@16GiB", "16384x8@256MiB"} == set(scale[:-1])
    assert "--sizes 16384 --providers cuda triton" in bench
    assert "--torch-sizes" not in bench
    # no kernel benchmark when asked for none
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SHORT="1", DCPE_CHECK_KERNELS="0")
    assert stages(calls) == ["build", "test-linear_gpu", "test-cuda", "test-baselines",
                             "bench"]
    # a knob set by hand still wins
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SHORT="1", DCPE_CHECK_SCALE="262144x8")
    (bench,) = [c for c in calls if "bench_gpu.py" in c]
    assert bench.split("--scale ")[1].split(" --")[0] == "262144x8"


def test_second_short_call_for_the_largest_row(tmp_path: Path) -> None:
    """DCPE_CHECK_SHORT=2, right after a short check on the same machine: 262,144 x 256
    alone with up to 400 s, no tests, no kernel benchmark, no dense sizes, and no build
    while the CUDA extension imports."""
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SHORT="2")
    assert rc == 0, out
    assert stages(calls) == ["bench"]
    assert "== build: none" in out
    (bench,) = [c for c in calls if "bench_gpu.py" in c]
    assert bench.split("--scale ")[1].split(" --")[0] == "262144x256"
    assert "--sizes --providers cuda triton" in bench
    assert time_limit(calls) == min(400 - elapsed_before_bench(out) - 20, 420)
    # on a fresh machine it builds first
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_SHORT="2", FAKE_NO_EXT="1")
    assert rc == 0, out
    assert stages(calls) == ["build", "bench"]
    # DCPE_CHECK_TESTS=none leaves the tests out of any check
    rc, out, calls = run_check(tmp_path, DCPE_CHECK_TESTS="none")
    assert stages(calls) == ["build", "kernels", "bench"]
