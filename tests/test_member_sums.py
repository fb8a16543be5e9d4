"""Tests of the member distance sums (``dcpe._C.member_sums_cpu``), the kernel behind the
coherence statistics of :mod:`dcpe.report` and :mod:`dcpe.sweep`.

Reference: for each cluster, the full distance matrix of its members in NumPy (float64),
summed by rows. The kernel adds the same distances in another order, so sums agree to a
few units in the last place.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from conftest import interrupted_in_child
from scipy.spatial.distance import cdist

from dcpe import _C
from dcpe.report import member_distance_sums

# Around the kernel's shapes: blocks of 4 rows, panels of 8 members, tasks of 64 rows (each
# pair once: the members past a task's rows get column sums); the chunks of packed members
# hold 16384 / (8 d) panels, i.e. 2048 members at d <= 8 and 64 at d = 256, which the
# large clusters cross.
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 130, 0, 1]


def _reference(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x))
    for s, e in zip(offsets[:-1], offsets[1:]):
        m = x[s:e]
        out[s:e] = np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(axis=-1)).sum(axis=1)
    return out


def _offsets(sizes) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


@pytest.mark.parametrize("d", [1, 3, 4, 8, 12, 16, 17, 256])
def test_member_sums_match_reference(d):
    rng = np.random.default_rng(d)
    sizes = SIZES + ([2100] if d <= 16 else [200])
    offsets = _offsets(sizes)
    x = rng.standard_normal((int(offsets[-1]), d)) * rng.uniform(0.1, 10, d)
    before = x.copy()
    got = _C.member_sums_cpu(x, offsets)
    want = _reference(x, offsets)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(x, before)  # the input is not mutated
    singles = [s for s, e in zip(offsets[:-1], offsets[1:]) if e - s == 1]
    assert singles and all(got[s] == 0.0 for s in singles)


def test_member_sums_do_not_depend_on_threads():
    rng = np.random.default_rng(5)
    offsets = _offsets([3000, 70, 5, 1, 129])
    for d in (8, 20):
        x = rng.standard_normal((int(offsets[-1]), d))
        runs = [_C.member_sums_cpu(x, offsets, num_threads=t) for t in (1, 2, 3)]
        np.testing.assert_array_equal(runs[0], runs[1])
        np.testing.assert_array_equal(runs[0], runs[2])


def test_member_sums_of_a_cluster_past_one_batch_of_column_sums():
    # 12,000 members leave about 1.1 million column sums, past the million a batch holds:
    # they are added over two batches, in the order of the rows
    rng = np.random.default_rng(7)
    offsets = _offsets([12000, 3])
    x = rng.standard_normal((12003, 2))
    got = _C.member_sums_cpu(x, offsets)
    want = np.zeros(12003)
    for r in range(0, 12000, 1500):
        want[r:r + 1500] = cdist(x[r:r + 1500], x[:12000]).sum(axis=1)
    want[12000:] = _reference(x[12000:], _offsets([3]))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(_C.member_sums_cpu(x, offsets, num_threads=1), got)


def test_member_sums_of_copies_and_large_values():
    # copies are at distance exactly 0; large coordinates keep their relative accuracy
    x = np.repeat(np.array([[1e150, -3e149], [2e150, 5e149]]), [6, 11], axis=0)
    offsets = _offsets([17])
    got = _C.member_sums_cpu(x, offsets)
    gap = np.hypot(1e150, 8e149)
    np.testing.assert_allclose(got, np.where(np.arange(17) < 6, 11, 6) * gap, rtol=1e-14)
    same = np.zeros((9, 3))
    np.testing.assert_array_equal(_C.member_sums_cpu(same, _offsets([9])), np.zeros(9))


def test_member_sums_of_empty_input():
    assert _C.member_sums_cpu(np.zeros((0, 4)), np.zeros(1, dtype=np.int64)).shape == (0,)
    assert _C.member_sums_cpu(np.zeros((0, 4)), np.zeros(3, dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("x, offsets, match", [
    (np.zeros((4, 2), np.float32), _offsets([4]), "x.dtype"),
    (np.zeros(4), _offsets([4]), "x.shape"),
    (np.zeros((4, 0)), _offsets([4]), "x.shape"),
    (np.zeros((4, 2)), _offsets([4]).astype(np.int32), "'offsets'"),
    (np.zeros((4, 2)), np.zeros((1, 2), np.int64), "'offsets'"),
    (np.zeros((4, 2)), np.zeros(0, np.int64), "'offsets'"),
    (np.zeros((4, 2)), _offsets([3]), "run from 0 to n = 4"),
    (np.zeros((4, 2)), np.array([1, 4], np.int64), "run from 0 to n = 4"),
    (np.zeros((4, 2)), np.array([0, 3, 2, 4], np.int64), "nondecreasing"),
])
def test_member_sums_reject_bad_arguments(x, offsets, match):
    with pytest.raises(ValueError, match=match):
        _C.member_sums_cpu(x, offsets)


def test_member_sums_reject_negative_threads():
    with pytest.raises(ValueError, match="num_threads"):
        _C.member_sums_cpu(np.zeros((2, 2)), _offsets([2]), num_threads=-1)


def test_member_distance_sums_follow_the_labels():
    # unsorted labels with an unused id: sums come back in the tokens' own order
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 8))
    labels = rng.integers(0, 12, 300)
    labels[labels == 5] = 6
    got = member_distance_sums(torch.from_numpy(x), torch.from_numpy(labels), 12).numpy()
    assert got.dtype == np.float64
    order = np.argsort(labels, kind="stable")
    want = np.empty(300)
    want[order] = _reference(x[order], _offsets(np.bincount(labels, minlength=12)))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_ctrl_c_stops_the_kernel():
    """SIGINT during one long call raises KeyboardInterrupt in the caller (the kernel polls
    between batches of tasks). The call, one cluster of 300,000 tokens in 64 dimensions,
    takes about 160 s on 2 cores (4.5e10 pairs): a kernel that ignored the signal would run
    past the parent's 60 s guard on any machine with fewer than about 6 cores."""
    code = textwrap.dedent(
        """
        import signal, sys, numpy as np
        from dcpe import _C
        signal.signal(signal.SIGINT, signal.default_int_handler)
        x = np.random.default_rng(0).standard_normal((300000, 64))
        offsets = np.array([0, 300000], dtype=np.int64)
        print("start", flush=True)
        try:
            _C.member_sums_cpu(x, offsets)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        print("finished", flush=True)
        """
    )
    interrupted_in_child(code, 1.0, "the kernel")
