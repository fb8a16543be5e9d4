"""The matrix-free engine's centroid scans from a Gram matrix (Triton), for many dimensions.

The scans of :mod:`dcpe_kernels.centroid` compute every ``dd = |mu_a - mu_b|^2`` from
coordinate differences: ``3 d`` scalar operations per pair, ``O(n^2 d)`` a round.  Past
:data:`dcpe_kernels.linear.GRAM_MIN_DIM` dimensions the matrix-free engine
(:mod:`dcpe_kernels.linear`) takes them from matrix products instead (float64, on the
device's matrix units): for the clusters ``a`` that scan and a range of columns ``b`` it
forms the tile ``G = M_rows M_cols^T`` of the centroids ``M`` less a common centre (the
tokens' mean), and these kernels read ``dd = (|mu_a|^2 + |mu_b|^2) - 2 G[a, b]`` from it.
A tile spans every row that scans (a program or thread per row, as in the scans from
differences, so that the device is full) and as many columns as its bytes allow.  The
scans only bound (the nearest neighbours themselves always come from exact sums over token
pairs), so a rounding error of ``dd`` may only widen them; the kernels take

* ``s = nrm_a + nrm_b`` (``nrm = |mu|^2``, float64), ``e = gerr * s`` and
  ``lo = max(0, (s - 2 G) - e)``, ``hi = (s - 2 G) + e``, rounded to the compute dtype.
  With ``gerr = 8 (d + 8) 2^-53`` the interval holds the ``dd`` of the centred float64
  centroids with room to spare (the centring's own rounding, like the centroids', is far
  inside the margins ``rel``/``absm`` below): a dot product of ``d`` terms, in any order of
  summation, is within
  ``d 2^-53 sum |mu_a,k mu_b,k| <= d 2^-53 s / 2`` of its value (Higham 2002, "Accuracy
  and Stability of Numerical Algorithms", section 3.1), the norms within ``d 2^-53 nrm``,
  and the sums within a few more ulp of ``s``; centred centroids keep ``s`` near ``dd``.

Then, with the lower bounds of :mod:`dcpe_kernels.centroid` (margins ``rel``/``absm`` as
there):

* :func:`centroid_nn_gram` — ``_centroid_nn_gram_kernel``: per row the smallest
  ``hi + (s2_a + s2_b)`` over the tile's ``b != a`` and its smallest argmin, merged with
  the tiles of columns before (a strictly smaller value only); after the last tile the
  engine takes the root, the smallest upper bound of mode 0 of
  :func:`dcpe_kernels.centroid.centroid_nn` (the argmin is not used by the engine);
* :func:`candidate_pairs_gram` — ``_candidate_pairs_gram_kernel``: ``lb = max(sqrt(lo),
  (lo + t) / (sqrt(hi) + r))`` (``sqrt(lo)`` where ``sqrt(hi) + r == 0``), ``cand(a, b) =
  lb - absm <= (tau_a + absm) (1 + rel)``.  A pair's two rows may see ``G[a, b]`` and
  ``G[b, a]`` in different bits (the matrix product gives no symmetry), so the unordered
  pair is decided by one row alone: row ``a`` emits ``(a, b)`` iff ``cand(a, b)`` when
  ``b`` does not scan this round, and iff ``a < b`` and (``cand(a, b)`` or ``cand(b, a)``)
  when it does: the pairs of the exact scan's rule, each once.

The references (:func:`_reference_centroid_nn_gram`, :func:`_reference_candidate_pairs_gram`)
compute the same in PyTorch; the Triton kernels take the GPU's fast float32 root and
quotient for ``lb`` (a bound, as in :mod:`dcpe_kernels.centroid`), so their pairs equal the
reference's except within a few ulp of the threshold.  The CUDA kernels are
``gram_scan_kernel`` in ``csrc/cuda/linear_kernels.cuh``.

``g`` is a ``(nrows, c1 - c0)`` view of any strides (row ``i`` is cluster ``rows[i]``,
column ``j`` cluster ``c0 + j``): the Triton kernels read blocks of it along ``b``; the CUDA
kernel, whose lanes are rows, reads it best as the transpose of a contiguous
``(c1 - c0, nrows)`` product.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, tl, triton
from .centroid import _margins_on, _sqrt_rn

if HAS_TRITON:
    from .centroid import _emit_pairs, _row_minima, _row_thresholds, _scan_rows

__all__ = [
    "_reference_candidate_pairs_gram",
    "_reference_centroid_nn_gram",
    "candidate_pairs_gram",
    "centroid_nn_gram",
    "gram_error",
]


def gram_error(dim: int) -> float:
    """``gerr`` for centroids of ``dim`` dimensions (module docstring)."""
    return 8.0 * (dim + 8) * 2.0 ** -53


def _reference_gram_dd(g: torch.Tensor, nrm: torch.Tensor, gerr: float, rows: torch.Tensor,
                       c0: int, c1: int, dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` of the tile (columns ``c0 .. c1 - 1``), in ``dtype``."""
    s = nrm[rows.long()][:, None] + nrm[c0:c1][None, :]
    dd = s - 2.0 * g[:, :c1 - c0].to(torch.float64)
    e = gerr * s
    return (dd - e).clamp_min_(0.0).to(dtype), (dd + e).to(dtype)


