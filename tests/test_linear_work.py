"""benchmarks/linear_work.py: its k-d tree kernels give the references' results, and a small
run writes the matrix-free engine's work with labels equal to the cpu backend's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from conftest import tie_free  # noqa: E402

from dcpe_kernels.centroid import (  # noqa: E402
    _reference_candidate_pairs,
    _reference_centroid_nn,
)
from dcpe_kernels.pair_average import _reference_pair_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _work():
    spec = importlib.util.spec_from_file_location("linear_work",
                                                  ROOT / "benchmarks" / "linear_work.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mode", [0, 1])
def test_centroid_scan_matches_reference(mode: int, rng: np.random.Generator) -> None:
    ops = _work().KDTreeOps
    n = 150
    mu_t = torch.from_numpy(tie_free(rng, n, 3).T.copy())
    s2 = torch.from_numpy(rng.uniform(0, 0.5, n))
    rows = torch.from_numpy(rng.permutation(n)[:90].astype(np.int32))
    out = [torch.full((n,), -1.0, dtype=torch.float64) for _ in range(2)]
    nn = [torch.full((n,), -1, dtype=torch.int64) for _ in range(2)]
    ops.centroid_nn(mu_t, s2, n, mode, 0.5, out[0], nn[0], rows, 90)
    _reference_centroid_nn(mu_t, s2, n, mode, 0.5, out[1], nn[1], rows, 90)
    assert torch.equal(nn[0], nn[1])
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=0)


def test_candidates_and_averages_match_reference(rng: np.random.Generator) -> None:
    ops = _work().KDTreeOps
    n = 120
    mu_t = torch.from_numpy(tie_free(rng, n, 3).T.copy())
    s2 = torch.from_numpy(rng.uniform(0, 0.3, n))
    rad = torch.sqrt(s2) * 2
    tau = torch.empty(n, dtype=torch.float64)
    rows = torch.arange(n, dtype=torch.int32)
    _reference_centroid_nn(mu_t, s2, n, 0, 1.0, tau, torch.empty(n, dtype=torch.int64),
                           rows, n)
    needy = torch.from_numpy((rng.random(n) < 0.5).astype(np.int8))
    sub = torch.nonzero(needy).flatten().to(torch.int32)
    got = []
    for fn in (ops.candidate_pairs, _reference_candidate_pairs):
        pa, pb = (torch.zeros(4096, dtype=torch.int32) for _ in range(2))
        count = torch.zeros(1, dtype=torch.int64)
        fn(mu_t, s2, rad, tau, n, 1e-12, 1e-15, pa, pb, count, 4096, sub, len(sub), needy)
        c = int(count[0])
        got.append(sorted(zip(pa[:c].tolist(), pb[:c].tolist())))
    assert got[0] == got[1] and len(got[0]) > len(sub)
    # the exact averages of those pairs, clusters of 1 to 6 tokens
    sizes = torch.from_numpy(rng.integers(1, 7, n))
    offsets = torch.cumsum(sizes, 0) - sizes
    x = torch.from_numpy(tie_free(rng, int(sizes.sum()), 3).astype(np.float32))
    pa = torch.tensor([a for a, _ in got[0]], dtype=torch.int32)
    pb = torch.tensor([b for _, b in got[0]], dtype=torch.int32)
    count = torch.tensor([len(pa)])
    vals = [torch.empty(len(pa), dtype=torch.float32) for _ in range(2)]
    ops.pair_average(x, offsets, sizes, pa, pb, count, len(pa), vals[0])
    _reference_pair_average(x, offsets, sizes, pa, pb, count, len(pa), vals[1])
    assert torch.equal(vals[0], vals[1])


def test_small_run_writes_the_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "300", "700",
         "--d", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "linear-work.json").read_text())
    rows = payload["rows"]
    assert [r["n"] for r in rows] == [300, 700]
    for r in rows:
        n = r["n"]
        assert r["labels_equal_cpu"] is True
        # the first round scans every cluster, the later ones the searching clusters without
        # a threshold from their old neighbours, and the candidates of every searching one
        rows = r["per_round"]
        assert rows[0]["scan_rows"] == rows[0]["rows"] == n
        assert r["scan_pairs"] == sum(x["scan_rows"] * x["n"] for x in rows) >= n * n
        assert r["candidate_scan_pairs"] == sum(x["rows"] * x["n"] for x in rows[1:])
        assert r["scan_pairs"] - n * n < r["candidate_scan_pairs"]
        assert r["per_round"][0]["pairs"] == 0 < r["candidate_pairs"] <= r["token_pairs"]
        # the round that finds the early stop is scanned, not counted as a round of merges
        # (dense rounds after a hand-over would be counted, not traced)
        assert r["matrix_free_rounds"] == len(r["per_round"]) <= r["rounds"] + 1
    md = (tmp_path / "linear-work.md").read_text()
    assert "| 700 | 3 |" in md and "**NO**" not in md


def test_bad_sizes_are_an_argument_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "1",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sizes must be >= 2" in proc.stderr
    assert not list(tmp_path.iterdir())
