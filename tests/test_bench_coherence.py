"""benchmarks/bench_coherence.py runs end to end at a small size and writes complete results
(a row per size and provider, with a time or a reason, and the providers' agreement), and
refuses malformed sizes."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_bench

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("dcpe")
sys.path.insert(0, str(ROOT / "benchmarks"))


_bench = functools.partial(run_bench, "bench_coherence.py")


def test_small_run_writes_complete_results(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    out = _bench("--sizes", "300x4:20,200x3:7", "--name", "coh", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "coh.json").read_text())
    rows = payload["rows"]
    assert [(r["n"], r["d"], r["k"], r["provider"]) for r in rows] == [
        (300, 4, 20, "dcpe"), (300, 4, 20, "scipy-cdist"),
        (200, 3, 7, "dcpe"), (200, 3, 7, "scipy-cdist")]
    for r in rows:
        assert r["median_s"] > 0 and r["max_relative_gap"] < 1e-12
        assert r["expected_distance_to_random_member"] > 0
        assert r["n"] < r["pairs"] < r["n"] ** 2  # sum of squared cluster sizes
    md = (tmp_path / "coh.md").read_text()
    assert "| 300 × 4 | 20 |" in md and "| 200 × 3 | 7 |" in md
    assert payload["machine"]["versions"]["dcpe"]


def test_scipy_provider_sums_match_brute_force() -> None:
    pytest.importorskip("scipy")
    from bench_coherence import run_provider
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 5))
    labels = rng.integers(0, 6, 90)
    d = cdist(x, x)
    want = (d * (labels[:, None] == labels[None, :])).sum(axis=1)
    for p in ("scipy-cdist", "dcpe"):
        np.testing.assert_allclose(run_provider(p, x, labels, 6), want, rtol=1e-12)


@pytest.mark.parametrize("sizes", ["300x4", "300x4:0", "300x4:301", "ax4:2"])
def test_malformed_sizes_are_refused(sizes: str, tmp_path: Path) -> None:
    out = _bench("--sizes", sizes, "--out", str(tmp_path))
    assert out.returncode == 2
    assert "NxD:K" in out.stderr or "1 <= K <= N" in out.stderr
    assert not list(tmp_path.iterdir())
