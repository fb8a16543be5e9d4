"""The CUDA kernels' source, run on the CPU.

``csrc/cuda/rnn_kernels.cuh`` and ``csrc/cuda/linear_kernels.cuh`` (the device code of the
``cuda`` backend) and ``csrc/cuda/rnn_dispatch.h`` and ``csrc/cuda/linear_dispatch.h``
(their host-side checks and launch configuration) are compiled
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
    BATCHED_CASES,
    GRAM_ENGINE_CASES,
    as_columns,
    assert_same_merges,
    chained_and_not,
    check_batched_lists,
    check_gram_engine,
    check_gram_scans,
    check_merge_kernel,
    check_merge_kernel_counted,
    check_pairwise_kernel,
    check_round_scan_kernel,
    cpu_order_distances,
    cut_z,
    off_boundary,
    random_merge_round,
    same_partition,
    tie_free,
)

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cuda_sim"

_U, _I64, _INT, _F64 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    "dcpe_sim_pairwise_nn": [_INT, _U, _U, _U, _U, _I64, _I64, _I64, _INT, _U],
    "dcpe_sim_merge_compact_nn": [_INT, _U, _I64, _U, _I64, _U, _U, _U, _U, _I64, _I64, _I64,
                                  _INT, _U, _U, _U, _U],
    "dcpe_sim_round_scan": [_INT, _I64] + [_U] * 10 + [_I64, ctypes.c_bool, _I64,
                                                      ctypes.c_bool] + [_U] * 9 + [_I64, _U],
    "dcpe_sim_centroid_nn": [_INT, _U, _U, _I64, _I64, _INT, _F64, _U, _U, _U, _I64, _U],
    "dcpe_sim_candidate_pairs": [_INT, _U, _U, _U, _U, _I64, _I64, _F64, _F64, _U, _U, _U,
                                 _I64, _U, _I64, _U, _U],
    "dcpe_sim_centroid_nn_gram": [_INT, _U, _I64, _I64, _U, _F64, _U, _I64, _I64, _I64, _U,
                                  _U, _U, _I64, _U],
    "dcpe_sim_candidate_pairs_gram": [_INT, _U, _I64, _I64, _U, _F64, _U, _U, _U, _I64, _I64,
                                      _I64, _F64, _F64, _U, _U, _U, _I64, _U, _I64, _U, _U],
    "dcpe_sim_pair_average": [_INT, _U, _I64, _I64, _I64, _U, _U, _U, _U, _U, _I64, _U,
                              ctypes.c_bool, _U],
    "dcpe_sim_cluster_matrix": [_INT, _U, _I64, _I64, _I64, _U, _U, _I64, _U, _I64, _U, _U,
                                _U],
    "dcpe_sim_selftest": [ctypes.c_void_p] * 4 + [_INT],
    "dcpe_sim_set_reverse": [_INT],
    "dcpe_sim_set_scan_split": [_INT],
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

    def centroid_nn(self, *args: object) -> None:
        self._call("dcpe_sim_centroid_nn", *args)

    def candidate_pairs(self, *args: object) -> None:
        self._call("dcpe_sim_candidate_pairs", *args)

    def centroid_nn_gram(self, *args: object) -> None:
        self._call("dcpe_sim_centroid_nn_gram", *args)

    def candidate_pairs_gram(self, *args: object) -> None:
        self._call("dcpe_sim_candidate_pairs_gram", *args)

    def pair_average(self, *args: object) -> None:
        self._call("dcpe_sim_pair_average", *args)

    def cluster_matrix(self, *args: object) -> None:
        self._call("dcpe_sim_cluster_matrix", *args)


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
    check_merge_kernel_counted(any_order.merge_compact_nn, *round_, mode)


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


# ------------------------------------------- matrix-free engine: kernels vs. references


def centroid_inputs(rng: np.random.Generator, n: int, dim: int, dtype: torch.dtype,
                    device: str = "cpu", grid: bool = False):
    """``(dim, n)`` centroids, ``s2`` and ``rad`` of ``n`` clusters: Gaussian with random
    per-coordinate scales (no ties, a.s.), or small integers (many exact ties)."""
    if grid:
        mu = rng.integers(-2, 3, size=(dim, n)).astype(np.float64)
        s2 = rng.integers(0, 3, size=n).astype(np.float64)
    else:
        mu = rng.standard_normal((dim, n)) * np.exp(rng.uniform(-1.0, 1.0, size=(dim, 1)))
        s2 = rng.uniform(0.0, 0.3, size=n) * dim
    rad = np.sqrt(s2) * rng.uniform(1.0, 3.0, size=n)
    return tuple(torch.tensor(a, dtype=dtype, device=device).contiguous() for a in (mu, s2, rad))


def cluster_inputs(rng: np.random.Generator, sizes, dim: int, dtype: torch.dtype,
                   device: str = "cpu"):
    """Tokens sorted by cluster (cluster ``c`` has ``sizes[c]`` rows), offsets, sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    x = rng.standard_normal((int(sizes.sum()), dim)) * np.exp(rng.uniform(-1, 1, size=dim))
    return (torch.tensor(x, dtype=dtype, device=device).contiguous(),
            torch.from_numpy(offsets).to(device), torch.from_numpy(sizes).to(device))


