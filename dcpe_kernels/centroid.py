"""Scans over cluster centroids for the matrix-free engine (Triton): bounds and closed forms.

The matrix-free rounds of :mod:`dcpe_kernels.linear` keep, per active cluster ``a``, its
centroid ``mu_a``, the mean squared distance of its tokens to it ``s2_a`` (``sigma_a^2``)
and, for the Euclidean metric, a radius ``rad_a >= max_{x in a} |x - mu_a|``.  With
``dd = |mu_a - mu_b|^2`` and ``D = sqrt(dd)``:

* average linkage of ``sqeuclidean`` is exactly ``dd + s2_a + s2_b`` and of ``cosine`` on
  unit rows half of it (Ward 1963's decomposition of a mean of squared distances; the
  closed forms of the ``cpu`` engine), so one scan gives every cluster's nearest
  neighbour (:func:`centroid_nn`, mode 1);
* average linkage of ``euclidean`` has no closed form, but by Jensen's inequality
  ``mean |x - y| <= sqrt(mean |x - y|^2) = sqrt(dd + s2_a + s2_b)`` (an upper bound; mode
  0 gives each cluster the smallest one, ``tau_a``), and ``mean |x - y| >= |mu_a - mu_b|``
  (convexity) and ``mean |x - y| >= mean |x - y|^2 / max |x - y| >= (dd + s2_a + s2_b) /
  (D + rad_a + rad_b)`` are lower bounds.  :func:`candidate_pairs` lists the pairs whose
  lower bound does not exceed ``tau_a`` (with margins for rounding): the nearest
  neighbour of ``a`` is among them, and only they get an exact average
  (:mod:`dcpe_kernels.pair_average`).

Both scans are ``O(n^2 d)`` over centroids (``n`` clusters, ``d`` dimensions), brute force
in tiles, like :mod:`dcpe_kernels.pairwise`.  Order of operations (shared with the CUDA
kernels and the references): ``dd`` sums the rounded squares for ``k = 0 .. d-1`` in that
order (no fused multiply-add); ``t = s2_a + s2_b`` and ``r = rad_a + rad_b`` commute, so
every quantity is the same bits for ``(a, b)`` and ``(b, a)``.

* :func:`centroid_nn` — ``_centroid_nn_tiled_kernel``: per row the minimum over ``b != a``
  of ``sqrt(dd + t)`` (mode 0; taken as the correctly rounded root of the smallest
  ``dd + t``, the same value since the root is monotone) or ``scale * (dd + t)`` (mode 1)
  and its smallest argmin (mode 0: of ``dd + t``; only the value is used there);
* :func:`candidate_pairs` — ``_candidate_pairs_tiled_kernel``: ``lb = D`` if
  ``D + r == 0`` else ``max(D, (dd + t) / (D + r))``; ``cand(a, b)`` is
  ``lb - absm <= (tau_a + absm) * (1 + rel)``; the unordered pair is emitted once, by
  ``a`` if ``cand(a, b)`` and (``a < b`` or not ``cand(b, a)`` or ``b`` is not scanned
  this round), at an atomically counted
  position (``count`` keeps counting past ``capacity``; later pairs are not written).
  ``lb`` is a bound, so in float32 the kernel takes the GPU's fast square root and
  quotient (errors of a few ulp, far inside the margins ``rel`` / ``absm``, which the
  engine sizes at ``8 (d + 4)`` ulp); its pairs then equal the reference's except for
  pairs within a few ulp of the threshold.
"""

from __future__ import annotations

import functools

import torch

from ._triton import HAS_TRITON, tl, triton

__all__ = [
    "_reference_candidate_pairs",
    "_reference_centroid_nn",
    "candidate_pairs",
    "centroid_nn",
]


