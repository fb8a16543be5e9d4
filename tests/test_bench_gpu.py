"""``benchmarks/bench_gpu.py`` end to end at tiny sizes (``--dry-run``).

Without a GPU the script runs the Triton kernels under the interpreter on CPU tensors; the
test checks that it writes complete results (JSON and markdown), that the dcpe rows agree
with the ``cpu`` backend, and that the torch baseline takes both paths: a size timed after
the dcpe rows and a size skipped by the cubic prediction; and that the section past the
dense matrix (``--scale``) runs both engines, in a child process under ``--isolate``, and
rejects a malformed spec.  On a GPU machine ``benchmarks/gpu_check.sh`` runs the real
benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton is only looked up here, not imported: importing it in this process would fix its
# interpreter mode before tests/test_triton.py sets TRITON_INTERPRET.
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("needs torch and triton", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("isolate", [False, True])
def test_dry_run_writes_complete_results(tmp_path: Path, isolate: bool,
                                         triton_interpreter: None) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--device",
         "cpu", "--sizes", "64", "--out", str(tmp_path),
         *(["--isolate", "--time-limit", "250"] if isolate else [])],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "gpu-h200.json").read_text())
    md = (tmp_path / "gpu-h200.md").read_text()
    assert payload["complete"] is True
    assert "Incomplete" not in md
    rows = {(r["provider"], r["n"]): r for r in payload["results"]}
    assert rows[("triton", 64)]["median_s"] > 0
    assert rows[("cuda", None)]["skipped"]  # the reason is recorded
    # torch: 64 timed first, 128 after the dcpe rows, 16384 skipped by the prediction
    order = [(r["provider"], r["n"]) for r in payload["results"] if r["provider"] != "cuda"]
    assert order == [("torch", 64), ("triton", 64), ("torch", 128), ("torch", 16384)]
    assert rows[("torch", 128)]["warmup_s"] is None
    assert "predicted" in rows[("torch", 16384)]["skipped"]
    assert payload["torch_fit"]["points"][-1][0] == 128
    assert payload["cpu_check"]["triton"] == {"identical": True, "tokens_differing": 0}
    assert payload["engine"]["triton"]["rounds_full"] >= payload["engine"]["triton"][
        "rounds_labels_k_half"]
    busy = payload["engine"]["triton"]["labels_k_half"]
    assert {"wall_seconds", "busy_seconds", "waiting_seconds"} <= busy.keys() and busy["top"]
    ab = payload["engine"]["triton"]["rounds"]
    assert {"counts_first_seconds", "merge_ahead_seconds", "chained_seconds",
            "counts_first_over_chained", "merge_ahead_over_chained"} <= ab.keys()
    assert ab["rounds_ahead"] > 1
    if isolate:  # the child's own files came back under --out
        assert (tmp_path / "worker-triton" / "worker.json").exists()
    # the dry run also runs the scale section at a tiny N, on both engines
    scale = {(r["provider"], r["spec"]): r for r in payload["scale"]}
    assert scale[("triton", "200x3")]["engine"] == "matrix"
    assert scale[("triton", "200x3@160KiB")]["engine"] == "linear"
    assert scale[("triton", "200x3@160KiB")]["labels_equal_cpu"] is True
    assert scale[("cpu", "200x3")]["seconds"] > 0


def _bench_gpu():
    """The benchmark script as a module (it is not part of the package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_gpu


def test_busy_time_sums_the_profiled_operations() -> None:
    """The device time of a call is the profiler's self time of its operations, and the
    longest are named with their number of calls."""
    import torch

    bench = _bench_gpu()
    a = torch.randn(400, 400, dtype=torch.float64)
    one = bench.busy_time(lambda: a @ a, "cpu")
    five = bench.busy_time(lambda: [a @ a for _ in range(5)], "cpu")
    assert {"wall_seconds", "busy_seconds", "waiting_seconds"} <= one.keys()
    assert "mm x1:" in one["top"][0], one["top"]
    assert "mm x5:" in five["top"][0], five["top"]


def test_failed_child_becomes_an_error_row(tmp_path: Path) -> None:
    """A child process that dies (here: an argument it rejects) is recorded at the first
    size it did not finish, with the reason, and the parent goes on."""
    bench_gpu = _bench_gpu()
    args = argparse.Namespace(out=str(tmp_path), repeats=1, budget=1.0, diag_n=0)
    rows: list = []
    labels: dict = {}
    diag: dict = {}
    bench_gpu.run_child("triton", args, "no-such-device", [64, 128], 0, math.inf, 1, rows,
                        labels, diag)
    assert len(rows) == 1 and rows[0]["provider"] == "triton" and rows[0]["n"] == 64
    assert "exited with 2" in rows[0]["error"] and "--device" in rows[0]["error"]
    assert labels == {} and diag == {}


def test_child_out_of_time_becomes_an_error_row(tmp_path: Path, triton_interpreter: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A child still running at its share of the time limit is stopped and recorded."""
    import time

    bench_gpu = _bench_gpu()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the child's environment only
    args = argparse.Namespace(out=str(tmp_path), repeats=1, budget=1.0, diag_n=0)
    rows: list = []
    # N = 4096 under the interpreter takes minutes; no time is left, so the child gets the
    # minimum of 5 s
    bench_gpu.run_child("triton", args, "cpu", [4096], 0, time.monotonic(), 1, rows, {}, {})
    assert len(rows) == 1 and rows[0]["n"] == 4096
    assert "stopped after 5 s" in rows[0]["error"]


def test_scale_section_runs_both_engines(tmp_path: Path, triton_interpreter: None) -> None:
    """``--scale`` under ``--isolate``: the rows of the child process come back, the limit
    selects the matrix-free engine, and the labels agree with the ``cpu`` backend.  No
    dense sizes: no child process for them."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu",
         "--sizes", "--repeats", "1", "--providers", "triton", "--torch-sizes", "64",
         "--scale", "200x3", "200x3@160KiB", "--scale-cpu-dims", "3", "--isolate",
         "--time-limit", "250", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "gpu-h200.json").read_text())
    assert payload["complete"] is True
    assert payload["scale_specs"] == ["200x3", "200x3@160KiB"]
    rows = {(r["provider"], r["spec"]): r for r in payload["scale"]}
    assert set(rows) == {("triton", "200x3"), ("triton", "200x3@160KiB"), ("cpu", "200x3")}
    for row in rows.values():
        assert row["seconds"] > 0, row
    assert rows[("triton", "200x3")]["engine"] == "matrix"
    limited = rows[("triton", "200x3@160KiB")]
    assert limited["engine"] == "linear" and limited["memory_limit"] == "160KiB"
    assert limited["rounds"] >= 1
    assert "rounds" not in rows[("triton", "200x3")]  # the dense engine is not traced
    assert {"scan", "select"} <= set(limited["phases_ms"])
    assert limited["work"]["scan_pairs"] >= 200 * 200 - 200
    # the round that finds a flat cut's early stop is traced, not counted as a round of
    # merges; dense rounds after a hand-over are counted, not traced
    assert 1 <= limited["work"]["matrix_free_rounds"] <= limited["rounds"] + 1
    for provider, spec in [("triton", "200x3"), ("triton", "200x3@160KiB")]:
        assert rows[(provider, spec)]["labels_equal_cpu"] is True
    md = (tmp_path / "gpu-h200.md").read_text()
    assert "## Past the dense matrix (k = N/2, one call)" in md
    assert ("| provider | N | d | memory_limit | engine | time | peak memory | rounds | "
            "vs cpu | labels = cpu |") in md
    assert "### Where the matrix-free rounds' time goes" in md
    # the labels went through the temporary directory, which is gone; the child's own
    # results came back under --out
    assert (tmp_path / "worker-triton-scale" / "worker.json").exists()
    assert not (tmp_path / "worker-triton").exists()
    assert not [r for r in payload["results"] if r.get("provider") == "triton"]
    assert not list(tmp_path.rglob("labels-*-scale-*.npy"))


