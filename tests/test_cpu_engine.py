"""The C++ engine itself: interruption, input untouched, float64 storage, thread counts."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import dcpe
from dcpe import _C


def test_ctrl_c_stops_cleanly():
    """SIGINT during a long run raises KeyboardInterrupt in the caller; nothing crashes.

    The child installs Python's SIGINT handler itself: a process started with SIGINT
    ignored (e.g. a background job of a non-interactive shell, as CI runners may start
    the tests) passes that on, and Python then installs no handler. The run takes
    several seconds (N = 40000, the full tree) and the signal comes 0.5 s in; if the run
    finishes anyway, the message says how long it took."""
    code = textwrap.dedent(
        """
        import signal, sys, time, numpy as np, dcpe
        signal.signal(signal.SIGINT, signal.default_int_handler)
        x = np.random.default_rng(0).standard_normal((40000, 8)).astype(np.float32)
        print("start", flush=True)
        t0 = time.perf_counter()
        try:
            dcpe.cluster(x, 2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        print(f"finished after {time.perf_counter() - t0:.2f} s", flush=True)
        sys.exit(3)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the engine did not stop within 60 s of SIGINT")
    assert proc.returncode == 0, out
    assert out.strip() == "interrupted"


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
    monkeypatch.setenv("DCPE_NUM_THREADS", threads)
    np.testing.assert_array_equal(dcpe.linkage(x), z1)


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
