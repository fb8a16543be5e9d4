"""Tests of dcpe.report: coherence statistics and the written report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

import dcpe
from dcpe import report
from dcpe.prior import CodebookPrior


def _brute(x: np.ndarray, labels: np.ndarray) -> dict:
    x = x.astype(np.float64)
    pair_total, n_pairs, expected = 0.0, 0, 0.0
    for c in np.unique(labels):
        m = x[labels == c]
        if len(m) > 1:
            pair_total += pdist(m).sum()
            n_pairs += len(m) * (len(m) - 1) // 2
        expected += cdist(m, m).mean(axis=1).sum()
    sizes = np.bincount(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(sizes.size)])
    return {
        "mean_intra_pairwise_distance": pair_total / n_pairs if n_pairs else None,
        "expected_distance_to_random_member": expected / len(x),
        "inertia": float(((x - means[labels]) ** 2).sum()),
        "largest_cluster": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "num_clusters": int(sizes.size),
    }


@pytest.mark.parametrize("k", [1, 7, 60, 300])
def test_coherence_matches_brute_force(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    labels = np.sort(rng.integers(0, k, 300)) if k > 1 else np.zeros(300, dtype=np.int64)
    labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    got = report.coherence(x, labels)
    want = _brute(x, labels)
    for key, value in want.items():
        if value is None or isinstance(value, int):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["num_tokens"] == 300


def test_coherence_large_cluster_is_chunked(monkeypatch):
    # force the row-chunked path for big clusters and the batched path for small ones
    monkeypatch.setattr(report, "_BUDGET", 64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 3))
    labels = np.concatenate([np.zeros(100, dtype=np.int64), np.arange(1, 21)])
    labels[100:104] = 1
    labels = np.unique(labels, return_inverse=True)[1]
    got = report.coherence(x, labels)
    want = _brute(x, labels)
    assert got["mean_intra_pairwise_distance"] == pytest.approx(
        want["mean_intra_pairwise_distance"], rel=1e-9)
    assert got["expected_distance_to_random_member"] == pytest.approx(
        want["expected_distance_to_random_member"], rel=1e-9)


def test_coherence_checks():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        report.coherence(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        report.coherence(x, np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        report.coherence(np.zeros(4), np.zeros(4, dtype=np.int64))


@pytest.fixture(scope="module")
def small():
    x = dcpe.datasets.sample_codebook()[:300]
    return x, CodebookPrior.from_codebook(x, 30)


def test_compare_and_write_report(tmp_path, small):
    x, prior = small
    result = report.compare(x, prior, n_iter=10)
    assert list(result["methods"]) == ["dcpe", "kmeans", "balanced_kmeans"]
    assert result["methods"]["balanced_kmeans"]["largest_cluster"] == 10
    assert result["methods"]["dcpe"] == report.coherence(x, prior.token_to_cluster)
    paths = report.write_report(tmp_path / "rep", x, prior, result=result)
    assert sorted(os.listdir(tmp_path / "rep")) == ["cluster_sizes.png", "coherence.json",
                                                    "coherence.md"]
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["methods"] == json.loads(json.dumps(result["methods"]))
    assert data["prior"]["codebook_sha256"] == prior.codebook_sha256
    md = paths["markdown"].read_text()
    for name in ("dcpe", "kmeans", "balanced_kmeans"):
        assert f"| {name} |" in md


def test_compare_refuses_other_codebook(small):
    x, prior = small
    with pytest.raises(ValueError, match="another codebook"):
        report.compare(x[::-1].copy(), prior)
    with pytest.raises(ValueError, match="methods"):
        report.compare(x, prior, methods=("spectral",))
    with pytest.raises(TypeError, match="CodebookPrior"):
        report.compare(x, "prior.npz")
