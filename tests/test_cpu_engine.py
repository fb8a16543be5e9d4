"""The C++ engine itself: interruption, input untouched, float64 storage, thread counts."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from conftest import (
    cpu_order_distances,
    integer_grid,
    interrupted_in_child,
    replay_gaps,
    tie_free,
)
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform

import dcpe
from dcpe import _C


def test_ctrl_c_stops_cleanly():
    """SIGINT during a long run raises KeyboardInterrupt in the caller; nothing crashes.

    The child installs Python's SIGINT handler itself: a process started with SIGINT
    ignored (e.g. a background job of a non-interactive shell, as CI runners may start
    the tests) passes that on, and Python then installs no handler. The child clusters
    N = 40000 tokens (the full tree) again and again, so that the signal, 0.5 s in, comes
    during a run however fast the machine is: a run that swallowed it would loop until
    the parent's timeout."""
    code = textwrap.dedent(
        """
        import signal, sys, numpy as np, dcpe
        signal.signal(signal.SIGINT, signal.default_int_handler)
        x = np.random.default_rng(0).standard_normal((40000, 8)).astype(np.float32)
        print("start", flush=True)
        try:
            while True:
                dcpe.cluster(x, 2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        """
    )
    interrupted_in_child(code, 0.5, "the engine")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_engine_matches_reference_tree(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((120, 5)).astype(dtype)
    before = x.copy()
    z = _C.linkage_cpu(x, "average", "euclidean", 0, 0)
    assert np.array_equal(x, before)
    z_ref = dcpe.linkage(x.astype(np.float64), backend="reference")
    assert z.shape == (119, 4)
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=rtol)


