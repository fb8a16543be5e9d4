"""The cpu backend's linear-memory engine and its choice: agreement with the matrix engine,
SciPy and scikit-learn on tie-free inputs, the closed forms, ties, and the memory budget.

The linear path is forced two ways: ``engine="linear"`` through the public API (its cache
then follows ``memory_limit``), and directly through ``dcpe.backends.cpu`` with a given
cache, so that both the pure bound-pruned rounds (cache 0: never a matrix) and the
hand-over to the nearest-neighbour chain on the matrix of the clusters left are covered.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    cut_z,
    hierarchy_sets,
    integer_grid,
    near_duplicate_float64_rows,
    replay_gaps,
    same_partition,
    scipy_linkage,
    sklearn_labels,
    tie_free,
)

dcpe = pytest.importorskip("dcpe")
cpu = pytest.importorskip("dcpe.backends.cpu")
if not cpu.available()[0]:  # pragma: no cover
    pytest.skip("the compiled cpu backend is not available", allow_module_level=True)
from dcpe.datasets import make_sample_codebook  # noqa: E402

#: caches of the forced linear engine: 0 (rounds only) and one that takes over midway
CACHES = (0, 4096)


def _linear_z(x: np.ndarray, cache: int, *, metric: str = "euclidean",
              cap: int | None = None) -> np.ndarray:
    return cpu.linkage(x, method="average", metric=metric, max_cluster_size=cap,
                       plan=cpu.Plan("linear", cache))


def _matrix_z(x: np.ndarray, *, metric: str = "euclidean", cap: int | None = None) -> np.ndarray:
    return cpu.linkage(x, method="average", metric=metric, max_cluster_size=cap,
                       plan=cpu.Plan("matrix"))


def _ks(n: int) -> list[int]:
    return sorted({1, 2, max(1, n // 2), max(1, n - 1), n})


# above 12 dimensions the centroids are scanned without a kd-tree, 32 searches at a time
# in passes of eight (d = 37: coordinates past the last eight of the scans' running sums;
# n = 203: groups of 32, then passes of eight and single searches; d = 13 and 16: the scan
# with the short neighbour lists of 13 to 16 dimensions); at most 12 dimensions the
# kd-tree's leaves take eight points at a time as vector lanes, each a running sum per
# coordinate modulo eight (d = 5, 12: sums left empty, a partial second eight; the closed
# forms' tree at d = 16: a full second eight, test_closed_forms_equal_scipy)
CASES = [(n, d) for n, d in [(2, 1), (3, 2), (17, 1), (60, 8), (150, 2), (257, 8), (400, 64),
                             (300, 256), (203, 37), (999, 8), (1500, 2), (700, 5), (600, 12),
                             (500, 16), (450, 13)]]


@pytest.mark.parametrize("n,d", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_equals_matrix_and_scipy(rng, n, d, dtype):
    x = tie_free(rng, n, d, dtype)
    zm = _matrix_z(x)
    zs = scipy_linkage(x)
    for cache in CACHES:
        zl = _linear_z(x, cache)
        assert zl.shape == (n - 1, 4)
        assert hierarchy_sets(zl, n) == hierarchy_sets(zm, n)
        for k in _ks(n):
            assert same_partition(cut_z(zl, n, k), cut_z(zm, n, k))
            assert same_partition(cut_z(zl, n, k), cut_z(zs, n, k))
        if dtype == np.float64:
            np.testing.assert_allclose(zl[:, 2], zs[:, 2], rtol=1e-6)


@pytest.mark.slow
def test_linear_at_3000_tokens_equals_scipy_and_sklearn(rng):
    n, d = 3000, 8
    x = tie_free(rng, n, d)
    zs = scipy_linkage(x)
    zl = dcpe.linkage(x, engine="linear", memory_limit="64MiB")
    np.testing.assert_allclose(zl[:, 2], zs[:, 2], rtol=1e-6)
    for k in (1, 2, 10, n // 2, n - 1, n):
        assert same_partition(cut_z(zl, n, k), cut_z(zs, n, k))
    k = 300
    assert same_partition(dcpe.cluster(x, k, engine="linear", memory_limit="64MiB"),
                          sklearn_labels(x, k))


@pytest.mark.parametrize("d", [8, 37, 256])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_merge_of_two_tokens_has_the_matrix_engines_height_bit_for_bit(rng, d, dtype):
    # the exact sums compute a token pair's distance with the matrix engine's expression
    # (coordinate differences squared and summed in coordinate order, then the square
    # root), however many pairs they compute at once: the same number, not a close one
    n = 300
    x = tie_free(rng, n, d, dtype)
    zl, zm = _linear_z(x, 0), _matrix_z(x)
    leaves = {}
    for z, name in ((zl, "linear"), (zm, "matrix")):
        for a, b, h, _ in z:
            if a < n and b < n:
                leaves.setdefault((int(min(a, b)), int(max(a, b))), {})[name] = h
    both = [v for v in leaves.values() if len(v) == 2]
    assert len(both) >= n // 10
    assert all(v["linear"] == v["matrix"] for v in both)


@pytest.mark.parametrize("n,d", [(300, 37), (333, 256), (90, 17), (120, 14)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_hand_over_at_the_start_is_the_matrix_engine_bit_for_bit(rng, n, d, dtype):
    # above 12 dimensions, with every token's matrix within the cache, the linear engine
    # builds that matrix itself (the hand-over's sums, every cluster one token: blocks of
    # 16 columns and a last, shorter one) and finishes as the matrix engine does
    x = tie_free(rng, n, d, dtype)
    cache = n * (n - 1) // 2 * x.dtype.itemsize
    np.testing.assert_array_equal(_linear_z(x, cache), _matrix_z(x))


@pytest.mark.parametrize("n,d", [(600, 256), (1000, 100), (2000, 37)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cut", [False, True])
def test_hand_over_sums_in_groups_are_each_clusters_own_bit_for_bit(rng, monkeypatch, n, d,
                                                                   dtype, cut):
    # a hand-over midway (the matrix of n / 3 clusters fits the cache; a flat cut at n / 6
    # goes past it), with column tiles of 65536 / d tokens: the rows past a tile sum groups
    # of consecutive clusters of up to 16 tokens together (span_sums_group(), four tokens
    # at a time whichever clusters they belong to). DCPE_CPU_HANDOVER_GROUPS=0 sums each
    # cluster on its own: every float64 sum in the same order, so the same merges, bit for
    # bit
    x = tie_free(rng, n, d, dtype)
    m = n // 3
    cache = m * (m - 1) // 2 * x.dtype.itemsize

    def run():
        if cut:
            return _cut_z(x, n // 6, cache)
        return _linear_z(x, cache)

    grouped = run()
    with monkeypatch.context() as mp:
        mp.setenv("DCPE_CPU_HANDOVER_GROUPS", "0")
        alone = run()
    np.testing.assert_array_equal(grouped, alone)


@pytest.mark.parametrize("d", [48, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_over_above_16_dimensions_after_a_cut_is_known(rng, monkeypatch, d, dtype):
    # above 16 dimensions the clusters left go to the matrix of their averages as soon as
    # it fits the cache, for a whole tree and for a flat cut whose merges are not all known
    # yet; once they are, only if the last search summed at least 1/64 of the token pairs
    # that the hand-over sums (handover_now()). DCPE_CPU_CUT_HANDOVER=0 never hands over
    # after the cut's merges are known, =1 at once. cpu_list_stats() names the clusters
    # handed over (0: none); the labels are those of the rounds alone (cache 0) every way
    n = 1200
    x = tie_free(rng, n, d, dtype)
    m = n // 2  # the cache fits the matrix of n / 2 clusters
    cache = m * (m - 1) // 2 * x.dtype.itemsize
    z0 = _linear_z(x, 0)
    assert dcpe._C.cpu_list_stats()["handover"] == 0
    _linear_z(x, cache)
    assert 0 < dcpe._C.cpu_list_stats()["handover"] <= m
    # a far cut (n / 8): the clusters fit before its merges are known; a near one
    # (0.55 n, above n / 2): its merges are known before they fit
    _check_cut_handovers(monkeypatch, x, cache, z0, m, (
        (n // 8, "0", True), (n * 55 // 100, "0", False), (n * 55 // 100, "1", True),
        (n * 55 // 100, None, None)))


def _check_cut_handovers(monkeypatch, x: np.ndarray, cache: int, z0: np.ndarray, m: int,
                         cases) -> None:
    """For each (k, DCPE_CPU_CUT_HANDOVER or None, handed over or None): a flat cut at k
    under ``cache`` hands over (to at most m clusters) or not, as said, and its labels are
    those of the rounds alone (``z0``)."""
    n = len(x)
    for k, flag, handed in cases:
        with monkeypatch.context() as mp:
            if flag is not None:
                mp.setenv("DCPE_CPU_CUT_HANDOVER", flag)
            z = _cut_z(x, k, cache)
        got = dcpe._C.cpu_list_stats()["handover"]
        if handed is not None:
            assert (0 < got <= m) if handed else got == 0, (k, flag, got)
        assert same_partition(cut_z(z, n, k), cut_z(z0, n, k)), (k, flag)


@pytest.mark.parametrize("d", [13, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_over_at_13_to_16_dimensions_waits_for_costly_searches(monkeypatch, d, dtype):
    # from 13 to 16 dimensions (the scan with short lists) a whole tree, and a flat cut
    # before its merges are known, hand over only once the last search summed 1/128 of the
    # token pairs (handover_now()): a cut at k = 2, whose rounds are the whole tree's until
    # its merges are known, hands over to the same clusters as the whole tree, and to fewer
    # than at once (DCPE_CPU_CUT_HANDOVER=1) on clumps of the sample codebook's generator,
    # whose short lists settle most searches. DCPE_CPU_CUT_HANDOVER=0 keeps a far cut off
    # the matrix; the labels are those of the rounds alone every way
    n = 1200
    x = make_sample_codebook(n, d).astype(dtype)
    m = n // 2
    cache = m * (m - 1) // 2 * x.dtype.itemsize
    z0 = _linear_z(x, 0)
    z = _linear_z(x, cache)
    tree = dcpe._C.cpu_list_stats()["handover"]
    assert 0 < tree <= m
    for k in (2, n // 8, n // 2):
        assert same_partition(cut_z(z, n, k), cut_z(z0, n, k)), k
    _cut_z(x, 2, cache)
    assert dcpe._C.cpu_list_stats()["handover"] == tree
    with monkeypatch.context() as mp:
        mp.setenv("DCPE_CPU_CUT_HANDOVER", "1")
        _cut_z(x, 2, cache)
    assert tree < dcpe._C.cpu_list_stats()["handover"] <= m
    k = n // 8  # the clusters fit the cache long before the cut's merges are known
    _check_cut_handovers(monkeypatch, x, cache, z0, m,
                         ((k, "0", False), (k, "1", True), (k, None, None)))


def _exact_average(x: np.ndarray, outer: list[int], inner: list[int]) -> float:
    """The linear engine's exact average of two clusters, as a reference.

    Token distances in the input's dtype, coordinate differences squared and summed in
    coordinate order, then the square root; summed in float64 over the outer cluster's
    tokens in order and, for each, over the inner cluster's in blocks of 16 (each block's
    sum added to the total) and then one at a time.
    """
    t = x[inner][None, :, :] - x[outer][:, None, :]
    acc = t[:, :, 0] * t[:, :, 0]
    for k in range(1, x.shape[1]):
        acc = acc + t[:, :, k] * t[:, :, k]
    dist = np.sqrt(acc).astype(np.float64)
    ni, total = len(inner), 0.0
    for row in dist:
        j = 0
        while j + 16 <= ni:
            s = 0.0
            for v in row[j:j + 16]:
                s += v
            total += s
            j += 16
        for v in row[j:]:
            total += v
    return total / (float(len(outer)) * float(ni))


@pytest.mark.parametrize("d", [8, 37, 256])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_merge_height_is_the_exact_average_bit_for_bit(rng, d, dtype):
    # every height of the rounds (cache 0: no hand-over) is the exact average of its two
    # clusters, summed in one order whichever path computes it (token pairs as vector
    # lanes or block sums): each cluster's tokens in the engine's order (the part holding
    # the smaller token index first), the smaller cluster outside (the smaller index on
    # equal sizes)
    n = 200
    x = tie_free(rng, n, d, dtype)
    z = _linear_z(x, 0)
    members = {i: [i] for i in range(n)}
    shapes = set()
    tails = 0
    for t, (a, b, h, _) in enumerate(z):
        first, second = sorted((members.pop(int(a)), members.pop(int(b))), key=min)
        outer, inner = ((second, first) if len(second) < len(first) else (first, second))
        assert h == _exact_average(x, outer, inner), (t, len(outer), len(inner))
        members[n + t] = first + second
        shapes.add((min(len(outer), 2), min(len(inner), 16)))
        # block sums whose inner cluster ends in a partial run of 16 tokens (a masked run)
        tails += len(outer) >= 2 and len(inner) > 16 and len(inner) % 16 != 0
    assert {(1, 1), (2, 2), (2, 16)} <= shapes  # one-token, small and block-summed pairs
    assert tails >= 1


@pytest.mark.parametrize("offset,dtype", [(1e6, np.float64), (1e3, np.float32)])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_far_from_the_origin_the_scan_misses_no_neighbour(rng, offset, dtype, metric):
    # above 16 dimensions the scan tests a centroid by ||q||^2 + ||p||^2 - 2 <q, p>, which
    # cancels badly here; its error bound must still let every neighbour through
    n, d = 300, 37
    x = (tie_free(rng, n, d, np.float64) * 0.05 + offset).astype(dtype)
    zs = scipy_linkage(x.astype(np.float64), metric=metric)
    zm = _matrix_z(x, metric=metric)
    for cache in CACHES if metric == "euclidean" else (0,):
        zl = _linear_z(x, cache, metric=metric)
        for k in (2, 10, n // 2, n - 5):
            assert same_partition(cut_z(zl, n, k), cut_z(zm, n, k)), k
            assert same_partition(cut_z(zl, n, k), cut_z(zs, n, k)), k


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_near_duplicate_tokens_the_scan_misses_no_neighbour(rng, metric):
    # groups of four tokens 1e-9 apart: the scan's estimate of their distances from dot
    # products is noise, and only its error bound keeps the true neighbour in the search
    groups, d = 60, 37
    base = np.repeat(tie_free(rng, groups, d), 4, axis=0)
    x = base + 1e-9 * rng.standard_normal(base.shape)
    n = len(x)
    zs = scipy_linkage(x, metric=metric)
    zl = _linear_z(x, 0, metric=metric)
    for k in (2, 10, groups, 2 * groups, n - 5):
        assert same_partition(cut_z(zl, n, k), cut_z(zs, n, k)), k


@pytest.mark.parametrize("amx", ["", "0"])
@pytest.mark.parametrize("scale", [1e60, 1e-70, 1e140, 1e150])
def test_extreme_magnitudes_change_no_merge(rng, monkeypatch, scale, amx):
    # the scan's dot products and squared norms of coordinates near 1e60 or 1e-70 (products
    # near 1e120 or 1e-140) stay within its error bound, relative and absolute; from about
    # 1e140 the copies' scaling is clamped (2^-400) and their products overflow float32,
    # and a dot product that is not finite excludes nothing (DCPE_CPU_AMX=0: the float32
    # products where the CPU has AMX tiles)
    if amx:
        monkeypatch.setenv("DCPE_CPU_AMX", amx)
    n, d = 200, 37
    x = tie_free(rng, n, d) * scale
    zm, zl = _matrix_z(x), _linear_z(x, 0)
    assert hierarchy_sets(zl, n) == hierarchy_sets(zm, n)


@pytest.mark.filterwarnings("ignore:max_cluster_size")
@pytest.mark.parametrize("cap", [1, 3, 8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("d", [4, 40])
def test_size_cap_equals_matrix_engine(rng, cap, dtype, cache, d):
    n = 240
    x = tie_free(rng, n, d, dtype)
    zm = _matrix_z(x, cap=cap)
    zl = _linear_z(x, cache, cap=cap)
    assert zl.shape == zm.shape
    for k in sorted({1, 2, n // cap, n // 2, n - 1, n}):
        assert same_partition(cut_z(zl, n, k), cut_z(zm, n, k))
        assert np.array_equal(
            dcpe.cluster(x, k, max_cluster_size=cap, engine="linear", memory_limit="8MiB"),
            cpu.labels(x, k, method="average", metric="euclidean", max_cluster_size=cap,
                       plan=cpu.Plan("matrix")))


def test_every_merge_is_a_minimum(rng):
    x = tie_free(rng, 200, 3)
    for cap in (None, 5):
        for cache in CACHES:
            merged, best = replay_gaps(_linear_z(x, cache, cap=cap), x, max_cluster_size=cap)
            np.testing.assert_allclose(merged, best, rtol=1e-9)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("n,d", [(2, 2), (50, 2), (333, 8), (400, 16), (500, 64),
                                 (200, 256)])
def test_closed_forms_equal_scipy(rng, metric, n, d):
    x = tie_free(rng, n, d)
    zs = scipy_linkage(x, metric=metric)
    z = _linear_z(x, 0, metric=metric)  # the closed form on moments
    np.testing.assert_allclose(z[:, 2], zs[:, 2], rtol=1e-9, atol=1e-13)
    for k in _ks(n):
        assert same_partition(cut_z(z, n, k), cut_z(zs, n, k))
    zm = _matrix_z(x, metric=metric)
    assert hierarchy_sets(z, n) == hierarchy_sets(zm, n)
    za = dcpe.linkage(x, metric=metric, backend="cpu")  # auto
    assert hierarchy_sets(za, n) == hierarchy_sets(z, n)


def test_auto_takes_moments_at_low_d_and_the_matrix_above():
    for metric in ("sqeuclidean", "cosine"):
        def engine(n, d, limit=None, metric=metric):
            return cpu.choose_engine(n, d, method="average", metric=metric,
                                     dtype=np.float32, memory_limit=limit).engine

        # at most 128 dimensions the moments are the faster engine at any N
        assert engine(2048, 8) == engine(16384, 16) == engine(262144, 8) == "linear"
        assert engine(2048, 17) == engine(16384, 64) == engine(65536, 128) == "linear"
        # above, the matrix when it fits (it is faster there), moments when it does not
        assert engine(2048, 129) == engine(16384, 256) == engine(32768, 256) == "matrix"
        assert engine(16384, 256, "256MiB") == engine(262144, 256, "8GiB") == "linear"


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("d", [5, 37])  # a kd-tree; groups of searches scanning centroids
def test_closed_forms_with_cap_equal_matrix_engine(rng, metric, d):
    n = 300
    x = tie_free(rng, n, d)
    for cap in (2, 7):
        zl = _linear_z(x, 0, metric=metric, cap=cap)
        zm = _matrix_z(x, metric=metric, cap=cap)
        for k in (1, n // cap, n // 2, n):
            assert same_partition(cut_z(zl, n, k), cut_z(zm, n, k))


def test_closed_forms_in_float32_equal_scipy_on_the_same_values(rng):
    x = tie_free(rng, 400, 8, np.float32)
    for metric in ("sqeuclidean", "cosine"):
        z = dcpe.linkage(x, metric=metric)
        zs = scipy_linkage(x.astype(np.float64), metric=metric)
        for k in (2, 40, 200):
            assert same_partition(cut_z(z, 400, k), cut_z(zs, 400, k))


def _cut_z(x: np.ndarray, k: int, cache: int, *, metric: str = "euclidean",
           cap: int | None = None) -> np.ndarray:
    """The rows of a flat cut's run at ``k`` (``max_merges = N - k``), in greedy order."""
    return cpu._ext().linkage_cpu(x, "average", metric, cap or 0, 0, len(x) - k, "linear",
                                  cache)


