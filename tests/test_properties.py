"""Properties of the default (cpu) path: ties, determinism, greediness, invariances, size cap,
non-monotone cuts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    apply_merges,
    canonical,
    integer_grid,
    replay_gaps,
    same_partition,
    tie_free,
    to_numpy,
)


def cluster_quiet(dcpe_mod, x, k: int, **kw) -> np.ndarray:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return to_numpy(dcpe_mod.cluster(x, k, **kw))


def with_duplicates(rng: np.random.Generator, n_distinct: int, n: int, d: int) -> np.ndarray:
    base = integer_grid(rng, n_distinct * 4, d, side=5)
    base = np.unique(base, axis=0)[:n_distinct]
    return base[rng.integers(0, len(base), size=n)]


# --------------------------------------------------------------------------- ties


@pytest.mark.parametrize("linkage", ["average", "centroid", "single", "complete", "weighted",
                                     "ward"])
@pytest.mark.parametrize("seed", range(5))
def test_ties_exactly_k_clusters_and_deterministic(dcpe_mod, linkage: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    x = integer_grid(rng, n, int(rng.choice([1, 2, 3])), side=int(rng.integers(2, 6)))
    for k in sorted({1, 2, n // 7 + 1, n // 2, n - 1, n}):
        first = cluster_quiet(dcpe_mod, x, k, linkage=linkage)
        assert first.dtype == np.int64 and first.shape == (n,)
        assert len(np.unique(first)) == k
        np.testing.assert_array_equal(first, canonical(first))
        for _ in range(2):
            np.testing.assert_array_equal(cluster_quiet(dcpe_mod, x, k, linkage=linkage), first)


@pytest.mark.parametrize("linkage", ["average", "single", "complete", "weighted", "centroid",
                                     "ward"])
@pytest.mark.parametrize("seed", range(4))
def test_duplicates_share_a_cluster(dcpe_mod, linkage: str, seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    d = int(rng.choice([1, 2, 4]))
    n_distinct = int(rng.integers(2, 30))
    x = with_duplicates(rng, n_distinct, int(rng.integers(n_distinct, 200)), d)
    distinct, group = np.unique(x, axis=0, return_inverse=True)
    group = group.ravel()
    for k in sorted({1, 2, max(1, len(distinct) // 2), len(distinct)}):
        labels = cluster_quiet(dcpe_mod, x, k, linkage=linkage)
        for g in range(len(distinct)):
            assert len(np.unique(labels[group == g])) == 1, f"k={k}, row group {g}"
        if k == len(distinct):
            assert same_partition(labels, group)


def test_thread_count_does_not_change_ties(dcpe_mod, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([integer_grid(rng, 1500, 2, side=12),
                        with_duplicates(rng, 40, 500, 3)[:, :2]])
    x = x[rng.permutation(len(x))]
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, dcpe
        x = np.load({str(tmp_path / 'x.npy')!r})
        out = np.stack([dcpe.cluster(x, k, linkage=m)
                        for m in ("average", "single", "centroid", "ward") for k in (2, 37, 1000)])
        np.save({str(tmp_path)!r} + "/labels_" + __import__("os").environ["OMP_NUM_THREADS"]
                + ".npy", out)
    """)
    results = {}
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        env.pop("DCPE_NUM_THREADS", None)
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
        results[threads] = np.load(tmp_path / f"labels_{threads}.npy")
    np.testing.assert_array_equal(results["1"], results["2"])
    here = np.stack([dcpe_mod.cluster(x, k, linkage=m)
                     for m in ("average", "single", "centroid", "ward") for k in (2, 37, 1000)])
    np.testing.assert_array_equal(here, results["1"])


