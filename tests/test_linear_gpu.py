"""The matrix-free GPU engine (:mod:`dcpe_kernels.linear`) and its Triton kernels.

Without a GPU the Triton kernels run on CPU tensors under the interpreter
(``TRITON_INTERPRET=1``) at small N, and the engine's driver also runs on the PyTorch
references (:class:`dcpe_kernels.ReferenceOps`).  On a machine with CUDA the same
comparisons run on CUDA tensors, with the ``cuda`` backend's kernels too when they are
built, plus labels at N = 65,536 under a 4 GiB budget compared with the ``cpu`` backend
and the device's peak memory under budgets of the preflight's count (on the CPU, the
bytes of the tensors the engine makes are counted instead:
:class:`dcpe_kernels.peak.TensorPeak`).
The CUDA kernels are compared with the same references on the CPU in
``tests/test_cuda_sim.py``.
"""

from __future__ import annotations

import functools
import os


def _cuda_visible() -> bool:
    try:
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


if "TRITON_INTERPRET" not in os.environ and not _cuda_visible():
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

from conftest import (  # noqa: E402
    BATCHED_CASES,
    GRAM_ENGINE_CASES,
    as_columns,
    check_batched_lists,
    check_gram_engine,
    check_gram_scans,
    near_duplicate_float64_rows,
    same_partition,
    tie_free,
)

import dcpe_kernels.linear as linear  # noqa: E402
from dcpe_kernels import ReferenceOps  # noqa: E402
from dcpe_kernels.centroid import (  # noqa: E402
    _reference_candidate_pairs,
    _reference_centroid_nn,
)
from dcpe_kernels.pair_average import (  # noqa: E402
    _launch_config as _pair_launch_config,
)
from dcpe_kernels.pair_average import (  # noqa: E402
    _reference_cluster_matrix,
    _reference_pair_average,
)
from dcpe_kernels.peak import TensorPeak  # noqa: E402
from dcpe_kernels.rnn import merges_to_labels, merges_to_linkage  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"


def _triton_ops():
    pytest.importorskip("triton")
    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    from dcpe_kernels import TritonOps

    return TritonOps


def _cuda_ops():
    if not ON_GPU:
        pytest.skip("the cuda backend's kernels need a GPU (tests/test_cuda_sim.py runs them "
                    "on the CPU)")
    from dcpe.backends import cuda_backend

    ok, why = cuda_backend.available()
    if not ok:
        pytest.skip(why)
    return cuda_backend.CudaOps


def _ops(name: str):
    return {"reference": lambda: ReferenceOps, "triton": _triton_ops, "cuda": _cuda_ops}[name]()


KERNEL_OPS = ["triton", "cuda"]
#: tolerance of kernels against references: float64 sums in another order
RTOL = {torch.float32: 0.0, torch.float64: 1e-14}


def _clusters(rng: np.random.Generator, n: int, d: int, dtype: torch.dtype):
    """Random clusters of 1..5 tokens: sorted tokens, offsets, sizes, and the moments."""
    sizes = torch.from_numpy(rng.integers(1, 6, size=n)).to(torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    x = torch.from_numpy(tie_free(rng, int(sizes.sum()), d)).to(dtype)
    seg = torch.repeat_interleave(torch.arange(n), sizes)
    mu = torch.zeros(n, d, dtype=torch.float64).index_add_(0, seg, x.double())
    mu /= sizes[:, None].double()
    dev2 = ((x.double() - mu[seg]) ** 2).sum(1)
    s2 = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, dev2) / sizes.double()
    rad = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, seg, dev2.sqrt(), "amax")
    dev = DEVICE
    return (x.to(dev), offsets.to(dev), sizes.to(dev), mu.T.to(dtype).contiguous().to(dev),
            s2.to(dtype).to(dev), (rad * 1.001).to(dtype).to(dev))


# ------------------------------------------------------------------ kernels vs references


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("n,d", [(1, 3), (2, 1), (45, 3), (70, 8)])
def test_centroid_nn_matches_reference(which: str, dtype: torch.dtype, mode: int, n: int,
                                       d: int, rng: np.random.Generator) -> None:
    ops = _ops(which)
    _, _, _, mu_t, s2, _ = _clusters(rng, n, d, dtype)
    scale = 0.5 if d == 3 else 1.0
    # every row, and a subset of the rows (the others are left as they are)
    subsets = [torch.arange(n), torch.arange(n)[torch.from_numpy(rng.random(n) < 0.4)]]
    for rows in subsets:
        rows = rows.to(torch.int32)
        out = torch.full((n,), -1.0, dtype=dtype, device=DEVICE)
        nn = torch.full((n,), -1, dtype=torch.int64, device=DEVICE)
        ops.centroid_nn(mu_t, s2, n, mode, scale, out, nn, rows.to(DEVICE), len(rows))
        ref_out = torch.full((n,), -1.0, dtype=dtype)
        ref_nn = torch.full((n,), -1, dtype=torch.int64)
        _reference_centroid_nn(mu_t.cpu(), s2.cpu(), n, mode, scale, ref_out, ref_nn, rows,
                               len(rows))
        assert torch.equal(out.cpu(), ref_out)
        if mode == 1:  # mode 0's argmin is not used (and is free on ties of the root)
            assert torch.equal(nn.cpu(), ref_nn)


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centroid_nn_ties_go_to_the_smallest_column(which: str, dtype: torch.dtype,
                                                    rng: np.random.Generator) -> None:
    """Centroids on a small integer grid: many equal values; every row's argmin is the
    smallest column among them, as in the reference (and across column tiles)."""
    ops = _ops(which)
    n = 150
    mu_t = torch.from_numpy(rng.integers(-1, 2, size=(2, n)).astype(np.float64)).to(dtype)
    s2 = torch.from_numpy(rng.integers(0, 2, size=n).astype(np.float64)).to(dtype)
    rows = torch.arange(n, dtype=torch.int32)
    for mode in (0, 1):
        out = torch.empty(n, dtype=dtype, device=DEVICE)
        nn = torch.empty(n, dtype=torch.int64, device=DEVICE)
        ops.centroid_nn(mu_t.to(DEVICE), s2.to(DEVICE), n, mode, 1.0, out, nn,
                        rows.to(DEVICE), n)
        ref_out, ref_nn = torch.empty(n, dtype=dtype), torch.empty(n, dtype=torch.int64)
        _reference_centroid_nn(mu_t, s2, n, mode, 1.0, ref_out, ref_nn, rows, n)
        assert torch.equal(out.cpu(), ref_out)
        assert torch.equal(nn.cpu(), ref_nn)  # on a grid, equal roots come from equal values


@pytest.mark.skipif(not INTERPRET, reason="on a GPU every test uses the GPU's tiles")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centroid_scans_with_gpu_tiles(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch,
                                       rng: np.random.Generator) -> None:
    """The Triton scans with the tiles a GPU gets (dcpe_kernels.centroid._launch_config),
    which the interpreter would otherwise never run: 600 clusters (two column tiles, the
    second ragged) on a small integer grid (many tied values), every row and a subset
    (ragged row tiles): the reference's minima and argmins, and its candidate pairs."""
    from dcpe_kernels import centroid

    gpu = centroid._launch_config(False)
    monkeypatch.setattr(centroid, "_launch_config", lambda on_cpu: gpu)
    ops = _triton_ops()
    n = 600
    assert gpu["BLOCK_N"] < n < 2 * gpu["BLOCK_N"]
    mu_t = torch.from_numpy(rng.integers(-2, 3, size=(3, n)).astype(np.float64)).to(dtype)
    s2 = torch.from_numpy(rng.integers(0, 3, size=n).astype(np.float64)).to(dtype)
    rad = torch.from_numpy(rng.integers(1, 3, size=n).astype(np.float64)).to(dtype)
    some = torch.arange(n)[torch.from_numpy(rng.random(n) < 0.3)].to(torch.int32)
    some = some[: len(some) - (len(some) % gpu["BLOCK_M"] == 0)]  # a ragged last row tile
    for rows in (torch.arange(n, dtype=torch.int32), some):
        m = len(rows)
        for mode in (0, 1):
            out = torch.full((n,), -1.0, dtype=dtype, device=DEVICE)
            nn = torch.full((n,), -1, dtype=torch.int64, device=DEVICE)
            ops.centroid_nn(mu_t.to(DEVICE), s2.to(DEVICE), n, mode, 1.0, out, nn,
                            rows.to(DEVICE), m)
            ref_out = torch.full((n,), -1.0, dtype=dtype)
            ref_nn = torch.full((n,), -1, dtype=torch.int64)
            _reference_centroid_nn(mu_t, s2, n, mode, 1.0, ref_out, ref_nn, rows, m)
            assert torch.equal(out.cpu(), ref_out), mode
            assert torch.equal(nn.cpu(), ref_nn), mode  # on a grid: equal roots, equal values
        tau = torch.sqrt(ref_out.clamp_min(0)) * 1.2 + 0.5
        args = (mu_t, s2, rad, tau, n)
        c, got, _, _ = _pairs(ops.candidate_pairs, *(a.to(DEVICE) if torch.is_tensor(a) else a
                                                     for a in args), 1 << 20, rows=rows)
        c_ref, ref, _, _ = _pairs(_reference_candidate_pairs, *args, 1 << 20, rows=rows)
        assert c == c_ref and got == ref


