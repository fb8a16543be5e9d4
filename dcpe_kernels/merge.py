"""Fused Lance–Williams merge + compaction + row nearest neighbours (Triton).

One round of the reciprocal-nearest-neighbour engine (Murtagh 1983; Müllner 2011,
"Modern hierarchical, agglomerative clustering algorithms"), see :mod:`dcpe_kernels.rnn`.
Every slot ``i`` of the next round is made of old slot ``p[i]`` and, if it was merged in
this round, old slot ``q[i]`` (else ``q[i] = -1``).  The new dissimilarity is

* mode 0 (average, weighted): ``sum_{x in {p_i, q_i}, y in {p_j, q_j}} w_x w_y D[x, y]``
  with ``w = n_x / n_i`` (average, UPGMA) or ``1/2`` (weighted, WPGMA) — Lance–Williams
  applied to two merged clusters on both sides at once;
* mode 1 (single): the minimum of those entries; mode 2 (complete): the maximum.

The kernel reads the old matrix once (gathered), writes the compacted new matrix and the
row minimum / argmin (ties to the smallest column) of every new row, so a round costs a
single pass over the matrix.

Every entry is computed twice, once in each of its rows, so the order of operations is
symmetric: ``(t_pp + (t_pq + t_qp)) + t_qq`` with ``t_xy = (w_x * w_y) * D[x, y]``; swapping
the row and the column swaps ``t_pq`` and ``t_qp`` only, and both the products and that
sum commute.  The kernel is compiled without fused multiply-add (``enable_fp_fusion=False``),
which would round the two sides differently.  The new matrix is therefore exactly
symmetric, as the old one was, and the two members of a reciprocal pair see the same
distance: the reciprocal-pair test and the recorded height do not depend on which side
computed it.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, tl, triton
from .pairwise import _row_argmin

__all__ = ["_reference_merge_compact_nn", "merge_compact_nn"]


def _reference_merge_compact_nn(d_old: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                                wp: torch.Tensor, wq: torch.Tensor, mode: int
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch reference of :func:`merge_compact_nn` on a full (n, n) matrix.

    Returns ``(D_new, nn, nnd)`` for all ``len(p)`` new rows.
    """
    p = p.long()
    q = q.long()
    has_q = q >= 0
    qc = q.clamp_min(0)
    dpp = d_old[p][:, p]
    dpq = d_old[p][:, qc]
    dqp = d_old[qc][:, p]
    dqq = d_old[qc][:, qc]
    mr, mc = has_q[:, None], has_q[None, :]
    if mode == 0:
        wp_, wq_ = wp.to(d_old.dtype), torch.where(has_q, wq.to(d_old.dtype), 0)
        z = torch.zeros((), dtype=d_old.dtype, device=d_old.device)
        # the kernels' symmetric order of operations (see the module docstring)
        t_pp = (wp_[:, None] * wp_[None, :]) * dpp
        t_pq = (wp_[:, None] * wq_[None, :]) * torch.where(mc, dpq, z)
        t_qp = (wq_[:, None] * wp_[None, :]) * torch.where(mr, dqp, z)
        t_qq = (wq_[:, None] * wq_[None, :]) * torch.where(mr & mc, dqq, z)
        new = (t_pp + (t_pq + t_qp)) + t_qq
    else:
        fill = float("inf") if mode == 1 else float("-inf")
        f = torch.full((), fill, dtype=d_old.dtype, device=d_old.device)
        red = torch.minimum if mode == 1 else torch.maximum
        new = red(red(dpp, torch.where(mc, dpq, f)),
                  red(torch.where(mr, dqp, f), torch.where(mr & mc, dqq, f)))
    new = new.clone()
    new.fill_diagonal_(float("inf"))
    nnd, nn = _row_argmin(new)
    return new, nn, nnd