def test_non_contiguous_input():
    rng = np.random.default_rng(6)
    big = rng.standard_normal((300, 10))
    x = big[::2, ::2]  # strided view
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(dcpe.linkage(x), dcpe.linkage(np.ascontiguousarray(x)))


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_thread_count_env_gives_same_tree(threads, monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, size=(400, 2)).astype(np.float32)  # many ties
    monkeypatch.setenv("DCPE_NUM_THREADS", "1")
    z1 = dcpe.linkage(x)
    cuts = [dcpe.cluster(x, 37, engine=e) for e in ("matrix", "linear")]  # stop early
    monkeypatch.setenv("DCPE_NUM_THREADS", threads)
    np.testing.assert_array_equal(dcpe.linkage(x), z1)
    for e, labels in zip(("matrix", "linear"), cuts):
        np.testing.assert_array_equal(dcpe.cluster(x, 37, engine=e), labels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_pages_switch_gives_same_tree(dtype, monkeypatch):
    """DCPE_CPU_HUGE_PAGES=1 advises huge pages for a matrix of 32 MiB or more (here the
    matrix of the clusters left by the first round of 6,000 tokens, in either dtype): the
    same tree as without, and no crash where the kernel declines the advice."""
    x = tie_free(np.random.default_rng(3), 6000, 3).astype(dtype)
    monkeypatch.setenv("DCPE_CPU_HUGE_PAGES", "0")
    z0 = dcpe.linkage(x, engine="matrix")
    monkeypatch.setenv("DCPE_CPU_HUGE_PAGES", "1")
    np.testing.assert_array_equal(dcpe.linkage(x, engine="matrix"), z0)


def test_workspace_estimate_covers_the_matrix():
    n = 65536
    need = _C.workspace_bytes_cpu(n, 8, "average", 4, 2)
    assert need >= n * (n - 1) // 2 * 4
    assert need < 1.1 * n * (n - 1) // 2 * 4 + (1 << 28)


def test_num_threads_argument_checked():
    with pytest.raises(ValueError, match="num_threads"):
        _C.linkage_cpu(np.zeros((3, 2)), "average", "euclidean", 0, -1)


@pytest.mark.filterwarnings("ignore:max_cluster_size")
@pytest.mark.parametrize("cap", [0, 7])
@pytest.mark.parametrize("grid", [False, True])
def test_centroid_stops_after_max_merges(cap, grid):
    """The centroid engine finds merges in greedy order: stopping after m of them gives
    the first m rows of the whole tree (ties and the size cap included)."""
    rng = np.random.default_rng(11 + cap + grid)
    x = (rng.integers(0, 5, size=(300, 2)) if grid else rng.standard_normal((300, 4)))
    full = _C.linkage_cpu(x.astype(np.float64), "centroid", "euclidean", cap, 0)
    for m in (1, 2, 150, len(full) - 1, len(full)):
        part = _C.linkage_cpu(x.astype(np.float64), "centroid", "euclidean", cap, 0, m)
        np.testing.assert_array_equal(part, full[:m])
    # dcpe.cluster stops early; it must agree with cutting the whole tree
    for k in (1, 2, 40, 299):
        np.testing.assert_array_equal(dcpe.cluster(x, k, linkage="centroid",
                                                   max_cluster_size=cap or None),
                                      _C.cut_cpu(full, len(x), k))


@pytest.mark.filterwarnings("ignore:max_cluster_size")
@pytest.mark.parametrize("method", ["average", "single", "complete", "weighted"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [0, 6])
@pytest.mark.parametrize("d", [3, 130])  # 130: the first pass keeps the token matrix
def test_matrix_engine_flat_cut_stops_early_and_changes_no_label(method, dtype, cap, d):
    """A flat cut (max_merges = N - k) sets aside the clusters beyond the cut's bound: its
    first N - k rows are the whole tree's, it returns fewer rows, and its labels equal the
    whole tree's cut, in the rounds and in the chain."""
    n = 700
    x = tie_free(np.random.default_rng(5 + cap + d), n, d, dtype)
    full = _C.linkage_cpu(x, method, "euclidean", cap, 0)
    shorter = 0
    for k in (1, 2, 5, 70, 350, 690, 699):
        part = _C.linkage_cpu(x, method, "euclidean", cap, 0, n - k)
        steps = min(n - k, len(full))
        np.testing.assert_array_equal(part[:steps], full[:steps])
        np.testing.assert_array_equal(_C.cut_cpu(part, n, k), _C.cut_cpu(full, n, k))
        shorter += len(part) < len(full)
    assert shorter >= 3


@pytest.mark.filterwarnings("ignore:max_cluster_size")
@pytest.mark.parametrize("cap", [0, 5])
def test_matrix_engine_flat_cut_at_every_k(cap):
    """Every cut of one tree: a bound that set aside clusters merging just below the cut's
    height would change some of them."""
    n = 400
    x = tie_free(np.random.default_rng(17 + cap), n, 2)
    full = _C.linkage_cpu(x, "average", "euclidean", cap, 0)
    for k in range(1, n):
        part = _C.linkage_cpu(x, "average", "euclidean", cap, 0, n - k)
        steps = min(n - k, len(full))
        np.testing.assert_array_equal(part[:steps], full[:steps], err_msg=f"k={k}")


def test_matrix_engine_flat_cut_with_ties_is_greedy_and_gives_exactly_k():
    """With tied heights a flat cut may order merges of equal height differently from the
    whole tree (it hands over to the chain at another round), so only the tie rule's
    promises are checked: deterministic, exactly k, every merge before the cut a minimum."""
    x = integer_grid(np.random.default_rng(3), 500, 3)  # tied distances, duplicate rows
    for k in (1, 4, 30, 250, 499):
        part = _C.linkage_cpu(x, "average", "euclidean", 0, 0, 500 - k)
        np.testing.assert_array_equal(part, _C.linkage_cpu(x, "average", "euclidean", 0, 0,
                                                           500 - k))
        labels = _C.cut_cpu(part, 500, k)
        assert int(labels.max()) + 1 == k
        merged, best = replay_gaps(part[: 500 - k], x)
        np.testing.assert_allclose(merged, best, rtol=1e-6, atol=1e-12)


def test_max_merges_argument_checked():
    with pytest.raises(ValueError, match="max_merges"):
        _C.linkage_cpu(np.zeros((3, 2)), "centroid", "euclidean", 0, 0, -1)


@pytest.mark.parametrize("method", ["single", "complete"])
@pytest.mark.parametrize("cap", [0, 9])
def test_float32_engine_equals_float64_on_exact_distances(method, cap):
    """Small-integer points under sqeuclidean: every distance is an integer below 2^24,
    exact in float32, and min/max linkages only copy distances, so the float32 engine (its
    own vectorised row compaction) must return the float64 engine's tree bit for bit, ties
    included. N is large enough for many merged columns per row and for rows compacted
    both in place and through the block buffer."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 40, size=(2500, 3)).astype(np.float64)
    z64 = _C.linkage_cpu(x, method, "sqeuclidean", cap, 0)
    z32 = _C.linkage_cpu(x.astype(np.float32), method, "sqeuclidean", cap, 0)
    assert z64.shape[0] > 0
    np.testing.assert_array_equal(z32, z64)


def _engine_order_distances(x: np.ndarray, metric: str) -> np.ndarray:
    """The engine's token distances in NumPy (each operation rounded to x's dtype, no fma):
    cosine on rows scaled to unit length in float64 (norms summed in order), then halved."""
    if metric == "cosine":
        x64 = x.astype(np.float64)
        norm2 = np.zeros(len(x))
        for k in range(x.shape[1]):
            norm2 = norm2 + x64[:, k] * x64[:, k]
        x = (x64 * (1.0 / np.sqrt(norm2))[:, None]).astype(x.dtype)
    dist = cpu_order_distances(x, 0 if metric == "euclidean" else 1)
    if metric == "cosine":
        dist = dist * x.dtype.type(0.5)
    np.fill_diagonal(dist, 0)
    return dist


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 2, 7, 8, 9, 33, 256])
@pytest.mark.parametrize("n", [37, 201])
def test_token_distances_bit_for_bit(dtype, d, n):
    """The engine's token distances (register tiles of several rows against panels of
    columns, with partial tiles at odd N) equal the plain sum in coordinate order bit for
    bit. Single linkage heights are the minimum-spanning-tree edge lengths, a set of token
    distances unique under any tie breaking; complete linkage (float64, no ties) copies the
    largest token distance of every merge. Both take distances from the first pass (nearest
    neighbours) and the matrix built from the points after the first round."""
    rng = np.random.default_rng(1000 * d + n)
    x = tie_free(rng, n, d, dtype)
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        ref = squareform(_engine_order_distances(x, metric).astype(np.float64), checks=False)
        z = _C.linkage_cpu(x, "single", metric, 0, 0)
        z_ref = scipy_linkage(ref, "single")
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), err_msg=metric)
        if dtype == np.float64 and (d > 1 or metric != "cosine"):  # 1-D unit rows: all tied
            z = _C.linkage_cpu(x, "complete", metric, 0, 0)
            np.testing.assert_array_equal(z, scipy_linkage(ref, "complete"), err_msg=metric)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("cap", [0, 6])
def test_high_dimension_keeps_token_matrix_same_tree(dtype, grid, cap):
    """From d = 128 on, the first pass keeps the token matrix and the first round reads it
    instead of computing the distances again. Zero columns leave every distance unchanged
    bit for bit (adding (0 - 0)^2 = 0 is exact), so padding 8-D points to 128 and 136
    columns must give the very tree of the 8-D points, ties and the size cap included."""
    rng = np.random.default_rng(31 + grid + 2 * cap)
    n = 300
    x = integer_grid(rng, n, 8, side=3) if grid else tie_free(rng, n, 8)
    x = x.astype(dtype)
    for method in ("average", "single", "complete", "weighted"):
        for metric in ("euclidean", "sqeuclidean", "cosine"):
            if metric == "cosine" and grid:
                continue  # zero rows
            z = _C.linkage_cpu(x, method, metric, cap, 0)
            for d in (128, 136):
                padded = np.zeros((n, d), dtype=dtype)
                padded[:, :8] = x
                np.testing.assert_array_equal(_C.linkage_cpu(padded, method, metric, cap, 0), z,
                                              err_msg=f"{method} {metric} d={d}")


def _chain_switched(monkeypatch, run):
    """``run()`` with the rounds handing over to the chain after their first round
    (DCPE_CPU_CHAIN=1), never (=0) and by the rule (unset), and each run's matrix stats."""
    out, stats = [], []
    for flag in ("1", "0", None):
        with monkeypatch.context() as m:
            if flag is None:
                m.delenv("DCPE_CPU_CHAIN", raising=False)
            else:
                m.setenv("DCPE_CPU_CHAIN", flag)
            out.append(run())
            stats.append(dict(_C.cpu_matrix_stats()))
    return out, stats


