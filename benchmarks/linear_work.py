"""Work of the GPU matrix-free engine, counted on the CPU (no GPU needed).

The matrix-free rounds of ``dcpe_kernels.linear`` (average linkage past the dense matrix)
cost three kinds of work, each of which a GPU does at a rate of its own:

* centroid-scan pairs: every cluster that searches in a round, against every cluster
  (``O(n^2 d)`` per round; the Euclidean rounds after the first scan twice, once for the
  bounds and once for the candidate pairs);
* candidate pairs: the cluster pairs whose lower bound is within the upper bound;
* token pairs: the exact averages of the candidate pairs, summed over their token pairs.

This script runs the engine's own driver (``linear_merges``: its rounds, bounds, hand-over
rule, early stop for a flat cut and size cap) at sizes the GPU benchmark runs (prefixes of
``make_sample_codebook(n=--data-n, d)``, k = N/2) with kernels that do the same on the CPU
in far less than ``O(n^2)``: the centroid scans as ball queries of a k-d tree
(``scipy.spatial.cKDTree``, float64 from the same centroids; a cluster's nearest bound lies
within the ball of its best neighbour among its k nearest centroids), the exact averages
as the kernels take them (float32 or float64 distances summed in float64).  Above 16
dimensions a k-d tree prunes nothing, and the three kernels are brute force in float64
(:class:`BruteOps`: blocks of rows, matrix products).  The work is
what ``dcpe_kernels.linear.trace_rounds`` records; it does not depend on the device.
Bounds from float64 centroids can differ from the kernels' in the last bits, so the
candidate counts are those of the GPU up to pairs exactly at the bound.  Labels are
compared with the ``cpu`` backend up to ``--check-max-n``.

Usage::

    python benchmarks/linear_work.py                  # -> results/linear-work.{json,md}
    python benchmarks/linear_work.py --d 256 --sizes 4096 8192 16384 \
        --own-data --no-handover --pair-store both    # -> results/linear-work-d256.*
    python benchmarks/linear_work.py --sizes 4096 --out /tmp/w   # a quick look
    python benchmarks/linear_work.py --memory 0 256MiB   # -> results/linear-work-memory.*

``--memory EXTRA ...`` runs each size under ``memory_budget`` = the preflight's count
(``linear_required_bytes``) plus each EXTRA instead, and counts the tensors the engine
makes (:class:`dcpe_kernels.peak.TensorPeak`): their peak with the input, as asked for
and as PyTorch's CUDA caching allocator may count them at most, against the budget.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fmt_seconds,
    machine_info,
    markdown_table,
    same_partition,
    write_results,
)

DEFAULT_SIZES = [65536, 131072, 262144, 524288, 1048576]
#: k of the first ball query (the best of these bounds the ball of the exact search)
KNN = 4
#: token pairs per vectorised block of the exact averages
BLOCK_ELEMENTS = 4_000_000
#: above this many dimensions the kernels are brute force (:class:`BruteOps`)
KDTREE_MAX_DIM = 16
#: searching rows per block of the brute-force scans
BRUTE_ROWS = 1024
#: --pair-store -> the engine's option per run of a size
STORE_CHOICES: dict[str, tuple[bool | None, ...]] = {
    "auto": (None,), "on": (True,), "off": (False,), "both": (False, True)}


def _torch():
    import torch

    return torch


def _nothing_to_scan(n: int, nrows: int, out: Any, nn: Any) -> bool:
    """``centroid_nn``'s trivial cases: no searching row, or one cluster (no neighbour)."""
    if nrows and n == 1:
        out[0], nn[0] = float("inf"), 0
    return nrows == 0 or n == 1


def _emit(a: Any, b: Any, pa: Any, pb: Any, count: Any, capacity: int) -> None:
    """Append the pairs ``(a, b)`` as ``candidate_pairs`` does (``count`` counts past
    ``capacity``; pairs past it are not written)."""
    start, total = int(count[0]), len(a)
    w = max(0, min(total, capacity - start))
    pa[start:start + w] = a[:w].to(pa.dtype)
    pb[start:start + w] = b[:w].to(pb.dtype)
    count[0] += total