def sqrt_rn(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root (NumPy's), as the kernels take it."""
    return torch.from_numpy(np.sqrt(t.numpy()))


def centroid_dd(mu_t: torch.Tensor, n: int) -> torch.Tensor:
    """``dd[a, b]``: rounded squares of the centroid differences added in dimension order."""
    mu = mu_t.cpu()[:, :n]
    dd = torch.zeros((n, n), dtype=mu.dtype)
    for k in range(mu.shape[0]):
        diff = mu[k][:, None] - mu[k][None, :]
        dd = dd + diff * diff
    return dd


def reference_centroid_nn(mu_t: torch.Tensor, s2: torch.Tensor, n: int, mode: int,
                          scale: float):
    """Row minimum over b != a of sqrt(dd + t) (mode 0) or scale * (dd + t) (mode 1),
    t = s2[a] + s2[b], and its smallest argmin; +inf and slot 0 for a single cluster."""
    s2 = s2.cpu()
    v = centroid_dd(mu_t, n) + (s2[:n][:, None] + s2[:n][None, :])
    v = sqrt_rn(v) if mode == 0 else v * torch.tensor(scale, dtype=v.dtype)
    v.fill_diagonal_(float("inf"))
    best = v.min(dim=1).values
    arg = torch.where(v == best[:, None], torch.arange(n).expand(n, n), n).min(dim=1).values
    return best, arg


def tau_of(mu_t: torch.Tensor, s2: torch.Tensor, n: int) -> torch.Tensor:
    """Each cluster's smallest Euclidean upper bound (mode 0)."""
    return reference_centroid_nn(mu_t, s2, n, 0, 1.0)[0].to(mu_t.device)


def _all_rows(n: int, dev: torch.device) -> torch.Tensor:
    """Every cluster scans (the first round)."""
    return torch.arange(n, dtype=torch.int32, device=dev)


def check_centroid_nn(centroid_nn, mu_t: torch.Tensor, s2: torch.Tensor, n: int, mode: int,
                      scale: float):
    """Kernel and reference agree bit for bit: minima and smallest argmins."""
    dt, dev = mu_t.dtype, mu_t.device
    out = torch.full((n,), -1.0, dtype=dt, device=dev)
    nn = torch.full((n,), -5, dtype=torch.int64, device=dev)
    centroid_nn(mu_t, s2, n, mode, scale, out, nn, _all_rows(n, dev), n)
    ref_out, ref_nn = reference_centroid_nn(mu_t, s2, n, mode, scale)
    assert torch.equal(out.cpu(), ref_out)
    assert torch.equal(nn.cpu(), ref_nn)
    return out.cpu(), nn.cpu()


def reference_pairs(mu_t, s2, rad, tau, n: int, rel: float, absm: float) -> list:
    """The pairs (a, b) with cand(a, b) and (a < b or not cand(b, a)), sorted, where
    cand(a, b) = lb - absm <= (tau[a] + absm) * (1 + rel), lb = D if D + r == 0 else
    max(D, (dd + t) / (D + r)), D = sqrt(dd), t = s2[a] + s2[b], r = rad[a] + rad[b]."""
    dt = mu_t.dtype
    s2, rad, tau = s2.cpu()[:n], rad.cpu()[:n], tau.cpu()[:n]
    dd = centroid_dd(mu_t, n)
    d = sqrt_rn(dd)
    den = d + (rad[:, None] + rad[None, :])
    safe = torch.where(den == 0, torch.ones_like(den), den)
    lb = torch.where(den == 0, d, torch.maximum(d, (dd + (s2[:, None] + s2[None, :])) / safe))
    absm_t = torch.tensor(absm, dtype=dt)
    one_rel = torch.tensor(1.0, dtype=dt) + torch.tensor(rel, dtype=dt)
    cand = (lb - absm_t) <= (tau[:, None] + absm_t) * one_rel
    cand.fill_diagonal_(False)
    ar = torch.arange(n)
    a, b = torch.nonzero(cand & ((ar[:, None] < ar[None, :]) | ~cand.T), as_tuple=True)
    return sorted(zip(a.tolist(), b.tolist()))


def check_candidate_pairs(candidate_pairs, mu_t, s2, rad, tau, n: int, rel: float, absm: float,
                          capacity: int | None = None) -> int:
    """The emitted pairs are the reference's (as sets); past ``capacity`` the count goes on
    and nothing more is written."""
    ref = reference_pairs(mu_t, s2, rad, tau, n, rel, absm)
    cap = max(1, len(ref)) if capacity is None else capacity
    dev = mu_t.device
    pa = torch.full((cap + 3,), -7, dtype=torch.int32, device=dev)
    pb = torch.full((cap + 3,), -7, dtype=torch.int32, device=dev)
    count = torch.zeros(1, dtype=torch.int64, device=dev)
    candidate_pairs(mu_t, s2, rad, tau, n, rel, absm, pa, pb, count, cap, _all_rows(n, dev), n,
                    torch.ones(n, dtype=torch.int8, device=dev))
    assert int(count[0]) == len(ref)
    w = min(len(ref), cap)
    got = sorted(zip(pa[:w].tolist(), pb[:w].tolist()))
    if w == len(ref):
        assert got == ref
    else:
        assert len(set(got)) == w and set(got) <= set(ref)
    assert bool((pa[w:] == -7).all()) and bool((pb[w:] == -7).all())
    return len(ref)


def assert_close_averages(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Averages summed in float64 in another order than the reference's: equal up to the
    last bits of the float64 sum, so within 1e-12 relative in float64 and at most one unit
    in the last place once rounded to float32.  Entries not computed (sentinels, +inf
    diagonal) are bit for bit equal."""
    got, ref = got.cpu().reshape(-1), ref.cpu().reshape(-1)
    same = (got == ref) | (torch.isnan(got) & torch.isnan(ref))
    if got.dtype == torch.float64:
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=0)
    else:
        diff = (got.view(torch.int32).long() - ref.view(torch.int32).long()).abs()
        assert bool(((diff <= 1) & torch.isfinite(ref) | same).all())
        assert bool((torch.isfinite(got) == torch.isfinite(ref)).all())


def random_pairs(rng: np.random.Generator, n: int, m: int, extra=()):
    """``m`` random pairs of distinct clusters in both orders, then ``extra``."""
    a = rng.integers(0, n, size=m)
    b = (a + rng.integers(1, n, size=m)) % n
    pa = np.concatenate([a, [p[0] for p in extra]]).astype(np.int32)
    pb = np.concatenate([b, [p[1] for p in extra]]).astype(np.int32)
    return torch.from_numpy(pa), torch.from_numpy(pb)


def check_pair_average(pair_average, x, offsets, sizes, pa, pb, count: int, capacity: int):
    from dcpe_kernels.pair_average import _reference_pair_average

    dev = x.device
    cnt = torch.tensor([count], dtype=torch.int64)
    val = torch.full((capacity + 2,), 7.5, dtype=x.dtype, device=dev)
    pair_average(x, offsets, sizes, pa.to(dev), pb.to(dev), cnt.to(dev), capacity, val)
    ref = torch.full((capacity + 2,), 7.5, dtype=x.dtype)
    _reference_pair_average(x.cpu(), offsets.cpu(), sizes.cpu(), pa, pb, cnt, capacity, ref)
    assert_close_averages(val, ref)
    w = min(count, capacity)
    assert bool((val[w:].cpu() == 7.5).all())
    return val.cpu()


def check_cluster_matrix(cluster_matrix, x, offsets, sizes, n: int, ld: int):
    """Reference averages, exactly symmetric, +inf diagonal, columns past n untouched, and
    nn / nnd the row argmin (smallest column) / minimum of the kernel's own matrix."""
    from dcpe_kernels.pair_average import _reference_cluster_matrix

    dt, dev = x.dtype, x.device
    out = torch.full((n * ld,), -3.0, dtype=dt, device=dev)
    nn = torch.full((n,), -5, dtype=torch.int64, device=dev)
    nnd = torch.full((n,), -1.0, dtype=dt, device=dev)
    cluster_matrix(x, offsets, sizes, n, out, ld, nn, nnd)
    ref = torch.full((n * ld,), -3.0, dtype=dt)
    _reference_cluster_matrix(x.cpu(), offsets.cpu(), sizes.cpu(), n, ref, ld,
                              torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=dt))
    assert_close_averages(out, ref)
    m = out.cpu().view(n, ld)[:, :n]
    assert torch.equal(m, m.T)
    assert bool(torch.isinf(torch.diagonal(m)).all())
    best = m.min(dim=1).values
    cols = torch.arange(n).expand(n, n)
    idx = torch.where(m == best[:, None], cols, n).min(dim=1).values
    idx = torch.where(best < float("inf"), idx, 0)
    assert torch.equal(nnd.cpu(), best)
    assert torch.equal(nn.cpu(), idx)
    return out.cpu(), nn.cpu(), nnd.cpu()


@pytest.fixture(params=[0, 1, 8])
def split(request: pytest.FixtureRequest, sim: _SimExt):
    """Warps per row group of the centroid scans: 0 is the choice for the test's small n
    (8); 1 is what a GPU uses from n = 524288 on."""
    sim.lib.dcpe_sim_set_scan_split(request.param)
    yield request.param
    sim.lib.dcpe_sim_set_scan_split(0)


_DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
def test_centroid_nn_kernel_matches_reference(ops: type, split: int, dtype: torch.dtype,
                                              dim: int) -> None:
    rng = np.random.default_rng(100 + dim)
    for n in (1, 2, 70):
        mu_t, s2, _ = centroid_inputs(rng, n, dim, dtype)
        check_centroid_nn(ops.centroid_nn, mu_t, s2, n, 0, 1.0)
        check_centroid_nn(ops.centroid_nn, mu_t, s2, n, 1, 1.0)
        check_centroid_nn(ops.centroid_nn, mu_t, s2, n, 1, 0.5)


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [2, 20])
def test_centroid_nn_ties_go_to_the_smallest_column(any_order: type, split: int,
                                                    dtype: torch.dtype, dim: int) -> None:
    """Integer centroids: many rows have several nearest neighbours at the same value."""
    mu_t, s2, _ = centroid_inputs(np.random.default_rng(7), 90, dim, dtype, grid=True)
    for mode, scale in ((0, 1.0), (1, 0.5)):
        out, nn = check_centroid_nn(any_order.centroid_nn, mu_t, s2, 90, mode, scale)
        assert int((out[:, None] == out[None, :]).sum()) > 90  # ties were there to break


@pytest.mark.parametrize("dim", [3, 17])
def test_centroid_scans_over_several_row_blocks(ops: type, sim: _SimExt, dim: int) -> None:
    """300 rows: two blocks of 256 rows at split 1, ten of 32 at split 8."""
    rng = np.random.default_rng(5)
    mu_t, s2, rad = centroid_inputs(rng, 300, dim, torch.float32)
    tau = tau_of(mu_t, s2, 300)
    for sp in (1, 8):
        sim.lib.dcpe_sim_set_scan_split(sp)
        try:
            check_centroid_nn(ops.centroid_nn, mu_t, s2, 300, 0, 1.0)
            check_candidate_pairs(ops.candidate_pairs, mu_t, s2, rad, tau, 300, 1e-6, 1e-7)
        finally:
            sim.lib.dcpe_sim_set_scan_split(0)


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
def test_candidate_pairs_kernel_matches_reference(ops: type, split: int, dtype: torch.dtype,
                                                  dim: int) -> None:
    rng = np.random.default_rng(200 + dim)
    for n, rel, absm in ((2, 1e-6, 1e-7), (70, 1e-6, 1e-7), (70, 0.0, 0.0), (70, 0.3, 0.05)):
        mu_t, s2, rad = centroid_inputs(rng, n, dim, dtype)
        tau = tau_of(mu_t, s2, n)
        total = check_candidate_pairs(ops.candidate_pairs, mu_t, s2, rad, tau, n, rel, absm)
        assert total >= (n + 1) // 2  # every cluster's nearest bound is among them


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [3, 20])
def test_gram_scans_match_reference(any_order: type, split: int, dtype: torch.dtype,
                                    dim: int) -> None:
    """The scans from tiles of the Gram matrix (gram_scan_kernel): the reference's minima
    bit for bit and its pairs, each once, a superset of the exact scan's; every row and
    every third, in one tile and in tiles of 16 columns, read as the engine lays the tiles out
    for these kernels (rows adjacent) and row-major."""
    rng = np.random.default_rng(300 + dim)
    n = 70
    mu_t, s2, rad = centroid_inputs(rng, n, dim, dtype)
    for rows in (torch.arange(n), torch.arange(0, n, 3)):
        for step, by_columns in ((n, True), (16, True), (16, False)):
            check_gram_scans(any_order, mu_t, s2, rad, rows, 1e-5, 1e-6, by_columns, step)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_gram_scans_change_no_merge(ops: type, dtype: torch.dtype,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine driving these kernels with its scans from the Gram matrix merges as with
    the exact scans."""
    xt = torch.from_numpy(tie_free(np.random.default_rng(21), 80, 6)).to(dtype)
    cases = GRAM_ENGINE_CASES[:2] if dtype == torch.float32 else GRAM_ENGINE_CASES[2:]
    check_gram_engine(ops, xt, monkeypatch, "cuda", cases)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_lists_past_the_largest_room_go_in_batches(ops: type, dtype: torch.dtype,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine driving these kernels under a budget of just what its preflight counts:
    the lists longer than the room go in batches of searching clusters (the candidate
    scans given a slice of the rows), with the merges of a budget that holds them."""
    import dcpe_kernels.linear as linear

    xt = torch.from_numpy(tie_free(np.random.default_rng(23), 64, 40)).to(dtype)
    monkeypatch.setattr(linear, "_BATCH_HEADROOM", 0.5)  # some batches past the room
    cases = BATCHED_CASES[:2] if dtype == torch.float32 else BATCHED_CASES[2:]
    batched, halved = check_batched_lists(ops, xt, monkeypatch, "cuda", cases)
    assert batched > 0 and halved > 0


@pytest.mark.parametrize("dtype", _DTYPES)
def test_candidate_pairs_count_past_capacity(any_order: type, dtype: torch.dtype) -> None:
    """Fewer slots than pairs: count is the full number, only `capacity` pairs are written
    (distinct reference pairs), nothing past them."""
    rng = np.random.default_rng(11)
    mu_t, s2, rad = centroid_inputs(rng, 60, 4, dtype)
    tau = tau_of(mu_t, s2, 60)
    total = len(reference_pairs(mu_t, s2, rad, tau, 60, 0.5, 0.1))
    assert total > 40
    for cap in (0, 1, 17, total - 1, total):
        check_candidate_pairs(any_order.candidate_pairs, mu_t, s2, rad, tau, 60, 0.5, 0.1,
                              capacity=cap)


def test_candidate_pairs_with_ties_are_emitted_once(ops: type, split: int) -> None:
    """Integer centroids: bounds equal to tau exactly, pairs cand in both directions."""
    mu_t, s2, rad = centroid_inputs(np.random.default_rng(8), 80, 3, torch.float64, grid=True)
    tau = tau_of(mu_t, s2, 80)
    check_candidate_pairs(ops.candidate_pairs, mu_t, s2, rad, tau, 80, 0.0, 0.0)
    check_candidate_pairs(ops.candidate_pairs, mu_t, s2, rad, tau, 80, 1e-9, 0.0)


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [1, 3, 8, 20, 6])
def test_pair_average_kernel_matches_reference(ops: type, dtype: torch.dtype, dim: int) -> None:
    """Sizes 1..5, plus two large clusters whose pair (50 x 60 tokens) takes the one-block
    path; the pair count is read on the device, below, at and above the capacity."""
    rng = np.random.default_rng(300 + dim)
    sizes = list(rng.integers(1, 6, size=40)) + [50, 60]
    x, offsets, sizes_t = cluster_inputs(rng, sizes, dim, dtype)
    pa, pb = random_pairs(rng, 42, 70, extra=[(41, 40), (3, 40), (40, 41)])
    m = pa.shape[0]
    check_pair_average(ops.pair_average, x, offsets, sizes_t, pa, pb, m, m)
    check_pair_average(ops.pair_average, x, offsets, sizes_t, pa, pb, m - 5, m)
    check_pair_average(ops.pair_average, x, offsets, sizes_t, pa, pb, m + 9, m - 2)
    check_pair_average(ops.pair_average, x, offsets, sizes_t, pa, pb, 0, m)
    # the tokens as columns (the engine's layout past 16 dimensions): the same bits
    rows = check_pair_average(ops.pair_average, x, offsets, sizes_t, pa, pb, m, m)
    cols = check_pair_average(ops.pair_average, as_columns(x), offsets, sizes_t, pa, pb, m, m)
    assert torch.equal(cols, rows)
    # rows off a 16-byte boundary (the CUDA kernel's scalar loads; on one, 16-byte loads
    # where dim allows): the same bits
    shifted = check_pair_average(ops.pair_average, off_boundary(x), offsets, sizes_t, pa, pb,
                                 m, m)
    assert torch.equal(shifted, rows)


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
def test_cluster_matrix_kernel_matches_reference(ops: type, dtype: torch.dtype,
                                                 dim: int) -> None:
    rng = np.random.default_rng(400 + dim)
    sizes = rng.integers(1, 6, size=45)
    x, offsets, sizes_t = cluster_inputs(rng, sizes, dim, dtype)
    rows = check_cluster_matrix(ops.cluster_matrix, x, offsets, sizes_t, 45, 48)
    check_cluster_matrix(ops.cluster_matrix, x, offsets, sizes_t, 7, 7)  # the first 7
    cols = check_cluster_matrix(ops.cluster_matrix, as_columns(x), offsets, sizes_t, 45, 48)
    assert all(torch.equal(u, w) for u, w in zip(cols, rows))  # the same bits as columns
    shifted = check_cluster_matrix(ops.cluster_matrix, off_boundary(x), offsets, sizes_t, 45, 48)
    assert all(torch.equal(u, w) for u, w in zip(shifted, rows))


