"""The O(n) bookkeeping of one reciprocal-nearest-neighbour round, in one launch (Triton).

Between two O(n^2) passes over the matrix (:mod:`dcpe_kernels.merge`), a round of the
reciprocal-nearest-neighbour engine (Murtagh 1983; Müllner 2011, "Modern hierarchical,
agglomerative clustering algorithms", arXiv:1109.2378), see :mod:`dcpe_kernels.rnn`, has
O(n) work on the active clusters: find the reciprocal pairs ``nn[nn[i]] == i``, record
their merges in slot order of the smaller member, and lay out the next round's slots (the
merged cluster keeps the smaller slot, the other slot disappears, clusters over the size
cap leave).  Written as PyTorch operations that is about sixty small kernels per round;
here it is one single-program kernel that walks the clusters in blocks and carries two
running counts (merges recorded, slots kept), so a round costs two launches and one
synchronisation.  The kernel is a chain of blocks, each waiting on the one before, so its
time is the number of blocks times one block's latency: both counts of a block come from
one scan (packed into the two halves of an int32, as the CUDA kernel packs them into an
int64) and its totals from the last prefix count, one reduction instead of two scans and
two sums, and each block's nearest neighbours are loaded while the block before it is
scanned.

Inputs (``n`` active clusters): ``nn``/``nnd`` the row argmin/min of the current matrix,
``size``, ``rep`` (smallest token index), ``hfix`` (monotone height of each cluster).
Outputs:

* merge records at ``m, m + 1, ...`` of ``m_a, m_b, m_h, m_hf, m_s``: the two
  representatives, the height ``nnd[a]``, the monotone height
  ``max(nnd[a], hfix[a], hfix[b])`` and the merged size;
* the next round's slots ``0 .. n_new - 1``: old slot ``p``, merged partner ``q`` (or -1),
  the Lance–Williams weights ``wp, wq`` and the new ``size``, ``rep``, ``hfix``;
* the round's record ``counts = [pairs, n_new, below, m_next, status, n]`` (int64):
  ``below`` is the number of the first ``m`` recorded merges whose monotone height is below
  every entry of the current matrix (the early-stop test of
  :func:`dcpe_kernels.rnn.rnn_merges`), 0 unless asked for; ``m_next`` the merges recorded
  once this round counts (``m + pairs``, or ``m`` when the rounds stop early here);
  ``status`` what comes next (:data:`GO`, :data:`FINISHED`, :data:`EARLY_STOP`,
  :data:`NO_PAIR`; with ``need``, the number of merges a flat cut needs); ``n`` the
  order of this round's matrix, which the round's merge reads as the old row stride.

Chained rounds.  Given ``prev``, the record of the round before, a round takes ``n``
(``prev[1]``), ``m`` (``prev[3]``) and the early-stop test (``m >= need``) from the device
instead of the host; after a round whose status is not :data:`GO` it does nothing and
passes that status on (``n_new = 0``, so that its merge does nothing either).  The host can
then launch several rounds before it reads the first one's record
(:func:`dcpe_kernels.rnn.chained_rounds`).

Weights: average linkage ``wp = n_p / (n_p + n_q)`` and ``wq = n_q / (n_p + n_q)``
computed in float64 and rounded once to the compute dtype, as the ``cpu`` engine does;
weighted (and single / complete, which ignore them) ``1/2, 1/2``; an unmerged slot
``1, 0``.  The kernel and :func:`_reference_round_scan` produce the same bits.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, tl, triton

__all__ = ["_reference_round_scan", "round_scan"]

#: the kernel's cap when there is none: no cluster is larger (N < 2**31); an int32 value
#: either way, so the kernel compiles with one signature
_NO_CAP = (1 << 31) - 1

#: ``status`` of a round's record: another round follows
GO = 0
#: the round merged, and fewer than two clusters remain that can merge
FINISHED = 1
#: the merges a flat cut needs were known before this round (its merges do not count)
EARLY_STOP = 2
#: no reciprocal pair among two or more clusters (non-finite dissimilarities)
NO_PAIR = 3
#: entries of a round's record
RECORD = 6


def _status(pairs: int, n_new: int, below: int, check: bool, need: int) -> int:
    """A round's status from its counts (the order the host used to test them)."""
    if check and need >= 0 and below >= need:
        return EARLY_STOP
    if pairs == 0:
        return NO_PAIR
    return FINISHED if n_new < 2 else GO