def _pairs(ops, mu_t, s2, rad, tau, n, capacity, rel=1e-5, absm=1e-6, rows=None):
    rel, absm = (float(np.float32(v)) for v in (rel, absm))
    dev = mu_t.device
    pa = torch.full((capacity,), -1, dtype=torch.int32, device=dev)
    pb = pa.clone()
    count = torch.zeros(1, dtype=torch.int64, device=dev)
    if rows is None:
        rows = torch.arange(n, dtype=torch.int32)
    needy = torch.zeros(n, dtype=torch.int8)
    needy[rows.long()] = 1
    ops(mu_t, s2, rad, tau, n, rel, absm, pa, pb, count, capacity, rows.to(dev), len(rows),
        needy.to(dev))
    c = int(count[0])
    w = min(c, capacity)
    return c, sorted(zip(pa[:w].tolist(), pb[:w].tolist())), pa, pb


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(2, 3), (45, 3), (70, 20)])
def test_gram_scans_match_reference(which: str, dtype: torch.dtype, n: int, d: int,
                                    rng: np.random.Generator) -> None:
    """The scans from tiles of the Gram matrix (dcpe_kernels.gram): the reference's minima
    bit for bit and its pairs, each once, a superset of the exact scan's; every row, and a
    subset of the rows, in one tile and in tiles of 16 columns."""
    ops = _ops(which)
    _, _, _, mu_t, s2, rad = _clusters(rng, n, d, dtype)
    by_columns = bool(getattr(ops, "gram_by_columns", False))
    fast = which == "triton" and ON_GPU and dtype == torch.float32
    some = torch.arange(n)[torch.from_numpy(rng.random(n) < 0.4)]
    for rows in (torch.arange(n), some if len(some) else torch.arange(1)):
        for step in (n, 16):
            check_gram_scans(ops, mu_t, s2, rad, rows, 1e-5, 1e-6, by_columns, step, fast)


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_scans_change_no_merge(which: str, dtype: torch.dtype,
                                    monkeypatch: pytest.MonkeyPatch,
                                    rng: np.random.Generator) -> None:
    """The engine with its scans from the Gram matrix merges as with the exact scans."""
    xt = torch.from_numpy(tie_free(rng, 90, 6)).to(dtype).to(DEVICE)
    cases = GRAM_ENGINE_CASES
    if which == "triton" and INTERPRET:  # (slow: half of the cases per dtype)
        cases = cases[:2] if dtype == torch.float32 else cases[2:]
    check_gram_engine(_ops(which), xt, monkeypatch, which, cases)


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_candidate_pairs_match_reference(which: str, dtype: torch.dtype,
                                         rng: np.random.Generator) -> None:
    ops = _ops(which)
    n, d = 60, 4
    _, _, _, mu_t, s2, rad = _clusters(rng, n, d, dtype)
    tau = torch.empty(n, dtype=dtype, device=DEVICE)
    nn = torch.empty(n, dtype=torch.int64, device=DEVICE)
    ops.centroid_nn(mu_t, s2, n, 1, 1.0, tau, nn, torch.arange(n, dtype=torch.int32,
                                                               device=DEVICE), n)
    tau = torch.sqrt(tau)
    tau = tau * 1.3  # more than one candidate per cluster
    c, got, _, _ = _pairs(ops.candidate_pairs, mu_t, s2, rad, tau, n, 4096)
    host = (mu_t.cpu(), s2.cpu(), rad.cpu(), tau.cpu(), n, 4096)
    c_ref, ref, _, _ = _pairs(_reference_candidate_pairs, *host)
    assert c == len(got)
    if which == "triton" and ON_GPU and dtype == torch.float32:
        # the fast float32 root and quotient of a GPU: equal to the reference but for pairs
        # within a few ulp of the threshold, so between the reference's sets at margins
        # a little below and above
        unordered = {frozenset(p) for p in got}
        inner = _pairs(_reference_candidate_pairs, *host, rel=1e-5 - 2e-6)[1]
        outer = _pairs(_reference_candidate_pairs, *host, rel=1e-5 + 2e-6)[1]
        assert {frozenset(p) for p in inner} <= unordered <= {frozenset(p) for p in outer}
    else:
        assert c == c_ref and got == ref
    assert all(a != b for a, b in got)
    assert len({frozenset(p) for p in got}) == len(got)  # each unordered pair once
    # every cluster's tau-argmin is a candidate: its nearest neighbour can be found
    listed = {frozenset(p) for p in got}
    assert all(frozenset((a, int(nn[a]))) in listed for a in range(n))
    # past the capacity: the count goes on, nothing is written out of bounds
    c_small, part, pa, _ = _pairs(ops.candidate_pairs, mu_t, s2, rad, tau, n, 7)
    assert c_small == c and len(part) == 7 and set(part) <= set(got)
    # a subset of the rows searches: its pairs, each once, also with clusters that do not
    sub = torch.arange(n)[torch.from_numpy(rng.random(n) < 0.3)].to(torch.int32)
    c_sub, got_sub, _, _ = _pairs(ops.candidate_pairs, mu_t, s2, rad, tau, n, 4096, rows=sub)
    c_ref, ref_sub, _, _ = _pairs(_reference_candidate_pairs, *host, rows=sub)
    members = set(sub.tolist())
    assert all(a in members for a, _ in got_sub)
    assert len({frozenset(p) for p in got_sub}) == len(got_sub)
    if not (which == "triton" and ON_GPU and dtype == torch.float32):
        assert c_sub == c_ref and got_sub == ref_sub


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 5])
def test_pair_average_matches_reference(which: str, dtype: torch.dtype, d: int,
                                        rng: np.random.Generator) -> None:
    ops = _ops(which)
    n = 30
    x, offsets, sizes, _, _, _ = _clusters(rng, n, d, dtype)
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b and (a * 7 + b) % 5 == 0]
    capacity = len(pairs) + 5
    pa = torch.tensor([p[0] for p in pairs] + [0] * 5, dtype=torch.int32, device=DEVICE)
    pb = torch.tensor([p[1] for p in pairs] + [0] * 5, dtype=torch.int32, device=DEVICE)
    count = torch.tensor([len(pairs)], dtype=torch.int64, device=DEVICE)
    val = torch.full((capacity,), -7.0, dtype=dtype, device=DEVICE)
    ops.pair_average(x, offsets, sizes, pa, pb, count, capacity, val)
    ref = torch.empty(capacity, dtype=dtype)
    _reference_pair_average(x.cpu(), offsets.cpu(), sizes.cpu(), pa.cpu(), pb.cpu(),
                            count.cpu(), capacity, ref)
    got = val.cpu()
    k = len(pairs)
    if which == "triton":  # every launch class of pair_average sums some of these pairs
        cfg = _pair_launch_config(not ON_GPU)
        work = {int(sizes[a]) * int(sizes[b]) for a, b in pairs}
        lo = 0
        for hi, *_ in (*cfg["PACKED"], *cfg["TILED"]):
            assert any(lo <= w < hi for w in work), (lo, hi, sorted(work))
            lo = hi
    torch.testing.assert_close(got[:k], ref[:k], rtol=RTOL[dtype], atol=0)
    assert bool((got[k:] == -7.0).all())  # past the count: untouched
    # (a, b) and (b, a) are the same bits; a second run gives the same bits
    index = {p: i for i, p in enumerate(pairs)}
    for (a, b), i in index.items():
        if (b, a) in index:
            assert got[i] == got[index[(b, a)]]
    again = torch.full_like(val, -7.0)
    ops.pair_average(x, offsets, sizes, pa, pb, count, capacity, again)
    assert torch.equal(again, val)
    # the tokens as columns (the engine's layout past 16 dimensions): the same bits
    cols = torch.full_like(val, -7.0)
    ops.pair_average(as_columns(x), offsets, sizes, pa, pb, count, capacity, cols)
    assert torch.equal(cols, val)


@pytest.mark.skipif(not INTERPRET, reason="on a GPU every test uses the GPU's launches")
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_pair_average_with_gpu_launches(layout: str, monkeypatch: pytest.MonkeyPatch,
                                        rng: np.random.Generator) -> None:
    """The Triton sums with the launch classes a GPU gets (64 pairs of up to 4 token pairs
    a program, 16 of up to 16, then 8 x 8, 16 x 16 and 64 x 64 tiles), which the
    interpreter would otherwise never run: a pair in every class, with ragged tiles (the
    lanes past a cluster read its first token, and drop it), against the reference."""
    import importlib

    pa_mod = importlib.import_module("dcpe_kernels.pair_average")
    gpu = pa_mod._launch_config(False)
    monkeypatch.setattr(pa_mod, "_launch_config", lambda on_cpu: gpu)
    ops = _triton_ops()
    dtype = torch.float32
    sizes = torch.tensor([1, 2, 3, 4, 5, 6, 9, 70, 75, 2], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    x = torch.from_numpy(tie_free(rng, int(sizes.sum()), 5)).to(dtype)
    # works 2, 12, 16, 30, 54, 5250 and 675 token pairs: each launch class, in both orders
    pairs = [(0, 1), (2, 3), (9, 3), (4, 5), (5, 6), (7, 8), (6, 8), (1, 0), (8, 7)]
    classes = [h for h, *_ in (*gpu["PACKED"], *gpu["TILED"])]
    work = {int(sizes[a]) * int(sizes[b]) for a, b in pairs}
    lo = 0
    for hi in classes:
        assert any(lo <= w < hi for w in work), (lo, hi, sorted(work))
        lo = hi
    k = len(pairs)
    pa = torch.tensor([a for a, _ in pairs] + [0, 0], dtype=torch.int32)
    pb = torch.tensor([b for _, b in pairs] + [0, 0], dtype=torch.int32)
    count = torch.tensor([k], dtype=torch.int64)
    xs = x.to(DEVICE) if layout == "rows" else as_columns(x.to(DEVICE))
    val = torch.full((k + 2,), -7.0, dtype=dtype, device=DEVICE)
    ops.pair_average(xs, offsets.to(DEVICE), sizes.to(DEVICE), pa.to(DEVICE), pb.to(DEVICE),
                     count.to(DEVICE), k + 2, val)
    ref = torch.empty(k + 2, dtype=dtype)
    _reference_pair_average(x, offsets, sizes, pa, pb, count, k + 2, ref)
    got = val.cpu()
    torch.testing.assert_close(got[:k], ref[:k], rtol=RTOL[dtype], atol=0)
    assert bool((got[k:] == -7.0).all())
    assert got[0] == got[7] and got[5] == got[8]  # (a, b) and (b, a): the same bits


@pytest.mark.parametrize("which", KERNEL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 37])
def test_cluster_matrix_matches_reference(which: str, dtype: torch.dtype, n: int,
                                          rng: np.random.Generator) -> None:
    ops = _ops(which)
    x, offsets, sizes, _, _, _ = _clusters(rng, n, 3, dtype)
    ld = n + 3
    out = torch.full((n * ld,), -1.0, dtype=dtype, device=DEVICE)
    nn = torch.empty(n, dtype=torch.int64, device=DEVICE)
    nnd = torch.empty(n, dtype=dtype, device=DEVICE)
    ops.cluster_matrix(x, offsets, sizes, n, out, ld, nn, nnd)
    ref = torch.full((n * ld,), -1.0, dtype=dtype)
    rnn, rnnd = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=dtype)
    _reference_cluster_matrix(x.cpu(), offsets.cpu(), sizes.cpu(), n, ref, ld, rnn, rnnd)
    m = out.cpu().view(n, ld)[:, :n]
    torch.testing.assert_close(m, ref.view(n, ld)[:, :n], rtol=RTOL[dtype], atol=0)
    assert torch.equal(m, m.T)  # exactly symmetric
    assert bool(torch.isinf(m.diagonal()).all())
    assert bool((out.cpu().view(n, ld)[:, n:] == -1.0).all())  # padding untouched
    best = m.min(dim=1).values
    assert torch.equal(nnd.cpu(), best)
    if n > 1:
        cols = torch.arange(n).expand(n, n)
        assert torch.equal(nn.cpu(), torch.where(m == best[:, None], cols, n).min(1).values)
    else:
        assert int(nn[0]) == 0
    # the tokens as columns (the engine's layout past 16 dimensions): the same bits
    out2 = torch.full_like(out, -1.0)
    ops.cluster_matrix(as_columns(x), offsets, sizes, n, out2, ld, torch.empty_like(nn),
                       torch.empty_like(nnd))
    assert torch.equal(out2, out)


