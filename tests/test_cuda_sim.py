"""The CUDA kernels' source, run on the CPU.

``csrc/cuda/rnn_kernels.cuh`` (the device code of the ``cuda`` backend) and
``csrc/cuda/rnn_dispatch.h`` (its host-side checks and launch configuration) are compiled
here by the host C++ compiler against ``tests/cuda_sim/cuda_sim.h``, an executor that runs each
block's threads as fibers switched at every barrier, with the CUDA intrinsics, warp
shuffles and the two CUB block collectives the kernels use emulated (see that header for
what is and is not emulated).  The kernels are then driven through
:class:`dcpe.backends.cuda_backend.CudaOps` — the backend's own argument marshalling —
and compared with the PyTorch references and, end to end, with the ``cpu`` backend, on
machines without a GPU; a sanitizer build checks that no kernel reads or writes outside
its buffers.  ``tests/test_cuda.py`` runs the same comparisons on a GPU.

Skipped where there is no C++17 compiler or no ``ucontext`` (non-Linux).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (  # noqa: E402
    check_merge_kernel,
    check_pairwise_kernel,
    check_round_scan_kernel,
    cpu_order_distances,
    cut_z,
    random_merge_round,
    tie_free,
)

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cuda_sim"

_U, _I64, _INT = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "dcpe_sim_pairwise_nn": [_INT, _U, _U, _U, _U, _I64, _I64, _I64, _INT, _U],
    "dcpe_sim_merge_compact_nn": [_INT, _U, _I64, _U, _I64, _U, _U, _U, _U, _I64, _I64, _I64,
                                  _INT, _U, _U, _U],
    "dcpe_sim_round_scan": [_INT, _I64] + [_U] * 10 + [_I64, ctypes.c_bool, _I64,
                                                      ctypes.c_bool] + [_U] * 9,
    "dcpe_sim_selftest": [ctypes.c_void_p] * 4 + [_INT],
    "dcpe_sim_set_reverse": [_INT],
}


class _SimExt:
    """The compiled executor with the call signatures of ``dcpe._C.cuda``."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, _INT
        lib.dcpe_sim_last_error.restype = ctypes.c_char_p

    def _call(self, name: str, *args: object) -> None:
        if getattr(self.lib, name)(*args) != 0:
            raise RuntimeError(self.lib.dcpe_sim_last_error().decode())

    def pairwise_nn(self, *args: object) -> None:
        self._call("dcpe_sim_pairwise_nn", *args)

    def merge_compact_nn(self, *args: object) -> None:
        self._call("dcpe_sim_merge_compact_nn", *args)

    def round_scan(self, *args: object) -> None:
        self._call("dcpe_sim_round_scan", *args)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> _SimExt:
    if not sys.platform.startswith("linux"):
        pytest.skip("the executor uses ucontext fibers (Linux)")
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    out = tmp_path_factory.mktemp("cuda_sim") / "libdcpe_cuda_sim.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared",
           "-Wall", "-Wextra", f"-I{ROOT / 'csrc'}", str(SIM / "sim_kernels.cpp"),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _SimExt(ctypes.CDLL(str(out)))


@pytest.fixture(scope="module")
def ops(sim: _SimExt) -> type:
    """``CudaOps`` with the CPU executor in place of ``dcpe._C.cuda``."""
    from dcpe.backends.cuda_backend import CudaOps

    class SimOps(CudaOps):
        @staticmethod
        def _lib() -> _SimExt:
            return sim

        @staticmethod
        def _stream(t: torch.Tensor) -> int:
            return 0

    return SimOps


@pytest.fixture(params=["forward", "reverse"])
def any_order(request: pytest.FixtureRequest, sim: _SimExt, ops: type):
    """``ops``, with the threads of a block run first to last, then last to first between
    barriers: a kernel whose output depends on that order fails one of the two."""
    sim.lib.dcpe_sim_set_reverse(int(request.param == "reverse"))
    yield ops
    sim.lib.dcpe_sim_set_reverse(0)


# ------------------------------------------------------------------- the executor itself