def test_averages_agree_between_pair_list_and_matrix(ops: type) -> None:
    """The same pair from the list and from the matrix: the same average up to the order of
    the float64 sum."""
    rng = np.random.default_rng(17)
    x, offsets, sizes = cluster_inputs(rng, rng.integers(1, 6, size=20), 5, torch.float64)
    mat, _, _ = check_cluster_matrix(ops.cluster_matrix, x, offsets, sizes, 20, 20)
    a, b = np.triu_indices(20, 1)
    pa, pb = torch.from_numpy(b.astype(np.int32)), torch.from_numpy(a.astype(np.int32))
    val = check_pair_average(ops.pair_average, x, offsets, sizes, pa, pb, len(a), len(a))
    np.testing.assert_allclose(val[:len(a)].numpy(), mat.view(20, 20)[a, b].numpy(), rtol=1e-12)


def test_linear_kernels_do_not_depend_on_thread_order(sim: _SimExt, ops: type) -> None:
    """Forward and reverse order of the threads of a block: the same bits (the candidate
    pairs as a set, their order being unspecified)."""
    rng = np.random.default_rng(21)
    mu_t, s2, rad = centroid_inputs(rng, 50, 20, torch.float32)
    tau = tau_of(mu_t, s2, 50)
    x, offsets, sizes = cluster_inputs(rng, list(rng.integers(1, 6, size=30)) + [45, 50], 3,
                                       torch.float32)
    pa, pb = random_pairs(rng, 32, 40, extra=[(30, 31)])
    runs = []
    try:
        for reverse in (0, 1):
            sim.lib.dcpe_sim_set_reverse(reverse)
            out, nn = check_centroid_nn(ops.centroid_nn, mu_t, s2, 50, 0, 1.0)
            check_candidate_pairs(ops.candidate_pairs, mu_t, s2, rad, tau, 50, 0.1, 0.0)
            val = check_pair_average(ops.pair_average, x, offsets, sizes, pa, pb, 41, 41)
            mat = check_cluster_matrix(ops.cluster_matrix, x, offsets, sizes, 32, 32)
            runs.append((out, nn, val, *mat))
    finally:
        sim.lib.dcpe_sim_set_reverse(0)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_linear_kernels_single_cluster(ops: type, dtype: torch.dtype) -> None:
    """n == 1: no neighbour (+inf at slot 0), no candidate pair, a 1 x 1 matrix of +inf."""
    mu_t = torch.tensor([[0.5], [-1.0], [2.0]], dtype=dtype)
    s2 = torch.tensor([0.25], dtype=dtype)
    for mode in (0, 1):
        out = torch.zeros(1, dtype=dtype)
        nn = torch.full((1,), 9, dtype=torch.int64)
        ops.centroid_nn(mu_t, s2, 1, mode, 1.0, out, nn, _all_rows(1, "cpu"), 1)
        assert out.item() == float("inf") and nn.item() == 0
    pa = torch.full((4,), -7, dtype=torch.int32)
    pb = torch.full((4,), -7, dtype=torch.int32)
    count = torch.zeros(1, dtype=torch.int64)
    ops.candidate_pairs(mu_t, s2, s2, torch.full((1,), float("inf"), dtype=dtype), 1, 1e-6,
                        1e-7, pa, pb, count, 4, _all_rows(1, "cpu"), 1,
                        torch.ones(1, dtype=torch.int8))
    assert count.item() == 0 and bool((pa == -7).all())
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=dtype)
    out = torch.zeros(3, dtype=dtype)
    nn = torch.full((1,), 9, dtype=torch.int64)
    nnd = torch.zeros(1, dtype=dtype)
    ops.cluster_matrix(x, torch.tensor([0]), torch.tensor([2]), 1, out, 3, nn, nnd)
    assert out[0].item() == float("inf") and out[1:].tolist() == [0.0, 0.0]
    assert nn.item() == 0 and nnd.item() == float("inf")


