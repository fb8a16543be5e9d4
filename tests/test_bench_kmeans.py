"""benchmarks/bench_kmeans.py runs end to end at a small size and writes complete results
(a row per size and provider, with a time or a reason), and refuses malformed sizes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from conftest import run_bench

pytest.importorskip("dcpe")


_bench = functools.partial(run_bench, "bench_kmeans.py")


def test_small_run_writes_complete_results(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = _bench("--sizes", "300x4:20,200x3:7", "--max-iter", "3", "--name", "km",
                 "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "km.json").read_text())
    rows = payload["rows"]
    assert [(r["n"], r["d"], r["k"], r["provider"]) for r in rows] == [
        (300, 4, 20, "dcpe-kmeans"), (300, 4, 20, "sklearn-kmeans"),
        (300, 4, 20, "dcpe-balanced"),
        (200, 3, 7, "dcpe-kmeans"), (200, 3, 7, "sklearn-kmeans"), (200, 3, 7, "dcpe-balanced")]
    for r in rows:
        assert r["median_s"] > 0 and r["inertia"] > 0 and 1 <= r["n_iter"] <= 3
    md = (tmp_path / "km.md").read_text()
    assert "| 300 × 4 | 20 |" in md and "| 200 × 3 | 7 |" in md
    assert payload["machine"]["versions"]["dcpe"]


@pytest.mark.parametrize("sizes", ["300x4", "300x4:0", "300x4:301", "ax4:2"])
def test_malformed_sizes_are_refused(sizes: str, tmp_path: Path) -> None:
    out = _bench("--sizes", sizes, "--out", str(tmp_path))
    assert out.returncode == 2
    assert "NxD:K" in out.stderr or "1 <= K <= N" in out.stderr
    assert not list(tmp_path.iterdir())