def _reference_centroid_nn_gram(g: torch.Tensor, nrm: torch.Tensor, gerr: float,
                                s2: torch.Tensor, n: int, c0: int, c1: int, out: torch.Tensor,
                                nn: torch.Tensor, rows: torch.Tensor, nrows: int) -> None:
    """PyTorch reference of :func:`centroid_nn_gram` (same arguments, same bits)."""
    if nrows == 0 or c1 <= c0:
        return
    r = rows[:nrows].long()
    _, hi = _reference_gram_dd(g[:nrows], nrm, gerr, r, c0, c1, s2.dtype)
    v = hi + (s2[r][:, None] + s2[c0:c1][None, :])
    cols = torch.arange(c0, c1, device=v.device)
    v = torch.where(cols[None, :] == r[:, None], float("inf"), v)
    best = v.min(dim=1).values
    arg = torch.where(v == best[:, None], cols[None, :], n).min(dim=1).values
    arg = torch.where(torch.isinf(best), 0, arg)
    if c0 > 0:  # the columns before: a strictly smaller value only
        take = best < out[r]
        best, arg = torch.where(take, best, out[r]), torch.where(take, arg, nn[r])
    out[r] = best.to(out.dtype)
    nn[r] = arg.to(nn.dtype)


def _reference_candidate_pairs_gram(g: torch.Tensor, nrm: torch.Tensor, gerr: float,
                                    s2: torch.Tensor, rad: torch.Tensor, tau: torch.Tensor,
                                    n: int, c0: int, c1: int, rel: float, absm: float,
                                    pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor,
                                    capacity: int, rows: torch.Tensor, nrows: int,
                                    needy: torch.Tensor) -> None:
    """PyTorch reference of :func:`candidate_pairs_gram`; pairs in row-major order."""
    if nrows == 0 or c1 <= c0:
        return
    dt = s2.dtype
    r = rows[:nrows].long()
    lo, hi = _reference_gram_dd(g[:nrows], nrm, gerr, r, c0, c1, dt)
    d, dh = _sqrt_rn(lo), _sqrt_rn(hi)
    t = s2[r][:, None] + s2[c0:c1][None, :]
    den = dh + (rad[r][:, None] + rad[c0:c1][None, :])
    safe = torch.where(den == 0, torch.ones_like(den), den)
    lb = torch.where(den == 0, d, torch.maximum(d, (lo + t) / safe))
    absm_t = torch.tensor(absm, dtype=dt)
    one_rel = torch.tensor(1.0, dtype=dt) + torch.tensor(rel, dtype=dt)
    low = lb - absm_t
    cand_ab = low <= ((tau[r] + absm_t) * one_rel)[:, None]
    cand_ba = low <= ((tau[c0:c1] + absm_t) * one_rel)[None, :]
    cols = torch.arange(c0, c1, device=lb.device)
    other = (needy[c0:c1] != 0)[None, :]
    emit = torch.where(other, (r[:, None] < cols[None, :]) & (cand_ab | cand_ba), cand_ab)
    emit &= cols[None, :] != r[:, None]
    i, j = torch.nonzero(emit, as_tuple=True)
    total = int(i.numel())
    start = int(count[0])
    w = max(0, min(total, capacity - start))
    pa[start:start + w] = r[i[:w]].to(pa.dtype)
    pb[start:start + w] = cols[j[:w]].to(pb.dtype)
    count[0] += total