@pytest.mark.parametrize("n,d", [(1500, 2), (600, 8), (300, 64), (250, 37)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cap", [None, 6])
@pytest.mark.parametrize("cache", CACHES)
def test_flat_cut_stops_early_and_changes_no_label(rng, n, d, dtype, cap, cache):
    x = tie_free(rng, n, d, dtype)
    full = _linear_z(x, cache, cap=cap)
    shorter = 0
    for k in (1, 2, 7, n // 10, n // 2, n - 1):
        z = _cut_z(x, k, cache, cap=cap)
        assert z.shape[0] >= min(n - k, full.shape[0])
        shorter += z.shape[0] < full.shape[0]
        assert same_partition(cut_z(z, n, k), cut_z(full, n, k)), k
        # the first N - k merges are the full run's, up to the float32 rounding of the
        # heights that the matrix hand-over stores
        steps = min(n - k, full.shape[0])
        np.testing.assert_allclose(z[:steps, 2], full[:steps, 2], rtol=1e-6)
        assert hierarchy_sets(z[:steps], n) == hierarchy_sets(full[:steps], n)
        via_api = cpu.labels(x, k, method="average", metric="euclidean", max_cluster_size=cap,
                             plan=cpu.Plan("linear", cache))
        assert np.array_equal(via_api, cut_z(z, n, k))
    assert shorter >= 2  # the cuts below the top stopped before the whole tree


def test_flat_cut_equals_scipy_and_sklearn(rng):
    x = tie_free(rng, 2000, 3, np.float32)
    zs = scipy_linkage(x)
    for k in (3, 50, 1000, 1900):
        labels = dcpe.cluster(x, k, engine="linear", memory_limit="1MiB")
        assert same_partition(labels, cut_z(zs, 2000, k))
    assert same_partition(dcpe.cluster(x, 64, engine="linear", memory_limit="1MiB"),
                          sklearn_labels(x, 64))


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("cap", [None, 5])
@pytest.mark.parametrize("n,d", [(800, 8), (300, 37)])
def test_flat_cut_of_the_closed_forms_changes_no_label(rng, metric, cap, n, d):
    x = tie_free(rng, n, d)
    full = _linear_z(x, 0, metric=metric, cap=cap)
    shorter = 0
    for k in (1, 9, n // 3, n // 2, n - 1):
        z = _cut_z(x, k, 0, metric=metric, cap=cap)
        shorter += z.shape[0] < full.shape[0]
        assert same_partition(cut_z(z, n, k), cut_z(full, n, k)), k
    assert shorter >= 2


def test_flat_cut_with_ties_equals_the_whole_tree_cut(rng):
    # without the matrix hand-over both runs find their merges in the same rounds, so even
    # tied heights come in the same order (the hand-over's float32 matrix rounds them)
    x = integer_grid(rng, 400, 3)
    full = _linear_z(x, 0)
    for k in (1, 5, 17, 60, 200, 399, 400):
        z = _cut_z(x, k, 0) if k < 400 else full[:0]
        labels = cut_z(z, 400, k)
        assert np.array_equal(labels, cut_z(full, 400, k))
        assert int(labels.max()) + 1 == k


@pytest.mark.parametrize("cache", CACHES)
def test_ties_are_deterministic_and_give_exactly_k(rng, cache):
    x = integer_grid(rng, 300, 3)  # many tied distances and duplicate rows
    z1 = _linear_z(x, cache)
    z2 = _linear_z(x, cache)
    assert np.array_equal(z1, z2)
    for k in (1, 5, 17, 150, 299, 300):
        labels = dcpe.cluster(x, k, engine="linear", memory_limit="4MiB")
        assert int(labels.max()) + 1 == k
    # duplicates merge first, at height 0
    n_dup = len(x) - len(np.unique(x, axis=0))
    assert np.all(z1[:n_dup, 2] == 0.0)


def test_same_result_for_any_thread_count(rng):
    x = np.concatenate([integer_grid(rng, 200, 2), tie_free(rng, 300, 2)])
    code = (
        "import sys, numpy as np; from dcpe.backends import cpu; "
        "x = np.load(sys.argv[1]); "
        "z = cpu.linkage(x, method='average', metric='euclidean', max_cluster_size=None, "
        "plan=cpu.Plan('linear', int(sys.argv[3]))); "
        "cut = cpu._ext().linkage_cpu(x, 'average', 'euclidean', 0, 0, len(x) - 40, "
        "'linear', int(sys.argv[3])); "  # a flat cut, which stops early
        "np.save(sys.argv[2], np.concatenate([z, cut]))"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "x.npy")
        np.save(src, x)
        for cache in CACHES:
            results = []
            for threads in ("1", "2"):
                out = os.path.join(tmp, f"z{threads}.npy")
                env = dict(os.environ, DCPE_NUM_THREADS=threads)
                subprocess.run([sys.executable, "-c", code, src, out, str(cache)], env=env,
                               check=True)
                results.append(np.load(out))
            assert np.array_equal(results[0], results[1])


def test_input_not_mutated(rng):
    x = tie_free(rng, 100, 8, np.float32)
    before = x.copy()
    dcpe.cluster(x, 10, engine="linear", memory_limit="1MiB")
    assert np.array_equal(x, before)


def test_progress_is_reported(rng):
    from dcpe._api import _run

    x = tie_free(rng, 500, 2)
    seen = []
    _run(x, linkage="average", metric="euclidean", max_cluster_size=None, backend="cpu",
         dtype=None, engine="linear", memory_limit="1MiB",
         progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (499, 499)
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


# --------------------------------------------------------------------------- the choice


def test_the_linear_engines_cache_may_be_larger_above_12_dimensions():
    # the cache is at most a quarter of the budget and 64 times the data, within 2 GiB at
    # most 12 dimensions (the kd-tree's) and 8 GiB above (where the clusters go to their
    # matrix as soon as it fits)
    from dcpe._memory import memory_budget

    budget = memory_budget("12GiB")
    if budget // 4 <= (2 << 30):  # pragma: no cover - a machine with little memory free
        pytest.skip("less than 8 GiB of memory available")
    f32 = np.float32
    high = cpu.choose_engine(262144, 256, method="average", metric="euclidean", dtype=f32,
                             memory_limit="12GiB")
    low = cpu.choose_engine(1 << 22, 12, method="average", metric="euclidean", dtype=f32,
                            memory_limit="12GiB")
    scan = cpu.choose_engine(1 << 22, 13, method="average", metric="euclidean", dtype=f32,
                             memory_limit="12GiB")
    assert high.engine == low.engine == scan.engine == "linear"
    assert (2 << 30) < high.cache_bytes <= min(8 << 30, budget // 4)
    assert (2 << 30) < scan.cache_bytes <= min(8 << 30, budget // 4)
    assert low.cache_bytes == 2 << 30


def test_auto_takes_the_matrix_engine_for_small_problems_and_linear_beyond():
    f32 = np.float32
    assert cpu.choose_engine(2048, 8, method="average", metric="euclidean",
                             dtype=f32).engine == "matrix"
    assert cpu.choose_engine(16384, 17, method="average", metric="euclidean",
                             dtype=f32).engine == "matrix"
    assert cpu.choose_engine(16384, 256, method="average", metric="euclidean",
                             dtype=f32).engine == "matrix"
    # from 13 to 16 dimensions (the scan with short lists) the matrix while the tokens'
    # float32 matrix fits the linear engine's least cache (the linear engine would build
    # it at once), the linear engine past it
    for d in (13, 16):
        assert cpu.choose_engine(11585, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "matrix"
        assert cpu.choose_engine(11586, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "linear"
        assert cpu.choose_engine(16384, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "linear"
    # from 9 to 12 dimensions (the kd-tree) the matrix up to 16,384 tokens
    for d in (9, 12):
        assert cpu.choose_engine(16384, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "matrix"
        assert cpu.choose_engine(16385, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "linear"
    # from 17 to 128 dimensions (the scan) the linear engine is the faster one from about
    # 32,768 tokens on: the matrix engine up to 16,384 tokens at 17 to 64 dimensions, up to
    # 24,576 at 65 to 128 (where, without AMX tiles, it stays the faster one longer); above
    # 128, the matrix engine wherever it fits
    for d in (13, 16, 17, 64, 65, 128):
        wide = d > 64
        assert cpu.choose_engine(16385, d, method="average", metric="euclidean",
                                 dtype=f32).engine == ("matrix" if wide else "linear")
        assert cpu.choose_engine(24576, d, method="average", metric="euclidean",
                                 dtype=f32).engine == ("matrix" if wide else "linear")
        assert cpu.choose_engine(24577, d, method="average", metric="euclidean",
                                 dtype=f32).engine == "linear"
        assert cpu.choose_engine(65536, d, method="average", metric="euclidean",
                                 dtype=f32, memory_limit="16GiB").engine == "linear"
    assert cpu.choose_engine(16385, 129, method="average", metric="euclidean",
                             dtype=f32).engine == "matrix"
    assert cpu.choose_engine(65536, 256, method="average", metric="euclidean",
                             dtype=f32, memory_limit="16GiB").engine == "matrix"
    # at most 8 dimensions the linear engine is the faster one from a few thousand tokens
    assert cpu.choose_engine(4096, 8, method="average", metric="euclidean",
                             dtype=f32).engine == "linear"
    big = cpu.choose_engine(262144, 8, method="average", metric="euclidean", dtype=f32,
                            memory_limit="2GiB")
    assert big.engine == "linear" and 0 < big.cache_bytes <= (2 << 30) // 4
    # a budget too small for the matrix sends even small problems to the linear engine
    small = cpu.choose_engine(16384, 16, method="average", metric="euclidean", dtype=f32,
                              memory_limit="64MiB")
    assert small.engine == "linear"
    # linkages without a linear engine keep the matrix; centroid/ward need no matrix
    assert cpu.choose_engine(1000, 8, method="single", metric="euclidean",
                             dtype=f32).engine == "matrix"


def test_insufficient_memory_only_when_even_linear_cannot_fit(rng):
    x = tie_free(rng, 2000, 8, np.float32)
    dcpe.cluster(x, 10, memory_limit="2MiB")  # far below the 8 MB matrix: linear engine
    with pytest.raises(dcpe.InsufficientMemoryError, match="linear-memory engine"):
        dcpe.cluster(x, 10, memory_limit="100KiB")
    with pytest.raises(dcpe.InsufficientMemoryError, match="matrix engine"):
        dcpe.cluster(x, 10, linkage="single", memory_limit="2MiB")
    with pytest.raises(dcpe.InsufficientMemoryError):
        dcpe.cluster(x, 10, engine="matrix", memory_limit="2MiB")


def test_memory_limit_forms_are_accepted(rng):
    from dcpe._memory import parse_memory_limit

    assert parse_memory_limit("8GiB") == 8 << 30
    assert parse_memory_limit("512 mib") == 512 << 20
    assert parse_memory_limit("1.5G") == 3 << 29
    assert parse_memory_limit("2GB") == 2 * 10**9
    assert parse_memory_limit(4096) == 4096
    assert parse_memory_limit(np.int64(4096)) == 4096
    assert parse_memory_limit(8e9) == 8 * 10**9
    x = tie_free(rng, 50, 2)
    est = dcpe.DCPE(n_clusters=5, memory_limit="16MiB", engine="linear").fit(x)
    assert same_partition(est.labels_, dcpe.cluster(x, 5))


@pytest.mark.parametrize("bad", ["8 parsecs", "GiB", "", "-1GiB", "0", 0, -5, 1.5, float("nan"),
                                 float("inf"), True, [8], "1e-3"])
def test_bad_memory_limit_is_rejected_before_any_work(bad):
    with pytest.raises((ValueError, TypeError), match="memory_limit"):
        dcpe.cluster(np.zeros((4, 2)), 2, memory_limit=bad)
    with pytest.raises((ValueError, TypeError), match="memory_limit"):
        dcpe.linkage(np.zeros((4, 2)), memory_limit=bad)


def test_bad_engine_is_rejected(rng):
    x = tie_free(rng, 20, 2)
    with pytest.raises(ValueError, match="engine"):
        dcpe.cluster(x, 2, engine="fast")
    with pytest.raises(ValueError, match="average linkage only"):
        dcpe.cluster(x, 2, linkage="single", engine="linear")
    with pytest.raises(ValueError, match="engine"):
        dcpe.cluster(x, 2, backend="reference", engine="linear")


# Above 16 dimensions the centroid scan's dot products run on AMX tiles in bfloat16 where
# the CPU has them (dcpe._C.cpu_amx()); DCPE_CPU_AMX=0 gives the float32 products. Only
# the test's error bound differs, so the merges must be the same, bit for bit.
_AMX = bool(dcpe._C.cpu_amx())
needs_amx = pytest.mark.skipif(not _AMX, reason="this CPU or build has no AMX tiles")


def _near_duplicates(rng, groups: int, per: int, d: int) -> np.ndarray:
    # groups of points within ~1e-4 of each other around unit-scale centres: their squared
    # distances (~1e-7) lie far below a bfloat16 product's rounding (2^-8 of ||p||^2 ~ 1),
    # so a test whose bound left out that rounding would drop true neighbours
    base = np.repeat(rng.standard_normal((groups, d)) / np.sqrt(d), per, axis=0)
    x = base + 1e-4 * rng.standard_normal(base.shape) / np.sqrt(d)
    return x[rng.permutation(len(x))]


@needs_amx
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("n,d", [(90, 17), (203, 37), (300, 256), (517, 100)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_amx_scan_gives_the_same_merges(rng, monkeypatch, metric, n, d, dtype):
    x = tie_free(rng, n, d, dtype)
    for cache in CACHES:
        z_amx = _linear_z(x, cache, metric=metric)
        with monkeypatch.context() as m:
            m.setenv("DCPE_CPU_AMX", "0")
            assert not dcpe._C.cpu_amx()
            z_32 = _linear_z(x, cache, metric=metric)
        np.testing.assert_array_equal(z_amx, z_32)


@needs_amx
@pytest.mark.parametrize("d", [24, 256])
@pytest.mark.parametrize("cap", [None, 3])
def test_amx_scan_keeps_neighbours_below_bfloat16_rounding(rng, monkeypatch, d, cap):
    x = _near_duplicates(rng, 40, 6, d)
    n = len(x)
    z_amx = _linear_z(x, 0, cap=cap)
    monkeypatch.setenv("DCPE_CPU_AMX", "0")
    np.testing.assert_array_equal(z_amx, _linear_z(x, 0, cap=cap))
    zm = _matrix_z(x, cap=cap)
    assert hierarchy_sets(z_amx, n) == hierarchy_sets(zm, n)
    if cap is None:
        zs = scipy_linkage(x)
        for k in (2, 40, 120, n - 1):
            assert same_partition(cut_z(z_amx, n, k), cut_z(zs, n, k))


@needs_amx
@pytest.mark.parametrize("scale", [1e60, 1e-70, 1e150])
def test_amx_scan_at_extreme_magnitudes(rng, monkeypatch, scale):
    # at 1e150 the scaling is clamped (2^-400) and products of the copies overflow float32:
    # a dot product that is not finite excludes nothing
    n, d = 150, 40
    x = tie_free(rng, n, d) * scale
    z_amx = _linear_z(x, 0)
    monkeypatch.setenv("DCPE_CPU_AMX", "0")
    np.testing.assert_array_equal(z_amx, _linear_z(x, 0))
    assert hierarchy_sets(z_amx, n) == hierarchy_sets(_matrix_z(x), n)


def test_amx_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("DCPE_CPU_AMX", "0")
    assert dcpe._C.cpu_amx() is False
    monkeypatch.delenv("DCPE_CPU_AMX")
    assert dcpe._C.cpu_amx() is _AMX


# ----------------------------------------------------------------------- neighbour lists
# Above 12 dimensions (Euclidean) the first search fills each token's list of its nearest
# tokens, and later searches settle from the lists where they prove that no other cluster
# is nearer (linear_linkage.cpp, settle_from_lists()); DCPE_CPU_LISTS=0 turns them off.
# Either way every search ends with the same nearest neighbour (ties included), so the
# merges must be the same bit for bit.


def _runs_under(monkeypatch, run, settings) -> tuple[list, list[dict]]:
    """run() under each dict of environment settings: its outputs and cpu_list_stats()."""
    out, stats = [], []
    for env in settings:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            out.append(run())
            stats.append(dict(dcpe._C.cpu_list_stats()))
    return out, stats


def _with_and_without_lists(monkeypatch, run):
    """``run()`` with the lists and without, and the lists' counts of the first run."""
    out, stats = _runs_under(monkeypatch, run, [{"DCPE_CPU_LISTS": f} for f in ("1", "0")])
    assert stats[1]["searches"] == 0  # none without them
    return out[0], out[1], stats[0]


def _lists_input(rng, kind: str, n: int, d: int, dtype) -> np.ndarray:
    if kind == "codebook":  # clustered, unit rows: most searches settle from the lists
        from dcpe.datasets import make_sample_codebook

        return make_sample_codebook(n=n, d=d, seed=int(rng.integers(1 << 30))).astype(dtype)
    if kind == "tie_free":
        return tie_free(rng, n, d, dtype)
    if kind == "grid":  # tied distances and duplicate rows
        return integer_grid(rng, n, d).astype(dtype)
    return _near_duplicates(rng, n // 6, 6, d).astype(dtype)


@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid", "near_duplicates"])
@pytest.mark.parametrize("d", [13, 16, 17, 64, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [None, 5])
def test_neighbour_lists_give_the_same_merges(rng, monkeypatch, kind, d, dtype, cap):
    n = 600
    x = _lists_input(rng, kind, n, d, dtype)
    for cache in CACHES:
        z_on, z_off, stats = _with_and_without_lists(
            monkeypatch, functools.partial(_linear_z, x, cache, cap=cap))
        np.testing.assert_array_equal(z_on, z_off)
        assert 0 <= stats["settled"] <= stats["tried"] <= stats["searches"]
        assert stats["searches"] > 0
        if kind == "codebook":
            assert stats["settled"] > stats["searches"] // 2


@pytest.mark.parametrize("kind", ["codebook", "grid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [None, 5])
def test_neighbour_lists_of_any_length_give_the_same_merges(rng, monkeypatch, kind, dtype,
                                                            cap):
    # DCPE_CPU_LISTS=K sets the lists' length (by default about sqrt(N) / 2, from 64):
    # short lists settle fewer searches, long ones more, and the merges are the same
    n, d = 600, 64
    x = _lists_input(rng, kind, n, d, dtype)
    run = functools.partial(_linear_z, x, 0, cap=cap)
    z_on, z_off, _ = _with_and_without_lists(monkeypatch, run)
    np.testing.assert_array_equal(z_on, z_off)
    settled = {}
    for length in (8, 24, 200):
        with monkeypatch.context() as m:
            m.setenv("DCPE_CPU_LISTS", str(length))
            np.testing.assert_array_equal(run(), z_off)
            stats = dict(dcpe._C.cpu_list_stats())
        assert 0 <= stats["settled"] <= stats["tried"] <= stats["searches"]
        settled[length] = stats["settled"] / stats["searches"]
    if kind == "codebook":  # the length is the one asked for: longer lists settle more
        assert settled[8] < settled[200]
        assert settled[200] > 0.5


@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid"])
@pytest.mark.parametrize("cap", [None, 4])
def test_neighbour_lists_give_the_same_flat_cut(rng, monkeypatch, kind, cap):
    n, d = 900, 48
    x = _lists_input(rng, kind, n, d, np.float32)
    for k in (n // 2, n // 8, 3):
        z_on, z_off, stats = _with_and_without_lists(
            monkeypatch, functools.partial(_cut_z, x, k, 0, cap=cap))
        np.testing.assert_array_equal(z_on, z_off)
        assert stats["searches"] > 0


def _first_search_runs(x: np.ndarray) -> tuple:
    """A whole tree, a flat cut at N/3 and a whole tree under a cap, each from scratch."""
    return (functools.partial(_linear_z, x, 0), functools.partial(_cut_z, x, len(x) // 3, 0),
            functools.partial(_linear_z, x, 0, cap=6))


@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid", "near_duplicates"])
@pytest.mark.parametrize("d", [40, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_search_in_cells_fills_the_same_lists(rng, monkeypatch, kind, d, dtype):
    # the first search scans the tokens cell by cell, each group of searching tokens from
    # its own cell (scan_order.h); DCPE_CPU_SCAN_ORDER=0 scans them in index order. Every
    # token within a search's final radius is visited in either order, and the lists keep
    # the nearest by (distance, index): the same lists (so the same searches settle from
    # them) and the same merges, bit for bit, ties and duplicate rows included; for two
    # kinds also with the scan's float32 products in place of the AMX tiles (its other
    # loop over the points)
    x = _lists_input(rng, kind, 1500, d, dtype)  # five cells
    amx = ("1", "0") if kind in ("codebook", "grid") else ("1",)
    settings = [{"DCPE_CPU_AMX": tiles, "DCPE_CPU_SCAN_ORDER": flag}
                for tiles, flag in itertools.product(amx, ("1", "0"))]
    for run in _first_search_runs(x):
        out, stats = _runs_under(monkeypatch, run, settings)
        for st in stats:  # (in index order the first search tests each pair twice)
            st.pop("pair_rescans")
        for z, st in zip(out[1:], stats[1:]):
            np.testing.assert_array_equal(z, out[0])
            assert st == stats[0]
        assert stats[0]["searches"] > 0


@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid", "jittered_grid",
                                  "near_duplicates", "clump"])
@pytest.mark.parametrize("d", [17, 40, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_search_by_pairs_fills_the_same_lists(rng, monkeypatch, kind, d, dtype):
    # above 16 dimensions the first search computes each pair's float32 dot product once
    # for both of its tokens, in blocks of its order met in rounds on the threads
    # (KdTree::scan_pairs()); DCPE_CPU_PAIRS=0 scans every token for each group of
    # searching tokens. Every token within a search's final radius is visited either way,
    # and the lists keep the nearest by (distance, index): the same lists, searches and
    # merges, bit for bit, on one thread or two (blocks of other sizes, visits in another
    # order; the lists compared by their digest). The heap keeps float32 keys of the
    # squared distances and orders equal keys by the distances: on the jittered grid many
    # distances differ by less than a key's rounding (its zero coordinates keep their
    # jitter in float32 too). A token whose K-th
    # nearest lies within the margins of its nearest searches again as before: each of the
    # clump's hundred rows within 1e-12 of the origin (K = 64), beside the codebook's rows
    # moved 4 away
    n = 1500
    if kind == "jittered_grid":
        x = (integer_grid(rng, n, d) + 1e-9 * rng.standard_normal((n, d))).astype(dtype)
    elif kind == "clump":
        x = _lists_input(rng, "codebook", n, d, np.float64) + 4 / np.sqrt(d)
        x[:100] = 1e-13 * rng.standard_normal((100, d))
        x = x[rng.permutation(n)].astype(dtype)
    else:
        x = _lists_input(rng, kind, n, d, dtype)
    ext = cpu._ext()
    # (a cache of 1 MiB: the rounds after the first, then the matrix of 724 clusters)
    runs = [functools.partial(ext.linkage_cpu, x, "average", "euclidean", cap, threads, mm,
                              "linear", 1 << 20)
            for threads in (1, 2) for mm, cap in ((0, 0), (n - n // 3, 0), (0, 6))]
    for run in runs:
        out, stats = _runs_under(monkeypatch, run, [{"DCPE_CPU_AMX": "0", "DCPE_CPU_PAIRS": f}
                                                    for f in ("1", "0")])
        np.testing.assert_array_equal(out[1], out[0])
        rescans = stats[0].pop("pair_rescans")
        assert stats[1].pop("pair_rescans") == 0
        assert stats[1] == stats[0]
        assert stats[0]["searches"] > 0 and stats[0]["lists_digest"] != 0
        if kind == "clump":
            assert rescans == 100
        elif kind in ("codebook", "tie_free"):
            assert rescans == 0


@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid", "near_duplicates"])
@pytest.mark.parametrize("d", [13, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_search_skips_blocks_beyond_its_queries(rng, monkeypatch, kind, d, dtype):
    # from 13 to 16 dimensions the first search skips the blocks of 16 tokens (kd-split
    # inside each cell, scan_order.h) whose bounding box is beyond every searching token's
    # radius (KdTree::for_blocks()); DCPE_CPU_BLOCKS=0 scans every token. A skipped token
    # would not have been visited: the same lists, searches and merges, bit for bit, ties
    # and duplicate rows included. (The AMX tiles' loop does not skip: the float32 one here.)
    x = _lists_input(rng, kind, 1500, d, dtype)  # five cells
    settings = [{"DCPE_CPU_AMX": "0", "DCPE_CPU_BLOCKS": flag} for flag in ("1", "0")]
    for run in _first_search_runs(x):
        out, stats = _runs_under(monkeypatch, run, settings)
        np.testing.assert_array_equal(out[1], out[0])
        tested, skipped = stats[0].pop("tested_blocks"), stats[0].pop("skipped_blocks")
        assert stats[1].pop("tested_blocks") == stats[1].pop("skipped_blocks") == 0
        assert stats[1] == stats[0]
        assert 0 <= skipped <= tested
        assert stats[0]["searches"] > 0
        if kind == "codebook":
            assert skipped > 0
    # coordinates past 2^500, whose boxes' squares could overflow: no blocks, the same merges
    far = x.astype(np.float64) * 2.0**501
    assert np.abs(far).max() > 2.0**500
    with monkeypatch.context() as m:
        m.setenv("DCPE_CPU_AMX", "0")
        z = _linear_z(far, 0)
        assert dcpe._C.cpu_list_stats()["skipped_blocks"] == 0
        m.setenv("DCPE_CPU_BLOCKS", "0")
        np.testing.assert_array_equal(_linear_z(far, 0), z)


@pytest.mark.parametrize("kind", ["codebook", "gaussian"])
def test_first_search_stops_testing_blocks_it_rarely_skips(monkeypatch, kind):
    # once 2^16 blocks were met, the groups test blocks only while at least 1 in 16 was
    # skipped: clustered tokens keep testing (every group tests every block), isotropic
    # Gaussian points, whose blocks are hardly ever beyond a group, stop; the merges are
    # those of the plain scan either way
    n, d = 16384, 16  # 1,024 blocks; 256 groups of 64 (AVX-512) or 512 of 32 (other builds)
    groups = n // dcpe._C.cpu_scan_group()
    if kind == "codebook":
        from dcpe.datasets import make_sample_codebook

        x = make_sample_codebook(n=n, d=d, seed=3)
    else:
        x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    run = functools.partial(_cut_z, x, n // 2, 0)
    out, stats = _runs_under(monkeypatch, run, [{"DCPE_CPU_AMX": "0", "DCPE_CPU_BLOCKS": f}
                                                for f in ("1", "0")])
    np.testing.assert_array_equal(out[1], out[0])
    tested, skipped = stats[0]["tested_blocks"], stats[0]["skipped_blocks"]
    if kind == "codebook":
        assert tested == (n // 16) * groups and skipped * 16 >= tested
    else:
        assert 1 << 16 <= tested < (n // 16) * groups and skipped * 16 < 1 << 16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_searches_the_lists_leave_scan_together_across_batches(rng, monkeypatch, dtype):
    # more searches than a batch (2,048): those the lists do not settle gather across
    # batches and scan in groups of their own (search()); the merges are those without the
    # lists, and those of the first search in index order
    n, d = 6000, 20
    x = _lists_input(rng, "codebook", n, d, dtype)
    for run in (functools.partial(_linear_z, x, 0), functools.partial(_cut_z, x, n // 4, 0)):
        z_on, z_off, stats = _with_and_without_lists(monkeypatch, run)
        np.testing.assert_array_equal(z_on, z_off)
        assert stats["tried"] < stats["searches"] and stats["settled"] < stats["tried"]
        with monkeypatch.context() as m:
            m.setenv("DCPE_CPU_SCAN_ORDER", "0")
            np.testing.assert_array_equal(run(), z_on)


@pytest.mark.parametrize("d", [24, 128])
def test_neighbour_lists_agree_with_scipy(rng, d):
    from dcpe.datasets import make_sample_codebook

    n = 1500
    x = make_sample_codebook(n=n, d=d, seed=int(rng.integers(1 << 30))).astype(np.float64)
    z = _linear_z(x, 0)
    stats = dcpe._C.cpu_list_stats()
    assert stats["settled"] > stats["searches"] // 2  # the lists, not the scans, decided
    zs = scipy_linkage(x)
    for k in (2, 10, n // 8, n // 2, n - 10):
        assert same_partition(cut_z(z, n, k), cut_z(zs, n, k)), k
        cut = _cut_z(x, k, 0)
        assert same_partition(cut_z(cut, n, k), cut_z(zs, n, k)), k


def test_neighbour_lists_only_above_12_dimensions_and_counted(rng, monkeypatch):
    x = tie_free(rng, 300, 16)
    _linear_z(x[:, :12], 0)
    assert dcpe._C.cpu_list_stats()["searches"] == 0  # a kd-tree, no lists
    _linear_z(x, 0, metric="sqeuclidean")  # the closed forms' kd-tree up to 16
    assert dcpe._C.cpu_list_stats()["searches"] == 0
    _linear_z(x[:, :13], 0)
    assert dcpe._C.cpu_list_stats()["searches"] > 0
    _linear_z(tie_free(rng, 300, 17), 0)
    assert dcpe._C.cpu_list_stats()["searches"] > 0
    # their memory is in the linear engine's count (beside what the closed forms count at
    # the same d): K indices and bounds a token, with K = 64 up to 16,384 tokens and about
    # sqrt(N) / 2 past that above 16 dimensions, 16 at any N from 13 to 16; and the first
    # round's order of the tokens (scan_order.h): the order, each token's start, rank and
    # cell, and a subsample's float32 rows
    for n, k, d in ((10_000, 64, 17), (65_536, 128, 17), (262_144, 256, 17),
                    (1 << 22, 512, 17), (10_000, 16, 13), (262_144, 16, 16)):
        ws = functools.partial(dcpe._C.workspace_bytes_cpu, n, d, method="average",
                               elem_size=4, engine="linear")
        grow = ws(metric="euclidean") - ws(metric="sqeuclidean")
        sample = min(n, n // 256 * 64) * d * 4
        assert grow >= n * (k * 8 + 12) + n * 16 + sample
        # K as counted: lists of 64 (DCPE_CPU_LISTS=64) cost 8 (64 - K) bytes a token more
        with monkeypatch.context() as m:
            m.setenv("DCPE_CPU_LISTS", "64")
            longer = ws(metric="euclidean")
        assert longer - ws(metric="euclidean") == n * (64 - k) * 8


# ------------------------------------------------------------------- leaving the kd-tree
# The closed forms' searches start on the kd-tree (at most 16 dimensions) and leave it for
# the scan, for good, once a round's searches computed the distances of more than d / 512
# of the centroids, few of them within their radius (linear_linkage.cpp, leave_tree());
# DCPE_CPU_LEAVE_TREE=0 keeps them on the tree. Either way every search ends with the same
# nearest neighbour (ties to the smaller identity), so the merges must be the same, bit for
# bit. cpu_list_stats() counts the rounds, and those on the tree.


def _switched(monkeypatch, name: str, run):
    """``run()`` with the engine's switch ``name`` on and off, and the run's counts of each."""
    out, stats = [], []
    for flag in ("1", "0"):
        with monkeypatch.context() as m:
            m.setenv(name, flag)
            out.append(run())
            stats.append(dict(dcpe._C.cpu_list_stats()))
    return out, stats


def _leaving_and_staying(monkeypatch, run):
    """``run()`` leaving the tree and staying on it, and the rounds' counts of each."""
    return _switched(monkeypatch, "DCPE_CPU_LEAVE_TREE", run)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("kind", ["codebook", "tie_free", "grid", "near_duplicates"])
@pytest.mark.parametrize("d", [4, 8, 16])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_closed_forms_leave_the_tree_with_the_same_merges(rng, monkeypatch, metric, kind, d,
                                                          dtype):
    n = 1200
    x = _lists_input(rng, kind, n, d, dtype)
    if kind == "grid":
        x = x + 1  # no zero rows (cosine)
    runs = (functools.partial(_linear_z, x, 0, metric=metric),
            functools.partial(_cut_z, x, n // 3, 0, metric=metric),
            functools.partial(_linear_z, x, 0, metric=metric, cap=6))
    for run in runs:
        (z_leave, z_stay), (leave, stay) = _leaving_and_staying(monkeypatch, run)
        np.testing.assert_array_equal(z_leave, z_stay)
        # the grid's flat cut falls among its copies of rows, all merged after the first
        # search (merge_copies()), whose clusters' searches are the second round and last
        shortest = 2 if kind == "grid" and run is runs[1] else 3
        assert stay["tree_rounds"] == stay["rounds"] == leave["rounds"] >= shortest
        if kind in ("codebook", "tie_free") and d >= 8:  # the tree first, then the scan
            assert 0 < leave["tree_rounds"] < leave["rounds"]
        assert leave["refreshes"] == stay["refreshes"] == 0


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_closed_forms_stay_on_the_tree_among_duplicate_rows(rng, monkeypatch, metric):
    # three rows, 200 copies each, merged in the rounds (DCPE_CPU_COPIES=0): a distance of 0
    # between copies and one merge a round of each row's copies; every centroid a search
    # examines lies within its radius, where the scan would cost more than the tree, so
    # the searches stay on it
    monkeypatch.setenv("DCPE_CPU_COPIES", "0")
    distinct = tie_free(rng, 3, 8)
    x = distinct[rng.permutation(np.repeat(np.arange(3), 200))]
    n = len(x)
    (z, z_stay), (leave, stay) = _leaving_and_staying(
        monkeypatch, functools.partial(_linear_z, x, 0, metric=metric))
    assert leave["tree_rounds"] == leave["rounds"] > 100
    np.testing.assert_array_equal(z, z_stay)
    assert np.all(z[:n - 3, 2] == 0) and np.all(z[n - 3:, 2] > 0)
    assert hierarchy_sets(z, n) == hierarchy_sets(_matrix_z(x, metric=metric), n)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_closed_forms_merge_copies_at_exactly_zero(rng, metric):
    # a merged centroid is a step from one centroid towards the other, so merged copies of
    # a row keep it exactly: every merge among copies at height 0, as in the matrix engine
    distinct = tie_free(rng, 5, 3)
    x = distinct[rng.integers(0, 5, size=400)]
    n, n_zero = len(x), len(x) - 5
    for z in (_linear_z(x, 0, metric=metric), _cut_z(x, 5, 0, metric=metric)):
        assert np.all(z[:n_zero, 2] == 0) and np.all(z[n_zero:, 2] > 0)
    zm = _matrix_z(x, metric=metric)
    assert hierarchy_sets(_linear_z(x, 0, metric=metric), n) == hierarchy_sets(zm, n)


def _rows_with_copies(rng: np.random.Generator, n: int, d: int, dtype: type
                      ) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` shuffled rows: one distinct row with n/4 copies, four with tens and the
    rest with one to three, each row's copies at random places; and the rows' counts."""
    m = n // 3
    counts = rng.integers(1, 4, size=m)
    counts[rng.choice(m, 4, replace=False)] = rng.integers(10, 40, size=4)
    counts[0] = n // 4
    distinct = tie_free(rng, m, d, dtype) + 0.5  # no zero rows (cosine)
    x = distinct[rng.permutation(np.repeat(np.arange(m), counts))]
    return x, counts


def _with_and_without_copies(monkeypatch, run):
    """``run()`` with copies merged after the first search, and in the rounds (as before)."""
    return _switched(monkeypatch, "DCPE_CPU_COPIES", run)


def _copy_merges(counts: np.ndarray, cap: int | None) -> int:
    """Merges among copies: c - 1 for c copies, or under a cap runs of cap + 1 copies (a
    cluster leaves once larger than the cap) and what is left."""
    if cap is None:
        return int(np.sum(counts - 1))
    full, rest = np.divmod(counts, cap + 1)
    return int(np.sum(full * cap + np.maximum(rest - 1, 0)))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("d", [3, 8, 16, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cap", [None, 5])
def test_copies_merge_after_the_first_search_as_in_the_rounds(rng, monkeypatch, metric, d,
                                                               dtype, cap):
    # copies of a row, at distance exactly 0, had merged one pair of a row's copies a round
    # (ties go to the smallest identity); merged at once after the first search
    # (merge_copies()), the merges are the rounds' in the same order, also under the cap
    # (runs of cap + 1 copies) and for flat cuts above and among the copies' merges;
    # cache 0: the rounds only (the matrix's own rounds order the copies' merges otherwise)
    x, counts = _rows_with_copies(rng, 600, d, dtype)
    n = len(x)
    n_zero = int(np.sum(counts - 1))
    ks = (len(counts) // 2, n - n_zero // 2)  # a flat cut above the copies and among them
    runs = [functools.partial(_linear_z, x, 0, metric=metric, cap=cap)]
    runs += [functools.partial(_cut_z, x, k, 0, metric=metric, cap=cap) for k in ks]
    for run, k in zip(runs, (None,) + ks):
        (z_ahead, z_rounds), (ahead, rounds) = _with_and_without_copies(monkeypatch, run)
        rows = len(z_rounds) if k is None else n - k
        np.testing.assert_array_equal(z_ahead[:rows], z_rounds[:rows])
        assert ahead["copies"] == _copy_merges(counts, cap) and rounds["copies"] == 0
        if k is None and cap is None:
            # n/4 copies of a row took that many rounds; now the distinct rows' rounds
            assert rounds["rounds"] >= counts.max() - 1 > 2 * ahead["rounds"]
            assert np.all(z_ahead[:n_zero, 2] == 0) and np.all(z_ahead[n_zero:, 2] > 0)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("cap", [None, 4])
def test_copies_merged_ahead_before_a_hand_over(rng, monkeypatch, metric, cap):
    # with the hand-over to the matrix, which merges the copies left its own way, the
    # hierarchy is the same as without merging them ahead and as the matrix engine's, and a
    # flat cut at most the distinct rows gives the same partition
    x, counts = _rows_with_copies(rng, 500, 8, np.float64)
    n = len(x)
    run = functools.partial(_linear_z, x, 4096, metric=metric, cap=cap)
    (z_ahead, z_rounds), (ahead, _) = _with_and_without_copies(monkeypatch, run)
    assert ahead["copies"] == _copy_merges(counts, cap)
    sets = hierarchy_sets(z_ahead, n)
    assert sets == hierarchy_sets(z_rounds, n)
    assert sets == hierarchy_sets(_matrix_z(x, metric=metric, cap=cap), n)
    for k in (1, 7, len(counts)):
        if cap is None:
            assert same_partition(cut_z(z_ahead, n, k), cut_z(z_rounds, n, k))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_copies_are_rows_equal_as_numbers(rng, monkeypatch, dtype):
    # -0.0 and 0.0 are the same coordinate (a distance of 0); with "cosine" a row and twice
    # it are the same unit row, copies too, and with the other metrics they are not
    x = tie_free(rng, 60, 4, dtype) + 1
    x[:, 0] = 0.0
    y = x[:12].copy()
    y[:, 0] = -0.0
    doubled = 2 * x[12:20]
    rows = np.concatenate([x, y, doubled])
    n = len(rows)
    expect = {"euclidean": 12, "sqeuclidean": 12, "cosine": 20}
    for metric, copies in expect.items():
        run = functools.partial(_linear_z, rows, 0, metric=metric)
        (z_ahead, z_rounds), (ahead, _) = _with_and_without_copies(monkeypatch, run)
        assert ahead["copies"] == copies
        np.testing.assert_array_equal(z_ahead, z_rounds)
        assert np.all(z_ahead[:copies, 2] == 0) and np.all(z_ahead[copies:, 2] > 0)
        assert len(z_ahead) == n - 1


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("n", [2, 3, 100])
@pytest.mark.parametrize("cap", [None, 1, 7])
def test_copies_of_one_row_only(monkeypatch, metric, n, cap):
    # every row a copy: one cluster (or runs of cap + 1) left after the copies' merges, or
    # none left to search when every run is over the cap
    x = np.full((n, 5), 0.25)
    (z_ahead, z_rounds), (ahead, _) = _with_and_without_copies(
        monkeypatch, functools.partial(_linear_z, x, 0, metric=metric, cap=cap))
    np.testing.assert_array_equal(z_ahead, z_rounds)
    assert ahead["copies"] == len(z_ahead) == _copy_merges(np.array([n]), cap)
    assert np.all(z_ahead[:, 2] == 0)


def test_near_duplicate_float64_rows_need_no_luck():
    # rows within a few float64 roundings of a few distinct ones, whose distances are as
    # small as the rounding of the centroids. Euclidean: the bounds from those centroids
    # allow for it (an absolute margin), where a search had missed its nearest neighbour
    # and the engine stopped with an internal error (3 of these 300 inputs). The closed
    # forms: the moments' rounding can make a merged cluster nearer to some C than both of
    # its parts were (reducibility broken by an ulp), unknown to C's kept nearest
    # neighbour, and leave no reciprocal pair; every cluster then searches again (run()),
    # where the engine had stopped too. The merges are greedy up to that rounding.
    refreshed = 0
    for seed in range(200):
        x, k = near_duplicate_float64_rows(seed)
        for metric in ("euclidean", "sqeuclidean", "cosine"):
            z = _linear_z(x, 0, metric=metric)
            stats = dcpe._C.cpu_list_stats()
            if metric == "euclidean":
                assert stats["refreshes"] == 0
                if seed % 20:
                    continue
            elif stats["refreshes"] == 0:
                continue
            else:
                refreshed += 1
            merged, best = replay_gaps(z, x, metric=metric)
            np.testing.assert_allclose(merged, best, rtol=1e-9, atol=1e-12 * z[-1, 2])
            groups = np.unique(x.round(6), axis=0, return_inverse=True)[1].ravel()
            assert same_partition(cut_z(z, len(x), k), groups)
    assert refreshed >= 2  # 6 of these 400 closed-form runs on an AMD EPYC


# ------------------------------------------------------------------------- dense searches
# A search that the lists leave, and whose bounds leave candidates holding at least 1/8 of
# the live tokens (points without clusters, where every token is nearly as far from all
# others), sums every cluster at once from column tiles of their tokens, each average with
# exact()'s distances in exact()'s order (linear_linkage.cpp, dense_search()); clusters
# larger than a tile (65,536 / d tokens, at least 64) are summed one by one.
# DCPE_CPU_DENSE=0 sums the candidates one by one. Either way every average is the same
# number, so the merges must be the same bit for bit.


def _dense_input(rng, kind: str, n: int, d: int, dtype) -> np.ndarray:
    if kind == "gaussian":  # the bounds prune little: most searches that scan sum densely
        return rng.standard_normal((n, d)).astype(dtype)
    if kind == "blobs":  # clusters of more than a tile's 64 tokens at d = 1024, in noise
        centres = rng.standard_normal((3, d)) * 4.0
        blobs = (centres[:, None, :] + 0.5 * rng.standard_normal((3, 90, d))).reshape(-1, d)
        return np.concatenate([blobs, rng.standard_normal((n - 270, d))]).astype(dtype)
    return _lists_input(rng, kind, n, d, dtype)


def _dense_and_not(monkeypatch, run):
    (z_on, z_off), (s_on, s_off) = _switched(monkeypatch, "DCPE_CPU_DENSE", run)
    np.testing.assert_array_equal(z_on, z_off)
    assert s_off["dense"] == 0
    assert 0 <= s_on["dense"] <= s_on["searches"] - s_on["settled"]
    return s_on


@pytest.mark.parametrize("kind", ["gaussian", "grid", "near_duplicates", "codebook"])
@pytest.mark.parametrize("d", [17, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [None, 5])
def test_dense_searches_give_the_same_merges(rng, monkeypatch, kind, d, dtype, cap):
    x = _dense_input(rng, kind, 500, d, dtype)
    for cache in CACHES:
        stats = _dense_and_not(monkeypatch, functools.partial(_linear_z, x, cache, cap=cap))
        if kind == "gaussian":
            assert stats["dense"] > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_searches_among_clusters_larger_than_a_tile(rng, monkeypatch, dtype):
    x = _dense_input(rng, "blobs", 700, 1024, dtype)
    stats = _dense_and_not(monkeypatch, functools.partial(_linear_z, x, 0))
    assert stats["dense"] > 0


@pytest.mark.parametrize("kind", ["gaussian", "grid"])
@pytest.mark.parametrize("cap", [None, 4])
def test_dense_searches_give_the_same_flat_cut(rng, monkeypatch, kind, cap):
    n, d = 700, 64
    x = _dense_input(rng, kind, n, d, np.float32)
    for k in (n // 2, n // 8, 3):
        _dense_and_not(monkeypatch, functools.partial(_cut_z, x, k, 0, cap=cap))


# A cluster whose search scanned and summed densely sums densely in its next 7 searches
# without the scan (DCPE_CPU_DENSE_SKIP=0: each scans). Dense sums give exact()'s numbers,
# so the merges must again be the same bit for bit, and with a flat cut a search that
# finds its nearest beyond the cut's bound sets its cluster aside either way.


def _skipping_and_not(monkeypatch, run):
    (z_on, z_off), (s_on, s_off) = _switched(monkeypatch, "DCPE_CPU_DENSE_SKIP", run)
    np.testing.assert_array_equal(z_on, z_off)
    assert s_off["unscanned"] == 0
    assert 0 <= s_on["unscanned"] <= s_on["dense"]
    return s_on


@pytest.mark.parametrize("kind", ["gaussian", "blobs", "codebook"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [None, 6])
def test_dense_searches_without_a_scan_give_the_same_merges(rng, monkeypatch, kind, dtype,
                                                            cap):
    n, d = (700, 1024) if kind == "blobs" else (600, 48)
    x = _dense_input(rng, kind, n, d, dtype)
    for cache in CACHES:
        stats = _skipping_and_not(monkeypatch,
                                  functools.partial(_linear_z, x, cache, cap=cap))
        if kind == "gaussian":
            assert stats["unscanned"] > 0


@pytest.mark.parametrize("cap", [None, 4])
def test_dense_searches_without_a_scan_give_the_same_flat_cut(rng, monkeypatch, cap):
    n, d = 700, 64
    x = _dense_input(rng, "gaussian", n, d, np.float32)
    for k in (n // 2, n // 8, 3):
        stats = _skipping_and_not(monkeypatch, functools.partial(_cut_z, x, k, 0, cap=cap))
        if k < n // 2:
            assert stats["unscanned"] > 0


def test_dense_searches_agree_with_scipy_and_the_matrix_engine(rng):
    x = tie_free(rng, 800, 48)
    zl = _linear_z(x, 0)
    assert dcpe._C.cpu_list_stats()["dense"] > 0
    zs = scipy_linkage(x)
    np.testing.assert_allclose(zl[:, 2], _matrix_z(x)[:, 2], rtol=1e-12)
    for k in _ks(len(x)):
        assert same_partition(cut_z(zl, len(x), k), cut_z(zs, len(x), k))


def test_dense_searches_give_the_same_result_for_any_thread_count(rng):
    x = rng.standard_normal((600, 64)).astype(np.float32)
    code = (
        "import sys, numpy as np; from dcpe.backends import cpu; "
        "x = np.load(sys.argv[1]); "
        "z = cpu.linkage(x, method='average', metric='euclidean', max_cluster_size=None, "
        "plan=cpu.Plan('linear', 0)); "
        "assert cpu._ext().cpu_list_stats()['dense'] > 0; "
        "np.save(sys.argv[2], z)"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "x.npy")
        np.save(src, x)
        results = []
        for threads in ("1", "2", "3"):
            out = os.path.join(tmp, f"z{threads}.npy")
            env = dict(os.environ, DCPE_NUM_THREADS=threads)
            subprocess.run([sys.executable, "-c", code, src, out], env=env, check=True)
            results.append(np.load(out))
        assert np.array_equal(results[0], results[1])
        assert np.array_equal(results[0], results[2])


def test_dense_searches_memory_is_counted():
    # each thread's slab of distances (at most 256 searching tokens against a tile of
    # 65,536 / d tokens), and the tiles' copy of the tokens, above 12 dimensions only
    # (Euclidean): beside the neighbour lists and the first search's order (as counted in
    # test_neighbour_lists_only_above_12_dimensions_and_counted), the arena's two copies
    # of the tokens, a third for the hand-over, and a fourth for the tiles
    for n, k, d in ((65_536, 128, 64), (262_144, 256, 256)):
        ws = functools.partial(dcpe._C.workspace_bytes_cpu, n, d, method="average",
                               elem_size=4, engine="linear")
        per_thread = ws(num_threads=3, metric="euclidean") - ws(num_threads=2, metric="euclidean")
        assert per_thread >= 256 * (65_536 // d) * 4
        assert ws(num_threads=3, metric="cosine") == ws(num_threads=2, metric="cosine")
        grow = ws(num_threads=1, metric="euclidean") - ws(num_threads=1, metric="sqeuclidean")
        lists = n * (k * 8 + 12) + n * 16 + min(n, n // 256 * 64) * d * 4
        assert grow >= lists + 4 * n * d * 4