def _sqrt_rn(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded (IEEE) square root, as the kernels take it, into a new tensor:
    taken on the CPU by :func:`dcpe.backends.torch_backend._sqrt_` (NumPy's, since
    PyTorch's ``sqrt`` on the CPU is not always correctly rounded), whatever ``t``'s
    device."""
    from dcpe.backends.torch_backend import _sqrt_

    host = t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    return _sqrt_(host).to(t.device)


def _reference_dd(mu_t: torch.Tensor, n: int) -> torch.Tensor:
    """``dd[a, b]``: squared distances of the centroid columns, summed in dimension order."""
    mu = mu_t[:, :n]
    dd = torch.zeros((n, n), dtype=mu_t.dtype, device=mu_t.device)
    for k in range(mu_t.shape[0]):
        diff = mu[k][:, None] - mu[k][None, :]
        dd = dd + diff * diff
    return dd


def _reference_centroid_nn(mu_t: torch.Tensor, s2: torch.Tensor, n: int, mode: int,
                           scale: float, out: torch.Tensor, nn: torch.Tensor,
                           rows: torch.Tensor, nrows: int) -> None:
    """PyTorch reference of :func:`centroid_nn` (same arguments, same bits)."""
    r = rows[:nrows].long().cpu()
    if nrows == 0:
        return
    if n == 1:
        out[0] = float("inf")
        nn[0] = 0
        return
    dd = _reference_dd(mu_t, n)
    t = s2[:n][:, None] + s2[:n][None, :]
    v = dd + t
    if mode == 1:
        v = v * torch.tensor(scale, dtype=v.dtype)
    v.fill_diagonal_(float("inf"))
    best = v.min(dim=1).values
    cols = torch.arange(n, device=v.device).expand(n, n)
    got = _sqrt_rn(best) if mode == 0 else best
    arg = torch.where(v == best[:, None], cols, n).min(dim=1).values
    out[r.to(out.device)] = got[r].to(out.device)
    nn[r.to(nn.device)] = arg[r].to(nn.device)


def _reference_lower_bounds(mu_t: torch.Tensor, s2: torch.Tensor, rad: torch.Tensor,
                            n: int) -> torch.Tensor:
    dd = _reference_dd(mu_t, n)
    d = _sqrt_rn(dd)
    t = s2[:n][:, None] + s2[:n][None, :]
    r = rad[:n][:, None] + rad[:n][None, :]
    den = d + r
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, d, torch.maximum(d, (dd + t) / safe))


def _reference_candidate_pairs(mu_t: torch.Tensor, s2: torch.Tensor, rad: torch.Tensor,
                               tau: torch.Tensor, n: int, rel: float, absm: float,
                               pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor,
                               capacity: int, rows: torch.Tensor, nrows: int,
                               needy: torch.Tensor) -> None:
    """PyTorch reference of :func:`candidate_pairs`; pairs in row-major order of ``(a, b)``."""
    dt = mu_t.dtype
    lb = _reference_lower_bounds(mu_t, s2, rad, n)
    rel_t = torch.tensor(rel, dtype=dt)
    absm_t = torch.tensor(absm, dtype=dt)
    one_rel = torch.tensor(1.0, dtype=dt) + rel_t
    cand = (lb - absm_t) <= (tau[:n][:, None] + absm_t) * one_rel
    cand.fill_diagonal_(False)
    ar = torch.arange(n, device=mu_t.device)
    scanned = torch.zeros(n, dtype=torch.bool, device=mu_t.device)
    scanned[rows[:nrows].long().to(mu_t.device)] = True
    other = needy[:n].to(mu_t.device) != 0
    emit = cand & ((ar[:, None] < ar[None, :]) | ~cand.T | ~other[None, :])
    emit &= scanned[:, None]
    a, b = torch.nonzero(emit, as_tuple=True)
    total = int(a.numel())
    start = int(count[0])
    w = max(0, min(total, capacity - start))
    pa[start:start + w] = a[:w].to(pa.dtype)
    pb[start:start + w] = b[:w].to(pb.dtype)
    count[0] += total


if HAS_TRITON:

    @triton.jit
    def _scan_rows(rows_ptr, s2_ptr, nrows, BLOCK_M: tl.constexpr):
        """The program's rows of a scan: their places in ``rows``, mask, clusters (int32,
        int64) and ``s2``."""
        r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = r < nrows
        rows = tl.load(rows_ptr + r, mask=rmask, other=0)
        rows64 = rows.to(tl.int64)
        return r, rmask, rows, rows64, tl.load(s2_ptr + rows64, mask=rmask, other=0.0)

    @triton.jit
    def _row_thresholds(rad_ptr, tau_ptr, margin_ptr, rows64, rmask):
        """A candidate scan's rows: radius, threshold ``(tau + absm) * (1 + rel)``, and the
        margins ``absm`` and ``1 + rel``."""
        rr = tl.load(rad_ptr + rows64, mask=rmask, other=0.0)
        tr = tl.load(tau_ptr + rows64, mask=rmask, other=0.0)
        absm_t = tl.load(margin_ptr + 1)
        one_rel = 1.0 + tl.load(margin_ptr)
        return rr, (tr + absm_t) * one_rel, absm_t, one_rel

    @triton.jit
    def _centroid_dd_tile(mu_ptr, ld, rows64, rmask, cols64, cmask, dim,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """``dd`` of a tile: rounded squares summed in dimension order (fusion is off)."""
        dtype = mu_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
        # the pointers step by ld: no 32-bit product k * ld (past 2**31 at d * n >= 2**31)
        pa = mu_ptr + rows64
        pb = mu_ptr + cols64
        for _k in range(0, dim):
            a = tl.load(pa, mask=rmask, other=0.0)
            b = tl.load(pb, mask=cmask, other=0.0)
            pa += ld
            pb += ld
            diff = a[:, None] - b[None, :]
            acc += diff * diff
        return acc

    @triton.jit(do_not_specialize=["n", "dim", "nrows"])
    def _centroid_nn_tiled_kernel(mu_ptr, s2_ptr, out_ptr, nn_ptr, n, dim, rows_ptr, nrows,
                                  MODE: tl.constexpr, HALF: tl.constexpr, IS_F32: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        r, rmask, rows, rows64, s2r = _scan_rows(rows_ptr, s2_ptr, nrows, BLOCK_M)
        dtype = mu_ptr.dtype.element_ty
        # running minimum per tile position: position j sees the columns j, j + BLOCK_N, ...
        # in increasing order, so a strict < keeps the smallest column among equal values;
        # the rows are reduced once, at the end
        tile_v = tl.full([BLOCK_M, BLOCK_N], float("inf"), dtype)
        tile_i = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for c0 in range(0, n, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < n
            cols64 = cols.to(tl.int64)
            acc = _centroid_dd_tile(mu_ptr, n, rows64, rmask, cols64, cmask, dim,
                                    BLOCK_M, BLOCK_N)
            s2c = tl.load(s2_ptr + cols64, mask=cmask, other=0.0)
            v = acc + (s2r[:, None] + s2c[None, :])
            if MODE == 1 and HALF:
                v = v * 0.5
            upd = (v < tile_v) & (rows[:, None] != cols[None, :]) & cmask[None, :]
            tile_v = tl.where(upd, v, tile_v)
            tile_i = tl.where(upd, cols[None, :], tile_i)
        best, besti = _row_minima(tile_v, tile_i, n, MODE == 0, IS_F32)
        tl.store(nn_ptr + rows64, besti, mask=rmask)
        tl.store(out_ptr + rows64, best, mask=rmask)

    @triton.jit
    def _emit_pairs(emit, rows, cols, count_ptr, pa_ptr, pb_ptr, capacity,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Append the pairs ``(rows[i], cols[j])`` where ``emit[i, j]``, each at an
        atomically counted position (``count`` counts on past ``capacity``)."""
        ones = tl.full([BLOCK_M, BLOCK_N], 1, tl.int64)
        cptr = count_ptr + tl.zeros([BLOCK_M, BLOCK_N], tl.int64)
        pos = tl.atomic_add(cptr, ones, mask=emit)
        ok = emit & (pos < capacity)
        zero = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
        tl.store(pa_ptr + pos, rows[:, None] + zero, mask=ok)
        tl.store(pb_ptr + pos, cols[None, :] + zero, mask=ok)

    @triton.jit
    def _row_minima(tile_v, tile_i, n, IS_SQRT: tl.constexpr, IS_F32: tl.constexpr):
        """Per row of the running minima ``tile_v`` (columns ``tile_i``): the minimum (its
        correctly rounded root if ``IS_SQRT``) and its smallest column (0 where none)."""
        best = tl.min(tile_v, axis=1)
        besti = tl.min(tl.where(tile_v == best[:, None], tile_i, n), axis=1).to(tl.int64)
        besti = tl.where(best < float("inf"), besti, 0)
        if IS_SQRT:  # the root of the minimum is the minimum of the roots (monotone)
            if IS_F32:
                best = tl.sqrt_rn(best)
            else:
                best = tl.sqrt(best)
        return best, besti

    @triton.jit(do_not_specialize=["n", "dim", "capacity", "nrows"])
    def _candidate_pairs_tiled_kernel(mu_ptr, s2_ptr, rad_ptr, tau_ptr, n, dim, margin_ptr,
                                      pa_ptr, pb_ptr, count_ptr, capacity, rows_ptr, nrows,
                                      needy_ptr, IS_F32: tl.constexpr, BLOCK_M: tl.constexpr,
                                      BLOCK_N: tl.constexpr):
        r, rmask, rows, rows64, s2r = _scan_rows(rows_ptr, s2_ptr, nrows, BLOCK_M)
        rr, thr_r, absm_t, one_rel = _row_thresholds(rad_ptr, tau_ptr, margin_ptr, rows64,
                                                     rmask)
        # lb >= D, so a pair with D > thr + absm is no candidate: a tile without a pair
        # under that (squared, with room for rounding) skips the bound's root and quotient
        lim = thr_r + absm_t
        lim = lim * lim * 1.0001
        for c0 in range(0, n, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < n
            cols64 = cols.to(tl.int64)
            dd = _centroid_dd_tile(mu_ptr, n, rows64, rmask, cols64, cmask, dim, BLOCK_M,
                                   BLOCK_N)
            valid = rmask[:, None] & cmask[None, :] & (rows[:, None] != cols[None, :])
            maybe = valid & (dd <= lim[:, None])
            if tl.sum(maybe.to(tl.int32)) > 0:
                # a bound: the fast float32 root and quotient are well within the margins
                d = tl.sqrt(dd)
                s2c = tl.load(s2_ptr + cols64, mask=cmask, other=0.0)
                rc = tl.load(rad_ptr + cols64, mask=cmask, other=0.0)
                tc = tl.load(tau_ptr + cols64, mask=cmask, other=0.0)
                den = d + (rr[:, None] + rc[None, :])
                safe = tl.where(den == 0, 1.0, den)
                lb = tl.where(den == 0, d,
                              tl.maximum(d, (dd + (s2r[:, None] + s2c[None, :])) / safe))
                low = lb - absm_t
                cand_ab = low <= thr_r[:, None]
                cand_ba = low <= (tc[None, :] + absm_t) * one_rel
                other = tl.load(needy_ptr + cols64, mask=cmask, other=0)
                emit = valid & cand_ab & ((rows[:, None] < cols[None, :]) | (cand_ba == 0)
                                          | (other[None, :] == 0))
                _emit_pairs(emit, rows, cols, count_ptr, pa_ptr, pb_ptr, capacity, BLOCK_M,
                            BLOCK_N)

else:  # pragma: no cover - exercised only without triton
    _centroid_nn_tiled_kernel = None
    _candidate_pairs_tiled_kernel = None


@functools.lru_cache(maxsize=16)
def _margins_on(rel: float, absm: float, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """``[rel, absm]`` in ``dtype`` on ``device``, copied there once per run (the values
    are fixed for a run), so that a round does not wait for a host-to-device copy."""
    return torch.tensor([rel, absm], dtype=dtype).to(device)


def _launch_config(on_cpu: bool) -> dict[str, int]:
    """Small tiles under the interpreter; 8 x 512 tiles of 4 warps on a GPU.

    Triton lays a tile's columns over a warp's lanes and its warps: with 512 columns for 4
    warps every thread holds 8 rows x 4 columns, 12 loads for 32 pairs a coordinate, where
    64 x 64 gave each thread 32 rows x 1 column (33 loads).  Compiled for sm_90 in float32
    with Triton 3.9 that is 5.6 instructions per pair and coordinate instead of 10.3 in
    ``_centroid_nn_tiled_kernel`` and 5.0 instead of 9.6 in
    ``_candidate_pairs_tiled_kernel`` (Triton 3.6: 5.6 / 5.0 instead of 8.7 / 8.9), in
    fewer registers (128 to 214 instead of 255).  Eight rows a program also give the
    rounds in which few clusters search eight times as many programs.  The results are
    the same for any tile shape (the running minima keep the smallest column; the pairs
    are the same, listed in another order).

    ``enable_fp_fusion`` is off: every square is rounded before it is added (module
    docstring), so both kernels and the references agree bit for bit.
    """
    if on_cpu:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 1, "enable_fp_fusion": False}
    return {"BLOCK_M": 8, "BLOCK_N": 512, "num_warps": 4, "enable_fp_fusion": False}


def centroid_nn(mu_t: torch.Tensor, s2: torch.Tensor, n: int, mode: int, scale: float,
                out: torch.Tensor, nn: torch.Tensor, rows: torch.Tensor, nrows: int) -> None:
    """Each cluster's smallest bound (mode 0) or closed-form nearest neighbour (mode 1).

    Parameters
    ----------
    mu_t : torch.Tensor
        ``(d, n)`` contiguous float32/float64: column ``c`` is the centroid of cluster ``c``.
    s2 : torch.Tensor
        ``(n,)``, same dtype: mean squared distance of each cluster's tokens to its centroid.
    n : int
        Clusters.
    mode : int
        0: ``sqrt(dd + s2_a + s2_b)`` (the Euclidean upper bound); 1: ``scale * (dd + s2_a +
        s2_b)`` (the sqeuclidean / cosine closed form).
    scale : float
        Factor of mode 1 (1.0 sqeuclidean, 0.5 cosine).
    out, nn : torch.Tensor
        ``(n,)`` dtype / int64 outputs: row minimum over ``b != a`` and its smallest argmin
        (``inf`` and 0 when ``n == 1``), written for the rows scanned only.
    rows : torch.Tensor
        int32: the clusters ``a`` to scan are ``rows[:nrows]`` (the others keep ``out`` /
        ``nn`` as they are).
    nrows : int
        Number of rows to scan.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    cfg = _launch_config(mu_t.device.type == "cpu")
    if mode == 1 and float(scale) not in (0.5, 1.0):
        raise ValueError(f"scale must be 0.5 or 1.0, got {scale}")
    if nrows == 0:
        return
    grid = (triton.cdiv(nrows, cfg["BLOCK_M"]),)
    _centroid_nn_tiled_kernel[grid](mu_t, s2, out, nn, n, mu_t.shape[0], rows, nrows,
                                    MODE=int(mode), HALF=float(scale) == 0.5,
                                    IS_F32=mu_t.dtype == torch.float32,
                                    BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                    num_warps=cfg["num_warps"],
                                    enable_fp_fusion=cfg["enable_fp_fusion"])


def candidate_pairs(mu_t: torch.Tensor, s2: torch.Tensor, rad: torch.Tensor,
                    tau: torch.Tensor, n: int, rel: float, absm: float, pa: torch.Tensor,
                    pb: torch.Tensor, count: torch.Tensor, capacity: int, rows: torch.Tensor,
                    nrows: int, needy: torch.Tensor) -> None:
    """Emit the cluster pairs whose lower bound does not exceed the smaller ``tau``.

    Parameters
    ----------
    mu_t, s2 : torch.Tensor
        As in :func:`centroid_nn`.
    rad, tau : torch.Tensor
        ``(n,)`` dtype: radius bounds and the mode-0 minima of :func:`centroid_nn`.
    n : int
        Clusters.
    rel, absm : float
        Relative and absolute margins for rounding (module docstring).
    pa, pb : torch.Tensor
        int32 ``(capacity,)`` outputs: the pairs, in no particular order.
    count : torch.Tensor
        int64 ``(1,)``, zero on entry: the number of pairs (even past ``capacity``).
    capacity : int
        Room in ``pa`` / ``pb``.
    rows, nrows : torch.Tensor, int
        int32: pairs are emitted by the clusters ``rows[:nrows]`` only.
    needy : torch.Tensor
        int8 ``(n,)``: 1 for the clusters in ``rows``.  A pair with a cluster that is not
        scanned is emitted by the one that is, whatever their order.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    cfg = _launch_config(mu_t.device.type == "cpu")
    if nrows == 0:
        return
    grid = (triton.cdiv(nrows, cfg["BLOCK_M"]),)
    margins = _margins_on(float(rel), float(absm), mu_t.dtype, mu_t.device)
    _candidate_pairs_tiled_kernel[grid](mu_t, s2, rad, tau, n, mu_t.shape[0], margins, pa, pb,
                                        count, int(capacity), rows, nrows, needy,
                                        IS_F32=mu_t.dtype == torch.float32,
                                        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                        num_warps=cfg["num_warps"],
                                        enable_fp_fusion=cfg["enable_fp_fusion"])
