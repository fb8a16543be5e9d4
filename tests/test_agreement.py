"""Agreement of the default path (backend ``auto`` -> ``cpu`` on host data) with SciPy and
scikit-learn on tie-free inputs (float64), and with SciPy on the float32 sample codebook."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    cut_z,
    hierarchy_sets,
    replay_gaps,
    same_partition,
    scipy_linkage,
    sklearn_labels,
    tie_free,
)

N_CASES = 200
DIMS = (1, 2, 8, 64, 256)


def case_shape(case: int) -> tuple[int, int]:
    """(N, d) of agreement case ``case``: mostly small, some medium, a few up to 2000."""
    rng = np.random.default_rng(10_000 + case)
    d = int(DIMS[case % len(DIMS)])
    if case in (0, 1):
        return 2, d
    if case == 2:
        return 2000, 8
    if case == 3:
        return 2000, 256
    u = rng.random()
    if u < 0.70:
        n = int(rng.integers(3, 61))
    elif u < 0.92:
        n = int(rng.integers(61, 401))
    elif u < 0.98:
        n = int(rng.integers(401, 1001))
    else:
        n = int(rng.integers(1001, 2001))
    return n, d


def ks(n: int) -> list[int]:
    return sorted({1, min(2, n), max(1, n // 2), max(1, n - 1), n})


@pytest.mark.parametrize("case", range(N_CASES))
def test_labels_match_scipy_and_sklearn(dcpe_mod, case: int) -> None:
    n, d = case_shape(case)
    x = tie_free(np.random.default_rng(case), n, d)
    z_ref = scipy_linkage(x, "average")
    for k in ks(n):
        labels = dcpe_mod.cluster(x, k)
        assert labels.shape == (n,)
        assert len(np.unique(labels)) == k
        assert same_partition(labels, cut_z(z_ref, n, k)), f"N={n} d={d} k={k} vs SciPy"
        if n >= 2 and (n <= 400 or k in (2, n // 2)):
            assert same_partition(labels, sklearn_labels(x, k)), f"N={n} d={d} k={k} vs sklearn"


@pytest.mark.parametrize("case", range(0, N_CASES, 4))
def test_labels_match_fcluster_maxclust(dcpe_mod, case: int) -> None:
    from scipy.cluster.hierarchy import fcluster

    n, d = case_shape(case)
    x = tie_free(np.random.default_rng(case), n, d)
    z_ref = scipy_linkage(x, "average")
    for k in ks(n):
        assert same_partition(dcpe_mod.cluster(x, k), fcluster(z_ref, k, "maxclust"))


@pytest.mark.parametrize("case", range(0, N_CASES, 2))
def test_heights_and_cuts_match_scipy(dcpe_mod, case: int) -> None:
    n, d = case_shape(case)
    x = tie_free(np.random.default_rng(case), n, d)
    z = dcpe_mod.linkage(x)
    z_ref = scipy_linkage(x, "average")
    assert z.shape == (n - 1, 4) and z.dtype == np.float64
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.sort(z[:, 3]), np.sort(z_ref[:, 3]))
    assert hierarchy_sets(z, n) == hierarchy_sets(z_ref, n)
    rng = np.random.default_rng(case + 7)
    for k in {*ks(n), *rng.integers(1, n + 1, size=4).tolist()}:
        assert same_partition(cut_z(z, n, k), cut_z(z_ref, n, k)), f"N={n} d={d} k={k}"


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("seed", range(6))
def test_other_metrics_match_scipy(dcpe_mod, metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(3, 150)), int(rng.choice([2, 8, 64]))
    x = tie_free(rng, n, d)
    z = dcpe_mod.linkage(x, metric=metric)
    z_ref = scipy_linkage(x, "average", metric)
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=1e-6, atol=1e-12)
    for k in ks(n):
        assert same_partition(dcpe_mod.cluster(x, k, metric=metric), cut_z(z_ref, n, k))


@pytest.mark.parametrize("linkage", ["single", "complete", "weighted", "ward"])
@pytest.mark.parametrize("seed", range(6))
def test_other_linkages_match_scipy(dcpe_mod, linkage: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, d = int(rng.integers(3, 300)), int(rng.choice([1, 2, 8, 64]))
    x = tie_free(rng, n, d)
    z = dcpe_mod.linkage(x, linkage=linkage)
    z_ref = scipy_linkage(x, linkage)
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=1e-6, atol=0)
    assert hierarchy_sets(z, n) == hierarchy_sets(z_ref, n)
    for k in ks(n):
        assert same_partition(dcpe_mod.cluster(x, k, linkage=linkage), cut_z(z_ref, n, k))
        if linkage != "weighted":  # scikit-learn has no WPGMA
            assert same_partition(dcpe_mod.cluster(x, k, linkage=linkage),
                                  sklearn_labels(x, k, linkage))


def test_float32_sample_codebook_vs_scipy_float64(dcpe_mod) -> None:
    """float32 computation on 2000 sample codes against SciPy in float64.

    What float32 guarantees is greedy merging *up to float32 rounding*: replaying dcpe's
    merges with exact (float64) Eq. 2 distances, every merged pair must be within a few
    float32 ulps of the true minimum at its step, and the heights must be its Eq. 2 value
    to the same accuracy. Identical partitions follow only where the float64 heights
    around the cut are separated by more than that rounding; those cuts are compared
    exactly.
    """
    x = dcpe_mod.datasets.sample_codebook()[:2000]
    assert x.dtype == np.float32
    n = x.shape[0]
    z = dcpe_mod.linkage(x)
    z_ref = scipy_linkage(x.astype(np.float64), "average")
    tol = 1e-5

    merged, best = replay_gaps(z, x)
    assert np.all(np.isfinite(merged))
    assert np.all(merged <= best * (1 + tol)), "a float32 merge was not a minimum"
    np.testing.assert_allclose(z[:, 2], merged, rtol=tol)
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=tol)

    heights = z_ref[:, 2]
    checked = 0
    for k in (1, 2, 5, 16, 100, 500, 1000, 1500, 1999, 2000):
        lo = heights[n - k - 1] if n - k - 1 >= 0 else 0.0
        hi = heights[n - k] if n - k < n - 1 else np.inf
        if hi - lo > tol * hi:  # the cut is not among near-tied heights
            checked += 1
            assert same_partition(dcpe_mod.cluster(x, k), cut_z(z_ref, n, k)), f"k={k}"
    assert checked >= 5