def _reference_round_scan(n: int, nn: torch.Tensor, nnd: torch.Tensor, size: torch.Tensor,
                          rep: torch.Tensor, hfix: torch.Tensor, m_a: torch.Tensor,
                          m_b: torch.Tensor, m_h: torch.Tensor, m_hf: torch.Tensor,
                          m_s: torch.Tensor, m: int, check: bool, cap: int, average: bool,
                          p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor,
                          size_out: torch.Tensor, rep_out: torch.Tensor,
                          hfix_out: torch.Tensor, counts: torch.Tensor,
                          prev: torch.Tensor | None = None, need: int = -1) -> None:
    """PyTorch reference of :func:`round_scan` (same arguments, same results)."""
    if prev is not None:  # a chained round: n, m and the early-stop test from the device
        n, m, before = int(prev[1]), int(prev[3]), int(prev[4])
        if before != GO:
            counts[:RECORD] = torch.tensor([0, 0, 0, m, before, 0], dtype=counts.dtype)
            return
        check = need >= 0 and m >= need
    dev, dt, i64 = nnd.device, nnd.dtype, torch.int64
    ar = torch.arange(n, dtype=i64, device=dev)
    partner = nn[:n]
    size_, rep_, hfix_ = size[:n], rep[:n], hfix[:n]
    recip = partner.gather(0, partner) == ar
    is_a = recip & (ar < partner)
    is_b = recip & (ar > partner)
    size_p = size_.gather(0, partner)
    size_new = torch.where(is_a, size_ + size_p, size_)
    keep = ~is_b
    if cap > 0:
        keep &= size_new <= cap
    below = (m_hf[:m] < nnd[:n].min()).sum() if check else torch.zeros((), dtype=i64, device=dev)
    n_pairs, n_new = int(is_a.sum()), int(keep.sum())
    hraw = nnd[:n]
    hf = torch.maximum(torch.maximum(hraw, hfix_), hfix_.gather(0, partner))
    rec = torch.nonzero(is_a).flatten()
    sl = slice(m, m + n_pairs)
    m_a[sl] = rep_[rec]
    m_b[sl] = rep_.gather(0, partner)[rec]
    m_h[sl] = hraw[rec]
    m_hf[sl] = hf[rec]
    m_s[sl] = size_new[rec]
    slots = torch.nonzero(keep).flatten()
    merged = is_a[slots]
    part = partner[slots]
    p[:n_new] = slots.to(p.dtype)
    q[:n_new] = torch.where(merged, part, -1).to(q.dtype)
    if average:
        nsf = size_new[slots].to(torch.float64)
        wp[:n_new] = (size_[slots].to(torch.float64) / nsf).to(dt)
        wq[:n_new] = torch.where(merged, size_p[slots].to(torch.float64) / nsf, 0.0).to(dt)
    else:
        wp[:n_new] = torch.where(merged, 0.5, 1.0).to(dt)
        wq[:n_new] = torch.where(merged, 0.5, 0.0).to(dt)
    size_out[:n_new] = size_new[slots]
    rep_out[:n_new] = rep_[slots]
    hfix_out[:n_new] = torch.where(is_a, hf, hfix_)[slots]
    below = int(below)
    status = _status(n_pairs, n_new, below, check, need)
    m_next = m if status == EARLY_STOP else m + n_pairs
    counts[:RECORD] = torch.tensor([n_pairs, n_new, below, m_next, status, n],
                                   dtype=counts.dtype)


