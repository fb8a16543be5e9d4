"""Exact average distances between clusters of sorted tokens (Triton).

The matrix-free rounds of :mod:`dcpe_kernels.linear` keep the tokens sorted so that cluster
``c`` is the rows ``offsets[c] .. offsets[c] + sizes[c] - 1`` of ``x``.  The average
linkage distance (UPGMA, Sokal & Michener 1958) of clusters ``A`` and ``B`` is

    ``avg(A, B) = sum_{i in A, j in B} |x_i - x_j| / (|A| |B|)``

with every token distance ``|x_i - x_j|`` rounded exactly as the dense engines round it
(:mod:`dcpe_kernels.pairwise`: rounded squares summed in dimension order, no fused
multiply-add, an IEEE square root, in the compute dtype), the sum accumulated in float64,
divided in float64 and rounded once to the compute dtype.  A pair is always summed in one
canonical order (the cluster with the smaller slot, ``lo``, outside), so ``avg(A, B)`` and
``avg(B, A)`` are the same bits and the reciprocal-pair test of a round does not depend on
which side computed a distance.

* :func:`pair_average` — ``_pair_average_tiled_kernel``: the averages of a list of pairs
  whose length lives on the device (the candidates of
  :func:`dcpe_kernels.centroid.candidate_pairs`), one pair at a time per program in a
  grid-stride loop, in tiles of ``lo`` x ``hi`` tokens (8 x 8, 16 x 16, 64 x 64 tiles of 8
  warps by the pair's token pairs); the smallest pairs many at a time per program, a lane
  per token pair, in ``_pair_average_packed_kernel`` (:func:`_launch_config`);
* :func:`cluster_matrix` — ``_cluster_matrix_rowlanes_kernel``: the dense matrix of all
  averages with its row minima and argmins (ties to the smallest column), to hand the
  last rounds over to the dense engine of :mod:`dcpe_kernels.rnn`; one program per row,
  one lane per column cluster, each lane summing its pair sequentially.

The references sum each pair's token distances ``lo`` row by row in a fixed order too,
but not in the kernels' order: the float64 sums may differ in their last bits, so kernel
and reference agree to about ``1e-15`` relative before the final rounding.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, tl, triton
from .centroid import _sqrt_rn

#: no upper limit on a pair's token pairs (an int64 the kernel compares with)
_NO_LIMIT = (1 << 62)

__all__ = [
    "_reference_cluster_matrix",
    "_reference_pair_average",
    "cluster_matrix",
    "pair_average",
    "token_strides",
]


def _token_distances(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """``|x_i - x_j|`` for all rows of ``xa`` and ``xb``, in the engines' rounding."""
    acc = torch.zeros((xa.shape[0], xb.shape[0]), dtype=xa.dtype, device=xa.device)
    for k in range(xa.shape[1]):
        diff = xa[:, k][:, None] - xb[:, k][None, :]
        acc = acc + diff * diff
    return _sqrt_rn(acc)


def _reference_average(x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, a: int,
                       b: int) -> float:
    lo, hi = min(a, b), max(a, b)
    ol, nl = int(offsets[lo]), int(sizes[lo])
    oh, nh = int(offsets[hi]), int(sizes[hi])
    if nl * nh == 0:  # an empty cluster: 0 / 0, as the kernels compute it
        return float("nan")
    d = _token_distances(x[ol:ol + nl], x[oh:oh + nh]).to(torch.float64)
    return float(d.sum()) / (float(nl) * float(nh))


def _reference_pair_average(x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor,
                            pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor,
                            capacity: int, val: torch.Tensor) -> None:
    """PyTorch reference of :func:`pair_average` (same arguments)."""
    cnt = min(int(count[0]), int(capacity))
    for k in range(cnt):
        v = _reference_average(x, offsets, sizes, int(pa[k]), int(pb[k]))
        val[k] = torch.tensor(v, dtype=torch.float64).to(val.dtype)