# ------------------------------------------------------------------------ the engine


def _cpu_labels(x: np.ndarray, k: int, metric: str, cap: int | None) -> np.ndarray:
    import warnings

    import dcpe

    with warnings.catch_warnings():  # the cap may leave more than k clusters (both sides)
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(dcpe.cluster(x, k, metric=metric, max_cluster_size=cap,
                                       backend="cpu"))


ENGINE_CASES = [
    # n, d, dtype, metric, cap, handover (bytes of two cluster matrices; 0 never)
    (60, 3, np.float64, "euclidean", None, 0),
    (70, 8, np.float32, "euclidean", None, 0),
    (64, 2, np.float64, "euclidean", 5, 0),
    (80, 4, np.float64, "euclidean", None, 2 * 30 * 30 * 8),
    (72, 5, np.float32, "euclidean", 9, 2 * 40 * 40 * 4),
    (60, 20, np.float32, "euclidean", None, 0),  # tokens as columns (past 16 dimensions)
    (64, 24, np.float64, "euclidean", 6, 2 * 30 * 30 * 8),
    (66, 5, np.float64, "sqeuclidean", None, 0),
    (60, 4, np.float32, "cosine", 6, 0),
]


@pytest.mark.parametrize("which", ["reference", "triton"])
@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[3]}")
def test_labels_match_cpu(which: str, case: tuple, rng: np.random.Generator) -> None:
    """Labels identical (as partitions) to the ``cpu`` backend at several cuts, with and
    without the size cap, float32 and float64, matrix-free to the end or handed over."""
    ops = _ops(which)
    n, d, dt, metric, cap, handover = case
    x = tie_free(rng, n, d, dt)
    xt = torch.from_numpy(x).to(DEVICE)
    for k in (1, n // 3, n - 2):
        mg = linear.linear_merges(xt, metric=metric, max_cluster_size=cap, ops=ops,
                                  backend=which, n_clusters=k, handover_bytes=handover)
        got = merges_to_labels(mg, k).cpu().numpy()
        assert same_partition(got, _cpu_labels(x, k, metric, cap)), (k, mg.rounds)


@pytest.mark.parametrize("which", ["reference", "triton"])
@pytest.mark.parametrize("handover", [0, 2 * 25 * 25 * 8])
def test_linkage_matches_scipy(which: str, handover: int, rng: np.random.Generator) -> None:
    """The whole dendrogram: SciPy's merges and heights (every merge is the minimum)."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    ops = _ops(which)
    x = tie_free(rng, 50, 3)
    mg = linear.linear_merges(torch.from_numpy(x).to(DEVICE), metric="euclidean",
                              max_cluster_size=None, ops=ops, backend=which,
                              handover_bytes=handover)
    z = merges_to_linkage(mg)
    ref = scipy_linkage(x, method="average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)


def test_handover_happens_when_it_fits(monkeypatch: pytest.MonkeyPatch,
                                       rng: np.random.Generator) -> None:
    """The dense rounds take over once two cluster matrices fit ``handover_bytes``."""
    calls = []
    real = linear.dense_rounds

    def spy(st, ops, cur, ld, n, *args):
        calls.append(n)
        return real(st, ops, cur, ld, n, *args)

    monkeypatch.setattr(linear, "dense_rounds", spy)
    x = torch.from_numpy(tie_free(rng, 90, 3)).to(DEVICE)
    linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ReferenceOps,
                         handover_bytes=2 * 40 * 40 * 8)
    assert len(calls) == 1 and 1 < calls[0] <= 40
    calls.clear()
    linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ReferenceOps,
                         handover_bytes=0)
    assert calls == []


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_handover_from_the_list_of_pairs(which: str, monkeypatch: pytest.MonkeyPatch,
                                         rng: np.random.Generator) -> None:
    """With clusters too large for one lane per pair, the hand-over builds the matrix from
    ``pair_average`` over all pairs (in chunks): the same labels and dendrogram."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    ops = _ops(which)
    monkeypatch.setattr(linear, "_LANE_MAX_SIZE", 0)
    monkeypatch.setattr(linear, "_MATRIX_CHUNK", 50)
    x = tie_free(rng, 70, 3)
    used = []
    real = linear._matrix_from_pairs

    def spy(*args):
        used.append(args[3])
        return real(*args)

    monkeypatch.setattr(linear, "_matrix_from_pairs", spy)
    mg = linear.linear_merges(torch.from_numpy(x).to(DEVICE), metric="euclidean",
                              max_cluster_size=None, ops=ops, handover_bytes=2 * 30 * 30 * 8)
    assert len(used) == 1 and 1 < used[0] <= 30
    z = merges_to_linkage(mg)
    ref = scipy_linkage(x, method="average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)


@pytest.mark.parametrize("which", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_pairs_summed_in_parts(which: str, dtype: torch.dtype,
                                     monkeypatch: pytest.MonkeyPatch,
                                     rng: np.random.Generator) -> None:
    """Pairs of many token pairs are summed in parts of their larger cluster (here: from 4
    token pairs, 3 parts, at most 5 pairs split per call, so some large pairs stay whole):
    the values of one sum, up to the order of the float64 additions."""
    ops = _ops(which)
    monkeypatch.setattr(linear, "_SPLIT_WORK", 4)
    monkeypatch.setattr(linear, "_SPLIT_PARTS", 3)
    monkeypatch.setattr(linear, "_SPLIT_MAX", 5)
    n = 25
    x, offsets, sizes, _, _, _ = _clusters(rng, n, 4, dtype)
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b and (3 * a + b) % 7 == 0]
    capacity = len(pairs) + 4
    pa = torch.tensor([p[0] for p in pairs] + [0] * 4, dtype=torch.int32, device=DEVICE)
    pb = torch.tensor([p[1] for p in pairs] + [1] * 4, dtype=torch.int32, device=DEVICE)
    count = torch.tensor([len(pairs)], dtype=torch.int64, device=DEVICE)
    got = torch.full((capacity,), -7.0, dtype=dtype, device=DEVICE)
    linear._pair_sums(ops, x, offsets, sizes, n, pa, pb, count, capacity, got)
    want = torch.full((capacity,), -7.0, dtype=dtype)
    _reference_pair_average(x.cpu(), offsets.cpu(), sizes.cpu(), pa.cpu(), pb.cpu(),
                            count.cpu(), capacity, want)
    na, nb = sizes.cpu()[pa.cpu().long()], sizes.cpu()[pb.cpu().long()]
    big = ((na * nb >= 4) & (torch.maximum(na, nb) >= 3))[:len(pairs)]
    assert int(big.sum()) > 5  # some split, some too many to split
    rtol = 1e-14 if dtype == torch.float64 else 1.2e-7  # float32: one rounding apart at most
    torch.testing.assert_close(got.cpu()[:len(pairs)], want[:len(pairs)], rtol=rtol, atol=0)
    assert bool((got.cpu()[len(pairs):] == -7.0).all())
    # the largest cluster known on the host: the same values, split as before
    again = torch.full((capacity,), -7.0, dtype=dtype, device=DEVICE)
    linear._pair_sums(ops, x, offsets, sizes, n, pa, pb, count, capacity, again,
                      largest=int(sizes.max()))
    assert torch.equal(again, got)
    # an empty list: nothing to sum (the split pairs' places are written by a scatter)
    linear._pair_sums(ops, x, offsets, sizes, n, pa[:0], pb[:0], count * 0, 0, again[:0])


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_no_pair_to_split_goes_whole(which: str, monkeypatch: pytest.MonkeyPatch,
                                     rng: np.random.Generator) -> None:
    """When the largest cluster known on the host is too small for a pair to be split
    (below the parts, or its square below the split's token pairs), the pairs go to one
    ``pair_average`` as they are: the same bits as the passes that pick the split ones."""
    ops = _ops(which)
    calls = []
    base = ops.pair_average
    spy = type("Spy", (), {"pair_average": staticmethod(
        lambda *a: (calls.append(a[6]), base(*a))[1])})
    n = 30
    x, offsets, sizes, _, _, _ = _clusters(rng, n, 3, torch.float64)
    big = int(sizes.max())
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b and (a + 2 * b) % 5 == 0]
    capacity = len(pairs) + 3
    pa = torch.tensor([p[0] for p in pairs] + [0] * 3, dtype=torch.int32, device=DEVICE)
    pb = torch.tensor([p[1] for p in pairs] + [1] * 3, dtype=torch.int32, device=DEVICE)
    count = torch.tensor([len(pairs)], dtype=torch.int64, device=DEVICE)
    for work, parts in ((big * big + 1, 2), (4, big + 1)):  # too few token pairs / tokens
        monkeypatch.setattr(linear, "_SPLIT_WORK", work)
        monkeypatch.setattr(linear, "_SPLIT_PARTS", parts)
        out = []
        for largest in (None, big):
            calls.clear()
            val = torch.full((capacity,), -7.0, dtype=torch.float64, device=DEVICE)
            linear._pair_sums(spy, x, offsets, sizes, n, pa, pb, count, capacity, val,
                              largest=largest)
            out.append((val, list(calls)))
        (slow, slow_calls), (fast, fast_calls) = out
        assert torch.equal(fast, slow)
        assert len(slow_calls) == 2 and fast_calls == [capacity]  # one call, the list whole
        assert bool((fast[len(pairs):] == -7.0).all())


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_gram_first_round_view(which: str, monkeypatch: pytest.MonkeyPatch,
                               rng: np.random.Generator) -> None:
    """The first round of the Gram scans (clusters of one token) lists its pairs in a view
    of the room, _PAIRS_PER_CLUSTER_FIRST per cluster; a list past it is listed again in
    the room, and from the second round on the rounds have the whole room: the same merges
    and the same rooms after the first round, whatever the view."""
    ops = _ops(which)
    n = 60
    xt = torch.from_numpy(tie_free(rng, n, 6)).to(DEVICE)
    monkeypatch.setattr(linear, "GRAM_MIN_DIM", 1)
    monkeypatch.setattr(linear, "_GRAM_MIN_COLS", 16)
    monkeypatch.setattr(linear, "_GRAM_TILE_BYTES", 16 * 8 * n)
    monkeypatch.setattr(linear, "_MIN_PAIRS", 4)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", 16)  # a room of 960 pairs
    runs = []
    for first in (0, 1 << 10):  # a view of 4 pairs; the whole room
        monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER_FIRST", first)
        records: list[dict] = []
        with linear.trace_rounds(records.append):
            mg = linear.linear_merges(xt, metric="euclidean", max_cluster_size=None, ops=ops,
                                      n_clusters=n // 3, handover_bytes=0)
        runs.append((mg, [r for r in records if "room" in r]))
    (tight, r_tight), (whole, r_whole) = runs
    for name in ("rep_a", "rep_b", "size", "height", "hmono"):
        assert torch.equal(getattr(tight, name), getattr(whole, name)), name
    assert r_tight[0]["pairs"] > 4 and r_tight[0]["relisted"] == 1
    assert r_whole[0]["relisted"] == 0 and r_whole[0]["room"] == 16 * n
    assert [r["room"] for r in r_tight[1:]] == [r["room"] for r in r_whole[1:]]
    assert len(r_tight) > 2


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_engine_with_pairs_in_parts_matches_scipy(which: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  rng: np.random.Generator) -> None:
    """The whole engine with large pairs in parts, to the end and through the hand-over
    from all pairs: SciPy's dendrogram."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    ops = _ops(which)
    monkeypatch.setattr(linear, "_SPLIT_WORK", 6)
    monkeypatch.setattr(linear, "_SPLIT_PARTS", 4)
    monkeypatch.setattr(linear, "_LANE_MAX_SIZE", 0)
    x = tie_free(rng, 60, 3)
    for handover in (0, 2 * 20 * 20 * 8):
        mg = linear.linear_merges(torch.from_numpy(x).to(DEVICE), metric="euclidean",
                                  max_cluster_size=None, ops=ops, handover_bytes=handover)
        z = merges_to_linkage(mg)
        ref = scipy_linkage(x, method="average")
        np.testing.assert_array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
        np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12)


def test_duplicate_rows_past_the_room_go_in_batches(rng: np.random.Generator) -> None:
    """Identical rows make every pair a candidate (all distances 0): past the largest room
    the budget allows, the rounds list them a batch of clusters at a time, and merge them
    at height 0 like any tie (InsufficientMemoryError only below what the preflight
    counts)."""
    from dcpe import InsufficientMemoryError

    x = torch.zeros((80, 2), dtype=torch.float32)
    budget = linear.linear_required_bytes(80, 2, 4) + 20_000
    records: list[dict] = []
    with linear.trace_rounds(records.append):
        mg = linear.linear_merges(x, metric="euclidean", max_cluster_size=None,
                                  ops=ReferenceOps, n_clusters=2, memory_budget=budget)
    assert any(r.get("batches") for r in records)
    assert int(merges_to_labels(mg, 2).max()) == 1
    assert float(mg.height.abs().max()) == 0.0
    with pytest.raises(InsufficientMemoryError, match="matrix-free rounds"):
        linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ReferenceOps,
                             n_clusters=2, memory_budget=linear.linear_required_bytes(80, 2, 4)
                             - 1)


@pytest.mark.parametrize("which,dtype", [
    ("reference", torch.float64), ("reference", torch.float32), ("triton", torch.float32),
    ("cuda", torch.float32), ("cuda", torch.float64)])
def test_lists_past_the_largest_room_go_in_batches(which: str, dtype: torch.dtype,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   rng: np.random.Generator) -> None:
    """A budget of just what the preflight counts: the lists longer than its room go in
    batches of searching clusters, with the merges of a budget that holds them (a flat
    cut, the size cap, the whole tree, the pair store, the scans from the Gram matrix)."""
    ops = _ops(which)
    small = which == "triton" and not ON_GPU
    n = 48 if small else 160
    # (the references on the host: their Python loops would only slow a GPU check)
    xt = torch.from_numpy(tie_free(rng, n, 40)).to("cpu" if which == "reference" else DEVICE,
                                                   dtype)
    # half the batches a list needs at first, so that some are past the room and halved
    monkeypatch.setattr(linear, "_BATCH_HEADROOM", 0.5)
    batched, halved = check_batched_lists(ops, xt, monkeypatch, which,
                                          BATCHED_CASES[1::2] if small else BATCHED_CASES)
    assert batched > 0 and halved > 0


def test_lists_in_batches_keep_ties(monkeypatch: pytest.MonkeyPatch,
                                    rng: np.random.Generator) -> None:
    """Tied distances and duplicate rows: the batches' nearest neighbours are the smallest
    slots at the minima of the whole list, as in one list (the same merges bit for bit)."""
    xt = torch.from_numpy(rng.integers(0, 5, size=(110, 2)).astype(np.float64))
    batched, _ = check_batched_lists(ReferenceOps, xt, monkeypatch, "reference")
    assert batched > 0


def test_pair_overflow_reruns_the_round(monkeypatch: pytest.MonkeyPatch,
                                        rng: np.random.Generator) -> None:
    """Room for fewer candidate pairs than a round has: the round runs again with more."""
    x = tie_free(rng, 120, 2)
    xt = torch.from_numpy(x).to(DEVICE)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", 0)
    monkeypatch.setattr(linear, "_MIN_PAIRS", 4)
    seen = []
    real = linear._nearest_from_pairs

    def spy(pieces, val, *args):
        seen.append(val.shape[0])  # the room
        return real(pieces, val, *args)

    monkeypatch.setattr(linear, "_nearest_from_pairs", spy)
    mg = linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                              ops=ReferenceOps, n_clusters=30, handover_bytes=0)
    assert seen[0] == 4 and max(seen) > 4
    assert same_partition(merges_to_labels(mg, 30).cpu().numpy(),
                          _cpu_labels(x, 30, "euclidean", None))


@pytest.mark.parametrize("pair_store", [False, True])
def test_pair_overflow_sums_nothing(monkeypatch: pytest.MonkeyPatch,
                                    rng: np.random.Generator, pair_store: bool) -> None:
    """A list of candidate pairs past its room is listed again in a larger one: none of its
    pairs is summed, so the token pairs the kernel is given are those the rounds report,
    and the merges are those of a room large enough from the start."""
    x = torch.from_numpy(tie_free(rng, 150, 40)).to(DEVICE)
    given, listed = [], []

    class Counting(ReferenceOps):
        @staticmethod
        def candidate_pairs(*args) -> None:
            ReferenceOps.candidate_pairs(*args)
            listed.append((int(args[9][0]), args[10]))  # count, capacity

        @staticmethod
        def pair_average(x, offsets, sizes, pa, pb, count, capacity, val) -> None:
            k = min(int(count[0]), capacity)
            given.append(int((sizes[pa[:k].long()] * sizes[pb[:k].long()]).sum()))
            ReferenceOps.pair_average(x, offsets, sizes, pa, pb, count, capacity, val)

    def run(min_pairs: int, per_cluster: int) -> tuple[object, list]:
        monkeypatch.setattr(linear, "_MIN_PAIRS", min_pairs)
        monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", per_cluster)
        monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER_HIGH_D", per_cluster)
        records: list = []
        with linear.trace_rounds(records.append):
            mg = linear.linear_merges(x, metric="euclidean", max_cluster_size=None,
                                      ops=Counting, n_clusters=40, handover_bytes=0,
                                      pair_store=pair_store)
        return mg, [r for r in records if not r.get("done")]

    mg, records = run(4, 0)
    overflowed = sum(c > cap for c, cap in listed)
    assert overflowed > 0 and sum(r["relisted"] for r in records) == overflowed
    assert sum(given) == sum(r.get("token_pairs", 0) for r in records) > 0
    given.clear()
    listed.clear()
    roomy, roomy_records = run(1 << 16, 64)
    assert not any(c > cap for c, cap in listed)
    assert sum(r["relisted"] for r in roomy_records) == 0
    assert sum(given) == sum(r.get("token_pairs", 0) for r in roomy_records)
    for field in ("rep_a", "rep_b", "height", "size"):
        assert torch.equal(getattr(mg, field), getattr(roomy, field))


@pytest.mark.parametrize("which,pair_store", [
    ("reference", False), ("reference", True), ("triton", True), ("cuda", False),
    ("cuda", True)])  # (the interpreted Triton kernels: one case)
def test_pairs_in_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch,
                                        rng: np.random.Generator, which: str,
                                        pair_store: bool) -> None:
    """A round works through its list of candidate pairs a chunk at a time (the sums, the
    pair store's lookups and update, the nearest-neighbour passes): chunks of 8 entries
    give the merges and the token pairs of one chunk, a list past its room included."""
    ops = _ops(which)
    n = 40 if which == "triton" and not ON_GPU else 150
    x = torch.from_numpy(tie_free(rng, n, 40)).to(DEVICE)
    monkeypatch.setattr(linear, "_MIN_PAIRS", 4)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", 1)  # lists past their room too
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER_HIGH_D", 1)
    runs = []
    for chunk in (1 << 24, 8):
        monkeypatch.setattr(linear, "_PAIR_CHUNK", chunk)
        records: list = []
        with linear.trace_rounds(records.append):
            mg = linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ops,
                                      n_clusters=n // 4, handover_bytes=0,
                                      pair_store=pair_store)
        rounds = [r for r in records if not r.get("done")]
        runs.append((mg, [r["token_pairs"] for r in rounds], [r["room"] for r in rounds],
                     sum(r["relisted"] for r in rounds)))
    (one, work_one, rooms, relisted), (chunked, work_chunked, _, _) = runs
    assert max(rooms) > 8 and relisted > 0  # several chunks in some rounds
    for field in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(one, field), getattr(chunked, field)), field
    assert work_one == work_chunked


def test_pair_store_gives_way_to_the_pairs(monkeypatch: pytest.MonkeyPatch,
                                           rng: np.random.Generator) -> None:
    """The pair store is a cache: when a round's candidate pairs need its room, it keeps
    fewer entries, or none (the rounds go on without it); a budget that holds the rounds
    without the store holds them with it, with the same merges, and so does one too small
    for a round's pairs (they go in batches); only a budget below the preflight's count is
    refused.  (Heights agree to float64 sums in another
    order, as with and without the store.)"""
    from dcpe import InsufficientMemoryError

    x = torch.from_numpy(tie_free(rng, 120, 40)).to(DEVICE)
    monkeypatch.setattr(linear, "_MIN_PAIRS", 4)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", 0)  # the store takes half at first
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER_HIGH_D", 0)
    needed = linear.linear_required_bytes(120, 40, x.element_size(), x.device)

    def run(extra: int, store: bool):
        records: list = []
        with linear.trace_rounds(records.append):
            mg = linear.linear_merges(x, metric="euclidean", max_cluster_size=None,
                                      ops=ReferenceOps, n_clusters=30, handover_bytes=0,
                                      memory_budget=needed + extra, pair_store=store)
        return mg, [r for r in records if not r.get("done")]

    want, roomy = run(1 << 30, True)
    largest = max(r["store"] for r in roomy)
    dropped = kept = 0
    for extra in (6_000, 20_000, 40_000, 60_000):
        plain, _ = run(extra, False)
        mg, rounds = run(extra, True)
        for got in (mg, plain):  # heights: float64 sums in another order (the store's)
            for field in ("rep_a", "rep_b", "size"):
                assert torch.equal(getattr(got, field), getattr(want, field)), field
            torch.testing.assert_close(got.height, want.height, rtol=1e-12, atol=0)
        entries = [r.get("store") for r in rounds]
        dropped += all(e is None for e in entries[1:])  # given up in the second round
        kept += None not in entries and 0 < max(entries) < largest  # kept, smaller
    assert dropped and kept
    for store in (False, True):  # past the largest room: lists in batches, same merges
        mg, rounds = run(3_000, store)
        assert any(r.get("batches") for r in rounds)
        for field in ("rep_a", "rep_b", "size"):
            assert torch.equal(getattr(mg, field), getattr(want, field)), field
        torch.testing.assert_close(mg.height, want.height, rtol=1e-12, atol=0)
    with pytest.raises(InsufficientMemoryError, match="matrix-free rounds"):
        run(-1, True)


def test_pairs_past_the_count_change_no_neighbour(rng: np.random.Generator) -> None:
    """The entries past a round's pair count (slots spread over all clusters, so that the
    scatters' atomic minima do not queue on one) leave every nearest neighbour as the live
    pairs alone give it, ties to the smallest slot included."""
    n, m, room = 9, 14, 40
    a = rng.integers(0, n, size=m)
    b = (a + rng.integers(1, n, size=m)) % n
    pa = torch.zeros(room, dtype=torch.int32)
    pb = torch.zeros(room, dtype=torch.int32)
    pa[:m], pb[:m] = torch.from_numpy(a), torch.from_numpy(b)
    val = torch.full((room,), -1.0, dtype=torch.float64)  # below every live value
    val[:m] = torch.from_numpy(rng.integers(1, 4, size=m).astype(np.float64))  # ties
    count = torch.tensor([m])
    live, la, lb = linear._live_pairs(pa, pb, count, n)
    assert bool(live[:m].all()) and not bool(live[m:].any())
    assert torch.equal(la[m:], torch.arange(m, room) % n)  # spread, all valid slots
    assert torch.equal(la[:m], pa[:m].long()) and torch.equal(lb[:m], pb[:m].long())
    needy = torch.ones(n, dtype=torch.int8)
    needy[2] = 0  # keeps its neighbour: only its own pairs' other sides see it
    nn = torch.full((n,), 7, dtype=torch.int64)
    nnd = torch.full((n,), 5.0, dtype=torch.float64)
    linear._nearest_from_pairs(lambda: [(slice(0, room), (live, la, lb))], val, n, needy, nn,
                               nnd)
    # a chunk of 3 entries at a time (ties across chunks): the same neighbours
    nn3 = torch.full((n,), 7, dtype=torch.int64)
    nnd3 = torch.full((n,), 5.0, dtype=torch.float64)
    linear._nearest_from_pairs(functools.partial(linear._chunks, pa, pb, count, n, room, 3),
                               val, n, needy, nn3, nnd3)
    assert torch.equal(nn3, nn) and torch.equal(nnd3, nnd)
    dist = {}
    for x, y, v in zip(a.tolist(), b.tolist(), val[:m].tolist()):
        dist.setdefault(x, []).append((v, y))
        if needy[y]:
            dist.setdefault(y, []).append((v, x))
    for c in range(n):
        if not needy[c]:
            assert (int(nn[c]), float(nnd[c])) == (7, 5.0)
        elif c in dist:
            assert (float(nnd[c]), int(nn[c])) == min(dist[c])
        else:  # no pair: points to itself, which the round scan never merges
            assert int(nn[c]) == c and nnd[c] == float("inf")


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_first_round_without_sums_is_the_same(which: str, dtype: torch.dtype, ties: bool,
                                              monkeypatch: pytest.MonkeyPatch,
                                              rng: np.random.Generator) -> None:
    """The first round's nearest neighbours from the centroid scan alone (every cluster one
    token) are those of candidates and exact sums, bit for bit: heights, and on a grid with
    many tied distances and duplicate rows, the same tie choices."""
    ops = _ops(which)
    if ties:
        x = rng.integers(0, 4, size=(90, 2)).astype(np.float64)
    else:
        x = tie_free(rng, 90, 3)
    xt = torch.from_numpy(x).to(dtype).to(DEVICE)
    calls = []
    real = linear._nearest_from_pairs

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(linear, "_nearest_from_pairs", spy)
    got = []
    for shortcut in (True, False):
        monkeypatch.setattr(linear, "_SINGLETON_ROUND", shortcut)
        calls.clear()
        got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                        ops=ops, n_clusters=None, handover_bytes=0))
        got[-1].searches = len(calls)
    fast, full = got
    assert fast.searches == full.searches - 1  # the first round had no exact sums
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(fast, name), getattr(full, name)), name
    assert fast.rounds == full.rounds


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("ties", [False, True])
def test_thresholds_from_old_neighbours_change_nothing(which: str, ties: bool,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       rng: np.random.Generator) -> None:
    """Rounds after the first take most thresholds from the old neighbours and scan only
    for the rest: the merges are those of a centroid scan for every searching cluster, bit
    for bit (ties and duplicates included), and fewer clusters scan."""
    ops = _ops(which)
    x = (rng.integers(0, 4, size=(90, 2)).astype(np.float64) if ties
         else tie_free(rng, 120, 3))
    xt = torch.from_numpy(x).to(DEVICE)
    got, scans = [], []
    for factor in (linear._BOUND_FACTOR, 0.0):
        monkeypatch.setattr(linear, "_BOUND_FACTOR", factor)
        records: list[dict] = []
        with linear.trace_rounds(records.append):
            got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                            ops=ops, handover_bytes=0))
        scans.append([(r["scan_rows"], r["rows"]) for r in records if "rows" in r])
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(got[0], name), getattr(got[1], name)), name
    assert all(s <= r for s, r in scans[0]) and all(s == r for s, r in scans[1])
    assert sum(s for s, _ in scans[0][1:]) < sum(r for _, r in scans[0][1:])


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_layout_changes_nothing(which: str, dtype: torch.dtype,
                                      monkeypatch: pytest.MonkeyPatch,
                                      rng: np.random.Generator) -> None:
    """Tokens kept as rows or as columns (the layout past 16 dimensions), handed over to the
    dense rounds or not: the same merges bit for bit."""
    ops = _ops(which)
    xt = torch.from_numpy(tie_free(rng, 80, 6)).to(dtype).to(DEVICE)
    for handover in (0, 2 * 30 * 30 * 8):
        got = []
        for columns_from in (1, 1 << 30):
            monkeypatch.setattr(linear, "_COLUMNS_MIN_DIM", columns_from)
            got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                            ops=ops, handover_bytes=handover))
        for name in ("rep_a", "rep_b", "height", "hmono", "size"):
            assert torch.equal(getattr(got[0], name), getattr(got[1], name)), name


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("ties", [False, True])
def test_setting_aside_changes_no_cut(which: str, ties: bool, monkeypatch: pytest.MonkeyPatch,
                                      rng: np.random.Generator) -> None:
    """A flat cut with the clusters that cannot merge before it set aside: the same first
    N - k merges of the greedy order (the same labels at k and at every coarser-or-equal
    cut of those merges) as the rounds run without it, with the cap and without, ties and
    duplicate rows included; and fewer exact token pairs summed in all. The set-aside is
    the driver's, the same for every backend: the interpreted Triton kernels (the slowest
    case of the suite with all five cuts) run the two cuts at N/4, with and without the
    cap, both of which sum fewer token pairs with it."""
    ops = _ops(which)
    x = (rng.integers(0, 5, size=(110, 2)).astype(np.float64) if ties
         else tie_free(rng, 130, 3))
    xt = torch.from_numpy(x).to(DEVICE)
    n = x.shape[0]
    fewer = 0
    cuts = ((n // 2, None), (n // 4, None), (n - 10, None), (n // 4, 9), (2, None))
    if which == "triton":
        cuts = ((n // 4, None), (n // 4, 9))
    for k, cap in cuts:
        got, work = [], []
        for aside in (True, False):
            monkeypatch.setattr(linear, "_SET_ASIDE", aside)
            records: list[dict] = []
            with linear.trace_rounds(records.append):
                mg = linear.linear_merges(xt, metric="euclidean", max_cluster_size=cap,
                                          ops=ops, n_clusters=k, handover_bytes=0)
            got.append(mg)
            work.append(sum(r.get("token_pairs", 0) for r in records))
        with_aside, without = got
        for kk in {k, k + 1, n - 1}:
            assert torch.equal(merges_to_labels(with_aside, kk), merges_to_labels(without, kk)), (
                k, cap, kk)
        assert work[0] <= work[1], (k, cap, work)
        fewer += work[0] < work[1]
    assert fewer >= 2


@pytest.mark.parametrize("which", ["reference", "triton", "cuda"])
def test_shorter_pair_lists_change_nothing(which: str, monkeypatch: pytest.MonkeyPatch,
                                           rng: np.random.Generator) -> None:
    """The room for candidate pairs used in a shorter view once a round lists far fewer
    pairs, even down to less than the count after every round (so that later rounds
    overflow and run again in a longer view of the same room): the same merges bit for bit
    as with the whole room."""
    base = _ops(which)
    calls = []

    def candidate_pairs(*args):
        calls.append(1)
        return base.candidate_pairs(*args)

    ops = type("Counting", (base,), {"candidate_pairs": staticmethod(candidate_pairs)})
    xt = torch.from_numpy(tie_free(rng, 150, 3)).to(DEVICE)
    monkeypatch.setattr(linear, "_MIN_PAIRS", 8)
    got, rooms, reruns = [], [], []
    for shrink, headroom in ((0, 2.0), (linear._PAIRS_SHRINK, linear._PAIRS_HEADROOM),
                             (1, 0.3)):
        monkeypatch.setattr(linear, "_PAIRS_SHRINK", shrink)
        monkeypatch.setattr(linear, "_PAIRS_HEADROOM", headroom)
        records: list[dict] = []
        calls.clear()
        with linear.trace_rounds(records.append):
            got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                            ops=ops, n_clusters=40, handover_bytes=0))
        rooms.append([r["room"] for r in records if "room" in r])
        reruns.append(len(calls) - sum(r["round"] > 1 for r in records if "room" in r))
    for mg in got[1:]:
        for name in ("rep_a", "rep_b", "height", "hmono", "size"):
            assert torch.equal(getattr(mg, name), getattr(got[0], name)), name
    assert rooms[0] == sorted(rooms[0])  # never shorter without it
    assert min(rooms[1]) < max(rooms[1])
    assert reruns[2] > reruns[0] >= 0  # the shortest views overflowed and ran again


def test_neighbour_bounds_bound_the_next_nearest_distance(monkeypatch: pytest.MonkeyPatch,
                                                          rng: np.random.Generator) -> None:
    """Every finite threshold taken from the old neighbours is at least the exact nearest
    average distance that the next round finds, and at most _BOUND_FACTOR times the old
    nearest distance."""
    x = torch.from_numpy(tie_free(rng, 150, 3)).to(DEVICE)
    bounds, nearest = [], []
    real_b, real_n = linear._neighbour_bounds, linear._nearest_from_pairs

    def spy_b(*args):
        out = real_b(*args)
        bounds.append((out.clone(), args[4][args[1]].clone()))  # and nnd[p]: the old nearest
        return out

    def spy_n(pieces, val, n, needy, nn, nnd):
        real_n(pieces, val, n, needy, nn, nnd)
        nearest.append(nnd[:n].clone())

    monkeypatch.setattr(linear, "_neighbour_bounds", spy_b)
    monkeypatch.setattr(linear, "_nearest_from_pairs", spy_n)
    linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ReferenceOps,
                         handover_bytes=0)
    checked = 0
    for (ub, low), nnd in zip(bounds, nearest):  # the bounds of round i, the nearest of i + 1
        m = nnd.shape[0]
        fin = torch.isfinite(ub[:m])
        assert torch.all(ub[:m][fin] >= nnd[fin].to(torch.float64) * (1 - 1e-12))
        assert torch.all(ub[:m][fin] <= linear._BOUND_FACTOR * low[:m][fin])
        checked += int(fin.sum())
    assert checked > 150


@pytest.mark.parametrize("metric,handover", [("euclidean", 0), ("euclidean", 2 * 20 * 20 * 8),
                                             ("sqeuclidean", None)])
def test_trace_rounds(metric: str, handover: int | None, rng: np.random.Generator) -> None:
    """``trace_rounds``: one record per matrix-free round with its work and phase times,
    then the run's total of rounds; nothing is recorded outside the block."""
    x = torch.from_numpy(tie_free(rng, 70, 3)).to(DEVICE)
    records: list[dict] = []
    with linear.trace_rounds(records.append):
        mg = linear.linear_merges(x, metric=metric, max_cluster_size=None, ops=ReferenceOps,
                                  handover_bytes=handover)
    *rounds, last = records
    assert last["done"] and last["rounds"] == mg.rounds
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert rounds[0]["n"] == rounds[0]["rows"] == 70
    assert all(0 < r["rows"] <= r["n"] for r in rounds)
    if metric == "euclidean":
        assert rounds[0]["scan_rows"] == 70 and all(0 <= r["scan_rows"] <= r["rows"]
                                                    for r in rounds)
    assert all(r["ms"] and min(r["ms"].values()) >= 0 for r in rounds)
    if metric == "euclidean":
        assert rounds[0]["pairs"] == rounds[0]["token_pairs"] == 0  # exact from the scan
        assert all(r["pairs"] > 0 and r["token_pairs"] >= r["pairs"] for r in rounds[1:])
        assert {"scan", "candidates", "sums", "select"} <= set(rounds[1]["ms"])
    if handover:
        assert len(rounds) < mg.rounds and set(last["ms"]) == {"handover", "dense"}
    else:
        assert len(rounds) == mg.rounds
    linear.linear_merges(x, metric=metric, max_cluster_size=None, ops=ReferenceOps)
    assert len(records) == len(rounds) + 1


# ------------------------------------------------------------------ the pair store


def _store_run(xt, ops, store: bool, handover: int = 0, **kw):
    records: list[dict] = []
    with linear.trace_rounds(records.append):
        mg = linear.linear_merges(xt, metric="euclidean", ops=ops, handover_bytes=handover,
                                  pair_store=store, **kw)
    return mg, [r for r in records if "room" in r]


#: heights with and without the store: the same float64 sums in another order
STORE_RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


#: (dtype, cap, k, handover) of the store's engine runs: every one with the references
#: and the cuda kernels; the interpreted Triton kernels (slow) in five of them
STORE_CASES = [(dt, cap, k, handover) for dt in (torch.float32, torch.float64)
               for cap, k, handover in ((None, None, 0), (6, None, 0), (None, 30, 0),
                                        (None, None, 2 * 30 * 30 * 8))]
STORE_TRITON = [STORE_CASES[i] for i in (0, 4, 2, 5, 3)]
STORE_RUNS = ([(w, *c) for w in ("reference", "cuda") for c in STORE_CASES]
              + [("triton", *c) for c in STORE_TRITON])


@pytest.mark.parametrize("which,dtype,cap,k,handover", STORE_RUNS,
                         ids=[f"{w}-{str(dt)[6:]}-cap{cap}-k{k}-handover{h}"
                              for w, dt, cap, k, h in STORE_RUNS])
def test_pair_store_changes_no_merge(which: str, dtype: torch.dtype, cap: int | None,
                                     k: int | None, handover: int,
                                     rng: np.random.Generator) -> None:
    """Averages kept from round to round (the pair store): the same merges as summing
    every candidate pair, with the size cap, a flat cut and a hand-over too, heights equal
    up to the order of the float64 sums, and fewer token pairs summed."""
    ops = _ops(which)
    xt = torch.from_numpy(tie_free(rng, 120, 5)).to(dtype).to(DEVICE)
    (plain, r_plain), (kept, r_kept) = (_store_run(xt, ops, s, handover, max_cluster_size=cap,
                                                   n_clusters=k) for s in (False, True))
    for name in ("rep_a", "rep_b", "size"):
        assert torch.equal(getattr(kept, name), getattr(plain, name)), name
    for name in ("height", "hmono"):
        torch.testing.assert_close(getattr(kept, name), getattr(plain, name),
                                   rtol=STORE_RTOL[dtype], atol=0)
    assert all("reused" not in r for r in r_plain)
    assert sum(r["reused"] for r in r_kept) > 0
    assert sum(r["token_pairs"] for r in r_kept) < sum(r["token_pairs"] for r in r_plain)


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_pair_store_sums_only_the_missing_parts(which: str, monkeypatch: pytest.MonkeyPatch,
                                                rng: np.random.Generator) -> None:
    """A pair the store holds in part is summed over its missing pairs of parts only: the
    same merges as with complete entries alone, fewer token pairs summed."""
    ops = _ops(which)
    xt = torch.from_numpy(tie_free(rng, 120, 5)).to(DEVICE)
    runs = []
    for parts in (False, True):
        monkeypatch.setattr(linear._PairStore, "PARTS", parts)
        runs.append(_store_run(xt, ops, True, max_cluster_size=None))
    (whole, r_whole), (part, r_part) = runs
    for name in ("rep_a", "rep_b", "size"):
        assert torch.equal(getattr(part, name), getattr(whole, name)), name
    torch.testing.assert_close(part.height, whole.height, rtol=1e-12, atol=0)
    assert sum(r["token_pairs"] for r in r_part) < sum(r["token_pairs"] for r in r_whole)
    assert (sum(r["token_pairs"] + r["reused"] for r in r_part)
            == sum(r["token_pairs"] + r["reused"] for r in r_whole))


def test_pairs_held_in_part_within_the_stores_bound(monkeypatch: pytest.MonkeyPatch,
                                                    rng: np.random.Generator) -> None:
    """The pairs a round finds held in part are at most the store's incomplete entries
    (the bound known on the host that sizes their passes), and the bound does shrink them
    below the list in some rounds."""
    xt = torch.from_numpy(tie_free(rng, 120, 5)).to(DEVICE)
    real = linear._stored_sums
    seen = []

    def spy(ops, store, tokens, size, n, pa, pb, capacity, val, live_ab, largest=None):
        _, found, _, miss = store.lookup(*live_ab)
        partial = int((found & (miss != 0)).sum())
        seen.append((partial, store.incomplete, capacity))
        assert partial <= store.incomplete
        return real(ops, store, tokens, size, n, pa, pb, capacity, val, live_ab, largest)

    monkeypatch.setattr(linear, "_stored_sums", spy)
    mg, _ = _store_run(xt, ReferenceOps, True, max_cluster_size=None)
    monkeypatch.setattr(linear, "_stored_sums", real)
    want, _ = _store_run(xt, ReferenceOps, True, max_cluster_size=None)
    assert torch.equal(mg.height, want.height)
    assert any(p > 0 for p, _, _ in seen)
    assert any(0 < inc < cap for _, inc, cap in seen)


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_pair_store_with_ties_is_deterministic(which: str, rng: np.random.Generator) -> None:
    """Tied and duplicate distances: the same merges on every run (the store's entries
    are combined in a fixed order), exactly k clusters, and the same heights as without
    the store up to rounding."""
    ops = _ops(which)
    xt = torch.from_numpy(rng.integers(0, 4, size=(90, 2)).astype(np.float64)).to(DEVICE)
    runs = [_store_run(xt, ops, True, max_cluster_size=None)[0] for _ in range(2)]
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name
    plain = _store_run(xt, ops, False, max_cluster_size=None)[0]
    torch.testing.assert_close(runs[0].height.sort().values, plain.height.sort().values,
                               rtol=1e-12, atol=0)
    for k in (1, 7, 40):
        assert int(torch.unique(merges_to_labels(runs[0], k)).numel()) == k


def _held_store(n_old: int, held: dict, fresh_share: float, rng: np.random.Generator,
                room: int = 1000):
    """A store holding part of ``held`` ((old slot, old slot) -> average), the rest as the
    round's new averages (keys and values, ``SENT`` in a quarter of the places)."""
    store = linear._PairStore(n_old, torch.device("cpu"), room=room)
    pairs = sorted(held)
    in_store = [pr for pr in pairs if rng.random() >= fresh_share]
    new = [pr for pr in pairs if pr not in in_store]
    store.key = torch.tensor([u * n_old + v for u, v in in_store], dtype=torch.int64)
    store.val = torch.tensor([held[pr] for pr in in_store], dtype=torch.float64)
    store.miss = torch.zeros(len(in_store), dtype=torch.int64)
    keys = [u * n_old + v for u, v in new] + [linear._PairStore.SENT] * (len(new) // 3)
    vals = [held[pr] for pr in new] + [0.0] * (len(new) // 3)
    order = rng.permutation(len(keys))  # the round's list is in no particular order
    return (store, torch.tensor(keys, dtype=torch.int64)[order],
            torch.tensor(vals, dtype=torch.float64)[order])


def test_pair_store_update_is_lance_williams(rng: np.random.Generator) -> None:
    """One update of the store (plan, then apply): a new pair whose pairs of parts were all
    held, in the store or among the round's new averages, gets the direct average of the
    new clusters; one with only some of them the average over the token pairs known and
    the bits of the missing pairs of parts; pairs within one new cluster and clusters that
    left are dropped; the store stays sorted; past the room, the smallest averages stay;
    a lookup finds the held pairs in either order; the per-slot minima bound from above."""
    n_old = 14
    sizes = rng.integers(1, 5, size=n_old)
    toks = [rng.standard_normal((int(s), 3)) for s in sizes]

    def dsum(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2).sum())

    # new slots: (p, q) old slots, in the order of p; old slot 13 leaves (size cap)
    parts = [(0, 5), (1, -1), (2, 3), (4, -1), (6, 7), (8, -1), (9, 12), (10, -1), (11, -1)]
    new_of = torch.full((n_old,), -1, dtype=torch.int64)
    for j, (u, v) in enumerate(parts):
        new_of[u] = j
        if v >= 0:
            new_of[v] = j
    p_old = torch.tensor([u for u, _ in parts] + [0] * (n_old - len(parts)))
    q_old = torch.tensor([v for _, v in parts] + [-1] * (n_old - len(parts)))
    held = {(u, v): dsum(toks[u], toks[v]) / (sizes[u] * sizes[v])
            for u in range(n_old) for v in range(u + 1, n_old) if rng.random() < 0.6}
    want = {}  # key -> (average over the known token pairs, missing bits)
    for i, (pa, qa) in enumerate(parts):
        for j in range(i + 1, len(parts)):
            pb, qb = parts[j]
            s = w = 0.0
            miss = 0
            for ui, u in enumerate((pa, qa)):
                for vi, v in enumerate((pb, qb)):
                    if u < 0 or v < 0:
                        continue
                    if (min(u, v), max(u, v)) in held:
                        s += dsum(toks[u], toks[v])
                        w += sizes[u] * sizes[v]
                    else:
                        miss |= 1 << (2 * ui + vi)
            if w:
                want[i * n_old + j] = (s / w, miss)
    assert sum(m == 0 for _, m in want.values()) > 3 and sum(m != 0 for _, m in
                                                             want.values()) > 3
    old_size = torch.from_numpy(sizes)
    for share in (0.0, 0.5):  # all held in the store; half of them new this round
        store, nk, nv = _held_store(n_old, held, share, rng)
        low, counts = store.plan(nk, nv, new_of, p_old, q_old, old_size)
        store.apply(*counts[:3].tolist())
        got = {k: (v, m) for k, v, m in zip(store.key.tolist(), store.val.tolist(),
                                            store.miss.tolist())
               if k != linear._PairStore.SENT}
        assert set(got) == set(want)
        keys = store.key.tolist()
        assert keys[:len(got)] == sorted(got)
        assert all(k == linear._PairStore.SENT for k in keys[len(got):])
        for k, (v, m) in want.items():
            assert got[k][1] == m and got[k][0] == pytest.approx(v, rel=1e-13)
        assert store.part.tolist()[:len(parts)] == [int(sizes[u]) for u, _ in parts]
        # minima: of all complete entries after apply; of the staying ones at the plan
        for j in range(len(parts)):
            mine = [v for k, (v, m) in want.items() if m == 0 and j in divmod(k, n_old)]
            assert float(store.low[j]) == pytest.approx(min(mine, default=float("inf")),
                                                        rel=1e-13)
            assert float(low[j]) >= float(store.low[j])
    # the room: the smallest averages stay, in key order
    small, nk, nv = _held_store(n_old, held, 0.0, rng, room=4)
    _, counts = small.plan(nk, nv, new_of, p_old, q_old, old_size)
    small.apply(*counts[:3].tolist())
    assert small.key.tolist() == sorted(sorted(want, key=lambda k: want[k][0])[:4])
    # a lookup finds exactly the held pairs (either order), with their values and bits
    a = torch.tensor([1, 0, 3, 8, 2, 6], dtype=torch.int64)
    b = torch.tensor([0, 1, 5, 7, 2, 4], dtype=torch.int64)
    live = torch.tensor([True, True, True, True, False, True])
    keys, found, vals, miss = store.lookup(live, a, b)
    for i in range(6):
        k = min(int(a[i]), int(b[i])) * n_old + max(int(a[i]), int(b[i]))
        assert bool(found[i]) == (bool(live[i]) and k in want)
        if found[i]:
            assert (float(vals[i]), int(miss[i])) == got[k]


def test_pair_store_drops_pairs_set_aside(monkeypatch: pytest.MonkeyPatch,
                                          rng: np.random.Generator) -> None:
    """For a flat cut, a pair of two clusters set aside (neither searches again) leaves the
    store: the same merges and the same token pairs summed as when it stays, in a smaller
    store."""
    xt = torch.from_numpy(tie_free(rng, 150, 4)).to(DEVICE)
    real = linear._PairStore.plan
    runs = []
    for drop in (False, True):
        def plan(self, *args, drop=drop):
            if not drop:
                args = args[:6]  # without the clusters set aside
            return real(self, *args)

        monkeypatch.setattr(linear._PairStore, "plan", plan)
        runs.append(_store_run(xt, ReferenceOps, True, max_cluster_size=None, n_clusters=40))
    (kept, r_kept), (dropped, r_dropped) = runs
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(dropped, name), getattr(kept, name)), name
    assert [r["token_pairs"] for r in r_dropped] == [r["token_pairs"] for r in r_kept]
    assert sum(r["store"] for r in r_dropped) < sum(r["store"] for r in r_kept)


def test_pair_store_stays_sorted(monkeypatch: pytest.MonkeyPatch,
                                 rng: np.random.Generator) -> None:
    """After every round's update the store's keys are sorted and distinct, with the unused
    places at the end (slots keep their order, so the staying entries need no sort), with
    and without the size cap, ties included."""
    real = linear._PairStore.apply
    checked = []

    def apply(self, *counts):
        real(self, *counts)
        k = self.key[self.key != linear._PairStore.SENT]
        assert torch.all(k[1:] > k[:-1]) and torch.equal(self.key[:k.numel()], k)
        checked.append(int(k.numel()))

    monkeypatch.setattr(linear._PairStore, "apply", apply)
    grid = rng.integers(0, 4, size=(90, 2)).astype(np.float64)
    for x, cap in ((tie_free(rng, 120, 4), None), (tie_free(rng, 120, 4), 6), (grid, None),
                   (grid, 5)):
        linear.linear_merges(torch.from_numpy(x).to(DEVICE), metric="euclidean",
                             max_cluster_size=cap, ops=ReferenceOps, handover_bytes=0,
                             pair_store=True)
    assert len(checked) > 20 and max(checked) > 50


def test_pair_store_in_a_tiny_room_changes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                   rng: np.random.Generator) -> None:
    """A store of a few entries (a small memory budget) drops the largest averages: the
    same merges, fewer pairs reused than in a large room."""
    xt = torch.from_numpy(tie_free(rng, 100, 4)).to(DEVICE)
    plain, _ = _store_run(xt, ReferenceOps, False, max_cluster_size=None)
    reused = []
    real = linear._PairStore.__init__
    for room in (8, 1 << 40):  # entries

        def init(self, n_all, dev, budget_room, chunk=linear._PAIR_CHUNK, *, real=real,
                 room=room):
            real(self, n_all, dev, min(budget_room, room), chunk)

        monkeypatch.setattr(linear._PairStore, "__init__", init)
        mg, recs = _store_run(xt, ReferenceOps, True, max_cluster_size=None)
        assert max(r["store"] for r in recs) <= room
        for name in ("rep_a", "rep_b", "size"):
            assert torch.equal(getattr(mg, name), getattr(plain, name)), name
        reused.append(sum(r["reused"] for r in recs))
    assert reused[0] < reused[1]


