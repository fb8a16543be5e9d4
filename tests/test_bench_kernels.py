"""``benchmarks/bench_kernels.py`` end to end at tiny sizes.

Without a GPU the script runs the Triton kernels under the interpreter on CPU tensors: the
test checks that it writes complete results (JSON and markdown) with every kernel, both
token layouts giving the same bits and the reference's averages, the ``cuda`` provider
reported as not run, and a malformed pair class rejected before any work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton is only looked up here, not imported (see tests/test_bench_gpu.py).
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("needs torch and triton", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_kernels.py"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out",
                           str(tmp_path), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_tiny_run_writes_every_kernel(tmp_path: Path, triton_interpreter: None) -> None:
    proc = _run("--d", "20", "--classes", "1x2", "3x5", "--token-pairs", "120",
                "--matrix-clusters", "6", "--scan-clusters", "40", "--repeats", "1",
                "--check-pairs", "8", "--name", "tiny", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "kernels-tiny.json").read_text())
    md = (tmp_path / "kernels-tiny.md").read_text()
    rows = payload["rows"]
    got = {(r["kernel"], r["class"], r["layout"]) for r in rows}
    assert got == {("pair_average", "1x2", "columns"), ("pair_average", "1x2", "rows"),
                   ("pair_average", "3x5", "columns"), ("pair_average", "3x5", "rows"),
                   ("cluster_matrix", "6 x 2 tokens", "columns"),
                   ("cluster_matrix", "6 x 2 tokens", "rows"),
                   ("centroid_nn", "40 centroids", "—"),
                   ("candidate_pairs", "40 centroids", "—"),
                   ("centroid_nn", "40 centroids", "gram"),
                   ("candidate_pairs", "40 centroids", "gram"),
                   ("centroid_nn", "40 centroids", "64x64 tiles"),
                   ("candidate_pairs", "40 centroids", "64x64 tiles")}
    assert all(r["provider"] == "triton" and r["median_s"] > 0 for r in rows)
    pairs = [r for r in rows if r["kernel"] == "pair_average"]
    assert [r["pairs"] for r in pairs] == [60, 60, 8, 8]  # 120 token pairs per class
    assert all(r["same_bits"] and r["matches_reference"] for r in pairs)
    assert all(r["same_bits"] for r in rows if r["kernel"] in ("cluster_matrix",
                                                                "centroid_nn")
               and r["layout"] != "gram")
    assert all(r["emitted"] > 0 for r in rows if r["kernel"] == "candidate_pairs")
    # the former tiles: the same pairs as the current ones (and the same minima, above)
    emitted = {r["layout"]: r["emitted"] for r in rows if r["kernel"] == "candidate_pairs"}
    assert emitted["64x64 tiles"] == emitted["—"]
    # the tiles each scan row ran with: the interpreter's own, and the former GPU tiles
    tiles = {r["layout"]: r["tiles"] for r in rows if r["kernel"] == "centroid_nn"}
    assert tiles == {"—": "16x32", "gram": "—", "64x64 tiles": "64x64"}
    assert "cuda: not run" in md
    assert "| pair_average | 3x5 | 20 | 8 | 120 | triton | rows |" in md


def test_malformed_class_is_rejected(tmp_path: Path) -> None:
    for bad in ("3", "0x4", "axb"):
        proc = _run("--classes", bad, tmp_path=tmp_path)
        assert proc.returncode == 2
        assert "AxB" in proc.stderr or "positive" in proc.stderr
    assert not list(tmp_path.iterdir())