if HAS_TRITON:

    @triton.jit
    def _gram_dd_tile(g_ptr, g_rs, g_cs, nrm_ptr, gerr, r, rmask, rows64, cols64, cmask, c0,
                      DTYPE: tl.constexpr):
        """``(lo, hi)`` of a tile in the compute dtype (module docstring)."""
        m2 = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + r.to(tl.int64)[:, None] * g_rs + (cols64 - c0)[None, :] * g_cs,
                    mask=m2, other=0.0)
        s = (tl.load(nrm_ptr + rows64, mask=rmask, other=0.0)[:, None]
             + tl.load(nrm_ptr + cols64, mask=cmask, other=0.0)[None, :])
        dd = s - 2.0 * g
        e = gerr * s
        return tl.maximum(dd - e, 0.0).to(DTYPE), (dd + e).to(DTYPE)

    @triton.jit(do_not_specialize=["n", "c0", "c1", "nrows", "g_rs", "g_cs", "gerr"])
    def _centroid_nn_gram_kernel(g_ptr, g_rs, g_cs, nrm_ptr, gerr, s2_ptr, out_ptr, nn_ptr,
                                 n, c0, c1, rows_ptr, nrows, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr):
        dtype = s2_ptr.dtype.element_ty
        r, rmask, rows, rows64, s2r = _scan_rows(rows_ptr, s2_ptr, nrows, BLOCK_M)
        # as _centroid_nn_tiled_kernel: a running minimum per tile position, strict <
        tile_v = tl.full([BLOCK_M, BLOCK_N], float("inf"), dtype)
        tile_i = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for cb in range(c0, c1, BLOCK_N):
            cols = cb + tl.arange(0, BLOCK_N)
            cmask = cols < c1
            cols64 = cols.to(tl.int64)
            _, hi = _gram_dd_tile(g_ptr, g_rs, g_cs, nrm_ptr, gerr, r, rmask, rows64, cols64,
                                  cmask, c0, dtype)
            s2c = tl.load(s2_ptr + cols64, mask=cmask, other=0.0)
            v = hi + (s2r[:, None] + s2c[None, :])
            upd = (v < tile_v) & (rows[:, None] != cols[None, :]) & cmask[None, :]
            tile_v = tl.where(upd, v, tile_v)
            tile_i = tl.where(upd, cols[None, :], tile_i)
        best, besti = _row_minima(tile_v, tile_i, n, False, False)
        if c0 > 0:  # the columns before: a strictly smaller value only
            prev = tl.load(out_ptr + rows64, mask=rmask, other=0.0)
            take = best < prev
            best = tl.where(take, best, prev)
            besti = tl.where(take, besti, tl.load(nn_ptr + rows64, mask=rmask, other=0))
        tl.store(nn_ptr + rows64, besti, mask=rmask)
        tl.store(out_ptr + rows64, best, mask=rmask)

    @triton.jit(do_not_specialize=["n", "c0", "c1", "capacity", "nrows", "g_rs", "g_cs",
                                   "gerr"])
    def _candidate_pairs_gram_kernel(g_ptr, g_rs, g_cs, nrm_ptr, gerr, s2_ptr, rad_ptr,
                                     tau_ptr, n, c0, c1, margin_ptr, pa_ptr, pb_ptr, count_ptr,
                                     capacity, rows_ptr, nrows, needy_ptr,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        dtype = s2_ptr.dtype.element_ty
        r, rmask, rows, rows64, s2r = _scan_rows(rows_ptr, s2_ptr, nrows, BLOCK_M)
        rr, thr_r, absm_t, one_rel = _row_thresholds(rad_ptr, tau_ptr, margin_ptr, rows64,
                                                     rmask)
        for cb in range(c0, c1, BLOCK_N):
            cols = cb + tl.arange(0, BLOCK_N)
            cmask = cols < c1
            cols64 = cols.to(tl.int64)
            lo, hi = _gram_dd_tile(g_ptr, g_rs, g_cs, nrm_ptr, gerr, r, rmask, rows64, cols64,
                                   cmask, c0, dtype)
            # a bound: the fast float32 root and quotient are well within the margins
            d = tl.sqrt(lo)
            s2c = tl.load(s2_ptr + cols64, mask=cmask, other=0.0)
            rc = tl.load(rad_ptr + cols64, mask=cmask, other=0.0)
            tc = tl.load(tau_ptr + cols64, mask=cmask, other=0.0)
            den = tl.sqrt(hi) + (rr[:, None] + rc[None, :])
            safe = tl.where(den == 0, 1.0, den)
            lb = tl.where(den == 0, d, tl.maximum(d, (lo + (s2r[:, None] + s2c[None, :])) / safe))
            low = lb - absm_t
            cand_ab = low <= thr_r[:, None]
            cand_ba = low <= (tc[None, :] + absm_t) * one_rel
            other = tl.load(needy_ptr + cols64, mask=cmask, other=0) != 0
            valid = rmask[:, None] & cmask[None, :] & (rows[:, None] != cols[None, :])
            emit = valid & tl.where(other[None, :],
                                    (rows[:, None] < cols[None, :]) & (cand_ab | cand_ba),
                                    cand_ab)
            if tl.sum(emit.to(tl.int32)) > 0:
                _emit_pairs(emit, rows, cols, count_ptr, pa_ptr, pb_ptr, capacity, BLOCK_M,
                            BLOCK_N)

else:  # pragma: no cover - exercised only without triton
    _centroid_nn_gram_kernel = None
    _candidate_pairs_gram_kernel = None


def _launch_config(on_cpu: bool) -> dict[str, int]:
    """Small tiles under the interpreter; 64 x 64 tiles of 4 warps on a GPU (fusion off, as
    in :mod:`dcpe_kernels.centroid`: ``v = hi + t`` is rounded as the reference rounds it)."""
    if on_cpu:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 1, "enable_fp_fusion": False}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "enable_fp_fusion": False}


