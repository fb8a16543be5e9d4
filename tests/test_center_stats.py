"""Tests of the per-step statistics of k-means (``dcpe._C.paired_sq_dist_cpu`` and
``dcpe._C.segment_sums_cpu``): each token's squared distance to its own center, and the
per-cluster sums of the center step.

References, bit for bit: NumPy loops that round every operation on its own in the order
the kernels promise, and the PyTorch paths that other devices take
(``baselines._sq_dist_rows_torch``, ``baselines._segment_sums_torch``) run on the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcpe import _C, baselines
from dcpe.baselines import balanced_kmeans, kmeans


def _reference_sq_dist(x: np.ndarray, c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Differences in double, each squared and rounded, added in coordinate order from the
    first square."""
    diff = x.astype(np.float64) - c.astype(np.float64)[labels]
    sq = diff * diff
    acc = sq[:, 0].copy()
    for t in range(1, x.shape[1]):
        acc += sq[:, t]
    return acc


def _reference_segment_sums(x: np.ndarray, labels: np.ndarray, k: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The rows sorted stably by label, their running sum from +0.0 (row by row), and each
    cluster's sum as the running sum at its end less the one at its start."""
    order = np.argsort(labels, kind="stable")
    running = np.zeros((len(x) + 1, x.shape[1]))
    for r, i in enumerate(order):
        running[r + 1] = running[r] + x[i].astype(np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    ends = np.cumsum(counts)
    return running[ends] - running[ends - counts], counts


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def _points(kind: str, n: int, d: int, dtype: type, rng: np.random.Generator) -> np.ndarray:
    if kind == "scales":  # magnitudes from 1e-6 to 1e6 side by side: every sum rounds
        x = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-6, 7, (n, d))
    elif kind == "grid":  # integers that cancel: sums of exactly zero
        x = rng.integers(-3, 4, (n, d)).astype(np.float64)
    elif kind == "zeros":  # signed zeros among values: +0.0 and -0.0 must come out alike
        x = rng.standard_normal((n, d))
        x[rng.random((n, d)) < 0.4] = -0.0
        x[rng.random((n, d)) < 0.2] = 0.0
    else:  # "copies": a few rows repeated, offset far from the origin
        x = 7.0 + 1e-5 * rng.standard_normal((4, d))[rng.integers(0, 4, n)]
    return x.astype(dtype)


KINDS = ["scales", "grid", "zeros", "copies"]
DIMS = [1, 2, 7, 8, 9, 17, 64, 130]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", DIMS)
def test_paired_distances_are_the_references_bit_for_bit(d, dtype):
    rng = np.random.default_rng(d)
    for kind in KINDS:
        n, k = int(rng.integers(1, 400)), int(rng.integers(1, 30))
        x = _points(kind, n, d, dtype, rng)
        c = _points(kind, k, d, dtype, rng)
        labels = rng.integers(0, k, n)
        before = x.copy(), c.copy(), labels.copy()
        want = _reference_sq_dist(x, c, labels)
        for threads in (1, 2, 3):
            got = _C.paired_sq_dist_cpu(x, c, labels, num_threads=threads)
            assert got.dtype == np.float64 and got.shape == (n,)
            np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=kind)
        torch_path = baselines._sq_dist_rows_torch(
            torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(labels)).numpy()
        np.testing.assert_array_equal(_bits(torch_path), _bits(want), err_msg=kind)
        for a, b in zip((x, c, labels), before):  # the inputs are not mutated
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", DIMS)
def test_segment_sums_are_the_references_bit_for_bit(d, dtype):
    rng = np.random.default_rng(100 + d)
    for kind in KINDS:
        n, k = int(rng.integers(1, 400)), int(rng.integers(1, 30))
        x = _points(kind, n, d, dtype, rng)
        labels = rng.integers(0, k, n)
        labels[labels == k // 2] = 0  # an empty cluster in the middle (none when k = 1)
        before = x.copy(), labels.copy()
        want_sums, want_counts = _reference_segment_sums(x, labels, k)
        for threads in (1, 2, 3):
            sums, counts = _C.segment_sums_cpu(x, labels, k, num_threads=threads)
            assert sums.dtype == np.float64 and sums.shape == (k, d)
            np.testing.assert_array_equal(_bits(sums), _bits(want_sums), err_msg=kind)
            np.testing.assert_array_equal(counts, want_counts)
        t_sums, t_counts = baselines._segment_sums_torch(torch.from_numpy(x),
                                                         torch.from_numpy(labels), k)
        np.testing.assert_array_equal(_bits(t_sums.numpy()), _bits(want_sums), err_msg=kind)
        np.testing.assert_array_equal(t_counts.numpy(), want_counts)
        for a, b in zip((x, labels), before):
            np.testing.assert_array_equal(a, b)


def test_statistics_of_no_tokens():
    x = np.zeros((0, 3), np.float32)
    labels = np.zeros(0, np.int64)
    assert _C.paired_sq_dist_cpu(x, np.ones((2, 3), np.float32), labels).shape == (0,)
    sums, counts = _C.segment_sums_cpu(x, labels, 2)
    np.testing.assert_array_equal(sums, np.zeros((2, 3)))
    np.testing.assert_array_equal(counts, [0, 0])


@pytest.mark.parametrize("method", ["kmeans", "balanced"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_baselines_give_the_same_results_with_the_pytorch_statistics(method, dtype,
                                                                     monkeypatch):
    # the compiled statistics and the PyTorch ones (other devices' path) lead to the same
    # steps: labels, centers, objective history and inertia, bit for bit
    rng = np.random.default_rng(7)
    hubs = rng.standard_normal((30, 20)) * 3
    x = (hubs[rng.integers(0, 30, 1500)] + rng.standard_normal((1500, 20))).astype(dtype)
    fit = kmeans if method == "kmeans" else balanced_kmeans
    compiled = fit(x, 40, seed=2)
    monkeypatch.setattr(baselines, "_sq_dist_rows", baselines._sq_dist_rows_torch)
    monkeypatch.setattr(baselines, "_segment_sums", baselines._segment_sums_torch)
    other = fit(x, 40, seed=2)
    assert compiled.n_iter == other.n_iter >= 2
    np.testing.assert_array_equal(compiled.labels, other.labels)
    np.testing.assert_array_equal(compiled.centers, other.centers)
    assert compiled.history == other.history and compiled.inertia == other.inertia


@pytest.mark.parametrize("call, match", [
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                   np.array([0, 2, 1])), r"labels\[1\]' = 2"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                   np.array([0, -1, 1])), r"labels\[1\]' = -1"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                   np.zeros(3, np.int32)), "'labels'"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                   np.zeros(2, np.int64)), r"'labels'.*shape \(3,\)"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2), np.float32),
                                   np.zeros(3, np.int64)), "centers.dtype"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 3)),
                                   np.zeros(3, np.int64)), r"centers.shape\[1\]"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((0, 2)),
                                   np.zeros(3, np.int64)), "'k'"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 0)), np.zeros((2, 0)),
                                   np.zeros(3, np.int64)), r"x.shape\[1\]"),
    (lambda: _C.paired_sq_dist_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                   np.zeros(3, np.int64), num_threads=-1), "num_threads"),
    (lambda: _C.segment_sums_cpu(np.zeros((3, 2)), np.array([0, 1, 2]), 2),
     r"labels\[2\]' = 2"),
    (lambda: _C.segment_sums_cpu(np.zeros((3, 2)), np.zeros(3, np.int64), 0), "'k'"),
    (lambda: _C.segment_sums_cpu(np.zeros(3), np.zeros(3, np.int64), 1), "x.ndim"),
    (lambda: _C.segment_sums_cpu(np.zeros((3, 2), np.int64), np.zeros(3, np.int64), 1),
     "x.dtype"),
    (lambda: _C.segment_sums_cpu(np.zeros((3, 2)), np.zeros(4, np.int64), 1), "'labels'"),
    (lambda: _C.segment_sums_cpu(np.zeros((3, 2)), np.zeros(3, np.int64), 1,
                                 num_threads=-1), "num_threads"),
])
def test_statistics_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("method", ["kmeans", "balanced"])
def test_objectives_do_not_depend_on_the_thread_count(method, monkeypatch):
    # PyTorch splits a large sum among its threads, and the baselines fit its thread count
    # to the free CPUs at every step: their objectives (and the decisions taken on them)
    # are summed in one fixed order instead, so that no load or machine changes a bit
    from dcpe import _threads

    monkeypatch.setattr(_threads, "_default_threads", lambda: 2)
    monkeypatch.setattr(_threads, "busy_cpus_elsewhere", lambda: None)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40000, 3)) * 10.0 ** rng.integers(-3, 4, (40000, 3))
    fit = kmeans if method == "kmeans" else balanced_kmeans
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(fit(x, 6, seed=1, n_iter=4))
    finally:
        torch.set_num_threads(before)
    one, two = runs
    assert one.history == two.history and one.inertia == two.inertia
    np.testing.assert_array_equal(one.labels, two.labels)


def test_total_does_not_depend_on_the_thread_count():
    # the sum behind every objective of the baselines (centroid-free k-means' too, whose
    # steps cost N^2 distances, so it is not run whole at this size here)
    rng = np.random.default_rng(12)
    values = torch.from_numpy(rng.random(40000) * 10.0 ** rng.integers(-3, 4, 40000))
    before = torch.get_num_threads()
    try:
        sums = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sums.append((float(values.sum()), baselines._total(values)))
    finally:
        torch.set_num_threads(before)
    assert sums[0][1] == sums[1][1] == float(np.sum(values.numpy()))