if HAS_TRITON:

    # one compile per dtype and mode: no specialisation on the sizes, flags tested at run
    # time
    @triton.jit(do_not_specialize=["n", "m", "cap", "check", "average", "need"])
    def _round_scan_oneblock_kernel(nn_ptr, nnd_ptr, size_ptr, rep_ptr, hfix_ptr, ma_ptr,
                                    mb_ptr, mh_ptr, mhf_ptr, ms_ptr, p_ptr, q_ptr, wp_ptr,
                                    wq_ptr, size_out_ptr, rep_out_ptr, hfix_out_ptr,
                                    counts_ptr, n, m, cap, check, average, prev_ptr, need,
                                    CHAINED: tl.constexpr, BLOCK: tl.constexpr):
        tl.static_assert(BLOCK < 65536)
        offs = tl.arange(0, BLOCK)
        first = offs == 0
        dtype = nnd_ptr.dtype.element_ty
        before = 0
        if CHAINED:  # n, m and the early-stop test from the round before, on the device
            before = tl.load(prev_ptr + 4)
            n = tl.where(before == 0, tl.load(prev_ptr + 1), 0).to(tl.int32)
            m = tl.load(prev_ptr + 3).to(tl.int32)
            check = ((before == 0) & (need >= 0) & (m >= need)).to(tl.int32)
        below = tl.zeros([BLOCK], dtype=tl.int64)
        if check != 0:
            lo = tl.full([BLOCK], float("inf"), dtype)
            for s in range(0, n, BLOCK):
                i = s + offs
                lo = tl.minimum(lo, tl.load(nnd_ptr + i, mask=i < n, other=float("inf")))
            t = tl.min(lo, axis=0)
            for s in range(0, m, BLOCK):
                i = s + offs
                h = tl.load(mhf_ptr + i, mask=i < m, other=float("inf"))
                below += (h < t).to(tl.int64)
        pairs = tl.zeros([BLOCK], dtype=tl.int64)  # running totals, broadcast over lanes
        kept = tl.zeros([BLOCK], dtype=tl.int64)
        # each block's nearest neighbours are loaded one block ahead: a block then waits for
        # one level of loads (those at its partners), not two
        ahead = tl.load(nn_ptr + offs, mask=offs < n, other=0)
        for s in range(0, n, BLOCK):
            i = (s + offs).to(tl.int64)
            valid = i < n
            partner = ahead
            ahead = tl.load(nn_ptr + i + BLOCK, mask=i + BLOCK < n, other=0)
            back = tl.load(nn_ptr + partner, mask=valid, other=-1)
            recip = valid & (back == i)
            is_a = recip & (i < partner)
            is_b = recip & (i > partner)
            sz = tl.load(size_ptr + i, mask=valid, other=0)
            szp = tl.load(size_ptr + partner, mask=valid, other=0)
            size_new = tl.where(is_a, sz + szp, sz)
            keep = valid & (is_b == 0) & (size_new <= cap)
            # both counts in one int32 scan: pairs in the high half, kept slots in the low
            # half (a block holds fewer than 2**16 clusters, so the halves never carry)
            both = is_a.to(tl.int32) * 65536 + keep.to(tl.int32)
            incl = tl.cumsum(both, axis=0)
            excl = (incl - both).to(tl.int64)  # exclusive prefix counts
            a_pos = pairs + (excl >> 16)
            k_pos = kept + (excl & 65535)
            hraw = tl.load(nnd_ptr + i, mask=valid, other=0.0)
            hf_own = tl.load(hfix_ptr + i, mask=valid, other=0.0)
            hf = tl.maximum(tl.maximum(hraw, hf_own), tl.load(hfix_ptr + partner, mask=valid,
                                                              other=0.0))
            rep_own = tl.load(rep_ptr + i, mask=valid, other=0)
            rec = m + a_pos
            tl.store(ma_ptr + rec, rep_own, mask=is_a)
            tl.store(mb_ptr + rec, tl.load(rep_ptr + partner, mask=is_a, other=0), mask=is_a)
            tl.store(mh_ptr + rec, hraw, mask=is_a)
            tl.store(mhf_ptr + rec, hf, mask=is_a)
            tl.store(ms_ptr + rec, size_new, mask=is_a)
            tl.store(p_ptr + k_pos, i.to(tl.int32), mask=keep)
            tl.store(q_ptr + k_pos, tl.where(is_a, partner, -1).to(tl.int32), mask=keep)
            if average != 0:
                nsf = tl.where(keep, size_new, 1).to(tl.float64)
                wpv = (sz.to(tl.float64) / nsf).to(dtype)
                wqv = tl.where(is_a, szp.to(tl.float64) / nsf, 0.0).to(dtype)
            else:
                wpv = tl.where(is_a, 0.5, 1.0).to(dtype)
                wqv = tl.where(is_a, 0.5, 0.0).to(dtype)
            tl.store(wp_ptr + k_pos, wpv, mask=keep)
            tl.store(wq_ptr + k_pos, wqv, mask=keep)
            tl.store(size_out_ptr + k_pos, size_new, mask=keep)
            tl.store(rep_out_ptr + k_pos, rep_own, mask=keep)
            tl.store(hfix_out_ptr + k_pos, tl.where(is_a, hf, hf_own), mask=keep)
            total = tl.max(incl, axis=0).to(tl.int64)  # the last inclusive count
            pairs += total >> 16
            kept += total & 65535
        below_all = tl.sum(below, axis=0) + tl.zeros_like(below)
        early = (check != 0) & (need >= 0) & (below_all >= need)
        status = tl.where(early, 2, tl.where(pairs == 0, 3, tl.where(kept < 2, 1, 0)))
        if CHAINED:  # a round after the last one passes its status on
            status = tl.where(before != 0, before, status)
        tl.store(counts_ptr + offs, pairs, mask=first)
        tl.store(counts_ptr + 1 + offs, kept, mask=first)
        tl.store(counts_ptr + 2 + offs, below_all, mask=first)
        tl.store(counts_ptr + 3 + offs, tl.where(early, 0, pairs) + m, mask=first)
        tl.store(counts_ptr + 4 + offs, status.to(tl.int64), mask=first)
        tl.store(counts_ptr + 5 + offs, tl.zeros_like(pairs) + n, mask=first)