def test_pair_store_is_on_past_its_dimension(monkeypatch: pytest.MonkeyPatch,
                                             rng: np.random.Generator) -> None:
    """By default the store is kept from STORE_MIN_DIM dimensions on (Euclidean)."""
    xt = torch.from_numpy(tie_free(rng, 40, 3)).to(DEVICE)
    for min_dim, on in ((3, True), (4, False)):
        monkeypatch.setattr(linear, "STORE_MIN_DIM", min_dim)
        records: list[dict] = []
        with linear.trace_rounds(records.append):
            linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                 ops=ReferenceOps, handover_bytes=0)
        assert any("store" in r for r in records) == on


def test_deterministic_and_input_untouched(rng: np.random.Generator) -> None:
    x = torch.from_numpy(tie_free(rng, 80, 4, np.float32)).to(DEVICE)
    before = x.clone()
    runs = [merges_to_labels(linear.linear_merges(x, metric="euclidean", max_cluster_size=None,
                                                  ops=ReferenceOps, n_clusters=20,
                                                  handover_bytes=0), 20) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(x, before)


def test_choose_engine() -> None:
    from dcpe import InsufficientMemoryError

    choose = linear.choose_engine
    gib = 1 << 30
    assert choose(16384, 8, 4, method="average", budget=100 * gib) == "matrix"
    assert choose(262144, 8, 4, method="average", budget=100 * gib) == "linear"
    assert choose(65536, 8, 4, method="average", budget=4 * gib) == "linear"
    assert choose(65536, 8, 4, method="single", budget=100 * gib) == "matrix"
    assert choose(16384, 8, 4, method="average", budget=100 * gib, engine="linear") == "linear"
    with pytest.raises(InsufficientMemoryError, match="linkage='average'"):
        choose(65536, 8, 4, method="complete", budget=4 * gib)
    with pytest.raises(InsufficientMemoryError, match="memory_limit"):
        choose(1 << 20, 8, 4, method="average", budget=1 << 20)
    with pytest.raises(InsufficientMemoryError, match="engine='auto'"):
        choose(65536, 8, 4, method="average", budget=4 * gib, engine="matrix")
    with pytest.raises(ValueError, match="average linkage only"):
        choose(100, 8, 4, method="single", budget=gib, engine="linear")
    with pytest.raises(ValueError, match="engine must be one of"):
        choose(100, 8, 4, method="average", budget=gib, engine="fast")


def test_preflight_counts_the_blas_workspace_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device, from GRAM_MIN_DIM dimensions on (the Gram products), the
    matrix-free preflight counts cuBLAS's workspace, and ``choose_engine`` refuses a budget
    that only the count without it would hold; none elsewhere."""
    from dcpe import InsufficientMemoryError
    from dcpe_kernels.rnn import blas_workspace_bytes

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    ws = blas_workspace_bytes("cuda")
    assert ws == 33 << 20
    req = linear.linear_required_bytes
    low, high = linear.GRAM_MIN_DIM - 1, linear.GRAM_MIN_DIM
    assert req(2048, high, 4, "cuda") == req(2048, high, 4) + ws == req(2048, high, 4, "cpu") + ws
    assert req(2048, low, 4, torch.device("cuda", 0)) == req(2048, low, 4)
    budget = req(2048, high, 4)
    assert linear.choose_engine(2048, high, 4, method="average", budget=budget,
                                engine="linear") == "linear"
    with pytest.raises(InsufficientMemoryError, match="matrix-free rounds"):
        linear.choose_engine(2048, high, 4, method="average", budget=budget, engine="linear",
                             device="cuda")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert req(2048, high, 4, "cuda") == req(2048, high, 4) + (128 << 10)


def _api_backend() -> str:
    _triton_ops()
    return "triton"


def test_public_api_memory_limit_and_engine(rng: np.random.Generator) -> None:
    """``memory_limit`` and ``engine`` reach the GPU backends through ``dcpe.cluster``."""
    import dcpe

    backend = _api_backend()
    x = tie_free(rng, 40, 3)
    xt = torch.from_numpy(x).to(DEVICE)
    want = _cpu_labels(x, 8, "euclidean", None)
    for kw in ({"engine": "linear"}, {"memory_limit": "64KiB"}, {"engine": "matrix"}):
        got = dcpe.cluster(xt, 8, backend=backend, **kw)
        assert same_partition(got.cpu().numpy(), want), kw
    with pytest.raises(dcpe.InsufficientMemoryError, match="memory_limit"):
        dcpe.cluster(xt, 8, backend=backend, memory_limit="1KiB")
    with pytest.raises(dcpe.InsufficientMemoryError, match="linkage='average'"):
        dcpe.cluster(xt, 8, backend=backend, linkage="single", memory_limit="8KiB")
    with pytest.raises(ValueError, match="average linkage only"):
        dcpe.cluster(xt, 8, backend=backend, linkage="single", engine="linear")
    with pytest.raises(ValueError, match="memory_limit"):
        dcpe.cluster(xt, 8, backend=backend, memory_limit="lots")


# ------------------------------------------------------------------- the memory budget

#: (n, d, metric, n // k (None: the whole tree), size cap, hand-over bytes (None: the
#: default; "budget": all the budget leaves past the preflight), engine knobs, budgets
#: past the preflight in bytes).  The knobs of the last case start the room for candidate
#: pairs at 64 pairs and grow it 1,024-fold (within the budget) on its first overflow, so
#: that the room is at its largest when the clusters' matrix takes over.
MEMORY_CASES = [
    (600, 8, "euclidean", 2, None, None, {}, (0, 1 << 18, 1 << 22)),
    (600, 8, "euclidean", None, 9, None, {}, (0, 1 << 18)),
    (600, 8, "sqeuclidean", 2, None, None, {}, (0, 1 << 18)),
    (200, 32, "euclidean", 2, None, 0, {}, (0, 1 << 20, 1 << 23)),
    (96, 64, "euclidean", 2, None, 0, {"_GRAM_MIN_COLS": 16}, (0, 1 << 20)),
    (500, 2, "euclidean", None, None, "budget",
     {"_PAIRS_PER_CLUSTER": 0, "_MIN_PAIRS": 64, "_PAIRS_GROWTH": 1024.0, "_PAIRS_SHRINK": 0},
     (0, 2 * 500 * 500)),
]


@pytest.mark.skipif(ON_GPU, reason="on a GPU, test_peak_memory_within_the_limit measures "
                                   "the device's own peak")
@pytest.mark.parametrize("case", MEMORY_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[3]}")
def test_engine_tensors_within_the_budget(case: tuple, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Under ``memory_budget`` = the preflight's count plus some bytes, the tensors the
    engine makes (every operation's output and every kernel's, at their most alive at
    once, with the input) stay within the budget, and what it takes past its peak under
    the preflight's count alone stays within the bytes added: the room for candidate
    pairs, the store, the Gram tiles and the hand-over's matrices are sized from what the
    budget leaves (the room and the store go before the matrices come).  As on a CUDA
    device, cuBLAS's workspace counts from the first Gram product on (the preflight counts
    it from ``GRAM_MIN_DIM`` dimensions on)."""
    from dcpe.datasets import make_sample_codebook
    from dcpe_kernels.rnn import blas_workspace_bytes

    n, d, metric, k_div, cap, handover, knobs, extras = case
    for name, value in knobs.items():
        monkeypatch.setattr(linear, name, value)
    workspace = blas_workspace_bytes("cuda")
    monkeypatch.setattr(linear, "blas_workspace_bytes", lambda device: workspace)
    x = torch.from_numpy(make_sample_codebook(n=n, d=d))
    needed = linear.linear_required_bytes(n, d, x.element_size())
    peaks = []
    for extra in extras:
        tracker = TensorPeak(blas_workspace=workspace)
        with tracker:
            linear.linear_merges(x, metric=metric, max_cluster_size=cap,
                                 ops=tracker.ops(ReferenceOps),
                                 n_clusters=None if k_div is None else n // k_div,
                                 memory_budget=needed + extra,
                                 handover_bytes=extra if handover == "budget" else handover)
        assert tracker.peak + x.nbytes <= needed + extra, extra
        assert tracker.device_peak + x.nbytes <= needed + extra, extra
        peaks.append((tracker.peak, tracker.device_peak))
    for extra, peak in zip(extras[1:], peaks[1:]):
        assert peak[0] - peaks[0][0] <= extra, (extra, peak, peaks[0])
        assert peak[1] - peaks[0][1] <= extra, (extra, peak, peaks[0])


# ------------------------------------------------------------------- large N on a GPU


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_large_n_under_4gib_matches_cpu(backend: str) -> None:
    """N = 65,536 codebook under a 4 GiB budget: the dense matrix (16 GiB) does not fit,
    the matrix-free rounds run, and the labels equal the ``cpu`` backend's."""
    import dcpe

    if backend == "cuda":
        _cuda_ops()
    x, want = _large_cpu_labels()
    got = dcpe.cluster(torch.from_numpy(x).cuda(), 65536 // 2, backend=backend,
                       memory_limit="4GiB")
    assert same_partition(got.cpu().numpy(), want)


#: (N, d, n // k (None: the whole tree), bytes past the preflight's count)
PEAK_CASES = [(65536, 8, 2, 0), (65536, 8, None, 256 << 20), (8192, 256, 2, 64 << 20),
              (2048, 256, 2, 0)]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", PEAK_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[3]}")