def test_linear_kernels_check_their_arguments(sim: _SimExt, ops: type) -> None:
    """Bad codes and sizes are refused with a message that names the argument."""
    mu = torch.zeros((2, 3))
    v = torch.zeros(3)
    i64 = torch.zeros(3, dtype=torch.int64)
    i32 = torch.zeros(3, dtype=torch.int32)
    p = [t.data_ptr() for t in (mu, v, i64, i32)]
    cases = [
        ("dtype code", lambda: sim.centroid_nn(2, p[0], p[1], 3, 2, 0, 1.0, p[1], p[2], p[3],
                                               3, 0)),
        ("mode", lambda: sim.centroid_nn(0, p[0], p[1], 3, 2, 2, 1.0, p[1], p[2], p[3], 3, 0)),
        ("scale", lambda: sim.centroid_nn(0, p[0], p[1], 3, 2, 1, 0.3, p[1], p[2], p[3], 3, 0)),
        ("dim", lambda: sim.centroid_nn(0, p[0], p[1], 3, 0, 0, 1.0, p[1], p[2], p[3], 3, 0)),
        ("nrows", lambda: sim.centroid_nn(0, p[0], p[1], 3, 2, 0, 1.0, p[1], p[2], p[3], 4, 0)),
        ("dtype code", lambda: sim.candidate_pairs(-1, p[0], p[1], p[1], p[1], 3, 2, 0.0, 0.0,
                                                   p[3], p[3], p[2], 3, p[3], 3, p[3], 0)),
        ("capacity", lambda: sim.candidate_pairs(0, p[0], p[1], p[1], p[1], 3, 2, 0.0, 0.0,
                                                 p[3], p[3], p[2], -1, p[3], 3, p[3], 0)),
        ("nrows", lambda: sim.candidate_pairs(0, p[0], p[1], p[1], p[1], 3, 2, 0.0, 0.0,
                                              p[3], p[3], p[2], 3, p[3], -1, p[3], 0)),
        ("dtype code", lambda: sim.pair_average(5, p[0], 2, 2, 1, p[2], p[2], p[3], p[3], p[2],
                                                3, p[1], False, 0)),
        ("capacity", lambda: sim.pair_average(0, p[0], 2, 2, 1, p[2], p[2], p[3], p[3], p[2],
                                              -2, p[1], False, 0)),
        ("token stride", lambda: sim.pair_average(0, p[0], 2, 0, 1, p[2], p[2], p[3], p[3],
                                                  p[2], 3, p[1], False, 0)),
        ("coordinate stride", lambda: sim.pair_average(0, p[0], 2, 1, -3, p[2], p[2], p[3],
                                                       p[3], p[2], 3, p[1], False, 0)),
        ("dtype code", lambda: sim.cluster_matrix(3, p[0], 2, 2, 1, p[2], p[2], 3, p[1], 3,
                                                  p[2], p[1], 0)),
        ("ld", lambda: sim.cluster_matrix(0, p[0], 2, 2, 1, p[2], p[2], 3, p[1], 2, p[2], p[1],
                                          0)),
        ("token stride", lambda: sim.cluster_matrix(0, p[0], 2, 0, 3, p[2], p[2], 3, p[1], 3,
                                                    p[2], p[1], 0)),
    ]
    for word, call in cases:
        with pytest.raises(RuntimeError, match=word):
            call()
    with pytest.raises(ValueError, match="float32 or float64"):
        ops.centroid_nn(mu.long(), v, 3, 0, 1.0, v, i64, i32, 3)