def _check_gram(g: torch.Tensor, nrm: torch.Tensor, n: int, c0: int, c1: int,
                nrows: int) -> None:
    if g.dtype != torch.float64 or nrm.dtype != torch.float64:
        raise ValueError("the Gram tile and the norms must be float64")
    if not 0 <= c0 <= c1 <= n:
        raise ValueError(f"the tile's columns must be 0 <= c0 <= c1 <= n = {n}, got "
                         f"{c0}, {c1}")
    if g.dim() != 2 or g.shape[0] < nrows or g.shape[1] < c1 - c0:
        raise ValueError(f"the Gram tile must be at least ({nrows}, {c1 - c0}), got "
                         f"{tuple(g.shape)}")


def centroid_nn_gram(g: torch.Tensor, nrm: torch.Tensor, gerr: float, s2: torch.Tensor,
                     n: int, c0: int, c1: int, out: torch.Tensor, nn: torch.Tensor,
                     rows: torch.Tensor, nrows: int) -> None:
    """Each row's smallest squared Euclidean upper bound, over a tile of the Gram matrix.

    Parameters
    ----------
    g : torch.Tensor
        float64 ``(>= nrows, >= c1 - c0)``, any strides: ``g[i, j]`` is ``mu_a . mu_b`` for
        ``a = rows[i]``, ``b = c0 + j`` (centroids less a common centre).
    nrm : torch.Tensor
        float64 ``(n,)``: ``|mu|^2`` of the same centroids.
    gerr : float
        Relative error bound of ``dd`` (:func:`gram_error`).
    s2 : torch.Tensor
        ``(n,)`` compute dtype: mean squared distance of each cluster's tokens to its
        centroid.
    n : int
        Clusters.
    c0, c1 : int
        The tile's columns, ``c0 .. c1 - 1``.
    out, nn : torch.Tensor
        ``(n,)`` compute dtype / int64: the smallest ``hi + (s2_a + s2_b)`` over the tile's
        ``b != a`` and its smallest argmin, for the tile's rows only; with ``c0 > 0`` they
        hold the columns before and take a strictly smaller value only (so tiles in
        increasing order give the smallest argmin).  The engine takes the root once the
        last tile is done (the upper bound ``sqrt(dd + s2_a + s2_b)``).
    rows : torch.Tensor
        int32: the tile's clusters, ``rows[:nrows]``.
    nrows : int
        Rows of the tile.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    _check_gram(g, nrm, n, c0, c1, nrows)
    if nrows == 0 or c1 == c0:
        return
    cfg = _launch_config(s2.device.type == "cpu")
    grid = (triton.cdiv(nrows, cfg["BLOCK_M"]),)
    _centroid_nn_gram_kernel[grid](g, g.stride(0), g.stride(1), nrm, float(gerr), s2, out, nn,
                                   n, c0, c1, rows, nrows, BLOCK_M=cfg["BLOCK_M"],
                                   BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
                                   enable_fp_fusion=cfg["enable_fp_fusion"])


def candidate_pairs_gram(g: torch.Tensor, nrm: torch.Tensor, gerr: float, s2: torch.Tensor,
                         rad: torch.Tensor, tau: torch.Tensor, n: int, c0: int, c1: int,
                         rel: float, absm: float, pa: torch.Tensor, pb: torch.Tensor,
                         count: torch.Tensor, capacity: int, rows: torch.Tensor, nrows: int,
                         needy: torch.Tensor) -> None:
    """Emit the cluster pairs of a tile whose lower bound is within a threshold.

    Parameters
    ----------
    g, nrm, gerr, s2, n, c0, c1, rows, nrows
        As in :func:`centroid_nn_gram`.
    rad, tau : torch.Tensor
        ``(n,)`` compute dtype: radius bounds and thresholds (upper bounds of the nearest
        distances).
    rel, absm : float
        Relative and absolute margins for rounding (:mod:`dcpe_kernels.centroid`).
    pa, pb, count, capacity
        As in :func:`dcpe_kernels.centroid.candidate_pairs`: int32 outputs, in no particular
        order; ``count`` (int64 ``(1,)``) counts on past ``capacity``.
    needy : torch.Tensor
        int8 ``(n,)``: 1 for the clusters that scan this round (in this tile or another);
        a pair of two of them is emitted by the smaller (module docstring).
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    _check_gram(g, nrm, n, c0, c1, nrows)
    if nrows == 0 or c1 == c0:
        return
    cfg = _launch_config(s2.device.type == "cpu")
    grid = (triton.cdiv(nrows, cfg["BLOCK_M"]),)
    margins = _margins_on(float(rel), float(absm), s2.dtype, s2.device)
    _candidate_pairs_gram_kernel[grid](g, g.stride(0), g.stride(1), nrm, float(gerr), s2, rad,
                                       tau, n, c0, c1, margins, pa, pb, count, int(capacity),
                                       rows, nrows, needy, BLOCK_M=cfg["BLOCK_M"],
                                       BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
                                       enable_fp_fusion=cfg["enable_fp_fusion"])
