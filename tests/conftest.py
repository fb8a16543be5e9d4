"""Shared fixtures and helpers: tie-free data, partition comparison, SciPy/sklearn oracles."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

# Under pytest-xdist (README: ``-n 2``) two worker processes each run the engines' OpenMP
# threads on the same cores. Threads that spin while they wait at a barrier would then hold
# a core that the other process's threads need; passive waiting lets them sleep instead.
# (Read by the OpenMP runtime when it starts, before any test module imports dcpe.)
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# --------------------------------------------------------------------------- data


def tie_free(rng: np.random.Generator, n: int, d: int, dtype: type = np.float64) -> np.ndarray:
    """Gaussian points with a random scale per coordinate (no tied distances, a.s.).

    The scales span two decades so that clusters are anisotropic and of very different
    widths; continuous random coordinates make exactly tied pairwise (and cluster)
    distances an event of probability zero, also for ``d == 1``.
    """
    scales = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=d))
    x = rng.standard_normal((n, d)) * scales + rng.normal(0, 3, size=d)
    return x.astype(dtype)


def off_boundary(x):
    """The ``(ntok, d)`` torch tokens ``x`` as rows of a buffer that starts one element past
    a 16-byte boundary (a view with strides ``(d, 1)``): no row can be read 16 bytes at a
    time, whatever ``d``."""
    import torch

    buf = torch.empty(x.numel() + 2, dtype=x.dtype, device=x.device)
    start = 1 if buf.data_ptr() % 16 == 0 else 0
    out = buf[start:start + x.numel()].view(x.shape)
    out.copy_(x)
    assert out.data_ptr() % 16 != 0
    return out


def as_columns(x):
    """The ``(ntok, d)`` torch tokens ``x`` as columns of a ``(d, ntok + 3)`` array whose
    padding is NaN (the matrix-free engine's layout past 16 dimensions): a view with
    strides ``(1, ntok + 3)``; a kernel that read the padding would return NaN."""
    import torch

    buf = torch.full((x.shape[1], x.shape[0] + 3), float("nan"), dtype=x.dtype,
                     device=x.device)
    buf[:, : x.shape[0]] = x.T
    return buf[:, : x.shape[0]].T


def near_duplicate_float64_rows(seed: int, n: int = 300) -> tuple[np.ndarray, int]:
    """``n`` rows within a few float64 roundings (relative 1e-16 to 1e-14) of ``k``
    distinct tie-free rows, 2 <= k <= 5, d in {2, 3, 8, 16, 20}; returns ``(x, k)``. Their
    distances are as small as the rounding of centroids and moments."""
    rng = np.random.default_rng(seed)
    d = int(rng.choice([2, 3, 8, 16, 20]))
    k = int(rng.integers(2, 6))
    x = tie_free(rng, k, d)[rng.integers(0, k, size=n)]
    return x * (1 + float(rng.choice([1e-16, 1e-15, 1e-14])) * rng.standard_normal(x.shape)), k


def integer_grid(rng: np.random.Generator, n: int, d: int, side: int = 3) -> np.ndarray:
    """Points on a small integer grid: many exactly tied distances and duplicate rows."""
    return rng.integers(0, side, size=(n, d)).astype(np.float64)


# --------------------------------------------------------------------------- partitions


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 in order of first occurrence (int64)."""
    labels = np.asarray(labels).ravel()
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label vectors describe the same partition (label names ignored)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return a.shape == b.shape and bool(np.array_equal(canonical(a), canonical(b)))


def to_numpy(labels: object) -> np.ndarray:
    """Labels as a NumPy array, whatever container they came in."""
    if hasattr(labels, "detach"):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def apply_merges(z: np.ndarray, n: int, n_merges: int) -> np.ndarray:
    """Canonical labels after the first ``n_merges`` rows of a linkage matrix.

    Independent of ``fcluster``: valid for non-monotone heights and for cuts among tied
    heights, where it returns exactly ``n - n_merges`` clusters.
    """
    parent = np.arange(2 * n)
    for i, row in enumerate(np.asarray(z)[:n_merges]):
        parent[int(row[0])] = n + i
        parent[int(row[1])] = n + i

    def root(t: int) -> int:
        while parent[t] != t:
            t = parent[t]
        return t

    return canonical(np.array([root(t) for t in range(n)]))


def cut_z(z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Canonical labels of ``k`` clusters: the first ``n - k`` merges of ``z``."""
    return apply_merges(z, n, n - k)


def hierarchy_sets(z: np.ndarray, n: int) -> set[frozenset[int]]:
    """The clusters created by ``z`` as sets of leaves (independent of merge order)."""
    members: list[frozenset[int]] = [frozenset([t]) for t in range(n)]
    for row in np.asarray(z):
        members.append(members[int(row[0])] | members[int(row[1])])
    return set(members[n:])


# --------------------------------------------------------------------------- oracles


def scipy_linkage(x: np.ndarray, method: str = "average", metric: str = "euclidean"
                  ) -> np.ndarray:
    """SciPy's linkage matrix, in float64."""
    from scipy.cluster.hierarchy import linkage

    return linkage(np.asarray(x, dtype=np.float64), method=method, metric=metric)


def sklearn_labels(x: np.ndarray, k: int, linkage: str = "average",
                   metric: str = "euclidean") -> np.ndarray:
    """Labels of scikit-learn's ``AgglomerativeClustering``."""
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=k, linkage=linkage, metric=metric)
    return model.fit_predict(np.asarray(x, dtype=np.float64))


def token_distances(x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Float64 token distance matrix by SciPy's ``cdist``."""
    from scipy.spatial.distance import cdist

    x = np.asarray(x, dtype=np.float64)
    return cdist(x, x, metric=metric)


def replay_gaps(z: np.ndarray, x: np.ndarray, metric: str = "euclidean",
                max_cluster_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replay ``z`` in float64; per merge, its Eq. 2 distance and the smallest available.

    Average-linkage (Eq. 2) distances between all current clusters are kept in float64
    (size-weighted row merges of SciPy's token distance matrix, with cached row minima).
    Returns ``(merged, best)``: ``merged[s]`` is the distance of the pair that ``z``
    merges at step ``s``, ``best[s]`` the smallest distance over all mergeable pairs at
    that step (a cluster whose size exceeds ``max_cluster_size`` is not mergeable).
    A greedy ``z`` has ``merged == best`` up to rounding.
    """
    dist = token_distances(x, metric)
    n = dist.shape[0]
    np.fill_diagonal(dist, np.inf)
    sizes = np.ones(n)
    rowmin = dist.min(axis=1) if n > 1 else np.full(n, np.inf)
    slot = {t: t for t in range(n)}  # SciPy id -> row of `dist`
    cap = np.inf if max_cluster_size is None else max_cluster_size
    merged, best = [], []
    for i, row in enumerate(np.asarray(z)):
        a, b = slot.pop(int(row[0])), slot.pop(int(row[1]))
        merged.append(dist[a, b])
        best.append(rowmin.min())
        old_a, old_b = dist[a].copy(), dist[b].copy()  # = columns (symmetric)
        size = sizes[a] + sizes[b]
        new = (sizes[a] * dist[a] + sizes[b] * dist[b]) / size
        if size > cap:
            new[:] = np.inf
        new[a] = new[b] = np.inf
        dist[a], dist[:, a] = new, new
        dist[b], dist[:, b] = np.inf, np.inf
        sizes[a] = size
        stale = ((old_a == rowmin) | (old_b == rowmin)) & np.isfinite(rowmin)
        stale[a] = True
        rowmin[b] = np.inf
        rowmin = np.minimum(rowmin, new)
        for r in np.flatnonzero(stale):
            rowmin[r] = dist[r].min()
        slot[n + i] = a
    return np.array(merged), np.array(best)


# --------------------------------------------------------------------------- GPU rounds


def cpu_order_distances(x: np.ndarray, metric: int) -> np.ndarray:
    """Token distances in the cpu engine's order of operations: squares of coordinate
    differences added one dimension after the other, each step rounded (NumPy: no fma);
    metric 0 euclidean, 1 squared euclidean; +inf diagonal."""
    acc = (x[:, None, 0] - x[None, :, 0]) ** 2
    for k in range(1, x.shape[1]):
        acc = acc + (x[:, None, k] - x[None, :, k]) ** 2
    if metric == 0:
        acc = np.sqrt(acc)
    np.fill_diagonal(acc, np.inf)
    return acc


def check_pairwise_kernel(pairwise_nn, x, ld: int, metric: int) -> None:
    """Run a ``pairwise_nn`` kernel on the rows of ``x`` (a tensor) into rows of length
    ``ld`` and compare with the PyTorch reference: the matrix, nothing written past column
    ``n``, the row argmin exactly, the row minima."""
    import torch

    from dcpe_kernels.pairwise import _reference_pairwise_nn

    n = x.shape[0]
    out = torch.full((n * ld,), -7.0, dtype=x.dtype, device=x.device)
    nn = torch.empty(n, dtype=torch.int64, device=x.device)
    nnd = torch.empty(n, dtype=x.dtype, device=x.device)
    pairwise_nn(x, out, ld, metric, nn, nnd)
    ref, ref_nn, ref_nnd = _reference_pairwise_nn(x, metric)
    mat = out.view(n, ld)
    torch.testing.assert_close(mat[:, :n], ref, rtol=1e-6, atol=0)
    assert bool((mat[:, n:] == -7.0).all()), "wrote outside the matrix"
    assert torch.equal(nn, ref_nn)
    torch.testing.assert_close(nnd, ref_nnd, rtol=1e-6, atol=0)


def random_merge_round(rng: np.random.Generator, n_old: int, n_pairs: int, n_dropped: int,
                       max_size: int, dtype, device: str):
    """A symmetric dissimilarity matrix (+inf diagonal) of ``n_old`` clusters and a round of
    it: ``n_pairs`` disjoint pairs merged, ``n_dropped`` slots dropped (e.g. over the size
    cap), average-linkage weights from random sizes 1..``max_size``.  Returns
    ``(old, p, q, wp, wq)`` as the merge kernels take them."""
    import torch

    a = tie_free(rng, n_old, 3)
    old = torch.tensor(np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1)), dtype=dtype,
                       device=device)
    old.fill_diagonal_(float("inf"))
    perm = rng.permutation(n_old)
    partner = np.full(n_old, -1)
    for k in range(0, 2 * n_pairs, 2):
        i, j = sorted(perm[k:k + 2])
        partner[i], partner[j] = j, i
    dropped = set(perm[2 * n_pairs:2 * n_pairs + n_dropped].tolist())
    p = [s for s in range(n_old) if not (0 <= partner[s] < s) and s not in dropped]
    q = [partner[s] if partner[s] > s else -1 for s in p]
    sizes = rng.integers(1, max_size + 1, size=n_old).astype(np.float64)
    wp = [sizes[s] / (sizes[s] + (sizes[t] if t >= 0 else 0)) for s, t in zip(p, q, strict=True)]
    wq = [sizes[t] / (sizes[s] + sizes[t]) if t >= 0 else 0.0 for s, t in zip(p, q, strict=True)]

    def t(v, dt):
        return torch.tensor(v, dtype=dt, device=device)

    return old, t(p, torch.int32), t(q, torch.int32), t(wp, dtype), t(wq, dtype)


def check_merge_kernel(merge_compact_nn, old, p, q, wp, wq, mode: int, chunks) -> None:
    """Run a ``merge_compact_nn`` kernel on ``old`` (stored with a padded row stride) for
    each ``(row0, nrows)`` of ``chunks`` and compare with the PyTorch reference: the new
    rows, nothing written past column ``n_new``, row argmin exactly, row minima, and the
    argmin of rows outside the chunk left alone."""
    import torch

    from dcpe_kernels.merge import _reference_merge_compact_nn

    n_old, dev, dt = old.shape[0], old.device, old.dtype
    ld_src = n_old + 3
    src = torch.zeros(n_old * ld_src, dtype=dt, device=dev)
    src.view(n_old, ld_src)[:, :n_old] = old
    n_new = p.shape[0]
    ref, ref_nn, ref_nnd = _reference_merge_compact_nn(old, p, q, wp, wq, mode)
    for row0, nrows in chunks:
        ld_dst = n_new + 2
        dst = torch.full((nrows * ld_dst,), -7.0, dtype=dt, device=dev)
        nn = torch.full((n_new,), -1, dtype=torch.int64, device=dev)
        nnd = torch.zeros(n_new, dtype=dt, device=dev)
        merge_compact_nn(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode,
                         nn, nnd)
        rows = slice(row0, row0 + nrows)
        got = dst.view(nrows, ld_dst)
        torch.testing.assert_close(got[:, :n_new], ref[rows], rtol=1e-6, atol=0)
        assert bool((got[:, n_new:] == -7.0).all()), "wrote outside the matrix"
        assert torch.equal(nn[rows], ref_nn[rows])
        torch.testing.assert_close(nnd[rows], ref_nnd[rows], rtol=1e-6, atol=0)
        untouched = torch.ones(n_new, dtype=torch.bool, device=dev)
        untouched[rows] = False
        assert bool((nn[untouched] == -1).all())


def check_merge_kernel_counted(merge_compact_nn, old, p, q, wp, wq, mode: int) -> None:
    """Run a ``merge_compact_nn`` kernel with the count of new slots on the device (``count``,
    as ``round_scan`` leaves it) and an upper bound of it as the grid, on slot arrays longer
    than the count, and compare with the PyTorch reference: all rows at row stride
    ``n_new``, nothing written past the ``n_new x n_new`` matrix, and no row argmin past
    ``n_new``."""
    import torch

    from dcpe_kernels.merge import _reference_merge_compact_nn

    n_old, dev, dt = old.shape[0], old.device, old.dtype
    ld_src = n_old + 3
    src = torch.zeros(n_old * ld_src, dtype=dt, device=dev)
    src.view(n_old, ld_src)[:, :n_old] = old
    n_new = p.shape[0]
    bound = n_old + 5  # the slot arrays hold stale entries past the count, as in the rounds
    pad = bound - n_new
    p_all = torch.cat([p, torch.full((pad,), n_old - 1, dtype=p.dtype, device=dev)])
    q_all = torch.cat([q, torch.zeros(pad, dtype=q.dtype, device=dev)])
    wp_all = torch.cat([wp, torch.full((pad,), 9.0, dtype=wp.dtype, device=dev)])
    wq_all = torch.cat([wq, torch.full((pad,), 9.0, dtype=wq.dtype, device=dev)])
    # a round's record: the new order, and the old matrix's row stride (the strides given
    # are wrong on purpose: the kernel takes both from the record)
    record = [3, n_new, 0, 5, 0, ld_src]
    counts = torch.tensor(record, dtype=torch.int64, device=dev)
    ref, ref_nn, ref_nnd = _reference_merge_compact_nn(old, p, q, wp, wq, mode)
    dst = torch.full((n_new * n_new + 2 * bound,), -7.0, dtype=dt, device=dev)
    nn = torch.full((bound,), -1, dtype=torch.int64, device=dev)
    nnd = torch.zeros(bound, dtype=dt, device=dev)
    merge_compact_nn(src, n_old, dst, bound + 1, p_all, q_all, wp_all, wq_all, bound, 0,
                     bound, mode, nn, nnd, count=counts)
    got = dst[: n_new * n_new].view(n_new, n_new)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    assert bool((dst[n_new * n_new:] == -7.0).all()), "wrote outside the matrix"
    assert torch.equal(nn[:n_new], ref_nn)
    torch.testing.assert_close(nnd[:n_new], ref_nnd, rtol=1e-6, atol=0)
    assert bool((nn[n_new:] == -1).all()), "a row past the count"
    assert counts.tolist() == record


MERGE_FIELDS = ("rep_a", "rep_b", "height", "hmono", "size")


def chained_and_not(x, ops: type, **kw: object) -> tuple:
    """``rnn_merges(x, ops=ops, **kw)`` with the dense rounds chained on the device (the
    default ``_ROUNDS_AHEAD``), read one by one with the merge launched ahead, and with the
    counts read first; returns the three :class:`Merges` and the calls of each run (round
    scans, those chained, merges)."""
    import pytest

    from dcpe_kernels import rnn

    def spy(seen: dict) -> type:
        class Spy(ops):
            @staticmethod
            def round_scan(*args, prev=None, need=-1):  # noqa: ANN002, ANN205
                seen["scans"] += 1
                seen["chained"] += prev is not None
                ops.round_scan(*args, prev=prev, need=need)

            @staticmethod
            def merge_compact_nn(*args, count=None):  # noqa: ANN002, ANN205
                seen["merges"] += 1
                ops.merge_compact_nn(*args, count=count)
        return Spy

    runs, calls = [], []
    for ahead, merge_ahead in ((rnn._ROUNDS_AHEAD, True), (1, True), (1, False)):
        calls.append({"chained": 0, "scans": 0, "merges": 0})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rnn, "_ROUNDS_AHEAD", ahead)
            mp.setattr(rnn, "_MERGE_AHEAD", merge_ahead)
            runs.append(rnn.rnn_merges(x, ops=spy(calls[-1]), **kw))
    return runs, calls


def assert_same_merges(runs: list) -> None:
    """The runs recorded the same merges, bit for bit, in the same rounds."""
    import torch

    for mg in runs[1:]:
        for name in MERGE_FIELDS:
            assert torch.equal(getattr(mg, name), getattr(runs[0], name)), name
        assert (mg.rounds, mg.known, mg.complete) == (runs[0].rounds, runs[0].known,
                                                       runs[0].complete)


def round_scan_outputs(round_scan, n: int, state: dict, m: int, check: bool, cap: int,
                       average: bool, prev: list | None = None, need: int = -1) -> dict:
    """Run a ``round_scan`` (kernel or reference) for ``n`` clusters on a copy of ``state``.

    Every output starts filled with a sentinel, so that entries a scan must leave alone
    are compared too.  ``prev``: the record of the round before (a chained round), on the
    device; ``n``, ``m`` and ``check`` are then given as nonsense.  Returns the outputs
    (and the record arrays) by name.
    """
    import torch

    s = {k: v.clone() for k, v in state.items()}
    nmax, dev, dt = s["nn"].shape[0], s["nn"].device, s["nnd"].dtype
    i64, i32 = torch.int64, torch.int32
    out = {"p": torch.full((nmax,), -7, dtype=i32, device=dev),
           "q": torch.full((nmax,), -7, dtype=i32, device=dev),
           "wp": torch.full((nmax,), -7.0, dtype=dt, device=dev),
           "wq": torch.full((nmax,), -7.0, dtype=dt, device=dev),
           "size_out": torch.full((nmax,), -7, dtype=i64, device=dev),
           "rep_out": torch.full((nmax,), -7, dtype=i64, device=dev),
           "hfix_out": torch.full((nmax,), -7.0, dtype=dt, device=dev),
           "counts": torch.full((6,), -7, dtype=i64, device=dev)}
    kw = {"need": need}
    if prev is not None:
        kw["prev"] = torch.tensor(prev, dtype=i64, device=dev)
        n, m, check = 2 * nmax + 9, 123456, not check  # an upper bound; ignored
    round_scan(n, s["nn"], s["nnd"], s["size"], s["rep"], s["hfix"], s["m_a"],
               s["m_b"], s["m_h"], s["m_hf"], s["m_s"], m, check, cap, average, out["p"],
               out["q"], out["wp"], out["wq"], out["size_out"], out["rep_out"],
               out["hfix_out"], out["counts"], **kw)
    out.update({k: s[k] for k in ("m_a", "m_b", "m_h", "m_hf", "m_s")})
    return out


def random_round_state(rng: np.random.Generator, n: int, n_max: int, m: int, dtype,
                       device: str) -> dict:
    """A plausible engine state of ``n`` clusters (arrays of length ``n_max``) with ``m``
    merges recorded: nearest neighbours with many reciprocal pairs and some one-way
    pointers, distinct heights, sizes 1..6, increasing representatives."""
    import torch

    perm = rng.permutation(n)
    nn = np.empty(n, dtype=np.int64)
    n_pairs = n // 3
    a, b = perm[: n_pairs], perm[n_pairs: 2 * n_pairs]
    nn[a], nn[b] = b, a
    for i in perm[2 * n_pairs:]:  # pointers into the pairs (or anywhere else)
        nn[i] = rng.choice(np.delete(np.arange(n), i))
    nnd = rng.permutation(n).astype(np.float64) * 0.37 + 1.0 + rng.uniform(0, 0.1, n)
    nnd[b] = nnd[a]  # both members of a pair see the same distance
    hfix = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.5, 3.0, n))
    rep = np.sort(rng.choice(4 * n_max, size=n, replace=False))
    size = rng.integers(1, 7, size=n)
    m_hf = rng.uniform(0.0, 3.0, n_max)

    def full(v: np.ndarray, fill: float, dt) -> torch.Tensor:
        t = torch.full((n_max,), fill, dtype=dt)
        t[: len(v)] = torch.as_tensor(v).to(dt)
        return t.to(device)

    i64 = torch.int64
    return {"nn": full(nn, 0, i64), "nnd": full(nnd, 9.0, dtype),
            "size": full(size, 1, i64), "rep": full(rep, 0, i64), "hfix": full(hfix, 0.0, dtype),
            "m_a": full(np.arange(m), -5, i64), "m_b": full(np.arange(m), -5, i64),
            "m_h": full(m_hf[:m], -5.0, dtype), "m_hf": full(m_hf[:m], -5.0, dtype),
            "m_s": full(np.full(m, 2), -5, i64)}


def check_round_scan_kernel(round_scan, n: int, dtype, device: str, make_state=None) -> list:
    """Run a ``round_scan`` kernel and its PyTorch reference on states of ``n`` clusters
    and compare every output bit for bit, entries to be left alone included: nothing
    recorded yet; the early-stop count (a flat cut's need met, and not); a size cap with
    halves for weights; one merge recorded and a cap; and chained rounds, which read
    ``n``, ``m`` and the early-stop test from the record of the round before (the test
    on and off, a cap, and after a last round, which writes nothing but its record).
    ``make_state(rng, m)`` makes a state (default: :func:`random_round_state` with
    ``n + 5`` slots).  Returns ``(state, reference outputs, m, check, need, before)``
    for each case (``before``: the status of the round before, None when not chained)."""
    import torch

    from dcpe_kernels.round import EARLY_STOP, FINISHED, GO, _reference_round_scan

    if make_state is None:
        def make_state(rng: np.random.Generator, m: int) -> dict:
            return random_round_state(rng, n, n + 5, m, dtype, device)

    rng = np.random.default_rng(n)
    cases = []
    for m, check, cap, average, need, before in (
            (0, False, 0, True, -1, None), (n // 2, True, 0, True, 1, None),
            (n // 2, True, 7, False, n, None), (1, False, 4, True, -1, None),
            (n // 2, True, 0, True, 1, GO), (n // 2, False, 0, True, n, GO),
            (3, False, 4, False, -1, GO), (n // 2, False, 0, True, 1, EARLY_STOP),
            (n // 2, False, 0, True, -1, FINISHED)):
        state = make_state(rng, m)
        prev = None if before is None else [7, n, 0, m, before, n + 1]
        ref = round_scan_outputs(_reference_round_scan, n, state, m, check, cap, average,
                                 prev, need)
        got = round_scan_outputs(round_scan, n, state, m, check, cap, average, prev, need)
        for name, want in ref.items():
            assert torch.equal(got[name], want), (name, m, check, cap, average, need, before)
        if before == GO:  # the same round as with n, m and the test given by the host
            check = need >= 0 and m >= need
            alone = round_scan_outputs(_reference_round_scan, n, state, m, check, cap,
                                       average, None, need)
            for name, want in alone.items():
                assert torch.equal(ref[name], want), (name, m, need)
        cases.append((state, ref, m, check, need, before))
    return cases


# --------------------------------------------------------------------------- Gram scans


def gram_tiles(mu_t, rows, by_columns: bool, step: int):
    """The tiles of the Gram matrix of the centroids ``mu_t`` (``(d, n)``) that the
    matrix-free engine would form for ``rows`` (int32): every row, ``step`` columns at a
    time, with the squared norms and the error bound (dcpe_kernels.gram):
    ``[(g, c0, c1)], nrm, gerr``."""
    import torch

    from dcpe_kernels.gram import gram_error

    mu = mu_t.T.to(torch.float64)
    mu_c = mu - mu.mean(0)
    nrm = mu_c.square().sum(1)
    sub = mu_c[rows.long()]
    n = mu.shape[0]
    tiles = []
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        cols = mu_c[c0:c1]
        g = torch.mm(cols, sub.T).T if by_columns else torch.mm(sub, cols.T)
        tiles.append((g, c0, c1))
    return tiles, nrm, gram_error(mu_t.shape[0])


def check_gram_scans(ops, mu_t, s2, rad, rows, rel: float, absm: float, by_columns: bool,
                     step: int, fast_bounds: bool = False) -> int:
    """``ops.centroid_nn_gram`` and ``ops.candidate_pairs_gram`` over the tiles of columns
    of ``rows`` against their references (dcpe_kernels.gram): the same minima and argmins
    bit for bit, the same pairs (``fast_bounds``: a GPU's fast float32 root and quotient,
    equal but for pairs within a few ulp of the threshold), each unordered pair once, every
    row's bound argmin among them, and every pair of the exact scan (a little inside its
    margin).  Returns the number of pairs."""
    import torch

    from dcpe_kernels.centroid import _reference_candidate_pairs
    from dcpe_kernels.gram import (
        _reference_candidate_pairs_gram,
        _reference_centroid_nn_gram,
    )

    dt, dev = mu_t.dtype, mu_t.device
    n = mu_t.shape[1]
    rows = rows.to(torch.int32)
    nrows = len(rows)
    tiles, nrm, gerr = gram_tiles(mu_t.cpu(), rows.cpu(), by_columns, step)
    host = (s2.cpu(), rad.cpu())
    raw = torch.full((n,), -1.0, dtype=dt)  # (the rows not scanned stay as they are)
    nn = torch.full((n,), -5, dtype=torch.int64)
    out = torch.full((n,), -1.0, dtype=dt, device=dev)
    got_nn = torch.full((n,), -5, dtype=torch.int64, device=dev)
    for g, c0, c1 in tiles:
        _reference_centroid_nn_gram(g, nrm, gerr, host[0], n, c0, c1, raw, nn, rows.cpu(),
                                    nrows)
        ops.centroid_nn_gram(g.to(dev), nrm.to(dev), gerr, s2, n, c0, c1, out, got_nn,
                             rows.to(dev), nrows)
    assert torch.equal(out.cpu(), raw) and torch.equal(got_nn.cpu(), nn)
    members = rows.long()
    assert bool((raw[members] > 0).all())  # (tie-free inputs)
    # more than one candidate per cluster
    thr = torch.where(raw > 0, raw.clamp_min(0).sqrt() * 1.3, 0.0)
    needy = torch.zeros(n, dtype=torch.int8)
    needy[members] = 1

    def run(fn, rel_, to_dev, cap=8192):
        d_ = dev if to_dev else "cpu"
        pa = torch.full((cap,), -1, dtype=torch.int32, device=d_)
        pb = pa.clone()
        count = torch.zeros(1, dtype=torch.int64, device=d_)
        for g, c0, c1 in tiles:
            fn(g.to(d_), nrm.to(d_), gerr, s2.to(d_), rad.to(d_), thr.to(d_), n, c0, c1, rel_,
               absm, pa, pb, count, cap, rows.to(d_), nrows, needy.to(d_))
        c = int(count[0])
        return c, sorted(zip(pa[:min(c, cap)].tolist(), pb[:min(c, cap)].tolist()))

    c, got = run(ops.candidate_pairs_gram, rel, True)
    c_ref, ref = run(_reference_candidate_pairs_gram, rel, False)
    assert c == len(got)
    unordered = {frozenset(p) for p in got}
    if fast_bounds:
        inner = run(_reference_candidate_pairs_gram, rel * 0.8, False)[1]
        outer = run(_reference_candidate_pairs_gram, rel * 1.2, False)[1]
        assert {frozenset(p) for p in inner} <= unordered <= {frozenset(p) for p in outer}
    else:
        assert c == c_ref and got == ref
    assert len(unordered) == len(got)  # each unordered pair once
    member_set = set(rows.tolist())
    assert all(a in member_set for a, _ in got)
    assert all(frozenset((a, int(nn[a]))) in unordered for a in member_set)
    # the exact scan's pairs (a little inside its margin) are all there
    exact_pa = torch.zeros(8192, dtype=torch.int32)
    exact_pb = torch.zeros(8192, dtype=torch.int32)
    exact_count = torch.zeros(1, dtype=torch.int64)
    _reference_candidate_pairs(mu_t.cpu(), host[0], host[1], thr, n, rel * 0.8, absm,
                               exact_pa, exact_pb, exact_count, 8192, rows.cpu(), nrows,
                               needy)
    e = int(exact_count[0])
    exact = {frozenset(p) for p in zip(exact_pa[:e].tolist(), exact_pb[:e].tolist())}
    assert exact <= unordered
    # past the capacity: the count goes on, nothing is written out of bounds
    c_small, part = run(ops.candidate_pairs_gram, rel, True, cap=5)
    assert c_small == c and len(part) == min(5, c) and set(part) <= set(got)
    return c


GRAM_ENGINE_CASES = ((None, None, 0, False), (7, 3, 0, False), (None, None, 2 * 30 * 30 * 8, False),
                     (None, 2, 0, True))


def check_gram_engine(ops, xt, monkeypatch, backend: str = "triton",
                      cases: tuple = GRAM_ENGINE_CASES) -> None:
    """The matrix-free engine with its centroid scans from the Gram matrix (forced at any
    dimension) merges as with the scans from coordinate differences: bit
    for bit without the pair store (a flat cut, the size cap, a hand-over), the same merges
    with it (heights up to the order of its float64 sums).  Its first round sums its
    candidates (the bounds are not exact distances).  Tiles of 16 columns or more."""
    import torch

    import dcpe_kernels.linear as linear

    n = xt.shape[0]
    eps = torch.finfo(xt.dtype).eps
    monkeypatch.setattr(linear, "_GRAM_MIN_COLS", 16)
    monkeypatch.setattr(linear, "_GRAM_TILE_BYTES", 16 * 8 * n)
    for cap, k_div, handover, store in cases:  # (size cap, n // k, hand-over, pair store)
        k = None if k_div is None else n // k_div
        got, first = [], []
        for gram_from in (1 << 30, 1):
            monkeypatch.setattr(linear, "GRAM_MIN_DIM", gram_from)
            records: list[dict] = []
            with linear.trace_rounds(records.append):
                got.append(linear.linear_merges(xt, metric="euclidean", max_cluster_size=cap,
                                                ops=ops, backend=backend, n_clusters=k,
                                                handover_bytes=handover, pair_store=store))
            first.append(next(r for r in records if "rows" in r)["pairs"])
        assert first[0] == 0 and first[1] > 0
        for name in ("rep_a", "rep_b", "size", "height", "hmono"):
            a, b = getattr(got[0], name), getattr(got[1], name)
            if store and name in ("height", "hmono"):
                torch.testing.assert_close(a, b, rtol=2 * eps, atol=0)
            else:
                assert torch.equal(a, b), (name, cap, k, handover, store)


#: (size cap, n // k (None: the whole tree), pair store, scans from the Gram matrix)
BATCHED_CASES = ((None, 4, False, False), (9, 4, True, False), (None, None, False, True),
                 (None, 2, True, True))


def check_batched_lists(ops, xt, monkeypatch, backend: str = "triton",
                        cases: tuple = BATCHED_CASES) -> tuple[int, int]:
    """Lists of candidate pairs longer than the largest room the budget allows go through
    the room a batch of searching clusters at a time (``dcpe_kernels.linear.
    _batched_pairs``): under a budget of just what the preflight counts, with a room of
    one pair per cluster, the merges are bit for bit those of a budget that holds every
    list (heights up to the order of float64 sums where the pair store, which the tight
    budget gives up, is on), and so are the token pairs summed without the store.  Returns
    the rounds listed in batches and the rows listed again (a batch past the room,
    halved)."""
    import torch

    import dcpe_kernels.linear as linear

    n, d = xt.shape
    eps = torch.finfo(xt.dtype).eps
    monkeypatch.setattr(linear, "_MIN_PAIRS", 4)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER", 1)
    monkeypatch.setattr(linear, "_PAIRS_PER_CLUSTER_HIGH_D", 1)
    monkeypatch.setattr(linear, "_GRAM_MIN_COLS", 16)
    monkeypatch.setattr(linear, "_GRAM_TILE_BYTES", 16 * 8 * n)
    batched = halved = 0
    for cap, k_div, store, gram in cases:
        monkeypatch.setattr(linear, "GRAM_MIN_DIM", 1 if gram else 1 << 30)
        needed = linear.linear_required_bytes(n, d, xt.element_size(), xt.device)
        k = None if k_div is None else n // k_div
        runs = []
        for extra in (1 << 30, 0):
            records: list[dict] = []
            with linear.trace_rounds(records.append):
                mg = linear.linear_merges(xt, metric="euclidean", max_cluster_size=cap,
                                          ops=ops, backend=backend, n_clusters=k,
                                          memory_budget=needed + extra, handover_bytes=0,
                                          pair_store=store)
            runs.append((mg, [r for r in records if not r.get("done")]))
        (roomy, roomy_rounds), (tight, rounds) = runs
        assert not any(r.get("batches") for r in roomy_rounds)
        batched += sum(bool(r.get("batches")) for r in rounds)
        halved += sum(r.get("rescanned", 0) for r in rounds)
        if not store:  # (the store's averages tighten the thresholds)
            for key in ("pairs", "token_pairs"):
                assert [r[key] for r in rounds] == [r[key] for r in roomy_rounds], key
        for name in ("rep_a", "rep_b", "size", "height", "hmono"):
            a, b = getattr(tight, name), getattr(roomy, name)
            if store and name in ("height", "hmono"):
                torch.testing.assert_close(a, b, rtol=2 * eps, atol=0)
            else:
                assert torch.equal(a, b), (name, cap, k, store, gram)
    return batched, halved


# --------------------------------------------------------------------------- CLI


def one_error_line(err: str, ignore: tuple[str, ...] = ()) -> str:
    """The one ``dcpe: error: ...`` line of a command's standard error (asserted: no other
    line, apart from lines that start with one of ``ignore``, and no traceback)."""
    lines = [line for line in err.strip().splitlines()
             if line.strip() and not (ignore and line.startswith(ignore))]
    assert len(lines) == 1, err
    assert lines[0].startswith("dcpe: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- Ctrl-C


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``benchmarks/<script>`` run with these arguments in a child Python, its output
    captured (``timeout`` only guards against a hang)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(root, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def interrupted_in_child(code: str, delay: float, what: str) -> None:
    """Run ``code`` in a child Python that prints ``start`` before its long call and
    ``interrupted`` when KeyboardInterrupt reaches it; send SIGINT ``delay`` seconds after
    ``start`` and assert that the child says ``interrupted`` and exits 0 within 60 s (else
    the test fails, naming ``what``)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not stop within 60 s of SIGINT")
    assert proc.returncode == 0, out
    assert out.strip() == "interrupted"


# --------------------------------------------------------------------------- Triton interpreter

#: a kernel with a loop over an integer argument, the pattern of every dcpe kernel, run on a
#: CPU tensor under the interpreter
_INTERPRETER_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def _probe_kernel(out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for s in range(0, n, BLOCK):
        acc += 1
    tl.store(out_ptr + tl.arange(0, BLOCK), acc)

out = torch.zeros(4, dtype=torch.int32)
_probe_kernel[(1,)](out, 10, BLOCK=4)
assert out.tolist() == [3, 3, 3, 3], out.tolist()
"""


@functools.cache
def interpreter_problem() -> str | None:
    """Why the Triton interpreter (``TRITON_INTERPRET=1``) cannot run dcpe's kernels on CPU
    tensors here, or None when it can.

    The interpreters of Triton 3.6 and older turn an integer kernel argument into a NumPy
    array of one element and convert it with ``int()``, which NumPy 2.4 rejects
    ("only 0-dimensional arrays can be converted to Python scalars"); every kernel with a
    loop over its sizes then fails.  Such an environment (e.g. torch 2.11 with its Triton 3.6,
    on a machine without a visible GPU) skips the interpreter's tests with
    this reason instead of failing them.  Probed in a child process, so that this process's
    Triton keeps its own interpreter mode."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "the Triton interpreter did not run a four-lane kernel within 300 s"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    import importlib.metadata as md

    versions = ", ".join(f"{name} {md.version(name)}" for name in ("triton", "numpy"))
    return (f"the Triton interpreter cannot run kernels here ({versions}): "
            f"{lines[-1] if lines else f'exit status {proc.returncode}'}; "
            f"Triton >= 3.7, or NumPy < 2.4, runs them")


@pytest.fixture
def triton_interpreter() -> None:
    """Skip the test when the Triton interpreter cannot run kernels here
    (:func:`interpreter_problem`)."""
    problem = interpreter_problem()
    if problem:
        pytest.skip(problem)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's node id (stable across runs and orderings)."""
    seed = sum(ord(ch) * 31**i for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def dcpe_mod():  # noqa: ANN201
    """The ``dcpe`` package (skips the module's tests when it cannot be imported)."""
    return pytest.importorskip("dcpe")