# ------------------------------------------- the matrix-free engine's rounds, end to end


@pytest.mark.parametrize("split", [0, 8])
@pytest.mark.parametrize("dtype", _DTYPES)
def test_scans_of_a_subset_of_rows_match_the_references(sim: _SimExt, ops: type, split: int,
                                                         dtype: torch.dtype) -> None:
    """After the first round only some clusters search (reducibility): the scans of
    ``rows[:nrows]`` equal the references (``dcpe_kernels.centroid``) on those rows, leave
    the other rows as they were, and emit a pair with a cluster that does not search from
    the one that does."""
    from dcpe_kernels.centroid import _reference_candidate_pairs, _reference_centroid_nn

    rng = np.random.default_rng(11)
    n = 70
    mu_t, s2, rad = centroid_inputs(rng, n, 5, dtype)
    rows = torch.from_numpy(np.flatnonzero(rng.random(n) < 0.35)).to(torch.int32)
    needy = torch.zeros(n, dtype=torch.int8)
    needy[rows.long()] = 1
    sim.lib.dcpe_sim_set_scan_split(split)
    try:
        for mode in (0, 1):
            out = torch.full((n,), -1.0, dtype=dtype)
            nn = torch.full((n,), -1, dtype=torch.int64)
            ops.centroid_nn(mu_t, s2, n, mode, 1.0, out, nn, rows, len(rows))
            ref_out, ref_nn = out.clone().fill_(-1.0), nn.clone().fill_(-1)
            _reference_centroid_nn(mu_t, s2, n, mode, 1.0, ref_out, ref_nn, rows, len(rows))
            assert torch.equal(out, ref_out)
            if mode == 1:
                assert torch.equal(nn, ref_nn)
        tau = tau_of(mu_t, s2, n) * 1.2
        got = []
        for kernel in (ops.candidate_pairs, _reference_candidate_pairs):
            pa = torch.full((4096,), -7, dtype=torch.int32)
            pb = pa.clone()
            count = torch.zeros(1, dtype=torch.int64)
            kernel(mu_t, s2, rad, tau, n, 1e-6, 1e-7, pa, pb, count, 4096, rows, len(rows),
                   needy)
            c = int(count[0])
            got.append(sorted(zip(pa[:c].tolist(), pb[:c].tolist())))
        assert got[0] == got[1] and got[0]
        assert {a for a, _ in got[0]} <= set(rows.tolist())
    finally:
        sim.lib.dcpe_sim_set_scan_split(0)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_chained_rounds_match_rounds_read_one_by_one(ops: type, dtype: torch.dtype) -> None:
    """The dense rounds chained on the device (each reads its order, the merges so far and
    the early-stop test from the round before's record; the merges read both orders from
    their own): the same merges, bit for bit, as rounds whose counts the host reads one by
    one, for a whole tree, flat cuts that stop early, and the size cap."""
    from dcpe_kernels import rnn

    n = 90
    x = torch.from_numpy(tie_free(np.random.default_rng(31), n, 4)).to(dtype)
    for method in ("average", "complete"):
        for extra in ({}, {"n_clusters": n // 2}, {"max_cluster_size": 5, "n_clusters": 20}):
            kw = {"method": method, "metric": "euclidean", "max_cluster_size": None, **extra}
            runs, calls = chained_and_not(x, ops, **kw)
            assert_same_merges(runs)
            assert calls[0]["chained"] > 0 and calls[1]["chained"] == 0
            assert calls[0]["scans"] - calls[1]["scans"] < rnn._ROUNDS_AHEAD


@pytest.mark.parametrize("case", [(60, 3, np.float64, None, 0), (70, 8, np.float32, None, 0),
                                  (64, 2, np.float64, 6, 2 * 25 * 25 * 8),
                                  (50, 20, np.float32, 5, 2 * 25 * 25 * 4)],
                         ids=["f64", "f32", "cap-handover", "columns-cap-handover"])
def test_matrix_free_rounds_match_cpu(ops: type, case: tuple) -> None:
    """The matrix-free engine (``dcpe_kernels.linear``) driving these kernels: labels
    identical to the ``cpu`` backend's, with and without the size cap, to the end
    matrix-free or handed over to the dense rounds (``round_scan``, ``merge_compact_nn``),
    tokens as rows or (d = 20) as columns."""
    import warnings

    import dcpe
    from dcpe_kernels.linear import linear_merges
    from dcpe_kernels.rnn import merges_to_labels

    n, d, dt, cap, handover = case
    x = tie_free(np.random.default_rng(n), n, d).astype(dt)
    for k in (1, n // 3, n - 2):
        mg = linear_merges(torch.from_numpy(x), metric="euclidean", max_cluster_size=cap,
                           ops=ops, backend="cuda", n_clusters=k, handover_bytes=handover)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            want = dcpe.cluster(x, k, max_cluster_size=cap, backend="cpu")
        assert same_partition(merges_to_labels(mg, k).numpy(), np.asarray(want)), k


@pytest.mark.parametrize("dtype", _DTYPES)
def test_large_pairs_in_parts_match_cpu(ops: type, dtype: torch.dtype,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Large pairs summed in parts (float64 part averages from the kernel, whatever the
    tokens' dtype): the parts add up to the whole pair's average, and the engine's
    dendrogram is SciPy's."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    import dcpe_kernels.linear as linear
    from dcpe_kernels.pair_average import _reference_pair_average
    from dcpe_kernels.rnn import merges_to_linkage

    monkeypatch.setattr(linear, "_SPLIT_WORK", 6)
    monkeypatch.setattr(linear, "_SPLIT_PARTS", 4)
    rng = np.random.default_rng(12)
    x, offsets, sizes = cluster_inputs(rng, [5, 7, 1, 9, 4, 6, 2, 8], 3, dtype)
    pa = torch.tensor([0, 1, 3, 2, 5, 7, 4], dtype=torch.int32)
    pb = torch.tensor([1, 3, 7, 6, 0, 4, 2], dtype=torch.int32)
    count = torch.tensor([7], dtype=torch.int64)
    got = torch.empty(7, dtype=dtype)
    linear._pair_sums(ops, x, offsets, sizes, 8, pa, pb, count, 7, got)
    want = torch.empty(7, dtype=dtype)
    _reference_pair_average(x, offsets, sizes, pa, pb, count, 7, want)
    assert_close_averages(got, want)
    pts = tie_free(np.random.default_rng(3), 50, 3)
    mg = linear.linear_merges(torch.from_numpy(pts), metric="euclidean", max_cluster_size=None,
                              ops=ops, backend="cuda", handover_bytes=0)
    z = merges_to_linkage(mg)
    ref = scipy_linkage(pts, method="average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_first_round_without_sums_is_the_same(ops: type, dtype: torch.dtype,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """These kernels' centroid scan gives the first round's exact distances (every cluster
    one token) bit for bit as their pair sums do, ties included (a grid with duplicates)."""
    import dcpe_kernels.linear as linear

    rng = np.random.default_rng(5)
    for x in (rng.integers(0, 4, size=(60, 2)).astype(np.float64), tie_free(rng, 60, 3)):
        xt = torch.from_numpy(x).to(dtype)
        got = []
        for shortcut in (True, False):
            monkeypatch.setattr(linear, "_SINGLETON_ROUND", shortcut)
            got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                            ops=ops, backend="cuda", handover_bytes=0))
        for name in ("rep_a", "rep_b", "height", "hmono", "size"):
            assert torch.equal(getattr(got[0], name), getattr(got[1], name)), name


def test_thresholds_from_old_neighbours_change_nothing(ops: type,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With these kernels too, the rounds that take thresholds from the old neighbours (and
    scan only for the rest) merge as a scan for every searching cluster does, bit for bit."""
    import dcpe_kernels.linear as linear

    rng = np.random.default_rng(8)
    for x in (rng.integers(0, 4, size=(70, 2)).astype(np.float64), tie_free(rng, 80, 3)):
        xt = torch.from_numpy(x).to(torch.float32)
        got = []
        for factor in (linear._BOUND_FACTOR, 0.0):
            monkeypatch.setattr(linear, "_BOUND_FACTOR", factor)
            got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                            ops=ops, backend="cuda", handover_bytes=0))
        for name in ("rep_a", "rep_b", "height", "hmono", "size"):
            assert torch.equal(getattr(got[0], name), getattr(got[1], name)), name