if HAS_TRITON:
    from .centroid import _row_minima

    # sizes change every round: not specialised on, so one compile per dtype and mode
    @triton.jit(do_not_specialize=["ld_src", "ld_dst", "n_new", "row0", "nrows"])
    def _merge_compact_rownn_kernel(src_ptr, ld_src, dst_ptr, ld_dst, p_ptr, q_ptr, wp_ptr,
                                    wq_ptr, nn_ptr, nnd_ptr, n_new, row0, nrows, count_ptr,
                                    MODE: tl.constexpr, COUNTED: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        if COUNTED:  # the round's record, read on the device (row0 is 0)
            n_new = tl.load(count_ptr + 1).to(tl.int32)
            ld_dst = n_new
            nrows = n_new
            ld_src = tl.load(count_ptr + 5)  # the old order: the old matrix's row stride
        if pid * BLOCK_M >= nrows:  # the grid covers an upper bound of the rows
            return
        lr = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # local row in this chunk
        rmask = lr < nrows
        rows = row0 + lr
        rows64 = rows.to(tl.int64)
        dtype = src_ptr.dtype.element_ty
        pr = tl.load(p_ptr + rows64, mask=rmask, other=0).to(tl.int64)
        qr = tl.load(q_ptr + rows64, mask=rmask, other=-1).to(tl.int64)
        hq_r = qr >= 0
        qr0 = tl.where(hq_r, qr, 0)
        wpr = tl.load(wp_ptr + rows64, mask=rmask, other=0.0)
        wqr = tl.load(wq_ptr + rows64, mask=rmask & hq_r, other=0.0)
        base_p = src_ptr + pr * ld_src
        base_q = src_ptr + qr0 * ld_src
        # running minimum per tile position: position j sees the columns j, j + BLOCK_N, ...
        # in increasing order, so a strict < keeps the smallest column among equal values;
        # the rows are reduced once, after the last tile (no reduction across lanes a tile)
        tile_v = tl.full([BLOCK_M, BLOCK_N], float("inf"), dtype)
        tile_i = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for c0 in range(0, n_new, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < n_new
            cols64 = cols.to(tl.int64)
            pc = tl.load(p_ptr + cols64, mask=cmask, other=0).to(tl.int64)
            qc = tl.load(q_ptr + cols64, mask=cmask, other=-1).to(tl.int64)
            hq_c = qc >= 0
            qc0 = tl.where(hq_c, qc, 0)
            m2 = rmask[:, None] & cmask[None, :]
            m_pq = m2 & hq_c[None, :]
            m_qp = m2 & hq_r[:, None]
            m_qq = m_qp & hq_c[None, :]
            if MODE == 0:
                wpc = tl.load(wp_ptr + cols64, mask=cmask, other=0.0)
                wqc = tl.load(wq_ptr + cols64, mask=cmask & hq_c, other=0.0)
                v_pp = tl.load(base_p[:, None] + pc[None, :], mask=m2, other=0.0)
                v_pq = tl.load(base_p[:, None] + qc0[None, :], mask=m_pq, other=0.0)
                v_qp = tl.load(base_q[:, None] + pc[None, :], mask=m_qp, other=0.0)
                v_qq = tl.load(base_q[:, None] + qc0[None, :], mask=m_qq, other=0.0)
                t_pp = (wpr[:, None] * wpc[None, :]) * v_pp
                t_pq = (wpr[:, None] * wqc[None, :]) * v_pq
                t_qp = (wqr[:, None] * wpc[None, :]) * v_qp
                t_qq = (wqr[:, None] * wqc[None, :]) * v_qq
                val = (t_pp + (t_pq + t_qp)) + t_qq  # symmetric; no fma (see launch)
            elif MODE == 1:
                v_pp = tl.load(base_p[:, None] + pc[None, :], mask=m2, other=float("inf"))
                v_pq = tl.load(base_p[:, None] + qc0[None, :], mask=m_pq, other=float("inf"))
                v_qp = tl.load(base_q[:, None] + pc[None, :], mask=m_qp, other=float("inf"))
                v_qq = tl.load(base_q[:, None] + qc0[None, :], mask=m_qq, other=float("inf"))
                val = tl.minimum(tl.minimum(v_pp, v_pq), tl.minimum(v_qp, v_qq))
            else:
                v_pp = tl.load(base_p[:, None] + pc[None, :], mask=m2, other=float("-inf"))
                v_pq = tl.load(base_p[:, None] + qc0[None, :], mask=m_pq, other=float("-inf"))
                v_qp = tl.load(base_q[:, None] + pc[None, :], mask=m_qp, other=float("-inf"))
                v_qq = tl.load(base_q[:, None] + qc0[None, :], mask=m_qq, other=float("-inf"))
                val = tl.maximum(tl.maximum(v_pp, v_pq), tl.maximum(v_qp, v_qq))
            val = tl.where(rows[:, None] == cols[None, :], float("inf"), val)
            tl.store(dst_ptr + lr.to(tl.int64)[:, None] * ld_dst + cols64[None, :], val,
                     mask=m2)
            upd = (val < tile_v) & cmask[None, :]
            tile_v = tl.where(upd, val, tile_v)
            tile_i = tl.where(upd, cols[None, :], tile_i)
        best, besti = _row_minima(tile_v, tile_i, n_new, False, False)
        tl.store(nn_ptr + rows64, besti, mask=rmask)
        tl.store(nnd_ptr + rows64, best, mask=rmask)

else:  # pragma: no cover - exercised only without triton
    _merge_compact_rownn_kernel = None


def _launch_config(n_new: int, on_cpu: bool) -> dict[str, int]:
    """Tile sizes: small tiles for the interpreter; 8 x 256 gathered tiles on a GPU.

    The row minima are kept per tile position and reduced once per row, after the last
    tile: compiled for sm_90 in float32 (average linkage), a tile's loop has no warp
    shuffle and about 46 instructions per entry instead of 67 with Triton 3.9 (45 instead
    of 54 with Triton 3.6), with as many blocks per SM.

    ``enable_fp_fusion`` is off in every configuration: no fused multiply-add, so an entry
    rounds alike in both of its rows (see the module docstring).
    """
    if on_cpu:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 1, "enable_fp_fusion": False}
    return {"BLOCK_M": 8, "BLOCK_N": 256, "num_warps": 4, "enable_fp_fusion": False}


def merge_compact_nn(src: torch.Tensor, ld_src: int, dst: torch.Tensor, ld_dst: int,
                     p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor,
                     n_new: int, row0: int, nrows: int, mode: int, nn: torch.Tensor,
                     nnd: torch.Tensor, count: torch.Tensor | None = None) -> None:
    """Write rows ``row0 .. row0 + nrows - 1`` of the merged, compacted matrix.

    Parameters
    ----------
    src : torch.Tensor
        Flat old matrix, row stride ``ld_src``.
    ld_src : int
        Row stride of ``src``.
    dst : torch.Tensor
        Flat output; local row ``r`` (global ``row0 + r``) starts at ``r * ld_dst``.
    ld_dst : int
        Row stride of ``dst``.
    p, q : torch.Tensor
        int32 ``(n_new,)``: old slot of each new slot, and its merge partner or -1.
    wp, wq : torch.Tensor
        ``(n_new,)`` weights of ``p`` and ``q`` (mode 0 only; ``wq`` unused where q = -1).
    n_new, row0, nrows : int
        New matrix order and the row range to produce.
    mode : int
        0 weighted sum, 1 minimum, 2 maximum.
    nn, nnd : torch.Tensor
        Row argmin / minimum outputs (indexed by global row).
    count : torch.Tensor, optional
        int64: a round's record from :func:`dcpe_kernels.round.round_scan`, on the device.
        With it the kernel reads the new order from ``count[1]`` and writes all its rows
        with row stride equal to it, and reads the old matrix at row stride ``count[5]``
        (the round's order: the old matrix is compact); ``n_new`` and ``nrows`` are then an
        upper bound of the count (the grid), ``ld_src`` and ``ld_dst`` are ignored and
        ``row0`` must be 0.  This lets a round's merge be launched before the host has read
        its record, and rounds be chained (:func:`dcpe_kernels.rnn.chained_rounds`).
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    if count is not None and row0 != 0:
        raise ValueError("merge_compact_nn: a count on the device needs row0 = 0")
    cfg = _launch_config(n_new, src.device.type == "cpu")
    grid = (triton.cdiv(nrows, cfg["BLOCK_M"]),)
    _merge_compact_rownn_kernel[grid](src, ld_src, dst, ld_dst, p, q, wp, wq, nn, nnd,
                                      n_new, row0, nrows, nn if count is None else count,
                                      MODE=mode, COUNTED=count is not None,
                                      BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                      num_warps=cfg["num_warps"],
                                      enable_fp_fusion=cfg["enable_fp_fusion"])
