"""Backend ``cuda`` (CUDA C++ kernels in ``dcpe._C.cuda``).

The build test runs everywhere; the rest needs a CUDA device and skips cleanly without.
Without a GPU, ``tests/test_cuda_sim.py`` runs the kernels' same source on the CPU.
``dcpe_kernels`` (which decorates Triton kernels on import) is imported inside the tests
only, so that collecting this module does not fix the Triton interpreter mode for
``tests/test_triton.py``.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (  # noqa: E402
    assert_same_merges,
    chained_and_not,
    check_merge_kernel,
    check_merge_kernel_counted,
    check_pairwise_kernel,
    check_round_scan_kernel,
    cpu_order_distances,
    random_merge_round,
)

HAS_CUDA_DEVICE = bool(torch.cuda.is_available())
needs_gpu = pytest.mark.skipif(not HAS_CUDA_DEVICE, reason="needs a CUDA device")


def _ext():
    try:
        from dcpe import _C
    except ImportError:
        return None
    return _C


def tie_free(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Gaussian points, random per-coordinate scales: no tied distances (a.s.)."""
    scales = np.exp(rng.uniform(np.log(0.2), np.log(5.0), size=d))
    return rng.standard_normal((n, d)) * scales


def cut(z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Canonical labels after the first ``n - k`` merges of ``z``."""
    parent = np.arange(2 * n)

    def root(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for i, row in enumerate(z[: max(0, n - k)]):
        parent[root(int(row[0]))] = n + i
        parent[root(int(row[1]))] = n + i
    roots = np.array([root(t) for t in range(n)])
    _, first, inv = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def test_cuda_kernels_built_when_nvcc_present() -> None:
    """The build compiles the CUDA sources whenever nvcc is available (and not skipped)."""
    ext = _ext()
    if ext is None:
        pytest.skip("dcpe._C is not built")
    if shutil.which("nvcc") is None or os.environ.get("DCPE_SKIP_CUDA", "0") not in ("", "0"):
        pytest.skip("nvcc not on PATH or DCPE_SKIP_CUDA set")
    assert getattr(ext, "has_cuda", False) is True
    assert callable(ext.cuda.pairwise_nn) and callable(ext.cuda.merge_compact_nn)
    assert callable(ext.cuda.round_scan)
    assert ext.cuda.device_count() >= 0  # never raises, also without a driver


def _ptx_entries(tmp_path, source: str) -> tuple[list[str], str]:
    """The kernel entries of ``csrc/cuda/<source>`` as nvcc emits its PTX for sm_90, and the
    whole PTX text (skips without nvcc)."""
    import re
    import subprocess
    from pathlib import Path

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    root = Path(__file__).resolve().parents[1]
    ptx = tmp_path / source.replace(".cu", ".ptx")
    proc = subprocess.run([nvcc, "-ptx", "-arch=sm_90", "-O3", f"-I{root / 'csrc'}",
                           str(root / "csrc" / "cuda" / source), "-o", str(ptx)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = ptx.read_text()
    return re.split(r"(?m)^\.(?:visible )?\.?entry ", text)[1:], text


def test_kernels_are_never_contracted_into_fma(tmp_path) -> None:
    """Each matrix entry is computed in both of its rows; with an fma in the weighted merge
    the two would round differently, and token distances would not round as in the cpu
    engine. The kernels' PTX (as nvcc emits it for sm_90) has explicitly rounded products
    and sums only, no ``fma.rn.f32/f64``."""
    import re

    entries, _ = _ptx_entries(tmp_path, "rnn_kernels.cu")
    kernels = [e for e in entries if "rownn_kernel" in e.split("(", 1)[0]]
    assert len(kernels) == 4  # pairwise and merge, float and double
    for body in kernels:
        assert not re.findall(r"\bfma\.rn\.f(?:32|64)", body)
        assert re.findall(r"\bmul\.rn\.f(?:32|64)", body)
    # the round bookkeeping's average-linkage weights are IEEE float64 quotients, as in the
    # cpu engine (not an approximate reciprocal)
    scans = [e for e in entries if "round_scan_kernel" in e.split("(", 1)[0]]
    assert len(scans) == 2
    for body in scans:
        assert re.findall(r"\bdiv\.rn\.f64", body)
        assert not re.findall(r"\b(?:div\.approx|div\.full|rcp\.approx)", body)


def test_available_says_why() -> None:
    from dcpe.backends import cuda_backend

    ok, why = cuda_backend.available()
    assert isinstance(why, str) and why
    if not HAS_CUDA_DEVICE:
        assert not ok
    assert not cuda_backend.accepts(np.zeros((3, 2)))
    assert not cuda_backend.accepts(torch.zeros((3, 2)))


def _backend():
    from dcpe.backends import cuda_backend

    ok, why = cuda_backend.available()
    if not ok:
        pytest.skip(f"cuda backend unavailable: {why}")
    return cuda_backend


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", [0, 1, 2])
def test_pairwise_kernel_matches_reference(dtype: torch.dtype, metric: int) -> None:
    cb = _backend()
    rng = np.random.default_rng(metric)
    x = torch.tensor(tie_free(rng, 333, 7), dtype=dtype, device="cuda")
    check_pairwise_kernel(cb.CudaOps.pairwise_nn, x, 340, metric)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 511, 513, 5000])
def test_round_scan_kernel_matches_reference(dtype: torch.dtype, n: int) -> None:
    """The one-block bookkeeping equals its PyTorch reference bit for bit, untouched
    entries included, across its 512-cluster blocks."""
    cb = _backend()
    check_round_scan_kernel(cb.CudaOps.round_scan, n, dtype, "cuda")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_merge_kernel_matches_reference(dtype: torch.dtype, mode: int) -> None:
    cb = _backend()
    rng = np.random.default_rng(40 + mode)
    round_ = random_merge_round(rng, 300, 50, 10, 8, dtype, "cuda")
    n_new = round_[1].shape[0]
    check_merge_kernel(cb.CudaOps.merge_compact_nn, *round_, mode, ((0, n_new), (17, 40)))
    check_merge_kernel_counted(cb.CudaOps.merge_compact_nn, *round_, mode)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_kernel_rounds_like_the_cpu_engine(dtype: torch.dtype) -> None:
    """Squares of differences added one dimension after the other, each step rounded."""
    cb = _backend()
    x = tie_free(np.random.default_rng(78), 500, 8)
    x = x.astype(np.float32 if dtype == torch.float32 else np.float64)
    out = torch.empty(500 * 500, dtype=dtype, device="cuda")
    nn = torch.empty(500, dtype=torch.int64, device="cuda")
    nnd = torch.empty(500, dtype=dtype, device="cuda")
    cb.CudaOps.pairwise_nn(torch.from_numpy(x).cuda(), out, 500, 0, nn, nnd)
    np.testing.assert_array_equal(out.view(500, 500).cpu().numpy(), cpu_order_distances(x, 0))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merged_matrix_is_exactly_symmetric(dtype: torch.dtype) -> None:
    """Both rows of an entry round alike (symmetric order of operations, no fma)."""
    cb = _backend()
    rng = np.random.default_rng(77)
    n_old = 700
    a = tie_free(rng, n_old, 8)
    x = torch.tensor(a, dtype=dtype, device="cuda")
    old = torch.empty(n_old * n_old, dtype=dtype, device="cuda")
    nn = torch.empty(n_old, dtype=torch.int64, device="cuda")
    nnd = torch.empty(n_old, dtype=dtype, device="cuda")
    cb.CudaOps.pairwise_nn(x, old, n_old, 0, nn, nnd)
    om = old.view(n_old, n_old)
    assert torch.equal(om, om.T)
    # merge the reciprocal pairs with unequal cluster sizes (non-trivial weights)
    ar = torch.arange(n_old, device="cuda")
    recip = nn[nn] == ar
    keep = ~(recip & (ar > nn))
    p = ar[keep]
    merged = (recip & (ar < nn))[p]
    q = torch.where(merged, nn[p], -1)
    sz = torch.from_numpy(rng.integers(1, 9, size=n_old)).to(device="cuda", dtype=dtype)
    tot = sz[p] + torch.where(merged, sz[q.clamp_min(0)], 0)
    wp, wq = sz[p] / tot, torch.where(merged, sz[q.clamp_min(0)] / tot, 0)
    n_new = int(p.numel())
    dst = torch.empty(n_new * n_new, dtype=dtype, device="cuda")
    cb.CudaOps.merge_compact_nn(old, n_old, dst, n_new, p.int(), q.int(), wp, wq, n_new, 0,
                                n_new, 0, nn, nnd)
    new = dst.view(n_new, n_new)
    assert int((new != new.T).sum()) == 0


def _oracle(x: np.ndarray, cap: int | None, method: str = "average") -> np.ndarray:
    try:
        from dcpe import backends

        cpu = backends.get("cpu")
        ok = cpu.available()[0]
    except Exception:
        ok = False
    if ok:
        return cpu.linkage(x, method=method, metric="euclidean", max_cluster_size=cap)
    if cap is not None:
        pytest.skip("size-capped oracle needs the cpu backend")
    from scipy.cluster.hierarchy import linkage

    return linkage(x.astype(np.float64), method)


@needs_gpu
@pytest.mark.parametrize("n,seed,dtype,cap", [
    (2, 0, np.float32, None),
    (257, 1, np.float32, None),
    (257, 2, np.float64, 3),
    (2048, 3, np.float32, None),
    (4096, 4, np.float64, None),
    (4096, 5, np.float32, 2),
    (16384, 6, np.float64, None),
    (16384, 7, np.float64, 2),
])
def test_labels_match_cpu(n: int, seed: int, dtype: type, cap: int | None) -> None:
    cb = _backend()
    x = tie_free(np.random.default_rng(seed), n, 8).astype(dtype)
    z_ref = _oracle(x, cap)
    xt = torch.from_numpy(x).cuda()
    z = cb.linkage(xt, method="average", metric="euclidean", max_cluster_size=cap)
    assert z.shape == z_ref.shape
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-5, atol=1e-12)
    for k in sorted({max(1, n // 2), max(1, n // 7), 1}):
        lab = cb.labels(xt, k, method="average", metric="euclidean", max_cluster_size=cap)
        assert lab.is_cuda and lab.dtype == torch.int64
        np.testing.assert_array_equal(lab.cpu().numpy(), cut(z_ref, n, k))


@needs_gpu
def test_sample_codebook_float32_matches_cpu() -> None:
    """The LlamaGen-shaped sample (16384 x 8, float32), k = N/2."""
    cb = _backend()
    import dcpe.datasets as ds

    x = ds.sample_codebook()
    z_ref = _oracle(x, None)
    z = cb.linkage(torch.from_numpy(x).cuda(), method="average", metric="euclidean",
                   max_cluster_size=None)
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-5, atol=1e-7)
    lab = cb.labels(torch.from_numpy(x).cuda(), 8192, method="average", metric="euclidean",
                    max_cluster_size=None)
    np.testing.assert_array_equal(lab.cpu().numpy(), cut(z_ref, len(x), 8192))


@needs_gpu
@pytest.mark.parametrize("method", ["single", "complete", "weighted"])
def test_other_linkages_match_scipy(method: str) -> None:
    cb = _backend()
    from scipy.cluster.hierarchy import linkage

    x = tie_free(np.random.default_rng(9), 500, 5)
    z = cb.linkage(torch.from_numpy(x).cuda(), method=method, metric="euclidean",
                   max_cluster_size=None)
    z_ref = linkage(x, method)
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=1e-10)


@needs_gpu
def test_inplace_path_matches() -> None:
    cb = _backend()
    from dcpe_kernels.rnn import merges_to_linkage, required_bytes, rnn_merges

    x = torch.from_numpy(tie_free(np.random.default_rng(13), 3000, 8)).float().cuda()
    ref = cb.linkage(x, method="average", metric="euclidean", max_cluster_size=None)
    tight = required_bytes(3000, 8, 4) + 100 * 3000 * 4
    mg = rnn_merges(x, method="average", metric="euclidean", max_cluster_size=None,
                    ops=cb.CudaOps, backend="cuda", memory_budget=tight)
    np.testing.assert_array_equal(merges_to_linkage(mg), ref)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("share", [0, 1 / 3, 1])
def test_peak_memory_within_the_budget(dtype: torch.dtype, share: float) -> None:
    """The dense rounds' own peak on the device (``torch.cuda.max_memory_allocated``, the
    input included) within ``memory_budget`` = ``required_bytes`` plus a share of one
    matrix: merged in place through staging rows to the end, staging rows until a second
    matrix fits, and a second matrix at once (the bytes of the tensors alone are counted
    on the CPU by ``tests/test_triton.py``)."""
    cb = _backend()
    from dcpe_kernels.rnn import required_bytes, rnn_merges

    n = 4096
    x = torch.from_numpy(tie_free(np.random.default_rng(19), n, 8)).to(dtype).cuda()
    budget = required_bytes(n, 8, x.element_size()) + int(share * n * n * x.element_size())
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    rnn_merges(x, method="average", metric="euclidean", max_cluster_size=None,
               ops=cb.CudaOps, backend="cuda", memory_budget=budget)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base + x.nbytes
    assert peak <= budget, (peak, budget)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chained_rounds_on_the_gpu(dtype: torch.dtype) -> None:
    """The dense rounds chained on the device (records read through pinned memory and
    events, several rounds queued) merge as the rounds read one by one, bit for bit: a whole
    tree, a flat cut that stops early, and the size cap."""
    cb = _backend()
    n = 3000
    x = torch.from_numpy(tie_free(np.random.default_rng(17), n, 8)).to(dtype).cuda()
    for extra in ({}, {"n_clusters": n // 2}, {"max_cluster_size": 8, "n_clusters": 100}):
        kw = {"method": "average", "metric": "euclidean", "max_cluster_size": None,
              "backend": "cuda", **extra}
        runs, calls = chained_and_not(x, cb.CudaOps, **kw)
        assert_same_merges(runs)
        assert calls[0]["chained"] > 0 and calls[1]["chained"] == 0


@needs_gpu
def test_preflight_refuses_too_large() -> None:
    cb = _backend()
    _, total = torch.cuda.mem_get_info()
    n = int((total / 4) ** 0.5) + 4096
    xt = torch.zeros((n, 2), dtype=torch.float32, device="cuda")
    before = torch.cuda.memory_allocated()
    # the matrix engine's preflight: single linkage needs the matrix, and so does average
    # linkage with engine="matrix" (engine="auto" runs it matrix-free)
    for method, engine in (("single", "auto"), ("average", "matrix")):
        with pytest.raises(MemoryError):
            cb.labels(xt, 2, method=method, metric="euclidean", max_cluster_size=None,
                      engine=engine)
    assert torch.cuda.memory_allocated() == before


# ------------------------------------------- matrix-free engine: kernels vs. references
# (the checks and inputs of tests/test_cuda_sim.py, on the GPU)


def _linear_checks():
    import test_cuda_sim

    return test_cuda_sim


def test_linear_kernels_built_when_nvcc_present() -> None:
    ext = _ext()
    if ext is None or not getattr(ext, "has_cuda", False):
        pytest.skip("dcpe._C is not built with CUDA")
    for name in ("centroid_nn", "candidate_pairs", "centroid_nn_gram", "candidate_pairs_gram",
                 "pair_average", "cluster_matrix"):
        assert callable(getattr(ext.cuda, name))


def test_linear_kernels_are_never_contracted_into_fma(tmp_path) -> None:
    """Centroid distances and token distances round every square and sum (no
    ``fma.rn``); square roots and quotients are IEEE (``sqrt.rn``, ``div.rn``)."""
    import re

    entries, text = _ptx_entries(tmp_path, "linear_kernels.cu")
    # (3 + 1 scan kernels, and the scan from a Gram tile) x 2 ops x 2 dtypes, 3 x 2 others,
    # and the pair averages of float32 tokens written in float64
    assert len(entries) == 27
    assert sum("gram_scan_kernel" in e.split("(", 1)[0] for e in entries) == 4
    for body in entries:
        assert not re.findall(r"\bfma\.rn\.f(?:32|64)", body)
        assert not re.findall(r"\b(?:div|sqrt|rcp|rsqrt)\.approx", body)
    for op in ("sqrt.rn.f32", "sqrt.rn.f64", "div.rn.f32", "div.rn.f64"):
        assert op in text
    # token rows on 16-byte boundaries are read 16 bytes at a time (float4 / double2) by
    # every kernel that sums token distances
    names = [e.split("(", 1)[0] for e in entries]
    sums = [e for e, name in zip(entries, names)
            if "pair_average" in name or "cluster_matrix" in name]
    assert len(sums) == 5
    for body in sums:
        assert re.findall(r"\bld\.global(?:\.nc)?\.v(?:4\.f32|2\.f64)", body), body[:80]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
def test_centroid_scans_match_reference(dtype: torch.dtype, dim: int) -> None:
    cb = _backend()
    t = _linear_checks()
    rng = np.random.default_rng(100 + dim)
    for n in (1, 2, 70, 333):
        mu_t, s2, rad = t.centroid_inputs(rng, n, dim, dtype, device="cuda")
        for mode, scale in ((0, 1.0), (1, 1.0), (1, 0.5)):
            t.check_centroid_nn(cb.CudaOps.centroid_nn, mu_t, s2, n, mode, scale)
        tau = t.tau_of(mu_t, s2, n)
        for rel, absm in ((1e-6, 1e-7), (0.0, 0.0), (0.3, 0.05)):
            t.check_candidate_pairs(cb.CudaOps.candidate_pairs, mu_t, s2, rad, tau, n, rel,
                                    absm)
    mu_t, s2, rad = t.centroid_inputs(rng, 90, dim, dtype, device="cuda", grid=True)
    t.check_centroid_nn(cb.CudaOps.centroid_nn, mu_t, s2, 90, 0, 1.0)
    t.check_candidate_pairs(cb.CudaOps.candidate_pairs, mu_t, s2, rad, t.tau_of(mu_t, s2, 90),
                            90, 0.0, 0.0)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_candidate_pairs_count_past_capacity_on_gpu(dtype: torch.dtype) -> None:
    cb = _backend()
    t = _linear_checks()
    mu_t, s2, rad = t.centroid_inputs(np.random.default_rng(11), 500, 4, dtype, device="cuda")
    tau = t.tau_of(mu_t, s2, 500)
    total = len(t.reference_pairs(mu_t, s2, rad, tau, 500, 0.5, 0.1))
    for cap in (0, 1, total // 3, total):
        t.check_candidate_pairs(cb.CudaOps.candidate_pairs, mu_t, s2, rad, tau, 500, 0.5, 0.1,
                                capacity=cap)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [8, 40])
def test_centroid_nn_3000_clusters(dtype: torch.dtype, dim: int) -> None:
    cb = _backend()
    t = _linear_checks()
    mu_t, s2, _ = t.centroid_inputs(np.random.default_rng(3000), 3000, dim, dtype,
                                    device="cuda")
    t.check_centroid_nn(cb.CudaOps.centroid_nn, mu_t, s2, 3000, 0, 1.0)
    t.check_centroid_nn(cb.CudaOps.centroid_nn, mu_t, s2, 3000, 1, 0.5)


@needs_gpu
def test_centroid_nn_one_warp_per_row_group() -> None:
    """From n = 524288 on a block's 256 rows each get one warp (split 1): sampled rows
    against the same arithmetic in PyTorch on the GPU (eager ops, no fusion)."""
    cb = _backend()
    t = _linear_checks()
    n, dim = 600_000, 8
    mu_t, s2, _ = t.centroid_inputs(np.random.default_rng(6), n, dim, torch.float32,
                                    device="cuda")
    out = torch.empty(n, dtype=torch.float32, device="cuda")
    nn = torch.empty(n, dtype=torch.int64, device="cuda")
    cb.CudaOps.centroid_nn(mu_t, s2, n, 0, 1.0, out, nn,
                           torch.arange(n, dtype=torch.int32, device="cuda"), n)
    rows = torch.tensor([0, 1, 255, 256, 70_001, 524_287, n - 1], device="cuda")
    dd = torch.zeros((rows.numel(), n), dtype=torch.float32, device="cuda")
    for k in range(dim):
        diff = mu_t[k][rows][:, None] - mu_t[k][None, :]
        dd = dd + diff * diff
    v = dd + (s2[rows][:, None] + s2[None, :])
    v = t.sqrt_rn(v.cpu())
    v[torch.arange(rows.numel()), rows.cpu()] = float("inf")
    best = v.min(dim=1).values
    arg = torch.where(v == best[:, None], torch.arange(n).expand_as(v), n).min(dim=1).values
    assert torch.equal(out[rows].cpu(), best)
    assert torch.equal(nn[rows].cpu(), arg)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
def test_cluster_averages_match_reference(dtype: torch.dtype, dim: int) -> None:
    cb = _backend()
    t = _linear_checks()
    rng = np.random.default_rng(300 + dim)
    sizes = list(rng.integers(1, 6, size=40)) + [50, 60]
    x, offsets, sizes_t = t.cluster_inputs(rng, sizes, dim, dtype, device="cuda")
    pa, pb = t.random_pairs(rng, 42, 300, extra=[(41, 40), (3, 40), (40, 41)])
    m = pa.shape[0]
    first = t.check_pair_average(cb.CudaOps.pair_average, x, offsets, sizes_t, pa, pb, m, m)
    again = t.check_pair_average(cb.CudaOps.pair_average, x, offsets, sizes_t, pa, pb, m, m)
    assert torch.equal(first, again)  # deterministic
    t.check_pair_average(cb.CudaOps.pair_average, x, offsets, sizes_t, pa, pb, m + 9, m - 2)
    mat = t.check_cluster_matrix(cb.CudaOps.cluster_matrix, x, offsets, sizes_t, 42, 45)
    mat2 = t.check_cluster_matrix(cb.CudaOps.cluster_matrix, x, offsets, sizes_t, 42, 45)
    for u, w in zip(mat, mat2):
        assert torch.equal(u, w)
    # the tokens as columns (the engine's layout past 16 dimensions): the same bits
    cols = t.check_pair_average(cb.CudaOps.pair_average, t.as_columns(x), offsets, sizes_t,
                                pa, pb, m, m)
    assert torch.equal(cols, first)
    mat3 = t.check_cluster_matrix(cb.CudaOps.cluster_matrix, t.as_columns(x), offsets,
                                  sizes_t, 42, 45)
    for u, w in zip(mat, mat3):
        assert torch.equal(u, w)
