"""Backend ``triton`` and its kernels.

Without a GPU the kernels run on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, set below before anything imports Triton) at small N.  On a
machine with CUDA and without ``TRITON_INTERPRET`` the same comparisons run on CUDA
tensors, plus larger inputs compared with the ``cpu`` backend.
"""

from __future__ import annotations

import os
import sys


def _cuda_visible() -> bool:
    try:
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


if "TRITON_INTERPRET" not in os.environ and not _cuda_visible():
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)
if INTERPRET:
    from conftest import interpreter_problem  # noqa: E402

    _problem = interpreter_problem()
    if _problem:
        pytest.skip(_problem, allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"


def _load_kernels():
    """Import ``dcpe_kernels``; re-decorate its kernels if it was imported in the other mode."""
    from triton.runtime.interpreter import InterpretedFunction

    import dcpe_kernels
    from dcpe_kernels import merge, pairwise, round

    if isinstance(pairwise._pairwise_dist_rownn_kernel, InterpretedFunction) != INTERPRET:
        importlib.reload(pairwise)
        importlib.reload(merge)
        importlib.reload(round)
        importlib.reload(dcpe_kernels)
    return dcpe_kernels


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

dk = _load_kernels()
from dcpe.backends import triton_backend  # noqa: E402
from dcpe_kernels import rnn as rnn_module  # noqa: E402
from dcpe_kernels.peak import TensorPeak  # noqa: E402
from dcpe_kernels.rnn import (  # noqa: E402
    allocator_bytes,
    merges_to_labels,
    merges_to_linkage,
    required_bytes,
    rnn_merges,
)

# ----------------------------------------------------------------------------- helpers


def tie_free(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Gaussian points, random per-coordinate scales: no tied distances (a.s.)."""
    scales = np.exp(rng.uniform(np.log(0.2), np.log(5.0), size=d))
    return rng.standard_normal((n, d)) * scales


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 in order of first occurrence."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def cut(z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Canonical labels after the first ``n - k`` merges of ``z`` (union-find)."""
    parent = list(range(2 * n))

    def root(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for i, row in enumerate(z[: max(0, n - k)]):
        parent[root(int(row[0]))] = n + i
        parent[root(int(row[1]))] = n + i
    return canonical(np.array([root(t) for t in range(n)]))


def greedy_oracle(x: np.ndarray, method: str = "average", metric: str = "euclidean",
                  cap: int | None = None) -> np.ndarray:
    """Literal greedy agglomeration in float64 (dense matrix, one merge per step).

    Tie rule: lexicographically smallest (distance, a, b) with clusters identified by
    their smallest token index; clusters larger than ``cap`` stop merging.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if metric == "cosine":
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(nrm > 0, nrm, 1)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    dist = {"euclidean": np.sqrt(sq), "sqeuclidean": sq, "cosine": 0.5 * sq}[metric]
    np.fill_diagonal(dist, np.inf)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    cid = np.arange(n)
    z = []
    while True:
        act = np.flatnonzero(alive & (size <= (cap if cap is not None else np.inf)))
        if len(act) < 2:
            break
        sub = dist[np.ix_(act, act)].copy()
        sub[np.tril_indices(len(act))] = np.inf
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        a, b = act[i], act[j]
        na, nb = size[a], size[b]
        z.append([min(cid[a], cid[b]), max(cid[a], cid[b]), dist[a, b], na + nb])
        if method == "average":
            new = (na * dist[a] + nb * dist[b]) / (na + nb)
        elif method == "weighted":
            new = 0.5 * (dist[a] + dist[b])
        elif method == "single":
            new = np.minimum(dist[a], dist[b])
        else:
            new = np.maximum(dist[a], dist[b])
        dist[a], dist[:, a] = new, new
        dist[a, a] = np.inf
        dist[b], dist[:, b] = np.inf, np.inf
        alive[b] = False
        size[a] = na + nb
        cid[a] = n + len(z) - 1
    return np.array(z, dtype=np.float64).reshape(-1, 4)


def run(x: np.ndarray, dtype: torch.dtype = torch.float64, method: str = "average",
        metric: str = "euclidean", cap: int | None = None, **kw: object):
    xt = torch.tensor(x, dtype=dtype, device=DEVICE)
    return rnn_merges(xt, method=method, metric=metric, max_cluster_size=cap,
                      ops=dk.TritonOps, **kw)


def assert_same_tree(z: np.ndarray, z_ref: np.ndarray, rtol: float) -> None:
    assert z.shape == z_ref.shape
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=rtol, atol=1e-12)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", [0, 1, 2])
def test_pairwise_kernel_matches_reference(dtype: torch.dtype, metric: int) -> None:
    rng = np.random.default_rng(10 + metric)
    n, d, ld = 37, 5, 41  # n not a multiple of the tiles; padded row stride
    x = torch.tensor(tie_free(rng, n, d), dtype=dtype, device=DEVICE)
    check_pairwise_kernel(dk.pairwise_nn, x, ld, metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", [0, 1])
def test_pairwise_kernel_rounds_like_the_cpu_engine(dtype: torch.dtype, metric: int) -> None:
    """Bit for bit (no fma), so both engines start from the same matrix."""
    rng = np.random.default_rng(50 + metric)
    x = tie_free(rng, 70, 8).astype(np.float32 if dtype == torch.float32 else np.float64)
    out = torch.empty(70 * 70, dtype=dtype, device=DEVICE)
    nn = torch.empty(70, dtype=torch.int64, device=DEVICE)
    nnd = torch.empty(70, dtype=dtype, device=DEVICE)
    dk.pairwise_nn(torch.from_numpy(x).to(DEVICE), out, 70, metric, nn, nnd)
    np.testing.assert_array_equal(out.view(70, 70).cpu().numpy(), cpu_order_distances(x, metric))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_merge_kernel_matches_reference(dtype: torch.dtype, mode: int) -> None:
    rng = np.random.default_rng(20 + mode)
    round_ = random_merge_round(rng, 45, 6, 3, 4, dtype, DEVICE)
    n_new = round_[1].shape[0]
    # whole matrix, then a chunk of rows (row offset path used by in-place compaction)
    check_merge_kernel(dk.merge_compact_nn, *round_, mode, ((0, n_new), (5, 17)))
    # the count of new slots read on the device (a merge launched before the host reads it)
    check_merge_kernel_counted(dk.merge_compact_nn, *round_, mode)
    check_merge_kernel_counted(dk.ReferenceOps.merge_compact_nn, *round_, mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_merged_matrix_is_exactly_symmetric(dtype: torch.dtype, mode: int) -> None:
    """Each entry is computed in both of its rows; both must round alike (no fma, symmetric
    order), so the two members of a reciprocal pair see the same distance."""
    rng = np.random.default_rng(30 + mode)
    n_old = 45
    old, p, q, wp, wq = random_merge_round(rng, n_old, 6, 3, 4, dtype, DEVICE)
    assert torch.equal(old, old.T)
    n_new = p.shape[0]
    dst = torch.empty(n_new * n_new, dtype=dtype, device=DEVICE)
    nn = torch.empty(n_new, dtype=torch.int64, device=DEVICE)
    nnd = torch.empty(n_new, dtype=dtype, device=DEVICE)
    dk.merge_compact_nn(old.reshape(-1), n_old, dst, n_new, p, q, wp, wq, n_new, 0, n_new,
                        mode, nn, nnd)
    new = dst.view(n_new, n_new)
    assert int((new != new.T).sum()) == 0
    ref, _, _ = dk._reference_merge_compact_nn(old, p, q, wp, wq, mode)
    assert torch.equal(ref, ref.T)


def test_reference_merge_is_lance_williams() -> None:
    """The reference itself: a merged row equals Eq. 2 recomputed from token distances."""
    rng = np.random.default_rng(3)
    x = tie_free(rng, 6, 2)
    tok = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    old = torch.tensor(tok)
    old.fill_diagonal_(float("inf"))
    # merge {0,3} and {1,4}; slots 2, 5 stay
    p = torch.tensor([0, 1, 2, 5], dtype=torch.int32)
    q = torch.tensor([3, 4, -1, -1], dtype=torch.int32)
    w = torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64)
    wq = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    new, _, _ = dk._reference_merge_compact_nn(old, p, q, w, wq, 0)
    assert np.isclose(float(new[0, 1]), tok[np.ix_([0, 3], [1, 4])].mean())
    assert np.isclose(float(new[0, 2]), tok[[0, 3], 2].mean())
    assert float(new[2, 3]) == tok[2, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 64, 65, 300] + ([] if INTERPRET else [1024, 2100]))
def test_round_scan_kernel_matches_reference(dtype: torch.dtype, n: int) -> None:
    """The one-launch bookkeeping equals its PyTorch reference bit for bit, including what
    it must leave untouched; block boundaries crossed (blocks of 64 clusters under the
    interpreter, 1024 on a GPU)."""
    _check_round_scan_kernel(n, dtype)


def _check_round_scan_kernel(n: int, dtype: torch.dtype) -> None:
    from dcpe_kernels.round import EARLY_STOP, FINISHED, GO, NO_PAIR

    cases = check_round_scan_kernel(dk.round_scan, n, dtype, DEVICE)
    for state, ref, m, check, need, before in cases:
        n_pairs, n_new, below, m_next, status, order = ref["counts"].tolist()
        if before not in (None, GO):  # after the last round: its status, nothing else
            assert [n_pairs, n_new, below, m_next, status, order] == [0, 0, 0, m, before, 0]
            assert bool((ref["p"] == -7).all()) and bool((ref["m_a"][m:] == -5).all())
            continue
        assert order == n
        assert n_pairs >= n // 3 and 0 <= n_new <= n - n_pairs
        if check:
            floor = state["nnd"][:n].min()
            assert below == int((state["m_hf"][:m] < floor).sum())
        else:
            assert below == 0
        if check and below >= need >= 0:
            assert status == EARLY_STOP and m_next == m
        else:
            assert status == (GO if n_new >= 2 else FINISHED) and m_next == m + n_pairs
        assert status != NO_PAIR
    if n >= 64:  # the early stop's need met and not, given and tested on the device
        assert [c[1]["counts"][4].item() for c in cases[1:3]] == [EARLY_STOP, GO]
        assert [c[1]["counts"][4].item() for c in cases[4:6]] == [EARLY_STOP, GO]


def test_reference_round_scan_semantics() -> None:
    """The reference itself on a hand-made round: pairs (0, 2) and (1, 4), 3 -> 1 one-way."""
    dt = torch.float64
    nn = torch.tensor([2, 4, 0, 1, 1])
    nnd = torch.tensor([1.0, 0.5, 1.0, 0.7, 0.5], dtype=dt)
    size = torch.tensor([1, 2, 3, 1, 2])
    rep = torch.tensor([0, 3, 5, 6, 9])
    hfix = torch.tensor([0.0, 0.6, 0.2, 0.0, 0.1], dtype=dt)
    m_hf = torch.tensor([0.3, 0.6, 0.0, 0.0, 0.0], dtype=dt)
    rec = [torch.zeros(5, dtype=torch.int64), torch.zeros(5, dtype=torch.int64),
           torch.zeros(5, dtype=dt), m_hf, torch.zeros(5, dtype=torch.int64)]
    p, q = torch.zeros(5, dtype=torch.int32), torch.zeros(5, dtype=torch.int32)
    wp, wq, hf2 = (torch.zeros(5, dtype=dt) for _ in range(3))
    s2, r2, counts = torch.zeros(5, dtype=torch.int64), torch.zeros(5, dtype=torch.int64), \
        torch.zeros(6, dtype=torch.int64)
    dk._reference_round_scan(5, nn, nnd, size, rep, hfix, *rec, 2, True, 4, True, p, q, wp, wq,
                             s2, r2, hf2, counts)
    # merges in slot order of the smaller member; {0, 2} has 1 + 3 = 4 tokens, within the cap
    # pairs, kept (0, 1, 3), merges below 0.5: one; 4 merges recorded after it; go on; n
    assert counts.tolist() == [2, 3, 1, 4, 0, 5]
    assert rec[0][2:4].tolist() == [0, 3] and rec[1][2:4].tolist() == [5, 9]
    assert rec[2][2:4].tolist() == [1.0, 0.5] and rec[3][2:4].tolist() == [1.0, 0.6]
    assert rec[4][2:4].tolist() == [4, 4]
    assert p[:3].tolist() == [0, 1, 3] and q[:3].tolist() == [2, 4, -1]
    assert wp[:3].tolist() == [0.25, 0.5, 1.0] and wq[:3].tolist() == [0.75, 0.5, 0.0]
    assert s2[:3].tolist() == [4, 4, 1] and r2[:3].tolist() == [0, 3, 6]
    assert hf2[:3].tolist() == [1.0, 0.6, 0.0]
    # a cap of 3 freezes both merged clusters; halves for weighted linkage
    dk._reference_round_scan(5, nn, nnd, size, rep, hfix, *rec, 2, False, 3, False, p, q, wp,
                             wq, s2, r2, hf2, counts)
    assert counts.tolist() == [2, 1, 0, 4, 1, 5] and p[:1].tolist() == [3]  # finished
    assert wp[:1].tolist() == [1.0] and wq[:1].tolist() == [0.0]


# ----------------------------------------------------------------------------- engine


@pytest.mark.parametrize("n", [2, 3, 17, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_matches_greedy(n: int, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(100 + n)
    x = tie_free(rng, n, 8)
    z_ref = greedy_oracle(x)
    mg = run(x, dtype)
    z = merges_to_linkage(mg)
    assert_same_tree(z, z_ref, rtol=1e-5 if dtype == torch.float32 else 1e-10)
    assert np.all(np.diff(z[:, 2]) >= 0)
    for k in sorted({1, 2, max(1, n // 2), n - 1, n}):
        lab = merges_to_labels(mg, k)
        assert lab.dtype == torch.int64 and lab.device.type == DEVICE
        np.testing.assert_array_equal(lab.cpu().numpy(), cut(z_ref, n, k))


@pytest.mark.parametrize("method", ["single", "complete", "weighted"])
def test_other_reducible_linkages(method: str) -> None:
    x = tie_free(np.random.default_rng(7), 40, 4)
    assert_same_tree(merges_to_linkage(run(x, method=method)), greedy_oracle(x, method), 1e-10)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_other_metrics(metric: str) -> None:
    x = tie_free(np.random.default_rng(8), 48, 6)
    assert_same_tree(merges_to_linkage(run(x, metric=metric)), greedy_oracle(x, metric=metric),
                     1e-9)


@pytest.mark.parametrize("cap", [1, 2, 3, 8])
def test_size_cap_matches_greedy(cap: int) -> None:
    rng = np.random.default_rng(200 + cap)
    n = 96
    x = tie_free(rng, n, 8)
    z_ref = greedy_oracle(x, cap=cap)
    mg = run(x, torch.float32, cap=cap)
    z = merges_to_linkage(mg)
    assert_same_tree(z, z_ref, rtol=1e-5)
    if cap == 1:  # singletons pair up once, then every pair is over the cap
        assert z.shape[0] == n // 2 and bool(np.all(z[:, 3] == 2))
    assert z.shape[0] < n - 1 or cap >= n
    for k in (n // cap, n // 2):
        lab = merges_to_labels(mg, k).cpu().numpy()
        np.testing.assert_array_equal(lab, cut(z_ref, n, k))
        assert np.bincount(lab).max() <= 2 * cap  # a capped cluster took at most one merge


@pytest.mark.parametrize("cap", [None, 4])
def test_early_stop_for_a_cut_is_exact(cap: int | None) -> None:
    """rnn_merges(n_clusters=k) stops once the first N-k greedy merges are known."""
    n = 120
    x = tie_free(np.random.default_rng(300 + (cap or 0)), n, 8)
    full = run(x, torch.float32, cap=cap)
    z_ref = greedy_oracle(x, cap=cap)
    assert full.complete and full.known == full.m
    stopped_early = 0
    for k in (1, 2, 10, n // 4, n // 2, n - 5, n - 1, n):
        part = run(x, torch.float32, cap=cap, n_clusters=k)
        assert part.known >= min(n - k, full.m) and part.rounds <= full.rounds
        lab = merges_to_labels(part, k).cpu().numpy()
        np.testing.assert_array_equal(lab, cut(z_ref, n, k), err_msg=f"k={k}")
        if not part.complete:
            stopped_early += 1
            assert part.rounds < full.rounds
            with pytest.raises(ValueError, match="stopped early"):
                merges_to_linkage(part)
            if part.known < full.m:
                with pytest.raises(ValueError, match="stopped early"):
                    merges_to_labels(part, n - part.known - 1)
    assert stopped_early >= 3  # the stop fires for k = N/2 and larger k


def test_duplicates_share_clusters() -> None:
    rng = np.random.default_rng(5)
    base = tie_free(rng, 30, 4)
    idx = rng.integers(0, 30, size=90)
    idx[:30] = np.arange(30)  # every distinct row present
    x = base[rng.permutation(idx)]
    n, distinct = len(x), 30
    mg = run(x, torch.float32)
    z = merges_to_linkage(mg)
    z_ref = greedy_oracle(x)
    # same hierarchy; the tied zero-height merges may be listed in another order
    assert np.count_nonzero(z[:, 2] == 0) == n - distinct
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=1e-5, atol=0)
    for k in (1, 7, distinct):
        lab = merges_to_labels(mg, k).cpu().numpy()
        np.testing.assert_array_equal(lab, cut(z_ref, n, k))
        _, inv = np.unique(x, axis=0, return_inverse=True)
        for g in np.unique(inv):
            assert len(set(lab[inv.ravel() == g])) == 1


def test_inplace_compaction_matches_out_of_place() -> None:
    """When a second matrix does not fit, rows are compacted in place through staging."""
    x = tie_free(np.random.default_rng(11), 80, 8)
    xt = torch.tensor(x, dtype=torch.float32, device=DEVICE)
    ref = run(x, torch.float32)
    from dcpe_kernels.rnn import required_bytes

    tight = required_bytes(80, 8, 4) + 12 * 80 * 4  # room for a 12-row staging buffer only
    mg = rnn_merges(xt, method="average", metric="euclidean", max_cluster_size=None,
                    ops=dk.TritonOps, memory_budget=tight)
    np.testing.assert_array_equal(merges_to_linkage(mg), merges_to_linkage(ref))


@pytest.mark.parametrize("cap,staged", [(None, False), (2, True)])
def test_driver_at_scale_with_reference_kernels(cap: int | None, staged: bool) -> None:
    """The round driver at a codebook-like size (the sample's first 4096 tokens, float32,
    about 50 rounds) with the PyTorch reference kernels, against the cpu backend: the same
    tree, the early stop for a cut, and (``staged``) the in-place compaction in several
    row chunks per round until a second matrix fits."""
    cpu = _cpu_backend()
    if cpu is None:
        pytest.skip("needs the cpu backend")
    import dcpe.datasets as ds
    from dcpe_kernels.rnn import required_bytes

    n = 4096
    x = ds.sample_codebook()[:n]
    z_ref = cpu.linkage(x, method="average", metric="euclidean", max_cluster_size=cap)
    xt = torch.from_numpy(x).to(DEVICE)
    kw = {"method": "average", "metric": "euclidean", "max_cluster_size": cap,
          "ops": dk.ReferenceOps,
          "memory_budget": required_bytes(n, 8, 4) + 1024 * n * 4 if staged else None}
    mg = rnn_merges(xt, **kw)
    assert_same_tree(merges_to_linkage(mg), z_ref, rtol=1e-5)
    part = rnn_merges(xt, n_clusters=n // 2, **kw)
    assert not part.complete and part.rounds < mg.rounds
    np.testing.assert_array_equal(merges_to_labels(part, n // 2).cpu().numpy(),
                                  cut(z_ref, n, n // 2))


@pytest.mark.skipif(not INTERPRET, reason="counts host-side ops; run once, on CPU tensors")
def test_driver_round_costs_two_kernels_and_few_tensor_ops() -> None:
    """On a GPU every tensor operation of the driver is a launch, and at ~30 rounds per
    codebook those would dominate the run. A round is the bookkeeping kernel, the merge
    kernel, one read of three counts, and views; besides the kernels only the set-up
    computes anything (the kernels' own work is excluded from the count)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    free = {"slice", "select", "view", "alias", "as_strided", "empty", "empty_like",
            "lift_fresh"}  # no launch

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.inside = False
            self.free, self.computing = 0, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if not self.inside:
                name = func.overloadpacket.__name__
                if name in free:
                    self.free += 1
                else:
                    self.computing.append(name)
            return func(*args, **(kwargs or {}))

    mode = Count()
    calls = {"pairwise_nn": 0, "merge_compact_nn": 0, "round_scan": 0}

    def counted(name: str):  # noqa: ANN202
        def call(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            calls[name] += 1
            mode.inside = True
            try:
                getattr(dk.ReferenceOps, name)(*args, **kwargs)
            finally:
                mode.inside = False
        return staticmethod(call)

    ops = type("CountedOps", (), {name: counted(name) for name in calls})
    x = torch.from_numpy(tie_free(np.random.default_rng(5), 1024, 8)).float()
    with mode:
        mg = rnn_merges(x, method="average", metric="euclidean", max_cluster_size=None,
                        ops=ops, n_clusters=512)
    assert mg.rounds >= 5 and not mg.complete
    # the last scan decides to stop; its merge, and the rounds queued after it (chained
    # from the second round on: _ROUNDS_AHEAD in flight), were launched before its record
    # was read, and did nothing
    queued = rnn_module._ROUNDS_AHEAD
    assert calls == {"pairwise_nn": 1, "merge_compact_nn": mg.rounds + queued,
                     "round_scan": mg.rounds + queued}
    # set-up only: the initial cluster state (arange, ones, zeros) and the record the first
    # chained round reads (one copy); was ~60 per round
    assert len(mode.computing) <= 4, mode.computing
    assert mode.free <= 8 * mg.rounds + 20, (mode.free, mg.rounds)


def test_merges_launched_before_the_counts_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the rounds not chained (``_ROUNDS_AHEAD = 1``): from the second round on (two
    matrices fit), each round's merge is launched with the counts on the device, before the
    host reads them; the merges are those of rounds that read the counts first (a budget
    that holds one matrix and a few rows: merged in place, in chunks, until a second matrix
    fits)."""
    monkeypatch.setattr(rnn_module, "_ROUNDS_AHEAD", 1)
    seen: list[bool] = []

    class Spy(dk.ReferenceOps):
        @staticmethod
        def merge_compact_nn(*args, count=None):  # noqa: ANN002, ANN205
            seen.append(count is not None)
            dk.ReferenceOps.merge_compact_nn(*args, count=count)

    x = torch.from_numpy(tie_free(np.random.default_rng(8), 300, 5)).to(torch.float64)
    kw = {"method": "average", "metric": "euclidean", "max_cluster_size": None}
    ahead = rnn_merges(x, ops=Spy, **kw)
    # the last round merges the last two clusters: one merge per round
    assert seen[0] is False and all(seen[1:]) and len(seen) == ahead.rounds
    seen.clear()
    one = required_bytes(300, 5, 8) + 300 * 8 * 40  # one matrix and a few staging rows
    staged = rnn_merges(x, ops=Spy, memory_budget=one, **kw)
    # the early rounds merge in place, in chunks (several calls a round, counts read
    # first); the later ones, once a second matrix fits, ahead of the counts
    assert not any(seen[:8]) and len(seen) > staged.rounds
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(ahead, name), getattr(staged, name)), name
    assert ahead.rounds == staged.rounds
    # the switch the benchmark's diagnostics compare: counts first in every round
    seen.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rnn_module, "_MERGE_AHEAD", False)
        first = rnn_merges(x, ops=Spy, **kw)
    assert not any(seen) and len(seen) == first.rounds - 1  # none after the last pair
    for name in ("rep_a", "rep_b", "height", "hmono", "size"):
        assert torch.equal(getattr(ahead, name), getattr(first, name)), name


def test_allocator_sizes() -> None:
    """``allocator_bytes``: a request rounded up to 512 bytes, 1 MiB more past 1 MiB (the
    rest of a large block the caching allocator does not split); ``allocator_fit``: the
    largest request whose count fits a room."""
    from dcpe_kernels.rnn import allocator_fit

    mib = 1 << 20
    assert [allocator_bytes(b) for b in (0, 1, 512, 513, mib, mib + 1, 3 * mib)] == [
        0, 512, 512, 1024, mib, 2 * mib + 512, 4 * mib]
    rooms = [0, 1, 511, 512, 1000, mib - 1, mib, mib + 1, 2 * mib, 2 * mib + 511,
             2 * mib + 512, 2 * mib + 513, 3 * mib, 5 * mib + 7, 1 << 40]
    rooms += np.random.default_rng(3).integers(0, 8 * mib, 200).tolist()
    for room in rooms:
        fit = allocator_fit(room)
        assert fit % 512 == 0 and allocator_bytes(fit) <= room, room
        assert allocator_bytes(fit + 512) > room, room  # (the count never falls with size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("share", [0, 1 / 3, 1 / 2, 1])
@pytest.mark.parametrize("n", [120, 600])
def test_driver_tensors_within_the_budget(n: int, dtype: torch.dtype, share: float) -> None:
    """Under ``memory_budget`` = the preflight's count (``required_bytes``) plus a share of
    one matrix, the tensors the driver makes (every operation's output and every kernel's at
    their most alive at once, :class:`dcpe_kernels.peak.TensorPeak`) stay within the budget
    with the input: none added (merged in place through one staging row at a time), staging
    rows only, staging rows until a second matrix fits (the rows go before it comes), and a
    second matrix at once.  The round state is part of the preflight's count (most of it at
    N = 120).  At N = 600 the matrix (1.4 and 2.9 MB) and the larger staging rows come from
    the caching allocator's large pool, where a tensor may hold up to 1 MiB more than it
    asks for: the tensors, counted so (``device_peak``), stay within the budget too."""
    d = 2
    x = torch.from_numpy(tie_free(np.random.default_rng(4), n, d)).to(dtype).to(DEVICE)
    budget = required_bytes(n, d, x.element_size()) + int(share * n * n * x.element_size())
    for method in ("average", "single"):
        tracker = TensorPeak()
        with tracker:
            rnn_merges(x, method=method, metric="euclidean", max_cluster_size=None,
                       ops=tracker.ops(dk.ReferenceOps), memory_budget=budget)
        assert tracker.peak + x.nbytes <= budget, (method, tracker.peak + x.nbytes, budget)
        assert tracker.device_peak + x.nbytes <= budget, (
            method, tracker.device_peak + x.nbytes, budget)


@pytest.mark.parametrize("share", [1 / 3, 1 / 2])
def test_driver_within_the_budget_under_allocator_settings(
        share: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``PYTORCH_CUDA_ALLOC_CONF`` rounding requests up to halves of their power-of-two
    interval (the 1.4 MB matrix counts 2.5 MiB), the preflight, the staging rows and the
    second matrix are sized as the allocator then counts them, within the budget."""
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "roundup_power2_divisions:2")
    n, d = 600, 2
    x = torch.from_numpy(tie_free(np.random.default_rng(4), n, d)).to(DEVICE)
    assert allocator_bytes(n * n * 4) == 5 << 19
    budget = required_bytes(n, d, x.element_size()) + int(share * n * n * x.element_size())
    tracker = TensorPeak()
    with tracker:
        rnn_merges(x, method="average", metric="euclidean", max_cluster_size=None,
                   ops=tracker.ops(dk.ReferenceOps), memory_budget=budget)
    assert tracker.device_peak + x.nbytes <= budget, (tracker.device_peak + x.nbytes, budget)


@pytest.mark.parametrize("method", ["average", "single", "complete", "weighted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounds_chained_on_the_device(method: str, dtype: torch.dtype) -> None:
    """From the second round on the host keeps ``_ROUNDS_AHEAD`` rounds queued: each reads
    its order, the merges so far and the early-stop test from the record of the round
    before, on the device.  The merges equal those of rounds read one at a time (merge
    launched ahead, or counts first), bit for bit: the whole tree, flat cuts that stop
    early, the size cap, and a budget that merges in place until a second matrix fits.
    The rounds queued after the last do nothing, and the last's record ends the run."""
    n = 150
    x = torch.from_numpy(tie_free(np.random.default_rng(21), n, 5)).to(dtype)
    ops = dk.ReferenceOps
    for extra in ({}, {"n_clusters": n // 2}, {"n_clusters": 7}, {"max_cluster_size": 6},
                  {"max_cluster_size": 6, "n_clusters": n // 3},
                  {"memory_budget": required_bytes(n, 5, x.element_size())
                   + n * x.element_size() * 30}):
        kw = {"method": method, "metric": "euclidean", "max_cluster_size": None, **extra}
        runs, calls = chained_and_not(x, ops, **kw)
        assert_same_merges(runs)
        chained, one, _ = calls
        assert one["chained"] == 0 and chained["chained"] > 0, extra
        # queued rounds past the last: at most _ROUNDS_AHEAD - 1 of them
        assert 0 <= chained["scans"] - one["scans"] <= rnn_module._ROUNDS_AHEAD - 1, extra
        if extra.get("n_clusters") == n // 2 and "max_cluster_size" not in extra:
            assert not runs[0].complete  # the early stop came from a chained round


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chained_rounds_with_the_kernels(dtype: torch.dtype) -> None:
    """The same, with the Triton kernels (under the interpreter, on CPU tensors): a whole
    tree, a flat cut and a cap."""
    n = 48
    x = torch.from_numpy(tie_free(np.random.default_rng(22), n, 4)).to(dtype).to(DEVICE)
    for extra in ({}, {"n_clusters": n // 2}, {"max_cluster_size": 3}):
        kw = {"method": "average", "metric": "euclidean", "max_cluster_size": None, **extra}
        runs, calls = chained_and_not(x, dk.TritonOps, **kw)
        assert_same_merges(runs)
        assert calls[0]["chained"] > 0


def test_chained_rounds_stop_on_a_round_without_pairs() -> None:
    """A round without a reciprocal pair (what non-finite dissimilarities lead to) is an
    error, also when the host reads it from a chained round's record."""
    x = torch.from_numpy(tie_free(np.random.default_rng(23), 40, 3))

    class CycleAfterRound3(dk.ReferenceOps):
        calls = 0

        @staticmethod
        def merge_compact_nn(*args, count=None):  # noqa: ANN002, ANN205
            dk.ReferenceOps.merge_compact_nn(*args, count=count)
            CycleAfterRound3.calls += 1
            if CycleAfterRound3.calls == 3:  # a chained round's merge
                assert count is not None
                k = int(count[1])  # nearest neighbours in one cycle: no reciprocal pair
                args[12][:k] = torch.roll(torch.arange(k), -1)

    with pytest.raises(RuntimeError, match="no reciprocal nearest-neighbour pair among "):
        rnn_merges(x, ops=CycleAfterRound3, method="average", metric="euclidean",
                   max_cluster_size=None)


def test_memory_preflight_refuses_before_allocating() -> None:
    xt = torch.zeros((64, 3), dtype=torch.float32, device=DEVICE)
    with pytest.raises(MemoryError) as info:
        rnn_merges(xt, method="average", metric="euclidean", max_cluster_size=None,
                   ops=dk.TritonOps, memory_budget=1000)
    assert "64x64" in str(info.value)  # says what did not fit


# ----------------------------------------------------------------------------- GPU tiles
# Under the interpreter the host functions pick small tiles (fast to interpret); the tiles a
# GPU gets (8 x 256 distance tiles, 8 x 256 merge tiles, bookkeeping blocks of 1024
# clusters) would otherwise only be compiled in CI (test_triton_compile.py), never run.
# On a GPU every test above already runs with them.

interpret_only = pytest.mark.skipif(not INTERPRET, reason="on a GPU every test uses these tiles")


@pytest.fixture
def gpu_tiles(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """Make the host functions launch with their GPU configuration; returns the configs
    used (``num_warps`` means nothing to the interpreter)."""
    from dcpe_kernels import merge, pairwise
    from dcpe_kernels import round as round_

    used: list[dict[str, int]] = []

    def gpu(cfg_fn):
        def pick(*args: object) -> dict[str, int]:
            cfg = cfg_fn(*args[:-1], False)
            used.append(cfg)
            return cfg
        return pick

    for mod in (pairwise, merge, round_):
        monkeypatch.setattr(mod, "_launch_config", gpu(mod._launch_config))
    return used


@interpret_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_with_gpu_tiles_match_references(gpu_tiles: list, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(70)
    # 300 rows: ragged 8 x 256 tiles on both edges; padded row stride
    x = torch.tensor(tie_free(rng, 300, 8), dtype=dtype, device=DEVICE)
    for metric in (0, 1, 2):
        check_pairwise_kernel(dk.pairwise_nn, x, 307, metric)
    # 330 slots -> 300: ragged 8 x 256 tiles; whole matrix, then a chunk of rows
    for mode in (0, 1, 2):
        round_ = random_merge_round(rng, 330, 25, 5, 4, dtype, DEVICE)
        n_new = round_[1].shape[0]
        check_merge_kernel(dk.merge_compact_nn, *round_, mode, ((0, n_new), (9, 83)))
    # the bookkeeping's blocks of 1024 clusters: one block, just over, several
    for n in (1023, 1025, 2100):
        _check_round_scan_kernel(n, dtype)
    assert {(c.get("BLOCK_M"), c.get("BLOCK_N"), c.get("BLOCK")) for c in gpu_tiles} == {
        (8, 256, None), (None, None, 1024)}


@pytest.mark.parametrize("tiles", ["interpreter", "gpu"])
def test_tied_minima_go_to_the_smallest_column(request: pytest.FixtureRequest,
                                                 tiles: str) -> None:
    """Row minima kept per tile position: among equal minima the smallest column wins,
    whether they share a tile, a position in two tiles (columns 10 and 266: 266 - 10 is a
    multiple of both tile widths) or neither.  Rows 3, 10, 266 and 290 are one point."""
    if tiles == "gpu":
        if not INTERPRET:
            pytest.skip("on a GPU the tiles are the GPU's anyway")
        request.getfixturevalue("gpu_tiles")
    rng = np.random.default_rng(72)
    a = tie_free(rng, 300, 8)
    same = [3, 10, 266, 290]
    a[same] = a[same[0]]
    x = torch.tensor(a, dtype=torch.float32, device=DEVICE)
    n = x.shape[0]
    out = torch.empty(n * n, dtype=x.dtype, device=DEVICE)
    nn = torch.empty(n, dtype=torch.int64, device=DEVICE)
    nnd = torch.empty(n, dtype=x.dtype, device=DEVICE)
    dk.pairwise_nn(x, out, n, 0, nn, nnd)
    assert nn[same].tolist() == [10, 3, 3, 3]
    assert nnd[same].tolist() == [0.0] * 4
    # the same minima through a merge round that keeps every slot (p = i, weight 1)
    p = torch.arange(n, dtype=torch.int32, device=DEVICE)
    q = torch.full((n,), -1, dtype=torch.int32, device=DEVICE)
    wp = torch.ones(n, dtype=x.dtype, device=DEVICE)
    wq = torch.zeros(n, dtype=x.dtype, device=DEVICE)
    dst = torch.empty(n * n, dtype=x.dtype, device=DEVICE)
    nn2 = torch.empty(n, dtype=torch.int64, device=DEVICE)
    nnd2 = torch.empty(n, dtype=x.dtype, device=DEVICE)
    for mode in (0, 1, 2):
        dk.merge_compact_nn(out, n, dst, n, p, q, wp, wq, n, 0, n, mode, nn2, nnd2)
        assert torch.equal(dst, out), mode
        assert torch.equal(nn2, nn) and torch.equal(nnd2, nnd), mode


@interpret_only
@pytest.mark.parametrize("cap", [None, 3])
def test_engine_with_gpu_tiles_matches_cpu(gpu_tiles: list, cap: int | None) -> None:
    """Whole runs with the GPU tiles: the tree (no cap) and the early-stopped cut, against
    the cpu backend, at an N that spans several distance and merge tiles."""
    cpu = _cpu_backend()
    if cpu is None:
        pytest.skip("needs the cpu backend")
    n = 400
    x = tie_free(np.random.default_rng(71), n, 8).astype(np.float32)
    z_ref = cpu.linkage(x, method="average", metric="euclidean", max_cluster_size=cap)
    if cap is None:
        assert_same_tree(merges_to_linkage(run(x, torch.float32)), z_ref, rtol=1e-5)
    part = run(x, torch.float32, cap=cap, n_clusters=n // 2)
    assert not part.complete
    np.testing.assert_array_equal(merges_to_labels(part, n // 2).cpu().numpy(),
                                  cut(z_ref, n, n // 2))
    assert any(c.get("BLOCK_N") == 256 for c in gpu_tiles)


# ----------------------------------------------------------------------------- backend


def test_backend_module_contract() -> None:
    ok, why = triton_backend.available()
    assert ok, why
    x = tie_free(np.random.default_rng(12), 20, 3)
    xt = torch.tensor(x, dtype=torch.float32, device=DEVICE)
    assert triton_backend.accepts(xt)
    assert not triton_backend.accepts(x)
    z = triton_backend.linkage(xt, method="average", metric="euclidean", max_cluster_size=None)
    assert z.dtype == np.float64 and z.shape == (19, 4)
    lab = triton_backend.labels(xt, 5, method="average", metric="euclidean",
                                max_cluster_size=None)
    assert lab.device == xt.device and lab.dtype == torch.int64
    np.testing.assert_array_equal(lab.cpu().numpy(), cut(z, 20, 5))
    for method in ("centroid", "ward"):
        with pytest.raises(ValueError, match="supported"):
            triton_backend.linkage(xt, method=method, metric="euclidean",
                                   max_cluster_size=None)


# ----------------------------------------------------------------------------- GPU, larger N

gpu_only = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(),
                              reason="needs CUDA (and TRITON_INTERPRET unset)")


def _cpu_backend():
    try:
        from dcpe import backends

        mod = backends.get("cpu")
        ok, _ = mod.available()
    except Exception:
        return None
    return mod if ok else None


def _oracle_linkage(x: np.ndarray, cap: int | None) -> np.ndarray:
    cpu = _cpu_backend()
    if cpu is not None:
        return cpu.linkage(x, method="average", metric="euclidean", max_cluster_size=cap)
    if cap is not None:
        pytest.skip("size-capped oracle at this N needs the cpu backend")
    from scipy.cluster.hierarchy import linkage

    return linkage(x.astype(np.float64), "average")


@gpu_only
@pytest.mark.parametrize("n,seed,dtype,cap", [
    (1000, 0, np.float32, None),
    (4096, 1, np.float64, None),
    (4096, 2, np.float32, 2),
    (16384, 3, np.float64, None),
    (16384, 4, np.float64, 2),
])
def test_gpu_labels_match_cpu(n: int, seed: int, dtype: type, cap: int | None) -> None:
    x = tie_free(np.random.default_rng(seed), n, 8).astype(dtype)
    z_ref = _oracle_linkage(x, cap)
    xt = torch.from_numpy(x).cuda()
    z = triton_backend.linkage(xt, method="average", metric="euclidean", max_cluster_size=cap)
    assert_same_tree(z, z_ref, rtol=1e-5)
    for k in (n // 2, n // 16, 10):
        lab = triton_backend.labels(xt, k, method="average", metric="euclidean",
                                    max_cluster_size=cap)
        np.testing.assert_array_equal(lab.cpu().numpy(), cut(z_ref, n, k))


@gpu_only
def test_gpu_preflight_refuses_too_large() -> None:
    free, total = torch.cuda.mem_get_info()
    n = int((total / 4) ** 0.5) + 4096  # the float32 matrix alone exceeds the device
    xt = torch.zeros((n, 2), dtype=torch.float32, device="cuda")
    before = torch.cuda.memory_allocated()
    # the matrix engine's preflight: single linkage needs the matrix, and so does average
    # linkage with engine="matrix" (engine="auto" runs it matrix-free)
    for method, engine in (("single", "auto"), ("average", "matrix")):
        with pytest.raises(MemoryError):
            triton_backend.labels(xt, 2, method=method, metric="euclidean",
                                  max_cluster_size=None, engine=engine)
    assert torch.cuda.memory_allocated() == before


@pytest.mark.skipif(not INTERPRET, reason="interpreter-sized comparison (GPU tests cover more)")
@pytest.mark.parametrize("case", ["tie_free", "duplicates", "capped", "grid"])
def test_public_api_triton_equals_cpu(case: str) -> None:
    """dcpe.cluster(..., backend="triton") on CPU tensors (interpreter) == backend "cpu"."""
    import dcpe

    rng = np.random.default_rng({"tie_free": 11, "duplicates": 12, "capped": 13, "grid": 14}[case])
    n = 96
    if case == "grid":
        x = rng.integers(0, 3, size=(n, 2)).astype(np.float32)
    else:
        x = tie_free(rng, n, 8).astype(np.float32)
    if case == "duplicates":
        x[50:70] = x[rng.integers(0, 50, size=20)]
    cap = 6 if case == "capped" else None
    xt = torch.from_numpy(x)
    for k in (1, 7, n // 2, n - 1, n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the cap may stop early
            got = dcpe.cluster(xt, k, backend="triton", max_cluster_size=cap)
            want = dcpe.cluster(x, k, backend="cpu", max_cluster_size=cap)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{case}, k={k}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