def _reference_cluster_matrix(x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor,
                              n: int, out: torch.Tensor, ld: int, nn: torch.Tensor,
                              nnd: torch.Tensor) -> None:
    """PyTorch reference of :func:`cluster_matrix` (same arguments)."""
    dt = out.dtype
    m = torch.full((n, n), float("inf"), dtype=torch.float64)
    for a in range(n):
        for b in range(a + 1, n):
            m[a, b] = m[b, a] = _reference_average(x, offsets, sizes, a, b)
    m = m.to(dt)
    out[: n * ld].view(n, ld)[:, :n].copy_(m.to(out.device))
    best = m.min(dim=1).values
    cols = torch.arange(n).expand(n, n)
    idx = torch.where(m == best[:, None], cols, n).min(dim=1).values
    idx = torch.where(best < float("inf"), idx, 0)
    nn[:n] = idx.to(nn.device)
    nnd[:n] = best.to(nnd.device)


if HAS_TRITON:

    @triton.jit
    def _token_distance_lanes(x_ptr, ti, tj, mask, dim, ts, cs, IS_F32: tl.constexpr):
        """``|x_ti - x_tj|`` lane by lane (token indices ``ti``, ``tj`` of one shape), in the
        engines' rounding: squares summed in dimension order, an IEEE root.  Lanes outside
        ``mask`` read token 0 (the loads need no predicate) and return a value the callers
        drop."""
        acc = (ti * 0).to(x_ptr.dtype.element_ty)
        ti = tl.where(mask, ti, 0)
        tj = tl.where(mask, tj, 0)
        # the pointers step by cs: no 32-bit product c * cs (past 2**31 at d * N >= 2**31)
        pu = x_ptr + ti * ts
        pv = x_ptr + tj * ts
        for _c in range(0, dim):
            u = tl.load(pu)
            v = tl.load(pv)
            pu += cs
            pv += cs
            diff = u - v
            acc += diff * diff
        if IS_F32:
            return tl.sqrt_rn(acc)
        return tl.sqrt(acc)

    @triton.jit
    def _pair_average_one(x_ptr, dim, ts, cs, val_ptr, k, o_lo, n_lo, o_hi, n_hi,
                          IS_F32: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        """Pair ``k``'s average, in ``BLOCK_I`` x ``BLOCK_J`` tiles of token pairs (token
        ``t``'s coordinate ``c`` at ``x_ptr + t * ts + c * cs``)."""
        dtype = x_ptr.dtype.element_ty
        ii = tl.arange(0, BLOCK_I)
        jj = tl.arange(0, BLOCK_J)
        total = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float64)
        for i0 in range(0, n_lo, BLOCK_I):
            mi = (i0 + ii) < n_lo
            ti = o_lo + tl.where(mi, i0 + ii, 0)  # past the cluster: its first token (dropped)
            for j0 in range(0, n_hi, BLOCK_J):
                mj = (j0 + jj) < n_hi
                tj = o_hi + tl.where(mj, j0 + jj, 0)
                acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=dtype)
                pu = x_ptr + ti * ts  # stepped by cs, as in _token_distance_lanes
                pv = x_ptr + tj * ts
                for _c in range(0, dim):
                    u = tl.load(pu)
                    v = tl.load(pv)
                    pu += cs
                    pv += cs
                    diff = u[:, None] - v[None, :]
                    acc += diff * diff
                if IS_F32:
                    dist = tl.sqrt_rn(acc)
                else:
                    dist = tl.sqrt(acc)
                total += tl.where(mi[:, None] & mj[None, :], dist.to(tl.float64), 0.0)
        s = tl.sum(tl.sum(total, axis=1), axis=0)
        avg = s / (n_lo.to(tl.float64) * n_hi.to(tl.float64))
        tl.store(val_ptr + k, avg.to(val_ptr.dtype.element_ty))

    @triton.jit(do_not_specialize=["dim", "ts", "cs", "capacity", "work_lo", "work_hi"])
    def _pair_average_tiled_kernel(x_ptr, dim, ts, cs, off_ptr, size_ptr, pa_ptr, pb_ptr,
                                   count_ptr,
                                   capacity, val_ptr, work_lo, work_hi, IS_F32: tl.constexpr,
                                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        cnt = tl.minimum(tl.load(count_ptr), capacity)
        for k in range(pid, cnt, nprog):
            a = tl.load(pa_ptr + k).to(tl.int64)
            b = tl.load(pb_ptr + k).to(tl.int64)
            lo = tl.minimum(a, b)
            hi = tl.maximum(a, b)
            n_lo = tl.load(size_ptr + lo)
            n_hi = tl.load(size_ptr + hi)
            work = n_lo * n_hi
            # this launch's class of pairs: [work_lo, work_hi) token pairs
            if (work >= work_lo) & (work < work_hi):
                _pair_average_one(x_ptr, dim, ts, cs, val_ptr, k, tl.load(off_ptr + lo), n_lo,
                                  tl.load(off_ptr + hi), n_hi, IS_F32, BLOCK_I, BLOCK_J)

    @triton.jit(do_not_specialize=["dim", "ts", "cs", "capacity", "work_lo", "work_hi"])
    def _pair_average_packed_kernel(x_ptr, dim, ts, cs, off_ptr, size_ptr, pa_ptr, pb_ptr,
                                    count_ptr, capacity, val_ptr, work_lo, work_hi,
                                    IS_F32: tl.constexpr, BLOCK_P: tl.constexpr,
                                    BLOCK_E: tl.constexpr):
        """``BLOCK_P`` pairs at a time per program (grid-stride), those of the class
        ``[work_lo, work_hi)`` token pairs, at most ``BLOCK_E``: lane ``e`` of a pair
        takes its token pair ``(e // n_hi, e % n_hi)``."""
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        cnt = tl.minimum(tl.load(count_ptr), capacity)
        pp = tl.arange(0, BLOCK_P)
        ee = tl.arange(0, BLOCK_E)
        for base in range(pid * BLOCK_P, cnt, nprog * BLOCK_P):
            k = base + pp
            mk = k < cnt
            a = tl.load(pa_ptr + k, mask=mk, other=0).to(tl.int64)
            b = tl.load(pb_ptr + k, mask=mk, other=0).to(tl.int64)
            lo = tl.minimum(a, b)
            hi = tl.maximum(a, b)
            n_lo = tl.load(size_ptr + lo, mask=mk, other=0)
            n_hi = tl.load(size_ptr + hi, mask=mk, other=0)
            work = n_lo * n_hi
            mine = mk & (work >= work_lo) & (work < work_hi)
            if tl.max(mine.to(tl.int32), axis=0) > 0:
                o_lo = tl.load(off_ptr + lo, mask=mine, other=0)
                o_hi = tl.load(off_ptr + hi, mask=mine, other=0)
                nh = tl.maximum(n_hi, 1)
                me = mine[:, None] & (ee[None, :] < work[:, None])
                ti = o_lo[:, None] + ee[None, :] // nh[:, None]
                tj = o_hi[:, None] + ee[None, :] % nh[:, None]
                dist = _token_distance_lanes(x_ptr, ti, tj, me, dim, ts, cs, IS_F32)
                s = tl.sum(tl.where(me, dist.to(tl.float64), 0.0), axis=1)
                den = tl.where(mine, n_lo.to(tl.float64) * n_hi.to(tl.float64), 1.0)
                tl.store(val_ptr + k, (s / den).to(val_ptr.dtype.element_ty), mask=mine)

    @triton.jit(do_not_specialize=["dim", "ts", "cs", "n", "ld"])
    def _cluster_matrix_rowlanes_kernel(x_ptr, dim, ts, cs, off_ptr, size_ptr, n, out_ptr, ld,
                                        nn_ptr, nnd_ptr, IS_F32: tl.constexpr,
                                        BLOCK_B: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        dtype = x_ptr.dtype.element_ty
        o_row = tl.load(off_ptr + row)
        n_row = tl.load(size_ptr + row)
        best = tl.full([BLOCK_B], float("inf"), dtype)
        besti = tl.full([BLOCK_B], 0, tl.int64)
        for c0 in range(0, n, BLOCK_B):
            cols = c0 + tl.arange(0, BLOCK_B).to(tl.int64)
            cm = (cols < n) & (cols != row)
            o_col = tl.load(off_ptr + cols, mask=cm, other=0)
            n_col = tl.load(size_ptr + cols, mask=cm, other=0)
            before = cols < row  # the column cluster is lo: its tokens go outside
            o_lo = tl.where(before, o_col, o_row)
            n_lo = tl.where(before, n_col, n_row)
            o_hi = tl.where(before, o_row, o_col)
            n_hi = tl.where(before, n_row, n_col)
            n_lo = tl.where(cm, n_lo, 0)
            n_hi = tl.where(cm, n_hi, 0)
            s = tl.zeros([BLOCK_B], dtype=tl.float64)
            for i in range(0, tl.max(n_lo, axis=0)):
                mi = i < n_lo
                for j in range(0, tl.max(n_hi, axis=0)):
                    m = mi & (j < n_hi)
                    dist = _token_distance_lanes(x_ptr, o_lo + i, o_hi + j, m, dim, ts, cs,
                                                 IS_F32)
                    s += tl.where(m, dist.to(tl.float64), 0.0)
            nlo = tl.where(cm, n_lo, 1).to(tl.float64)
            nhi = tl.where(cm, n_hi, 1).to(tl.float64)
            v = (s / (nlo * nhi)).to(dtype)
            v = tl.where(cm, v, float("inf"))
            tl.store(out_ptr + row * ld + cols, v, mask=cols < n)
            bm = tl.min(v, axis=0)
            bi = tl.min(tl.where(v == bm, cols, n), axis=0)
            upd = bm < best
            best = tl.where(upd, bm, best)
            besti = tl.where(upd, bi, besti)
        fin = tl.min(best, axis=0)
        idx = tl.min(tl.where(best == fin, besti, n), axis=0)
        idx = tl.where(fin < float("inf"), idx, 0)
        tl.store(nn_ptr + row, idx)
        tl.store(nnd_ptr + row, fin)

else:  # pragma: no cover - exercised only without triton
    _pair_average_tiled_kernel = None
    _pair_average_packed_kernel = None
    _cluster_matrix_rowlanes_kernel = None


def token_strides(x: torch.Tensor) -> tuple[int, int]:
    """Element strides of the tokens ``x`` ``(ntok, d)``: between tokens, between a token's
    coordinates.  Rows of a contiguous array (``d``, 1), or columns of a contiguous
    ``(d, ld)`` array (1, ``ld``): the matrix-free engine keeps tokens of more than 16
    dimensions as columns, so that a tile's tokens are adjacent for every coordinate."""
    ts, cs = (int(s) for s in x.stride())
    if ts < 1 or cs < 1:
        raise ValueError(f"tokens must have positive strides, got {tuple(x.stride())}")
    return ts, cs


def _launch_config(on_cpu: bool) -> dict:
    """Launch classes of :func:`pair_average` and the matrix's lanes.

    ``PACKED``: ``(hi, P, E, programs, warps)``, pairs of fewer than ``hi`` token pairs,
    ``P`` pairs per program, ``E`` >= their token pairs lanes each; ``TILED``: ``(hi, BI,
    BJ, programs, warps)``, pairs of fewer than ``hi`` token pairs in ``BI x BJ`` tiles,
    one pair at a time per program; each class starts where the one before it ends, the
    last has no limit.  On a GPU: 64 pairs of at most 4 token pairs per program and 16 of
    at most 16 (the many small pairs of high-dimensional rounds, which would leave most of
    a tile idle: a pair of 2 x 2 tokens in an 8 x 8 tile uses 4 of its 64 lanes), 8 x 8
    tiles of 2 warps below 64 token pairs, 16 x 16 below 4096, 64 x 64 tiles of 8 warps
    on 1024 programs past that, 128 lanes per row for the matrix.  Small sizes and few
    programs under the interpreter, every class used by pairs of 1 to 5 tokens.  Which
    launch sums a pair, and so the order of its float64 sum, depends on its sizes alone.

    ``enable_fp_fusion`` is off: token distances round like the dense engines' (module
    docstring).
    """
    if on_cpu:
        return {"PACKED": ((3, 4, 2, 2, 1), (5, 2, 4, 2, 1)),
                "TILED": ((9, 2, 4, 2, 1), (16, 4, 8, 3, 1), (_NO_LIMIT, 8, 8, 2, 1)),
                "BLOCK_B": 16, "num_warps": 1, "enable_fp_fusion": False}
    return {"PACKED": ((5, 64, 4, 4096, 4), (17, 16, 16, 4096, 4)),
            "TILED": ((64, 8, 8, 8192, 2), (4096, 16, 16, 4096, 4),
                      (_NO_LIMIT, 64, 64, 1024, 8)),
            "BLOCK_B": 128, "num_warps": 4, "enable_fp_fusion": False}


def pair_average(x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor,
                 pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor, capacity: int,
                 val: torch.Tensor) -> None:
    """Average distances of the first ``min(count[0], capacity)`` pairs into ``val``.

    Parameters
    ----------
    x : torch.Tensor
        ``(ntok, d)`` float32/float64, tokens sorted by cluster: rows of a contiguous array or
        columns of one (:func:`token_strides`).
    offsets, sizes : torch.Tensor
        int64: first row and number of rows of each cluster.
    pa, pb : torch.Tensor
        int32 ``(capacity,)``: cluster pairs.
    count : torch.Tensor
        int64 ``(1,)`` on the device: how many pairs there are (read by the kernel).
    capacity : int
        Length of ``pa`` / ``pb`` / ``val``.
    val : torch.Tensor
        ``(capacity,)`` output in the dtype of ``x``, or float64 (the average unrounded: the
        parts of a large pair, which the caller sums); entries past the count are left as
        they are.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    cfg = _launch_config(x.device.type == "cpu")
    f32 = x.dtype == torch.float32
    strides = token_strides(x)
    fusion = cfg["enable_fp_fusion"]
    lo = 0
    for hi, per, lanes, programs, warps in cfg["PACKED"]:
        grid = (max(1, min(programs, -(-int(capacity) // per))),)
        _pair_average_packed_kernel[grid](x, x.shape[1], *strides, offsets, sizes, pa, pb,
                                          count, int(capacity), val, lo, hi, IS_F32=f32,
                                          BLOCK_P=per, BLOCK_E=lanes, num_warps=warps,
                                          enable_fp_fusion=fusion)
        lo = hi
    for hi, bi, bj, programs, warps in cfg["TILED"]:
        grid = (max(1, min(programs, int(capacity))),)
        _pair_average_tiled_kernel[grid](x, x.shape[1], *strides, offsets, sizes, pa, pb,
                                         count, int(capacity), val, lo, hi, IS_F32=f32,
                                         BLOCK_I=bi, BLOCK_J=bj, num_warps=warps,
                                         enable_fp_fusion=fusion)
        lo = hi


def cluster_matrix(x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, n: int,
                   out: torch.Tensor, ld: int, nn: torch.Tensor, nnd: torch.Tensor) -> None:
    """Dense matrix of the average distances of ``n`` clusters, with row argmin / min.

    Parameters
    ----------
    x, offsets, sizes : torch.Tensor
        As in :func:`pair_average`.
    n : int
        Clusters.
    out : torch.Tensor
        Flat output, row ``a`` at ``out[a * ld:]``; ``+inf`` on the diagonal.
    ld : int
        Row stride.
    nn, nnd : torch.Tensor
        ``(n,)`` int64 / dtype: row argmin (smallest column on ties) and minimum.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    cfg = _launch_config(x.device.type == "cpu")
    _cluster_matrix_rowlanes_kernel[(n,)](x, x.shape[1], *token_strides(x), offsets, sizes, n, out,
                                          ld, nn, nnd,
                                          IS_F32=x.dtype == torch.float32,
                                          BLOCK_B=cfg["BLOCK_B"], num_warps=cfg["num_warps"],
                                          enable_fp_fusion=cfg["enable_fp_fusion"])