@pytest.mark.filterwarnings("ignore:max_cluster_size")
@pytest.mark.parametrize("method", ["average", "single", "complete", "weighted"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [0, 6])
@pytest.mark.parametrize("d", [3, 130])
def test_chain_and_rounds_give_the_same_tree(monkeypatch, method, dtype, cap, d):
    """The nearest-neighbour chain and the rounds merge the same pairs in the same order on
    tie-free inputs, for whole trees and a flat cut's merges; only the rounding of the
    Lance–Williams updates differs (the rounds combine two merged clusters on each side at
    once), and which merges past a flat cut's are returned (the clusters set aside).
    cpu_matrix_stats() names the clusters the rounds left to the chain (0: none)."""
    n = 300
    x = tie_free(np.random.default_rng(41 + cap + d), n, d, dtype)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    for k in (1, 40, 150):
        (chained, rounds, default), stats = _chain_switched(
            monkeypatch, lambda k=k: _C.linkage_cpu(x, method, "euclidean", cap, 0, n - k))
        assert 2 <= stats[0]["chain"] < n and stats[0]["rounds"] == 1, stats
        assert stats[1]["chain"] == 0 and stats[1]["rounds"] > 1, stats
        steps = min(n - k, len(rounds))  # a flat cut's rows past its merges may differ
        for z in (chained, default):
            assert len(z) >= steps, (k, stats)
            np.testing.assert_array_equal(z[:steps, [0, 1, 3]], rounds[:steps, [0, 1, 3]],
                                          err_msg=k)
            np.testing.assert_allclose(z[:steps, 2], rounds[:steps, 2], rtol=rtol, err_msg=k)
        np.testing.assert_array_equal(_C.cut_cpu(chained, n, k), _C.cut_cpu(rounds, n, k))


def _valid_tree(z: np.ndarray, n: int) -> None:
    """Every row of ``z`` merges two clusters that exist at that step, into their sizes' sum."""
    size = [1] * n
    live = set(range(n))
    for i, (a, b, _, s) in enumerate(z):
        a, b = int(a), int(b)
        assert a != b and a in live and b in live, f"row {i} merges {a} and {b}"
        assert size[a] + size[b] == int(s), f"row {i}: size {s}"
        live -= {a, b}
        live.add(n + i)
        size.append(int(s))


def _tied_points(seed: int) -> np.ndarray:
    """Gaussian points rounded to a grid of 1/4, 1/2 or 1 (many tied distances)."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(50, 600)), int(rng.choice([1, 2, 3, 8]))
    g = float(rng.choice([0.25, 0.5, 1.0]))
    return (np.round(rng.standard_normal((n, d)) / g) * g).astype(np.float32)


@pytest.mark.parametrize("method", ["average", "single", "complete", "weighted"])
def test_chain_among_ties_builds_a_valid_greedy_tree(monkeypatch, method):
    """With tied distances a chain that sent ties to the smallest slot alone could push a
    cluster already on its stack; once merged, its stale copy was merged again (single
    linkage, where ties persist: 4 of 300 such inputs with the chain from the first round,
    the first two below). A tie with the cluster below on the stack now goes to it: every
    tree is valid, deterministic and, for average linkage, every merge a minimum."""
    monkeypatch.setenv("DCPE_CPU_CHAIN", "1")
    for seed in (5059, 5145, 5000, 5001):
        x = _tied_points(seed)
        n = len(x)
        for cap in (0, 7):
            z = _C.linkage_cpu(x, method, "euclidean", cap, 0)
            assert _C.cpu_matrix_stats()["chain"] > 0
            _valid_tree(z, n)
            np.testing.assert_array_equal(z, _C.linkage_cpu(x, method, "euclidean", cap, 0))
            if method == "average" and cap == 0:
                merged, best = replay_gaps(z, x.astype(np.float64))
                np.testing.assert_allclose(merged, best, rtol=1e-5, atol=1e-12)


def test_rounds_hand_over_to_the_chain_when_they_merge_few_pairs():
    """Points on a line at geometrically growing gaps: each round merges one pair, so the
    rounds hand over to the chain after the second (the first round counts as growing, and
    the second merged no more than it); isotropic Gaussian points in 128
    dimensions (few reciprocal pairs, but more than 1/64 of the clusters a round) stay in
    the rounds until few clusters are left. Both trees are SciPy's."""
    n = 400
    line = np.cumsum(1.01 ** np.arange(n))[:, None]
    z = _C.linkage_cpu(line, "average", "euclidean", 0, 0)
    assert _C.cpu_matrix_stats() == {"rounds": 2, "chain": n - 2}
    ref = scipy_linkage(line, "average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)
    x = np.random.default_rng(2).standard_normal((1500, 128))
    z = _C.linkage_cpu(x, "average", "euclidean", 0, 0)
    stats = _C.cpu_matrix_stats()  # (with 1/16: the chain from 1,333 clusters, 2 rounds)
    assert stats["rounds"] > 10 and stats["chain"] < 1500 // 3, stats
    ref = scipy_linkage(x, "average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)


def _cube_corners(d: int) -> np.ndarray:
    """The 2^d corners of the cube [-1, 1]^d, a lookup-free quantizer's codebook: every
    corner has d nearest neighbours, all at the same distance."""
    return np.array(np.meshgrid(*[[-1.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T.copy()


@pytest.mark.parametrize("points", ["cube", "grid"])
@pytest.mark.parametrize("k", [1, 64])
def test_rounds_go_on_while_their_merges_grow(points, k):
    """On points of a grid the first rounds merge few pairs (each token's nearest neighbour
    is its tied neighbour of the smallest slot; on the cube's corners only slots 0 and 1 are
    reciprocal), then more and more as the merged clusters' average distances break the
    ties: the rounds go on instead of handing over to the chain after the first (which
    finished the 1,024 corners from 1,023 clusters). The tree is valid, deterministic and
    every merge is a minimum."""
    if points == "cube":
        x = _cube_corners(10)
    else:  # 2,400 points, levels 6 x 5 x 5 x 4 x 4 as a finite scalar quantizer's
        axes = [np.arange(m) - (m - 1) / 2 for m in (6, 5, 5, 4, 4)]
        x = np.array(np.meshgrid(*axes, indexing="ij")).reshape(5, -1).T.copy()
    n = len(x)
    z = _C.linkage_cpu(x, "average", "euclidean", 0, 0, n - k)
    stats = _C.cpu_matrix_stats()
    assert stats["rounds"] >= 4 and stats["chain"] < n // 2, stats
    _valid_tree(z, n)
    np.testing.assert_array_equal(z, _C.linkage_cpu(x, "average", "euclidean", 0, 0, n - k))
    merged, best = replay_gaps(z[:n - k], x)
    np.testing.assert_allclose(merged, best, rtol=1e-12, atol=1e-12)
    labels = dcpe.cluster(x, k, engine="matrix")
    assert len(np.unique(labels)) == k


def test_single_linkage_among_ties_by_the_default_rule():
    """The input on which the chain's ties had made an invalid tree by the default rule
    (1,001 points of a 0.25 grid in 3 dimensions; the chain takes over in a late round):
    dcpe.linkage's tree is valid and a cut gives k clusters."""
    rng = np.random.default_rng(1011)
    n, d, g = int(rng.integers(200, 3000)), int(rng.choice([2, 3, 4, 8, 16])), 0.25
    rng.choice([0.25, 0.5, 1.0])
    x = (np.round(rng.standard_normal((n, d)) / g) * g).astype(np.float32)
    assert (n, d) == (1001, 3)
    z = dcpe.linkage(x, linkage="single")
    assert _C.cpu_matrix_stats()["chain"] > 0
    _valid_tree(z, n)
    for k in (2, 50):
        assert len(np.unique(dcpe.cluster(x, k, linkage="single"))) == k