else:  # pragma: no cover - exercised only without triton
    _round_scan_oneblock_kernel = None


def _launch_config(on_cpu: bool) -> dict[str, int]:
    """One program; blocks of 64 clusters under the interpreter (so that tests cross block
    boundaries), 1024 on a GPU.  Divisions are IEEE float64 (``div.rn.f64``) either way."""
    if on_cpu:
        return {"BLOCK": 64, "num_warps": 1}
    return {"BLOCK": 1024, "num_warps": 8}


def round_scan(n: int, nn: torch.Tensor, nnd: torch.Tensor, size: torch.Tensor,
               rep: torch.Tensor, hfix: torch.Tensor, m_a: torch.Tensor, m_b: torch.Tensor,
               m_h: torch.Tensor, m_hf: torch.Tensor, m_s: torch.Tensor, m: int, check: bool,
               cap: int, average: bool, p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor,
               wq: torch.Tensor, size_out: torch.Tensor, rep_out: torch.Tensor,
               hfix_out: torch.Tensor, counts: torch.Tensor,
               prev: torch.Tensor | None = None, need: int = -1) -> None:
    """Reciprocal pairs, merge records and next slots of one round, in one launch.

    Parameters
    ----------
    n : int
        Active clusters (>= 2).
    nn, nnd : torch.Tensor
        int64 / compute dtype ``(>= n,)``: row argmin and minimum of the current matrix.
    size, rep, hfix : torch.Tensor
        int64, int64, compute dtype ``(>= n,)``: cluster sizes, smallest token index and
        monotone height.
    m_a, m_b, m_h, m_hf, m_s : torch.Tensor
        Merge records (int64, int64, dtype, dtype, int64); this round's go to ``m ..``.
    m : int
        Merges recorded so far.
    check : bool
        Also count the recorded merges below the current matrix's minimum (``counts[2]``).
    cap : int
        Size cap; 0 for none.
    average : bool
        Size-fraction weights (average linkage); else halves.
    p, q : torch.Tensor
        int32 outputs: old slot and merged partner (-1 if none) of each new slot.
    wp, wq : torch.Tensor
        Compute-dtype outputs: the weights of ``p`` and ``q``.
    size_out, rep_out, hfix_out : torch.Tensor
        The new slots' size, representative and monotone height (not aliasing the inputs).
    counts : torch.Tensor
        int64 ``(6,)`` output, the round's record: pairs merged, slots kept, recorded merges
        below the minimum, merges recorded once the round counts, status, ``n``.
    prev : torch.Tensor, optional
        The record of the round before, on the device: a chained round (module docstring).
        ``n``, ``m`` and ``check`` given are then ignored (``n`` an upper bound of the
        order, for the caller's own grids).
    need : int
        Merges a flat cut needs (the early-stop test, ``status``); -1 for none.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    cfg = _launch_config(nnd.device.type == "cpu")
    cap_arg = min(int(cap), _NO_CAP) if cap > 0 else _NO_CAP
    _round_scan_oneblock_kernel[(1,)](nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, p, q,
                                      wp, wq, size_out, rep_out, hfix_out, counts, n, m, cap_arg,
                                      int(bool(check)), int(bool(average)),
                                      counts if prev is None else prev, int(need),
                                      CHAINED=prev is not None, BLOCK=cfg["BLOCK"],
                                      num_warps=cfg["num_warps"])