def test_executor_shuffles_scans_and_barriers(sim: _SimExt, any_order: type) -> None:
    """Warp shuffles and the block scan as CUDA/CUB define them; a divergent barrier is an
    error, not a hang."""
    shfl = np.full((64, 5), -1, dtype=np.int64)
    values = np.random.default_rng(0).integers(-50, 50, size=64).astype(np.int64)
    scan = np.zeros(64, dtype=np.int64)
    agg = np.zeros(64, dtype=np.int64)
    args = [a.ctypes.data for a in (shfl, values, scan, agg)]
    assert sim.lib.dcpe_sim_selftest(*args, 0) == 0
    for t in range(64):
        for k, d in enumerate((1, 2, 4, 8, 16)):
            src = t + d if (t % 32) + d < 32 else t  # past the warp's end: own value
            assert shfl[t, k] == src * 10 + d, (t, d)
    np.testing.assert_array_equal(scan, np.cumsum(values))
    assert (agg == values.sum()).all()
    assert sim.lib.dcpe_sim_selftest(*args, 1) == -1
    assert b"divergent barrier" in sim.lib.dcpe_sim_last_error()
    assert sim.lib.dcpe_sim_selftest(*args, 0) == 0  # usable again afterwards


def test_kernels_stay_inside_their_buffers(tmp_path: Path) -> None:
    """Every kernel, float and double, on buffers of exactly the documented sizes, built
    with AddressSanitizer and UndefinedBehaviorSanitizer (tests/cuda_sim/bounds_check.cpp):
    an access outside a buffer stops the program with a report, also one whose value no
    output depends on."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the executor uses ucontext fibers (Linux)")
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path / "bounds_check"
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-ffp-contract=off",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-DCUDA_SIM_STACK_BYTES=65536", "-Wall", "-Wextra",
           f"-I{ROOT / 'csrc'}", str(SIM / "bounds_check.cpp"), "-o", str(exe)]
    probe = subprocess.run([cxx, "-fsanitize=address,undefined", "-x", "c++", "-", "-o",
                            str(tmp_path / "probe")], input="int main() { return 0; }\n",
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{cxx} cannot link sanitizer builds: {probe.stderr[-300:]}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]


# ---------------------------------------------------------------- kernels vs. references


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", [0, 1, 2])
def test_pairwise_kernel_matches_reference(any_order: type, dtype: torch.dtype,
                                            metric: int) -> None:
    rng = np.random.default_rng(metric)
    x = torch.tensor(tie_free(rng, 300, 7), dtype=dtype)  # rows longer than 256 threads
    check_pairwise_kernel(any_order.pairwise_nn, x, 303, metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", [0, 1])
def test_pairwise_kernel_rounds_like_the_cpu_engine(ops: type, dtype: torch.dtype,
                                                    metric: int) -> None:
    """Squares of differences added one dimension after the other, each step rounded:
    the token distances of the cpu engine, bit for bit."""
    npdt = np.float32 if dtype == torch.float32 else np.float64
    x = tie_free(np.random.default_rng(78), 90, 8).astype(npdt)
    ref = cpu_order_distances(x, metric)
    out = torch.empty(90 * 90, dtype=dtype)
    nn = torch.empty(90, dtype=torch.int64)
    nnd = torch.empty(90, dtype=dtype)
    ops.pairwise_nn(torch.from_numpy(x), out, 90, metric, nn, nnd)
    np.testing.assert_array_equal(out.view(90, 90).numpy(), ref)
    np.testing.assert_array_equal(nn.numpy(), np.argmin(ref, axis=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_merge_kernel_matches_reference(any_order: type, dtype: torch.dtype,
                                        mode: int) -> None:
    rng = np.random.default_rng(40 + mode)
    # more than 256 slots left: rows span two strides of the block's threads
    round_ = random_merge_round(rng, 330, 55, 16, 8, dtype, "cpu")
    n_new = round_[1].shape[0]
    assert n_new > 256
    check_merge_kernel(any_order.merge_compact_nn, *round_, mode, ((0, n_new), (17, 40)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_merged_matrix_is_exactly_symmetric(any_order: type, dtype: torch.dtype,
                                            mode: int) -> None:
    rng = np.random.default_rng(30 + mode)
    n_old = 120
    old, p, q, wp, wq = random_merge_round(rng, n_old, 20, 6, 8, dtype, "cpu")
    n_new = p.shape[0]
    dst = torch.empty(n_new * n_new, dtype=dtype)
    nn = torch.empty(n_new, dtype=torch.int64)
    nnd = torch.empty(n_new, dtype=dtype)
    any_order.merge_compact_nn(old.reshape(-1), n_old, dst, n_new, p, q, wp, wq, n_new, 0,
                               n_new, mode, nn, nnd)
    new = dst.view(n_new, n_new)
    assert int((new != new.T).sum()) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 511, 512, 513, 1100])
def test_round_scan_kernel_matches_reference(any_order: type, dtype: torch.dtype,
                                            n: int) -> None:
    """The one-block bookkeeping equals its PyTorch reference bit for bit, untouched entries
    included, across its blocks of 512 clusters."""
    check_round_scan_kernel(any_order.round_scan, n, dtype, "cpu",
                            None if n > 1 else lambda rng, m: _single_cluster_state(m, dtype))


def _single_cluster_state(m: int, dtype: torch.dtype) -> dict:
    """One cluster left: its nearest neighbour is itself (slot 0) at +inf."""
    i64 = torch.int64
    n_max = 4
    return {"nn": torch.zeros(n_max, dtype=i64),
            "nnd": torch.tensor([float("inf"), 9.0, 9.0, 9.0], dtype=dtype),
            "size": torch.tensor([5, 1, 1, 1], dtype=i64), "rep": torch.zeros(n_max, dtype=i64),
            "hfix": torch.tensor([2.0, 0, 0, 0], dtype=dtype),
            "m_a": torch.arange(n_max, dtype=i64), "m_b": torch.arange(n_max, dtype=i64),
            "m_h": torch.ones(n_max, dtype=dtype), "m_hf": torch.ones(n_max, dtype=dtype),
            "m_s": torch.full((n_max,), 2, dtype=i64)}


# ------------------------------------------------------------ whole runs vs. the cpu engine


def _cpu_linkage(x: np.ndarray, method: str, metric: str, cap: int | None) -> np.ndarray:
    from dcpe import backends

    cpu = backends.get("cpu")
    if not cpu.available()[0]:
        pytest.skip("the cpu backend is not built")
    return cpu.linkage(x, method=method, metric=metric, max_cluster_size=cap)


def _run(ops: type, x: np.ndarray, method: str = "average", metric: str = "euclidean",
         cap: int | None = None, n_clusters: int | None = None, budget: int | None = None):
    from dcpe_kernels.rnn import rnn_merges

    kw = {} if budget is None else {"memory_budget": budget}
    return rnn_merges(torch.from_numpy(x), method=method, metric=metric, max_cluster_size=cap,
                      ops=ops, backend="cuda", n_clusters=n_clusters, **kw)


@pytest.mark.parametrize("n,seed,dtype,cap", [
    (2, 0, np.float32, None),
    (3, 1, np.float64, None),
    (61, 2, np.float32, None),
    (61, 3, np.float64, 3),
    (270, 4, np.float32, None),  # first rounds with rows longer than a block of threads
    (130, 5, np.float64, 4),
])
def test_linkage_and_labels_match_cpu(ops: type, n: int, seed: int, dtype: type,
                                      cap: int | None) -> None:
    from dcpe_kernels.rnn import merges_to_labels, merges_to_linkage

    x = tie_free(np.random.default_rng(seed), n, 8).astype(dtype)
    z_ref = _cpu_linkage(x, "average", "euclidean", cap)
    z = merges_to_linkage(_run(ops, x, cap=cap))
    assert z.shape == z_ref.shape
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-5, atol=1e-12)
    for k in sorted({max(1, n // 2), max(1, n // 7), 1}):
        lab = merges_to_labels(_run(ops, x, cap=cap, n_clusters=k), k)
        np.testing.assert_array_equal(lab.numpy(), cut_z(z_ref, n, k))


@pytest.mark.parametrize("method", ["single", "complete", "weighted"])
def test_other_linkages_match_cpu(ops: type, method: str) -> None:
    from dcpe_kernels.rnn import merges_to_linkage

    x = tie_free(np.random.default_rng(9), 80, 5)
    z = merges_to_linkage(_run(ops, x, method=method))
    z_ref = _cpu_linkage(x, method, "euclidean", None)
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-10)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_other_metrics_match_cpu(ops: type, metric: str) -> None:
    from dcpe_kernels.rnn import merges_to_linkage

    x = tie_free(np.random.default_rng(10), 80, 6)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = merges_to_linkage(_run(ops, x, metric=metric))
    z_ref = _cpu_linkage(x, "average", metric, None)
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-10)


def test_inplace_compaction_matches(ops: type) -> None:
    """A memory budget too small for a second matrix: rows compacted in place, in chunks."""
    from dcpe_kernels.rnn import merges_to_linkage, required_bytes

    x = tie_free(np.random.default_rng(13), 120, 8).astype(np.float32)
    ref = merges_to_linkage(_run(ops, x))
    tight = required_bytes(120, 8, 4) + 20 * 120 * 4
    np.testing.assert_array_equal(merges_to_linkage(_run(ops, x, budget=tight)), ref)