def test_peak_memory_within_the_limit(backend: str, case: tuple) -> None:
    """The device's own peak (``torch.cuda.max_memory_allocated``, the input included)
    stays within ``memory_budget`` = the preflight's count plus some bytes: at the
    preflight's count alone (a flat cut at N/2), with a whole tree whose clusters' matrix
    takes over within 256 MiB, and at d = 256 (the pair store, the Gram tiles, lists in
    batches); at 2,048 x 256 (no new kernels to compile) under the preflight's count alone,
    of which cuBLAS's workspace is 42%: the Gram products allocate it if the stream has
    none (cleared first where PyTorch can)."""
    from dcpe.datasets import make_sample_codebook

    n, d, k_div, extra = case
    ops = _ops(backend)
    x = torch.from_numpy(make_sample_codebook(n=n, d=d)).cuda()
    budget = linear.linear_required_bytes(n, d, x.element_size(), x.device) + extra
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    mg = linear.linear_merges(x, metric="euclidean", max_cluster_size=None, ops=ops,
                              backend=backend, memory_budget=budget,
                              n_clusters=None if k_div is None else n // k_div)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base + x.nbytes
    assert peak <= budget, (peak, budget)
    assert mg.known >= n - (1 if k_div is None else n // k_div)


@functools.lru_cache(maxsize=1)
def _large_cpu_labels() -> tuple[np.ndarray, np.ndarray]:
    import dcpe

    x = dcpe.datasets.make_sample_codebook(n=65536)
    return x, np.asarray(dcpe.cluster(x, 65536 // 2, backend="cpu"))


def test_cli_gpu_backend_with_memory_limit(tmp_path, capsys,
                                           rng: np.random.Generator) -> None:
    """``dcpe cluster FILE --backend triton --memory-limit SIZE``: the CLI hands the
    backend a tensor where it runs (here the interpreter's CPU), the limit picks the
    matrix-free engine, and the prior's clusters are the ``cpu`` backend's."""
    from dcpe.cli import main

    _api_backend()
    path = tmp_path / "codebook.npy"
    x = tie_free(rng, 300, 4).astype(np.float32)
    np.save(path, x)
    # the dense engine would need about 400 KB here, the matrix-free rounds about 200 KB
    assert linear.choose_engine(300, 4, 4, method="average", budget=250 << 10) == "linear"
    out = tmp_path / "prior.npz"
    rc = main(["cluster", str(path), "-k", "100", "--backend", "triton", "--memory-limit",
               "250KiB", "-q", "-o", str(out)])
    assert rc == 0
    assert "clusters found: 100" in capsys.readouterr().out
    got = np.load(out)["token_to_cluster"]
    assert same_partition(got, _cpu_labels(x, 100, "euclidean", None))


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_near_duplicate_float64_rows_closed_forms(metric: str) -> None:
    """Rows a few float64 roundings apart from a few distinct ones (the inputs of
    ``test_near_duplicate_float64_rows_need_no_luck`` in ``test_linear_engine.py``): a
    unit of rounding in the moments can leave a round of the matrix-free closed forms
    without a reciprocal pair (seed 15, ``sqeuclidean``: at 8 clusters), where every
    cluster then searches again. The merges are those of the ``cpu`` engine's moments up
    to that rounding: the flat cut at the number of distinct rows is those rows."""
    for seed in (15, 54, 83, 88):
        x, k = near_duplicate_float64_rows(seed)
        mg = linear.linear_merges(torch.from_numpy(x).to(DEVICE), metric=metric,
                                  max_cluster_size=None, ops=ReferenceOps, handover_bytes=0)
        labels = merges_to_labels(mg, k).cpu().numpy()
        groups = np.unique(x.round(6), axis=0, return_inverse=True)[1].ravel()
        assert same_partition(labels, groups), seed