@pytest.mark.parametrize("linkage", ["ward", "centroid"])
@pytest.mark.parametrize("kind", ["grid", "tie_free"])
def test_centroid_engines_thread_count_does_not_change_result(
        dcpe_mod, monkeypatch: pytest.MonkeyPatch, kind: str, linkage: str) -> None:
    """The centroid/Ward passes split across threads above 4096 active clusters."""
    rng = np.random.default_rng(9)
    x = integer_grid(rng, 6000, 2, side=6) if kind == "grid" else tie_free(rng, 6000, 3)
    zs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("DCPE_NUM_THREADS", threads)
        zs.append(dcpe_mod.linkage(x, linkage=linkage))
    np.testing.assert_array_equal(zs[1], zs[0])
    np.testing.assert_array_equal(zs[2], zs[0])


# --------------------------------------------------------------------------- greediness


@pytest.mark.parametrize("kind", ["tie_free", "grid"])
@pytest.mark.parametrize("cap", [None, 1, 3, 20])
@pytest.mark.parametrize("seed", range(4))
def test_every_merge_is_a_minimum(dcpe_mod, kind: str, cap: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 250))
    d = int(rng.choice([1, 2, 8]))
    x = tie_free(rng, n, d) if kind == "tie_free" else integer_grid(rng, n, d, side=4)
    z = dcpe_mod.backends.get("cpu").linkage(x, method="average", metric="euclidean",
                                             max_cluster_size=cap)
    merged, best = replay_gaps(z, x, max_cluster_size=cap)
    assert np.all(np.isfinite(merged)), "merged a cluster that was not mergeable"
    np.testing.assert_allclose(merged, best, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(z[:, 2], merged, rtol=1e-6, atol=1e-12)


def _ward_increase(x: np.ndarray, a: list[int], b: list[int]) -> float:
    """Increase of the within-cluster sum of squares when a and b merge (from scratch)."""
    def ess(rows: list[int]) -> float:
        pts = x[rows]
        return float(((pts - pts.mean(axis=0)) ** 2).sum())

    return ess(a + b) - ess(a) - ess(b)


@pytest.mark.parametrize("linkage", ["centroid", "ward"])
@pytest.mark.parametrize("seed", range(6))
def test_centroid_merges_are_greedy(dcpe_mod, linkage: str, seed: int) -> None:
    """Replay: every merge is the closest pair of the current clusters, recomputed from the
    members (Ward: the smallest increase of the within-cluster sum of squares, reported as
    SciPy's sqrt(2 * increase)); Ward's heights never decrease."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 120 if linkage == "centroid" else 45))  # Ward's replay is O(n^4)
    x = tie_free(rng, n, int(rng.choice([1, 2, 5])))
    z = dcpe_mod.linkage(x, linkage=linkage)
    if linkage == "ward":
        assert np.all(np.diff(z[:, 2]) >= 0)
    members = {t: [t] for t in range(n)}
    for i, (a, b, h, size) in enumerate(z):
        keys = sorted(members)
        if linkage == "ward":
            dist = np.array([[np.sqrt(2 * _ward_increase(x, members[p], members[q]))
                              if p != q else np.inf for q in keys] for p in keys])
        else:
            means = np.stack([x[members[c]].mean(axis=0) for c in keys])
            dist = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
            np.fill_diagonal(dist, np.inf)
        ia, ib = keys.index(int(a)), keys.index(int(b))
        np.testing.assert_allclose(dist[ia, ib], dist.min(), rtol=1e-9)
        np.testing.assert_allclose(h, dist[ia, ib], rtol=1e-9)
        members[n + i] = members.pop(int(a)) + members.pop(int(b))
        assert len(members[n + i]) == size


def test_centroid_cut_is_first_merges_not_lowest_heights(dcpe_mod) -> None:
    """Centroid heights can decrease; the k-cut is the state after N - k greedy merges."""
    found = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(6, 40))
        x = tie_free(rng, n, 2)
        z = dcpe_mod.linkage(x, linkage="centroid")
        if np.all(np.diff(z[:, 2]) >= 0):
            continue
        found += 1
        for k in range(1, n + 1):
            np.testing.assert_array_equal(dcpe_mod.cluster(x, k, linkage="centroid"),
                                          apply_merges(z, n, n - k))
        if found == 5:
            break
    assert found == 5, "no centroid inversions found in the generated data"


# --------------------------------------------------------------------------- invariances


def test_input_not_mutated(dcpe_mod) -> None:
    import torch

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        x = tie_free(rng, 300, 8, dtype)
        xf = np.asfortranarray(tie_free(rng, 100, 3, dtype))
        for data in (x, xf, x[::2]):
            before = data.copy()
            dcpe_mod.cluster(data, 5)
            dcpe_mod.cluster(data, 5, metric="cosine")
            dcpe_mod.linkage(data, linkage="centroid")
            dcpe_mod.DCPE(n_clusters=4).fit(data)
            np.testing.assert_array_equal(data, before)
        t = torch.from_numpy(x.copy())
        t_before = t.clone()
        for backend in ("auto", "torch", "reference"):
            for part in (t[:120], t[:240:2]):
                dcpe_mod.cluster(part, 5, backend=backend)
                dcpe_mod.cluster(part, 5, backend=backend, metric="cosine")
                dcpe_mod.cluster(part, 5, backend=backend, linkage="centroid")
        assert torch.equal(t, t_before)


@pytest.mark.parametrize("seed", range(8))
def test_permuting_rows_permutes_partition(dcpe_mod, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 600))
    x = tie_free(rng, n, int(rng.choice([1, 2, 8, 64])))
    perm = rng.permutation(n)
    for k in sorted({1, 2, max(1, n // 5), n - 1, n}):
        a = dcpe_mod.cluster(x, k)
        b = dcpe_mod.cluster(x[perm], k)
        assert same_partition(a[perm], b)
        # the labels of the permuted input are canonical for that order
        np.testing.assert_array_equal(b, canonical(a[perm]))


@pytest.mark.parametrize("scale", [2.0**-20, 0.37, 3.0, 1e6])
@pytest.mark.parametrize("seed", range(4))
def test_scaling_invariance(dcpe_mod, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 500))
    x = tie_free(rng, n, int(rng.choice([1, 2, 8])))
    for k in sorted({1, 2, max(1, n // 3), n - 1, n}):
        np.testing.assert_array_equal(dcpe_mod.cluster(x * scale, k), dcpe_mod.cluster(x, k))


# --------------------------------------------------------------------------- size cap


@pytest.mark.parametrize("linkage", ["average", "centroid", "single", "complete", "weighted",
                                     "ward"])
@pytest.mark.parametrize("seed", range(4))
def test_size_cap_respected(dcpe_mod, linkage: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    x = tie_free(rng, n, 4) if seed % 2 else integer_grid(rng, n, 2, side=5)
    for cap in sorted({1, 2, 5, max(1, n // 8)}):
        z = dcpe_mod.backends.get("cpu").linkage(x, method=linkage, metric="euclidean",
                                                 max_cluster_size=cap)
        sizes = np.concatenate([np.ones(n), z[:, 3]])
        for a, b, _, size in z:
            assert sizes[int(a)] <= cap and sizes[int(b)] <= cap
            assert size == sizes[int(a)] + sizes[int(b)]
        # it stopped only when fewer than two mergeable clusters were left
        labels = apply_merges(z, n, len(z))
        counts = np.bincount(labels)
        assert len(z) == n - 1 or np.sum(counts <= cap) < 2
        k_target = max(1, n // max(1, cap))
        if len(z) < n - k_target:  # exhausted before k: warns and reports what it found
            with pytest.warns(UserWarning):
                est = dcpe_mod.DCPE(n_clusters=k_target, linkage=linkage,
                                    max_cluster_size=cap).fit(x)
            assert est.n_clusters_ == n - len(z)
            assert len(np.unique(est.labels_)) == n - len(z)
        else:
            labels = cluster_quiet(dcpe_mod, x, k_target, linkage=linkage,
                                   max_cluster_size=cap)
            np.testing.assert_array_equal(labels, apply_merges(z, n, n - k_target))