class KDTreeOps:
    """``centroid_nn``, ``candidate_pairs`` and ``pair_average`` on the CPU through a k-d
    tree of the centroids; the rest of the engine's kernels are the PyTorch references
    (``dcpe_kernels.ReferenceOps``)."""

    @staticmethod
    def _tree(mu_t, n: int):
        from scipy.spatial import cKDTree

        mu = mu_t[:, :n].T.double().contiguous().numpy()
        return mu, cKDTree(mu)

    @staticmethod
    def _flat(lists) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        cols = (np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
                if lens.sum() else np.zeros(0, np.int64))
        return lens, cols

    @staticmethod
    def centroid_nn(mu_t, s2, n, mode, scale, out, nn, rows, nrows) -> None:
        torch = _torch()
        if _nothing_to_scan(n, nrows, out, nn):
            return
        mu, tree = KDTreeOps._tree(mu_t, n)
        r = rows[:nrows].long().numpy()
        s2d = s2[:n].double().numpy()
        k = min(n, KNN)
        dist, idx = tree.query(mu[r], k=k, workers=-1)
        ub = np.full(len(r), np.inf)
        for j in range(k):  # any other cluster bounds the minimum
            v = dist[:, j] ** 2 + s2d[r] + s2d[idx[:, j]]
            ub = np.where(idx[:, j] != r, np.minimum(ub, v), ub)
        # v = |mu_a - mu_b|^2 + s2_a + s2_b <= ub needs |mu_a - mu_b|^2 <= ub - s2_a
        radius = np.sqrt(np.maximum(ub - s2d[r], 0.0)) * (1 + 1e-9) + 1e-12
        lens, cols = KDTreeOps._flat(
            tree.query_ball_point(mu[r], radius, workers=-1, return_sorted=False))
        rep = np.repeat(r, lens)
        seg = np.repeat(np.arange(len(r)), lens)
        v = ((mu[rep] - mu[cols]) ** 2).sum(1) + s2d[rep] + s2d[cols]
        if mode == 1:
            v = v * scale
        v[cols == rep] = np.inf
        best = np.full(len(r), np.inf)
        np.minimum.at(best, seg, v)
        arg = np.full(len(r), n, dtype=np.int64)
        hit = v == best[seg]
        np.minimum.at(arg, seg[hit], cols[hit])
        rt = torch.from_numpy(r)
        out[rt] = torch.from_numpy(np.sqrt(best) if mode == 0 else best).to(out.dtype)
        nn[rt] = torch.from_numpy(arg).to(nn.dtype)

    @staticmethod
    def candidate_pairs(mu_t, s2, rad, tau, n, rel, absm, pa, pb, count, capacity, rows,
                        nrows, needy) -> None:
        torch = _torch()
        if nrows == 0:
            return
        mu, tree = KDTreeOps._tree(mu_t, n)
        r = rows[:nrows].long().numpy()
        s2d, radd, taud = (t[:n].double().numpy() for t in (s2, rad, tau))
        other = needy[:n].numpy() != 0
        thr = (taud + absm) * (1 + rel)
        # lb >= |mu_a - mu_b|: the candidates of a lie within thr_a + absm
        lens, b = KDTreeOps._flat(tree.query_ball_point(
            mu[r], (thr[r] + absm) * (1 + 1e-9) + 1e-12, workers=-1, return_sorted=False))
        a = np.repeat(r, lens)
        dd = ((mu[a] - mu[b]) ** 2).sum(1)
        d = np.sqrt(dd)
        den = d + radd[a] + radd[b]
        with np.errstate(invalid="ignore", divide="ignore"):
            lb = np.where(den == 0, d, np.maximum(d, (dd + s2d[a] + s2d[b])
                                                  / np.where(den == 0, 1.0, den)))
        low = lb - absm
        cand_ab = (low <= thr[a]) & (a != b)
        cand_ba = low <= thr[b]
        keep = cand_ab & ((a < b) | ~cand_ba | ~other[b])
        a, b = a[keep], b[keep]
        _emit(torch.from_numpy(a), torch.from_numpy(b), pa, pb, count, capacity)

    @staticmethod
    def pair_average(x, offsets, sizes, pa, pb, count, capacity, val) -> None:
        """Distances in the tokens' dtype (squares summed in dimension order, correctly
        rounded root), summed in float64, by blocks of pairs of similar sizes."""
        torch = _torch()
        cnt = min(int(count[0]), int(capacity))
        if cnt == 0:
            return
        a, b = pa[:cnt].long(), pb[:cnt].long()
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        n_lo, n_hi = sizes[lo], sizes[hi]
        xs = x.numpy()
        off = offsets.numpy()
        lo_n, hi_n, nl, nh = lo.numpy(), hi.numpy(), n_lo.numpy(), n_hi.numpy()
        out = np.empty(cnt, dtype=np.float64)
        bl = 1 << np.ceil(np.log2(np.maximum(nl, 1))).astype(np.int64)
        bh = 1 << np.ceil(np.log2(np.maximum(nh, 1))).astype(np.int64)
        key = bl * (1 << 32) + bh
        for k in np.unique(key):
            sel = np.nonzero(key == k)[0]
            sa, sb = int(k >> 32), int(k & ((1 << 32) - 1))
            step = max(1, BLOCK_ELEMENTS // (sa * sb))
            for j in range(0, len(sel), step):
                s = sel[j:j + step]
                ia = off[lo_n[s]][:, None] + np.arange(sa)[None, :]
                ib = off[hi_n[s]][:, None] + np.arange(sb)[None, :]
                ma = np.arange(sa)[None, :] < nl[s][:, None]
                mb = np.arange(sb)[None, :] < nh[s][:, None]
                xa = xs[np.where(ma, ia, 0)]
                xb = xs[np.where(mb, ib, 0)]
                acc = np.zeros((len(s), sa, sb), dtype=xs.dtype)
                for c in range(xs.shape[1]):
                    diff = xa[:, :, None, c] - xb[:, None, :, c]
                    acc += diff * diff
                dist = np.sqrt(acc).astype(np.float64) * (ma[:, :, None] & mb[:, None, :])
                out[s] = dist.sum((1, 2)) / (nl[s].astype(np.float64) * nh[s])
        val[:cnt] = torch.from_numpy(out).to(val.dtype)


class BruteOps:
    """The same three kernels by brute force, for many dimensions (a k-d tree of 256-dim
    centroids prunes almost nothing and its queries take hours): the scans in blocks of
    :data:`BRUTE_ROWS` searching rows against every cluster, the exact averages of pairs of
    similar sizes as batched matrix products, all in float64 with squared distances taken
    as ``|a|^2 + |b|^2 - 2 a.b``.  The values differ from the kernels' in the last bits (of
    float64 here, of the tokens' dtype there), far inside the engine's margins; so the
    candidate pairs are the GPU's up to pairs at the bound, and the nearest neighbours up
    to pairs whose averages are that close (the labels are compared with the cpu backend's)."""

    @staticmethod
    def _sq(mu: Any, r: Any) -> Any:
        a = mu[r]
        dd = (a * a).sum(1)[:, None] + (mu * mu).sum(1)[None, :] - 2.0 * (a @ mu.T)
        return dd.clamp_min_(0.0)

    @staticmethod
    def centroid_nn(mu_t, s2, n, mode, scale, out, nn, rows, nrows) -> None:
        torch = _torch()
        if _nothing_to_scan(n, nrows, out, nn):
            return
        mu, s = mu_t[:, :n].T.double(), s2[:n].double()
        r = rows[:nrows].long()
        for i in range(0, nrows, BRUTE_ROWS):
            rr = r[i:i + BRUTE_ROWS]
            v = BruteOps._sq(mu, rr).add_(s[rr][:, None]).add_(s[None, :])
            if mode == 1:
                v.mul_(scale)
            v[torch.arange(len(rr)), rr] = float("inf")
            best, arg = v.min(1)  # the first (smallest) index of the minimum
            out[rr] = (best.sqrt() if mode == 0 else best).to(out.dtype)
            nn[rr] = arg.to(nn.dtype)

    @staticmethod
    def candidate_pairs(mu_t, s2, rad, tau, n, rel, absm, pa, pb, count, capacity, rows,
                        nrows, needy) -> None:
        torch = _torch()
        if nrows == 0:
            return
        mu, s, rd = mu_t[:, :n].T.double(), s2[:n].double(), rad[:n].double()
        thr = (tau[:n].double() + absm) * (1 + rel)
        r = rows[:nrows].long()
        other = needy[:n] != 0
        ar = torch.arange(n)
        found_a, found_b = [], []
        for i in range(0, nrows, BRUTE_ROWS):
            rr = r[i:i + BRUTE_ROWS]
            dd = BruteOps._sq(mu, rr)
            dist = dd.sqrt()
            den = dist + rd[rr][:, None] + rd[None, :]
            lb = torch.where(den == 0, dist, torch.maximum(
                dist, (dd + s[rr][:, None] + s[None, :]) / torch.where(den == 0, 1.0, den)))
            low = lb - absm
            cand_ab = low <= thr[rr][:, None]
            cand_ab[torch.arange(len(rr)), rr] = False
            cand_ba = low <= thr[None, :]
            keep = cand_ab & ((rr[:, None] < ar[None, :]) | ~cand_ba | ~other[None, :])
            ia, ib = torch.nonzero(keep, as_tuple=True)
            found_a.append(rr[ia])
            found_b.append(ib)
        _emit(torch.cat(found_a), torch.cat(found_b), pa, pb, count, capacity)

    @staticmethod
    def centroid_nn_gram(g, nrm, gerr, s2, n, c0, c1, out, nn, rows, nrows) -> None:
        """The engine's own rule (dcpe_kernels.gram's reference), :data:`BRUTE_ROWS` rows of
        the tile at a time."""
        from dcpe_kernels.gram import _reference_centroid_nn_gram

        for i in range(0, nrows, BRUTE_ROWS):
            j = min(nrows, i + BRUTE_ROWS)
            _reference_centroid_nn_gram(g[i:j], nrm, gerr, s2, n, c0, c1, out, nn, rows[i:j],
                                        j - i)

    @staticmethod
    def candidate_pairs_gram(g, nrm, gerr, s2, rad, tau, n, c0, c1, rel, absm, pa, pb, count,
                             capacity, rows, nrows, needy) -> None:
        from dcpe_kernels.gram import _reference_candidate_pairs_gram

        for i in range(0, nrows, BRUTE_ROWS):
            j = min(nrows, i + BRUTE_ROWS)
            _reference_candidate_pairs_gram(g[i:j], nrm, gerr, s2, rad, tau, n, c0, c1, rel,
                                            absm, pa, pb, count, capacity, rows[i:j], j - i,
                                            needy)

    @staticmethod
    def pair_average(x, offsets, sizes, pa, pb, count, capacity, val) -> None:
        torch = _torch()
        cnt = min(int(count[0]), int(capacity))
        if cnt == 0:
            return
        a, b = pa[:cnt].long(), pb[:cnt].long()
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        nl, nh = sizes[lo].long(), sizes[hi].long()
        xs = x.double()
        norms = (xs * xs).sum(1)
        out = torch.empty(cnt, dtype=torch.float64)
        bl = 1 << torch.ceil(torch.log2(nl.clamp_min(1).double())).long()
        bh = 1 << torch.ceil(torch.log2(nh.clamp_min(1).double())).long()
        key = bl * (1 << 32) + bh
        for k in torch.unique(key).tolist():
            sel = torch.nonzero(key == k).flatten()
            sa, sb = k >> 32, k & ((1 << 32) - 1)
            step = max(1, BLOCK_ELEMENTS // (sa * sb))
            for j in range(0, len(sel), step):
                s = sel[j:j + step]
                ma = torch.arange(sa)[None, :] < nl[s][:, None]
                mb = torch.arange(sb)[None, :] < nh[s][:, None]
                ia = torch.where(ma, offsets[lo[s]][:, None] + torch.arange(sa)[None, :], 0)
                ib = torch.where(mb, offsets[hi[s]][:, None] + torch.arange(sb)[None, :], 0)
                dd = (norms[ia][:, :, None] + norms[ib][:, None, :]
                      - 2.0 * torch.bmm(xs[ia], xs[ib].transpose(1, 2)))
                dist = dd.clamp_min_(0.0).sqrt_() * (ma[:, :, None] & mb[:, None, :])
                out[s] = dist.sum((1, 2)) / (nl[s] * nh[s]).double()
        val[:cnt] = out.to(val.dtype)

    @staticmethod
    def cluster_matrix(x, offsets, sizes, n, out, ld, nn, nnd) -> None:
        """The hand-over's matrix of all ``n`` clusters, from :meth:`pair_average`."""
        torch = _torch()
        a, b = torch.triu_indices(n, n, 1)
        val = torch.empty(a.numel(), dtype=torch.float64)
        BruteOps.pair_average(x, offsets, sizes, a, b, torch.tensor([a.numel()]),
                              a.numel(), val)
        m = torch.full((n, n), float("inf"), dtype=torch.float64)
        m[a, b] = val
        m[b, a] = val
        m = m.to(out.dtype)
        out[: n * ld].view(n, ld)[:, :n].copy_(m)
        best, idx = m.min(dim=1)  # the first (smallest) index of the minimum
        nn[:n] = torch.where(best < float("inf"), idx, 0).to(nn.dtype)
        nnd[:n] = best.to(nnd.dtype)


def _ops(d: int):
    from dcpe_kernels import ReferenceOps

    if d <= KDTREE_MAX_DIM:
        return type("KDTreeWorkOps", (ReferenceOps,), {
            "centroid_nn": staticmethod(KDTreeOps.centroid_nn),
            "candidate_pairs": staticmethod(KDTreeOps.candidate_pairs),
            "pair_average": staticmethod(KDTreeOps.pair_average)})
    return type("BruteWorkOps", (ReferenceOps,), {
        name: staticmethod(getattr(BruteOps, name)) for name in (
            "centroid_nn", "candidate_pairs", "centroid_nn_gram", "candidate_pairs_gram",
            "pair_average", "cluster_matrix")})


#: upper ends (exclusive) of the classes of pairs by their token pairs: the histogram of the
#: token pairs summed (which kernel path sums a pair depends on its class)
PAIR_CLASSES = (5, 17, 65, 257, 2049)


def _counting(ops: Any, hist: Any) -> Any:
    """``ops`` whose ``pair_average`` also adds each pair's token pairs to ``hist`` (float64,
    ``len(PAIR_CLASSES) + 1``) by class: the pairs the kernel is given, parts of a split
    pair and of the pair store's entries each on its own."""
    torch = _torch()
    base = ops.pair_average
    edges = torch.tensor(PAIR_CLASSES)

    def pair_average(x, offsets, sizes, pa, pb, count, capacity, val) -> None:
        cnt = min(int(count[0]), int(capacity))
        work = sizes[pa[:cnt].long()] * sizes[pb[:cnt].long()]
        cls = torch.bucketize(work, edges, right=True)
        hist.add_(torch.bincount(cls, weights=work.double(), minlength=len(edges) + 1))
        base(x, offsets, sizes, pa, pb, count, capacity, val)

    return type(ops.__name__, (ops,), {"pair_average": staticmethod(pair_average)})


#: operations that only allocate (nothing written)
_ALLOCATIONS = ("aten::empty", "aten::empty_like", "aten::empty_strided",
                "aten::new_empty", "aten::new_empty_strided", "aten::scalar_tensor")


class _Traffic:
    """The engine's own tensor operations outside its kernels (``--traffic``): each
    would be at least one launch on a GPU, and the bytes they write, a lower bound of
    their memory traffic (reads not counted).  A kernel call (a method of the ops) counts
    as none: its work is the scans' and sums' of the other columns.  Views and
    allocations write nothing; an in-place operation writes its output, a scatter as many
    entries as its source; a host read of a scalar (``.item()``, ``.tolist()``) is not an
    operation here."""

    def __init__(self) -> None:
        self.ops = 0
        self.written = 0
        self.inside = 0

    def wrap(self, ops: Any) -> Any:
        """``ops`` with every method marked as a kernel (its operations not counted)."""
        def marked(f):
            def call(*a, **kw):
                self.inside += 1
                try:
                    return f(*a, **kw)
                finally:
                    self.inside -= 1
            return staticmethod(call)

        names = [m for m in dir(ops) if not m.startswith("_") and callable(getattr(ops, m))]
        return type(ops.__name__, (ops,), {m: marked(getattr(ops, m)) for m in names})

    def mode(self) -> Any:
        torch = _torch()
        from torch.utils._python_dispatch import TorchDispatchMode

        traffic = self

        def storage(t: Any) -> int:
            return t.untyped_storage().data_ptr()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.name().split(".")[0]
                if traffic.inside or name in _ALLOCATIONS or name == "aten::_local_scalar_dense":
                    return out
                ins = {storage(a) for a in torch.utils._pytree.tree_leaves((args, kwargs))
                       if isinstance(a, torch.Tensor)}
                outs = [t for t in torch.utils._pytree.tree_leaves(out)
                        if isinstance(t, torch.Tensor)]
                inplace = name.endswith("_") or name == "aten::copy_"
                if outs and not inplace and all(storage(t) in ins for t in outs):
                    return out  # a view
                traffic.ops += 1
                if name.startswith("aten::scatter"):
                    src = args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) \
                        else args[2]
                    traffic.written += src.numel() * outs[0].element_size()
                else:
                    traffic.written += sum(t.numel() * t.element_size() for t in outs)
                return out

        return Mode()


def measure(x: np.ndarray, k: int, check: bool, handover: bool = True,
            pair_store: bool | None = None, traffic: bool = False) -> dict[str, Any]:
    """One run of the engine on ``x`` with a flat cut at ``k``: the work per round
    (``pair_store``: the engine's option; None its default; ``traffic``: also count the
    engine's own operations and the bytes they write, :class:`_Traffic`)."""
    torch = _torch()
    from dcpe_kernels.linear import linear_merges, trace_rounds

    records: list[dict[str, Any]] = []
    hist = torch.zeros(len(PAIR_CLASSES) + 1, dtype=torch.float64)
    ops = _counting(_ops(x.shape[1]), hist)
    counter = _Traffic() if traffic else None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(trace_rounds(records.append))
        if counter is not None:
            ops = counter.wrap(ops)
            stack.enter_context(counter.mode())
        mg = linear_merges(torch.from_numpy(x), metric="euclidean", max_cluster_size=None,
                           ops=ops, backend="work", n_clusters=k,
                           memory_budget=1 << 62, handover_bytes=None if handover else 0,
                           pair_store=pair_store)
    seconds = time.perf_counter() - t0
    rounds = [{key: v for key, v in r.items() if key != "ms"} for r in records
              if not r.get("done")]
    n = x.shape[0]
    row: dict[str, Any] = {
        "n": n, "d": x.shape[1], "k": k, "rounds": records[-1]["rounds"],
        "matrix_free_rounds": len(rounds),
        "scan_pairs": sum(r["scan_rows"] * r["n"] for r in rounds),
        # (a list past its room is scanned again, and a batch past it: _batched_pairs)
        "candidate_scan_pairs": sum((r["cand_rows"] * (1 + r.get("relisted", 0))
                                     + r.get("rescanned", 0)) * r["n"] for r in rounds),
        "gram_scans": any(r.get("gram") for r in rounds),
        "relisted": sum(r.get("relisted", 0) for r in rounds),
        "candidate_pairs": sum(r["pairs"] for r in rounds),
        "token_pairs": sum(r["token_pairs"] for r in rounds),
        "pair_store": any("store" in r for r in rounds),
        "reused_token_pairs": sum(r.get("reused", 0) for r in rounds),
        "largest_store": max(r.get("store", 0) for r in rounds),
        # the store's update passes over its entries and sorts what changes every round
        "store_entries": sum(r.get("store", 0) for r in rounds),
        "store_sorted": sum(r.get("sorted", 0) for r in rounds),
        "largest_cluster": max(r["max_size"] for r in rounds),
        # token pairs summed, by the class of their pair: below 5, 17, ... token pairs
        "token_pairs_by_pair_size": {f"<{e}": float(v) for e, v in zip(
            [*PAIR_CLASSES, "inf"], hist.tolist())},
        "final_clusters": rounds[-1]["n"], "host_seconds": round(seconds, 2),
        "per_round": rounds}
    if counter is not None:
        row["torch_ops"] = counter.ops
        row["torch_bytes_written"] = counter.written
    if check:
        row["labels_equal_cpu"], row["cpu_seconds"] = _labels_equal_cpu(x, k, mg)
    return row


def _labels_equal_cpu(x: np.ndarray, k: int, mg: Any) -> tuple[bool, float]:
    """Whether the engine's merges ``mg`` cut at ``k`` give the cpu backend's partition,
    and the cpu backend's seconds."""
    import dcpe
    from dcpe_kernels.rnn import merges_to_labels

    t1 = time.perf_counter()
    want = np.asarray(dcpe.cluster(x, k, backend="cpu"))
    seconds = round(time.perf_counter() - t1, 2)
    return same_partition(merges_to_labels(mg, k).numpy(), want), seconds


def _labels_cell(r: dict[str, Any]) -> str:
    return {True: "yes", False: "**NO**"}.get(r.get("labels_equal_cpu"), "—")


def measure_memory(x: np.ndarray, k: int, extra: int, check: bool) -> dict[str, Any]:
    """One run on ``x`` with a flat cut at ``k`` under ``memory_budget`` = the preflight's
    count plus ``extra`` bytes (the default hand-over, within what the budget leaves): the
    peak of the tensors the engine makes, with the input (:class:`dcpe_kernels.peak.
    TensorPeak`; the kernels' returns counted, not their temporaries).  As on a CUDA
    device, the preflight and the count hold cuBLAS's workspace from the first Gram product
    on (:func:`dcpe_kernels.rnn.blas_workspace_bytes`)."""
    from unittest import mock

    torch = _torch()
    import dcpe_kernels.linear as linear
    from dcpe_kernels.peak import TensorPeak
    from dcpe_kernels.rnn import blas_workspace_bytes

    xt = torch.from_numpy(x)
    n, d = x.shape
    blas = blas_workspace_bytes("cuda")
    records: list[dict[str, Any]] = []
    tracker = TensorPeak(blas_workspace=blas)
    with mock.patch.object(linear, "blas_workspace_bytes", lambda device: blas):
        needed = linear.linear_required_bytes(n, d, xt.element_size())
        t0 = time.perf_counter()
        with linear.trace_rounds(records.append), tracker:
            mg = linear.linear_merges(xt, metric="euclidean", max_cluster_size=None,
                                      ops=tracker.ops(_ops(d)), backend="work", n_clusters=k,
                                      memory_budget=needed + extra)
    seconds = time.perf_counter() - t0
    rounds = [r for r in records if not r.get("done")]
    row: dict[str, Any] = {
        "n": n, "d": d, "k": k, "extra": extra, "preflight": needed, "budget": needed + extra,
        "blas_workspace": blas if d >= linear.GRAM_MIN_DIM else 0,
        "peak": tracker.peak + xt.nbytes, "device_peak": tracker.device_peak + xt.nbytes,
        "rounds": records[-1]["rounds"], "matrix_free_rounds": len(rounds),
        "batched_rounds": sum(bool(r.get("batches")) for r in rounds),
        "store": any("store" in r for r in rounds),
        "host_seconds": round(seconds, 2)}
    if check:
        row["labels_equal_cpu"] = _labels_equal_cpu(x, k, mg)[0]
    return row


def report_memory(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def mib(b: int) -> str:
        return f"{b / (1 << 20):,.1f} MiB"

    table = [[r["n"], r["d"], _size(r["extra"]), mib(r["preflight"]), mib(r["peak"]),
              f"{r['peak'] / r['budget']:.3f}", mib(r["device_peak"]),
              f"{r['device_peak'] / r['budget']:.3f}", r["rounds"], r["batched_rounds"],
              (f"after {r['matrix_free_rounds']}" if r["matrix_free_rounds"] < r["rounds"]
               else "—"),
              "on" if r["store"] else "off",
              _labels_cell(r),
              fmt_seconds(r["host_seconds"])] for r in rows]
    return "\n".join([
        "# Memory of the matrix-free engine (counted on the CPU)", "",
        f"`dcpe_kernels.linear.linear_merges` on {_data_name(args)}, k = N/2, Euclidean, "
        f"under `memory_budget` = the preflight's count (`linear_required_bytes`) plus the "
        f"bytes in the column past it, with "
        f"{'k-d tree' if args.d <= KDTREE_MAX_DIM else 'brute-force float64'} kernels "
        f"(benchmarks/linear_work.py --memory).  The tensors the engine makes are "
        f"counted (`dcpe_kernels.peak.TensorPeak`: every operation's output and every "
        f"kernel's return, at their most alive at once, with the input); what they hold "
        f"does not depend on the device.  As on a CUDA device, from "
        f"`GRAM_MIN_DIM` dimensions on the preflight and the count hold cuBLAS's workspace "
        f"(`blas_workspace_bytes`) from the first Gram product on.", "",
        markdown_table(["N", "d", "past the preflight", "preflight", "peak", "peak / budget",
                        "as the allocator counts", "/ budget", "rounds",
                        "rounds in batches", "hand-over", "pair store",
                        "labels = cpu", "host time"], table), "",
        "peak: the bytes the tensors ask for; as the allocator counts: each as PyTorch's "
        "CUDA caching allocator may count it at most ("
        + (f"under {settings}" if (settings := _allocator_settings()) else
           "rounded up to 512 bytes, and 1 MiB more past 1 MiB")
        + ": dcpe_kernels.rnn.allocator_bytes), the bound the budget keeps.  "
        "A sort's workspace is counted too (dcpe_kernels.peak.sort_workspace); a GPU adds "
        "the few bytes per block of scans, reductions and selections, which no CPU count "
        "sees.  Rounds in batches: rounds whose list "
        "of candidate pairs went through its room a batch of clusters at a time; hand-over: "
        "the matrix-free rounds before the clusters' matrix took over, within the budget "
        "(its two matrices counted).  Labels = cpu: the same partition as the cpu "
        "backend's (up to --check-max-n).", ""])


def _allocator_settings() -> str:
    """The allocator settings in the environment, which ``allocator_bytes`` follows."""
    return " ".join(f"`{v}={os.environ[v]}`" for v in ("PYTORCH_CUDA_ALLOC_CONF",
                                                       "PYTORCH_ALLOC_CONF")
                    if os.environ.get(v))


def _size(b: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def _extra(text: str) -> int:
    """``--memory``'s sizes: 0, or what ``memory_limit`` takes ("256MiB", bytes)."""
    from dcpe._memory import parse_memory_limit

    try:
        return 0 if text.strip() == "0" else int(parse_memory_limit(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _data_name(args: argparse.Namespace) -> str:
    if args.own_data:
        return f"`make_sample_codebook(n=N, d={args.d})` for each N"
    return f"prefixes of `make_sample_codebook(n={args.data_n}, d={args.d})`"


def _small_share(r: dict[str, Any]) -> str:
    h = r.get("token_pairs_by_pair_size")
    total = sum(h.values()) if h else 0
    if not total:
        return "—"
    return f"{h['<5'] / total:.0%} / {(h['<5'] + h['<17']) / total:.0%}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    table = []
    for r in rows:
        n = r["n"]
        table.append([n, r["d"], "on" if r.get("pair_store") else "off",
                      "gram" if r.get("gram_scans") else "differences", r["rounds"],
                      r["final_clusters"],
                      f"{r['scan_pairs'] / n ** 2:.2f}",
                      f"{r['candidate_scan_pairs'] / n ** 2:.2f}", r.get("relisted", "—"),
                      f"{r['candidate_pairs'] / n:.1f}", f"{r['token_pairs'] / n:,.0f}",
                      f"{r['token_pairs']:.3g}",
                      f"{r.get('reused_token_pairs', 0):.3g}",
                      f"{r.get('largest_store', 0) / n:.0f}",
                      f"{r.get('store_entries', 0):.3g}", f"{r.get('store_sorted', 0):.3g}",
                      r["largest_cluster"], _small_share(r), *_traffic_cells(r),
                      _labels_cell(r),
                      fmt_seconds(r["host_seconds"])])
    return "\n".join([
        "# Work of the matrix-free engine (counted on the CPU)", "",
        f"`dcpe_kernels.linear.linear_merges` on {_data_name(args)}, k = N/2, Euclidean, with "
        f"{'k-d tree' if args.d <= KDTREE_MAX_DIM else 'brute-force float64'} kernels "
        f"(benchmarks/linear_work.py); the work does not depend on the device.  "
        + ("Matrix-free rounds to the end (--no-handover): at k = N/2 the GPU engine "
           "hands over to the dense rounds only below N = 185,364, where the clusters' "
           "matrix fits its 64 GiB default." if args.no_handover else
           "Default hand-over (the dense rounds, not counted here, take over once the "
           "clusters' matrix fits 64 GiB and a round's sums cover 1/64 of all token "
           "pairs)."), "",
        markdown_table(["N", "d", "pair store", "scans", "rounds", "clusters at the stop",
                        "centroid scan / N^2", "candidate scan / N^2", "relisted",
                        "candidate pairs / N",
                        "token pairs / N", "token pairs", "token pairs reused",
                        "largest store / N", "store entries", "entries sorted",
                        "largest cluster", "in pairs < 5 / < 17 token pairs",
                        "torch ops / round", "written / round",
                        "labels = cpu", "host time"], table), "",
        "centroid scan: pairs (searching cluster, cluster) of the bound scan, summed over "
        "the rounds; candidate scan: the same for the candidate scan, which the first "
        "round (every cluster one token) does not need when its scans are exact, again "
        "for a list past its room; scans: the centroid scans' squared distances from "
        "coordinate differences or from tiles of the centroids' Gram matrix (from "
        "dcpe_kernels.linear.GRAM_MIN_DIM dimensions on, --gram; then the first round "
        "lists and sums its candidates, a token pair each); "
        "relisted: lists of candidate pairs past their room, scanned again in a larger "
        "one (none of their pairs summed); candidate pairs and token pairs: "
        "the exact averages computed; token pairs reused: those of the candidate pairs "
        "whose average the pair store held (not summed again); largest store: its most "
        "entries in a round; store entries: its entries summed over the rounds (its update "
        "passes over them every round); entries sorted: those the update sorts, the "
        "entries of merged clusters and the round's new averages, summed over the rounds; "
        "in pairs < 5 / < 17: the shares of the token pairs summed in pairs of fewer than 5 "
        "and 17 token pairs (as the kernel is given them: the parts of a split pair and of "
        "the pair store's entries each on its own). "
        " torch ops and written (--traffic; — without): the engine's own tensor "
        "operations outside its kernels, each at least one launch on a GPU, and the bytes "
        "they write (a lower bound of their memory traffic; views and allocations none), "
        "per round."
        " A GPU's time is about a * (centroid + candidate scan pairs) * d + b * token "
        "pairs * d + c * rounds + e * store entries + f * entries sorted.  Labels = cpu: "
        "the same partition as the cpu backend's (up to --check-max-n).", ""])


def _fmt_mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def _traffic_cells(r: dict[str, Any]) -> list[str]:
    if "torch_ops" not in r:
        return ["—", "—"]
    rounds = max(1, r["matrix_free_rounds"])
    return [f"{r['torch_ops'] / rounds:.0f}", _fmt_mb(r["torch_bytes_written"] / rounds)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--data-n", type=int, default=None,
                    help="N of the generated codebook the sizes are prefixes of "
                         "(default: the largest size)")
    ap.add_argument("--own-data", action="store_true",
                    help="each size its own make_sample_codebook(n=N, d), as bench_gpu.py "
                         "generates a scale row of the largest N at its d (instead of "
                         "prefixes of one codebook, whose clumps are far sparser)")
    ap.add_argument("--check-max-n", type=int, default=131072,
                    help="compare the labels with the cpu backend up to this N")
    ap.add_argument("--out", default=None, help="directory (default: benchmarks/results)")
    ap.add_argument("--no-handover", action="store_true",
                    help="matrix-free rounds to the end, as on the GPU from N = 185,364 at "
                         "k = N/2 (the clusters' matrix never fits its 64 GiB default)")
    ap.add_argument("--pair-store", choices=["auto", "on", "off", "both"], default="auto",
                    help="the engine's pair store (auto: its default, on from "
                         "STORE_MIN_DIM dimensions; both: each size without, then with)")
    ap.add_argument("--gram", choices=["auto", "off"], default="auto",
                    help="the centroid scans from the Gram matrix (auto: the engine's "
                         "default, from GRAM_MIN_DIM dimensions on; off: from coordinate "
                         "differences at any d)")
    ap.add_argument("--traffic", action="store_true",
                    help="also count the engine's own tensor operations outside its kernels "
                         "and the bytes they write (slower)")
    ap.add_argument("--memory", type=_extra, nargs="+", default=None, metavar="EXTRA",
                    help="count the engine's tensors under memory_budget = the preflight's "
                         "count plus each EXTRA (0, '256MiB', bytes) instead of the work "
                         "(-> linear-work-memory[-d<d>])")
    ap.add_argument("--name", default=None,
                    help="file name (default: linear-work, linear-work-d<d> past 8 dims)")
    args = ap.parse_args(argv)
    if min(args.sizes) < 2 or args.d < 1:
        ap.error("sizes must be >= 2 and --d >= 1")
    args.data_n = args.data_n or max(args.sizes)
    base = "linear-work-memory" if args.memory else "linear-work"
    args.name = args.name or (base if args.d <= 8 else f"{base}-d{args.d}")
    if args.data_n < max(args.sizes):
        ap.error(f"--data-n {args.data_n} is smaller than the largest size")
    import dcpe.datasets as ds

    if args.gram == "off":
        import dcpe_kernels.linear as linear

        linear.GRAM_MIN_DIM = 1 << 62
    data = None if args.own_data else ds.make_sample_codebook(n=args.data_n, d=args.d)
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"benchmark": "linear-work", "machine": machine_info(),
                               "handover": not args.no_handover,
                               "data": _data_name(args),
                               "allocator_settings": _allocator_settings(),
                               "rows": rows}
    for n in sorted(args.sizes):
        x = (ds.make_sample_codebook(n=n, d=args.d) if data is None
             else np.ascontiguousarray(data[:n]))
        for extra in args.memory or ():
            row = measure_memory(x, n // 2, extra, n <= args.check_max_n)
            rows.append(row)
            print(f"N={n} d={args.d} past the preflight {_size(extra)}: peak "
                  f"{row['peak'] / row['budget']:.3f}, as the allocator counts "
                  f"{row['device_peak'] / row['budget']:.3f} of the budget, labels = cpu "
                  f"{row.get('labels_equal_cpu', '-')} ({row['host_seconds']} s)", flush=True)
            write_results(args.name, payload, report_memory(rows, args), args.out)
        for store in STORE_CHOICES[args.pair_store] if not args.memory else ():
            row = measure(x, n // 2, n <= args.check_max_n,
                          handover=not args.no_handover, pair_store=store,
                          traffic=args.traffic)
            rows.append(row)
            print(f"N={n}: store {'on' if row['pair_store'] else 'off'} rounds "
                  f"{row['rounds']} scan {row['scan_pairs'] / n ** 2:.2f} N^2 "
                  f"candidate scan {row['candidate_scan_pairs'] / n ** 2:.2f} N^2 "
                  f"token pairs {row['token_pairs']:.3g} (reused "
                  f"{row['reused_token_pairs']:.3g}) labels = cpu "
                  f"{row.get('labels_equal_cpu', '-')} ({row['host_seconds']} s)", flush=True)
            write_results(args.name, payload, report(rows, args), args.out)
    return 0 if all(r.get("labels_equal_cpu", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