def test_bad_scale_spec_is_an_argument_error() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--scale", "12y3"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--scale" in errors[0] and "'12y3'" in errors[0], proc.stderr


def test_compile_warmup_stays_matrix_free() -> None:
    """A large scale row's compile warm-up (``compile_warmup``): at most COMPILE_WARMUP_N
    tokens, and under its memory limit the matrix-free rounds run to the cut, at the row's
    d, without handing over to the dense rounds (the engine dcpe.cluster runs with
    engine="linear", on the PyTorch references)."""
    import torch

    import dcpe
    from dcpe_kernels import ReferenceOps, linear

    bench_gpu = _bench_gpu()
    assert bench_gpu.compile_warmup(1 << 20, 8, 4)[0] == bench_gpu.COMPILE_WARMUP_N
    for d in (8, 40):
        nw, limit = bench_gpu.compile_warmup(400, d, 4)
        assert nw == 400 and limit > linear.linear_required_bytes(nw, d, 4)
        x = torch.from_numpy(dcpe.datasets.make_sample_codebook(nw, d))
        records: list[dict] = []
        with linear.trace_rounds(records.append):
            linear.run_merges(x, method="average", metric="euclidean", max_cluster_size=None,
                              ops=ReferenceOps, backend="reference", n_clusters=nw // 2,
                              memory_limit=limit, engine="linear")
        assert len([r for r in records if not r.get("done")]) >= 3, d
        assert not any("handover" in r["ms"] or "dense" in r["ms"] for r in records), d


def test_scale_helpers() -> None:
    bench_gpu = _bench_gpu()
    assert bench_gpu.parse_scale_spec("262144x8@24GiB") == (262144, 8, "24GiB")
    assert bench_gpu.parse_scale_spec("300x4") == (300, 4, None)
    for bad in ["12y3", "1x8", "300x0", "300x4@", "300x4@lots", "x8"]:
        with pytest.raises(argparse.ArgumentTypeError, match="invalid scale spec"):
            bench_gpu.parse_scale_spec(bad)
    import numpy as np

    assert bench_gpu.same_partition(np.array([3, 3, 1, 2]), np.array([0, 0, 1, 2]))
    assert not bench_gpu.same_partition(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    # one generated array per d, smaller N are its prefixes
    data = bench_gpu.ScaleData([(300, 4, None), (200, 4, "1MiB")])
    assert data.get(200, 4).shape == (200, 4)
    assert np.array_equal(data.get(200, 4), data.get(300, 4)[:200])
