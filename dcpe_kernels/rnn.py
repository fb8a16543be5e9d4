"""Reciprocal-nearest-neighbour (RNN) rounds for exact agglomerative clustering on a device.

Algorithm
---------
Reciprocal nearest neighbours (Murtagh 1983, "A survey of recent advances in
hierarchical clustering algorithms", The Computer Journal 26(4); Müllner 2011, "Modern
hierarchical, agglomerative clustering algorithms", arXiv:1109.2378): for a *reducible*
linkage (average, single, complete, weighted) every pair of active clusters that are each
other's nearest neighbour is a merge of the greedy dendrogram, and all disjoint such pairs
can be merged at once.  One round is

1. the nearest neighbour of every active cluster (row argmin of the dense dissimilarity
   matrix, ties to the smallest slot), produced by the previous kernel as a by-product;
2. the reciprocal pairs ``(a, b)`` with ``nn[a] == b`` and ``nn[b] == a``, their merge
   records and the next round's slots (one O(n) kernel, :mod:`dcpe_kernels.round`, then
   the round's only host synchronisation: three counts);
3. one fused kernel that writes the merged *and* compacted matrix of the next round
   (the merged cluster takes the smaller slot, the other slot disappears, clusters over the
   size cap are dropped) and, while doing so, the row minima of the new matrix.

Once a second matrix of the current order is held (from the second round on, when two
matrices fit the budget), the rounds are *chained* on the device (:func:`chained_rounds`):
step 2 reads the round's order, the merges recorded so far and the early-stop test from
the record the round before left on the device, and step 3 reads the old and new orders
from the round's own record.  No launch then needs the host to have read a count, and the
host keeps several rounds queued (``_ROUNDS_AHEAD``), reading each round's record (its one
synchronisation) while the device runs the rounds after it; the grids are sized by the
last order read, an upper bound.  Rounds queued after the last one do nothing.  Before,
each round waited for the host once (the merge launched ahead of the counts, whose copy
alone the host waited for: ``_ROUNDS_AHEAD = 1``) or twice (``_MERGE_AHEAD = False``); the
merges are the same bit for bit in all three.

Lance–Williams with two merged clusters on both sides is applied in one step; for average
linkage ``d(A1 ∪ A2, C1 ∪ C2) = Σ n_Ai n_Cj d(Ai, Cj) / (n_A n_C)``.  Under the strict order
(distance, slot) the globally closest pair is always reciprocal, so every round merges at
least one pair.  Slots stay sorted by the smallest token index of their cluster, hence
"smallest slot" and "smallest token index" coincide and the tie rule of
:mod:`dcpe.backends` holds.

Each merge is recorded as ``(rep_a, rep_b, height, monotone height, size)`` where ``rep``
is the smallest token index.  Sorting the merges by (monotone height, discovery order)
gives the greedy order; :func:`merges_to_linkage` turns it into SciPy's format and
:func:`merges_to_labels` cuts it on the device.

Early stop for a flat cut.  Every merge still to come joins clusters whose pairwise
dissimilarities are all at least ``T``, the smallest entry of the current matrix, so its
height (a weighted mean, min or max of such entries) and its monotone height are at least
``T``; merges of earlier rounds with monotone height below ``T`` therefore precede it in
greedy order.  Once ``N - k`` recorded merges lie strictly below ``T`` the first ``N - k``
merges of the greedy order are known, and rounds stop (``n_clusters=k``).  On codebooks at
``k = N/2`` this skips about half of the rounds: the late rounds merge clusters that are
far apart.

This module is pure PyTorch: the kernels are passed in as an :class:`RNNOps` (Triton in
:mod:`dcpe_kernels`, CUDA C++ in ``dcpe._C``, or the PyTorch references).
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "METHOD_MODES",
    "METRIC_CODES",
    "Merges",
    "RNNOps",
    "allocator_bytes",
    "allocator_fit",
    "blas_workspace_bytes",
    "memory_available",
    "merges_to_labels",
    "merges_to_linkage",
    "rnn_merges",
    "required_bytes",
    "supported_or_raise",
]

#: linkage -> (kernel mode, weighting). Mode 0: weighted sum, 1: min, 2: max.
METHOD_MODES: dict[str, int] = {"average": 0, "weighted": 0, "single": 1, "complete": 2}
#: metric -> kernel code. 0: sqrt(sum (a-b)^2), 1: sum (a-b)^2, 2: sum (u-v)^2 / 2 on unit rows.
METRIC_CODES: dict[str, int] = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


class RNNOps(Protocol):
    """The three kernels an RNN engine needs (all tensors on one device, contiguous)."""

    def pairwise_nn(self, x: torch.Tensor, out: torch.Tensor, ld: int, metric: int,
                    nn: torch.Tensor, nnd: torch.Tensor) -> None:
        """Write the (n, n) dissimilarity matrix of the rows of ``x`` into ``out``
        (row stride ``ld``, +inf on the diagonal) and each row's argmin/min into
        ``nn[:n]``/``nnd[:n]``."""

    def merge_compact_nn(self, src: torch.Tensor, ld_src: int, dst: torch.Tensor,
                         ld_dst: int, p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor,
                         wq: torch.Tensor, n_new: int, row0: int, nrows: int, mode: int,
                         nn: torch.Tensor, nnd: torch.Tensor,
                         count: torch.Tensor | None = None) -> None:
        """Write rows ``row0 .. row0+nrows-1`` of the next round's matrix into ``dst``
        (local row ``r`` at ``dst[r * ld_dst:]``), and their argmin/min into
        ``nn``/``nnd`` at the global row index.  With ``count`` (``round_scan``'s counts,
        on the device) the order ``n_new`` is ``count[1]``, read by the kernel, and all its
        rows are written at row stride ``n_new``; ``n_new`` and ``nrows`` given are then an
        upper bound and ``row0`` is 0."""

    def round_scan(self, n: int, nn: torch.Tensor, nnd: torch.Tensor, size: torch.Tensor,
                   rep: torch.Tensor, hfix: torch.Tensor, m_a: torch.Tensor, m_b: torch.Tensor,
                   m_h: torch.Tensor, m_hf: torch.Tensor, m_s: torch.Tensor, m: int,
                   check: bool, cap: int, average: bool, p: torch.Tensor, q: torch.Tensor,
                   wp: torch.Tensor, wq: torch.Tensor, size_out: torch.Tensor,
                   rep_out: torch.Tensor, hfix_out: torch.Tensor, counts: torch.Tensor) -> None:
        """Reciprocal pairs, merge records and the next round's slots
        (:func:`dcpe_kernels.round.round_scan`)."""


def supported_or_raise(method: str, metric: str, backend: str) -> tuple[int, int]:
    """Return ``(mode, metric_code)`` or raise ``ValueError`` naming what is supported."""
    if method not in METHOD_MODES:
        raise ValueError(
            f"linkage={method!r} is not supported by the {backend!r} backend (its reciprocal-"
            f"nearest-neighbour kernels merge by Lance-Williams updates of the matrix); "
            f"supported: {sorted(METHOD_MODES)}. Use backend='cpu' for other linkages "
            f"(backend='auto' does so).")
    if metric not in METRIC_CODES:
        raise ValueError(f"metric={metric!r} is not supported by the {backend!r} backend; "
                         f"supported: {sorted(METRIC_CODES)}")
    return METHOD_MODES[method], METRIC_CODES[metric]


#: PyTorch's CUDA caching allocator (default settings): requests are rounded up to
#: multiples of 512 bytes; those past 1 MiB come from the large pool, whose blocks are split
#: only when more than 1 MiB would be left, so that such a tensor may hold (and
#: ``torch.cuda.max_memory_allocated`` count) up to 1 MiB more than it asked for.
_ALLOC_ROUND = 512
_ALLOC_SMALL = 1 << 20
#: with ``max_split_size_mb``, a request of at least that size takes a cached block less
#: than this many bytes (``max_non_split_rounding_mb``, at least 20 MiB) larger, unsplit
_ALLOC_NON_SPLIT = 20 << 20


@functools.lru_cache(maxsize=8)
def _allocator_settings(conf: str) -> tuple[int, int, int]:
    """``(divisions, max_split, non_split)`` of an allocator configuration string (the
    keys of ``PYTORCH_CUDA_ALLOC_CONF`` that change how much a tensor may hold): the
    fewest divisions of ``roundup_power2_divisions`` past 1 (the coarsest rounding of any
    size interval; 0: none), ``max_split_size_mb`` and ``max_non_split_rounding_mb`` in
    bytes (no limit, 20 MiB by default).  ``expandable_segments`` splits every block, which
    the default bound covers."""
    conf = conf.replace(" ", "")
    divisions = 0
    m = re.search(r"roundup_power2_divisions:(\[[^\]]*\]|[0-9]+)", conf)
    if m:
        given = m.group(1)
        values = ([int(v) for v in re.findall(r":([0-9]+)", given)] if given.startswith("[")
                  else [int(given)])
        divisions = min((v for v in values if v > 1), default=0)
    m = re.search(r"max_split_size_mb:([0-9]+)", conf)
    max_split = int(m.group(1)) << 20 if m else 1 << 62
    m = re.search(r"max_non_split_rounding_mb:([0-9]+)", conf)
    non_split = max(_ALLOC_NON_SPLIT, int(m.group(1)) << 20 if m else 0)
    return divisions, max_split, non_split


def allocator_bytes(nbytes: int) -> int:
    """The most bytes PyTorch's CUDA caching allocator counts for one tensor of ``nbytes``.

    With its default settings: ``nbytes`` rounded up to 512, plus 1 MiB past 1 MiB (the
    rest of a block it does not split).  ``PYTORCH_CUDA_ALLOC_CONF`` (or
    ``PYTORCH_ALLOC_CONF``), as set in the environment, changes the bound where it changes
    the allocator: ``roundup_power2_divisions`` rounds a request up to a division of its
    power-of-two interval (the coarsest division given counts for every size), and with
    ``max_split_size_mb`` a request of at least that size may hold a cached block up to
    ``max_non_split_rounding_mb`` (20 MiB by default) larger.  Every budget of both engines
    counts tensors so.
    """
    if nbytes <= 0:
        return 0
    divisions, max_split, non_split = _allocator_settings(
        os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + ","
        + os.environ.get("PYTORCH_ALLOC_CONF", ""))
    size = max(nbytes, _ALLOC_ROUND)
    step = _ALLOC_ROUND
    if divisions and size > _ALLOC_ROUND * divisions and size & (size - 1):
        step = (1 << (size.bit_length() - 1)) // divisions
    size = -(-size // step) * step
    if size <= _ALLOC_SMALL:
        return size
    return size + (non_split if size >= max_split else _ALLOC_SMALL)


def allocator_fit(room: int) -> int:
    """The most bytes of one tensor whose :func:`allocator_bytes` fit ``room`` (a multiple
    of 512; 0 if none)."""
    lo, hi = 0, max(0, room) // _ALLOC_ROUND  # in units of 512 bytes; the count only grows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if allocator_bytes(mid * _ALLOC_ROUND) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo * _ALLOC_ROUND


#: cuBLAS's workspace, which PyTorch takes from the caching allocator at the first matrix
#: product of a (handle, stream) and keeps for the process: ``CUBLAS_WORKSPACE_CONFIG``
#: (``:SIZE:COUNT`` pairs, SIZE in KiB, summed) or else 4096 KiB x 8, PyTorch's default on
#: Hopper and the largest of its defaults on NVIDIA devices (others: 8 MiB + 128 KiB)
_CUBLAS_WORKSPACE = 4096 * 8 * 1024


def blas_workspace_bytes(device: torch.device | str | None) -> int:
    """The most bytes the caching allocator may count for the cuBLAS workspace that a
    matrix product on ``device`` allocates (0 off CUDA, and ``None``).

    PyTorch allocates it at the first product on a stream and keeps it, so a run that
    takes products counts it in full: it may be the one that allocates it.
    """
    if device is None or torch.device(device).type != "cuda":
        return 0
    size = _CUBLAS_WORKSPACE
    pairs = re.findall(r":([0-9]+):([0-9]+)", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    if pairs:
        size = sum(int(kib) * 1024 * int(count) for kib, count in pairs)
    return allocator_bytes(size)


def required_bytes(n: int, d: int, itemsize: int) -> int:
    """Device bytes the engine needs at least for ``n`` rows of dimension ``d``.

    The dense ``n x n`` matrix, a copy of the data, 24 words per row for the round state,
    the nearest neighbours and the merges returned (about 21 in float64, counted as 24
    tensors of a word per row), and one staging row, each as the caching allocator counts
    it (:func:`allocator_bytes`).  A second, smaller matrix is used only when it fits (see
    :func:`rnn_merges`).
    """
    return (allocator_bytes(n * n * itemsize) + allocator_bytes(n * d * itemsize)
            + 24 * allocator_bytes(8 * n) + allocator_bytes(n * itemsize))


def memory_available(device: torch.device) -> int:
    """Bytes that a new allocation on ``device`` can use (free + cached by PyTorch)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    try:  # host memory (interpreter runs)
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def budget_for(dev: torch.device, memory_budget: int | None, needed: int, what: str) -> int:
    """The bytes an engine may use on ``dev`` (``memory_budget``, or what the device reports
    free); raise :class:`InsufficientMemoryError` for ``what`` if ``needed`` exceeds them."""
    avail = memory_available(dev) if memory_budget is None else int(memory_budget)
    if needed > avail:
        raise _insufficient(needed, avail, what)
    return avail


def _no_pair(backend: str, n: int) -> RuntimeError:
    """A round of ``n`` clusters found no reciprocal pair (the order is strict otherwise)."""
    return RuntimeError(f"{backend} backend: no reciprocal nearest-neighbour pair among {n} "
                        f"clusters (non-finite dissimilarities?)")


def _insufficient(needed: int, available: int, what: str, hint: str = "") -> Exception:
    try:
        from dcpe._errors import InsufficientMemoryError
    except ImportError:  # the package is used without its Python half
        return MemoryError(f"{what}: needs {needed} bytes, {available} available")
    return InsufficientMemoryError(needed, available, what, hint)


@dataclass
class Merges:
    """Merges in discovery order, on the device. ``m`` merges, ``n`` leaves."""

    n: int
    rep_a: torch.Tensor  # int64 (m,), smallest token index of the first cluster (the smaller)
    rep_b: torch.Tensor  # int64 (m,)
    height: torch.Tensor  # (m,) compute dtype, dissimilarity at the merge
    hmono: torch.Tensor  # (m,) height made monotone up the tree: max(own, children)
    size: torch.Tensor  # int64 (m,)
    rounds: int = 0
    #: how many merges of the greedy order are known (``m``, or fewer after an early stop)
    known: int = -1
    #: False when the rounds stopped early for a flat cut (``rnn_merges(n_clusters=...)``)
    complete: bool = True

    def __post_init__(self) -> None:
        if self.known < 0:
            self.known = self.m

    @classmethod
    def none(cls, n: int, dev: torch.device, dt: torch.dtype) -> Merges:
        """No merges (fewer than two leaves)."""
        e = torch.empty(0, dtype=torch.int64, device=dev)
        return cls(n, e, e.clone(), torch.empty(0, dtype=dt, device=dev),
                   torch.empty(0, dtype=dt, device=dev), e.clone())

    @property
    def m(self) -> int:
        return int(self.rep_a.shape[0])

    def greedy_order(self) -> torch.Tensor:
        """Permutation sorting merges into greedy order: (monotone height, discovery)."""
        return torch.sort(self.hmono, stable=True).indices


#: launch a round's merge before the host reads the round's counts, once a second matrix
#: of the current order is held (:func:`dense_rounds`); False reads the counts first in
#: every round (the same merges; kept to measure the difference)
_MERGE_AHEAD = True


#: from the second round on (two matrices held), launch this many rounds before reading the
#: first one's record: each round reads its order and its merges so far from the record of
#: the round before, on the device (:func:`chained_rounds`); 1 reads every round's counts
#: before the next is launched (the same merges; kept to measure the difference)
_ROUNDS_AHEAD = 4


def _view_rows(buf: torch.Tensor, ld: int, row0: int, nrows: int, ncols: int) -> torch.Tensor:
    return buf.as_strided((nrows, ncols), (ld, 1), row0 * ld)


def rnn_merges(x: torch.Tensor, *, method: str, metric: str, max_cluster_size: int | None,
               ops: RNNOps, backend: str = "triton", n_clusters: int | None = None,
               memory_budget: int | None = None) -> Merges:
    """Run RNN rounds to completion and return all merges in discovery order.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32 or float64, finite, on the device the kernels run on.
    method, metric : str
        A linkage of :data:`METHOD_MODES` and a metric of :data:`METRIC_CODES`.
    max_cluster_size : int or None
        Clusters larger than this take no further part in merging.
    ops : RNNOps
        The kernels.
    backend : str
        Name used in error messages.
    n_clusters : int, optional
        Stop as soon as the first ``N - n_clusters`` merges of the greedy order are known
        (see the module docstring); the result is then a *partial* :class:`Merges`
        (``complete`` is False) that :func:`merges_to_labels` cuts at ``n_clusters`` or
        more clusters only.  Default: run to completion.
    memory_budget : int, optional
        Bytes the engine may use; default: what the device reports free.  Exposed so that
        tests can force the in-place (staged) compaction used when a second matrix does
        not fit.

    Returns
    -------
    Merges
        In discovery order; all merges, or with ``n_clusters`` at least the first
        ``N - n_clusters`` of the greedy order.

    Raises
    ------
    InsufficientMemoryError
        Before allocating anything, when the dense matrix cannot fit.
    """
    mode, metric_code = supported_or_raise(method, metric, backend)
    dev, dt = x.device, x.dtype
    n_all, dim = int(x.shape[0]), int(x.shape[1])
    itemsize = x.element_size()
    i64 = torch.int64

    if n_all < 2:
        return Merges.none(n_all, dev, dt)

    needed = required_bytes(n_all, dim, itemsize)
    avail = budget_for(dev, memory_budget, needed,
                       f"{backend} backend: {n_all}x{n_all} {str(dt).replace('torch.', '')} "
                       f"dissimilarity matrix")

    xs = x.contiguous()
    if metric == "cosine":
        # cosine distance = |u - v|^2 / 2 on unit rows; a zero row stays at the origin
        # (distance 0.5 to every unit vector), as in the reference backend
        norms = torch.linalg.vector_norm(xs, dim=1)
        xs = xs / torch.where(norms > 0, norms, 1)[:, None]

    cur = torch.empty(n_all * n_all, dtype=dt, device=dev)
    # the preflight's count, not the matrix alone: the round state, the data's copy and the
    # staging row are alive too (what is left goes to a second matrix or to staging rows)
    used = needed
    ld = n_all
    nn = torch.empty(n_all, dtype=i64, device=dev)
    nnd = torch.empty(n_all, dtype=dt, device=dev)
    ops.pairwise_nn(xs, cur, ld, metric_code, nn, nnd)
    del xs

    st = RoundState.new(n_all, dev, dt, max_cluster_size, n_clusters, method == "average")
    dense_rounds(st, ops, cur, ld, n_all, nn, nnd, mode, avail, used, backend)
    return st.merges()


@dataclass
class RoundState:
    """Cluster state and merge records of the rounds, on the device.

    Shared by the dense rounds (:func:`dense_rounds`) and the matrix-free rounds of
    :mod:`dcpe_kernels.linear`, which hand their state over to the dense rounds.  Slot
    ``i < n`` of the current round has ``size[i]``, ``rep[i]`` (smallest token index) and
    ``hfix[i]`` (monotone height); ``*2`` are the next round's, written by ``round_scan``.
    """

    n_all: int
    size: torch.Tensor
    rep: torch.Tensor
    hfix: torch.Tensor
    size2: torch.Tensor
    rep2: torch.Tensor
    hfix2: torch.Tensor
    m_a: torch.Tensor
    m_b: torch.Tensor
    m_h: torch.Tensor
    m_hf: torch.Tensor
    m_s: torch.Tensor
    p32: torch.Tensor
    q32: torch.Tensor
    wp: torch.Tensor
    wq: torch.Tensor
    counts: torch.Tensor
    cap: int
    need: int | None
    average: bool
    m: int = 0
    rounds: int = 0
    known: int = 0
    complete: bool = True
    stop_check: bool = False
    _host: torch.Tensor | None = None  # pinned copy of ``counts`` (CUDA, see :meth:`scan`)
    _ready: Any = None  # CUDA event: the copy is done

    @classmethod
    def new(cls, n_all: int, dev: torch.device, dt: torch.dtype, max_cluster_size: int | None,
            n_clusters: int | None, average: bool) -> RoundState:
        i64 = torch.int64
        rep = torch.arange(n_all, dtype=i64, device=dev)
        size = torch.ones(n_all, dtype=i64, device=dev)
        hfix = torch.zeros(n_all, dtype=dt, device=dev)
        return cls(
            n_all, size, rep, hfix, torch.empty_like(size), torch.empty_like(rep),
            torch.empty_like(hfix),
            # merge records, in discovery order
            torch.empty(n_all, dtype=i64, device=dev), torch.empty(n_all, dtype=i64, device=dev),
            torch.empty(n_all, dtype=dt, device=dev), torch.empty(n_all, dtype=dt, device=dev),
            torch.empty(n_all, dtype=i64, device=dev),
            # slots of the next round: old slot, merged partner, Lance-Williams weights
            torch.empty(n_all, dtype=torch.int32, device=dev),
            torch.empty(n_all, dtype=torch.int32, device=dev),
            torch.empty(n_all, dtype=dt, device=dev), torch.empty(n_all, dtype=dt, device=dev),
            torch.empty(6, dtype=i64, device=dev),  # the round's record (round_scan)
            0 if max_cluster_size is None else int(max_cluster_size),
            None if n_clusters is None else max(0, n_all - int(n_clusters)),
            average)

    def scan(self, ops: Any, n: int, nn: torch.Tensor, nnd: torch.Tensor,
             extra: Any = None, then: Any = None) -> list[int]:
        """Launch the round's bookkeeping and synchronise once: ``[pairs, n_new, below]``
        followed by the values of ``extra()`` (a callable returning int64 tensors, called
        after the bookkeeping is launched; read in the same transfer).

        ``then()``, if given, launches work that reads the counts on the device (the
        round's merge, :func:`dense_rounds`).  On a CUDA device it is launched after the
        counts' copy to the host is queued and before the host waits for that copy alone,
        so the device runs it while the host reads the counts and prepares the next round;
        the work must be harmless when the rounds end here."""
        # merges recorded so far below every merge still to come?
        self.stop_check = self.need is not None and self.m >= self.need
        ops.round_scan(n, nn, nnd, self.size, self.rep, self.hfix, self.m_a, self.m_b,
                       self.m_h, self.m_hf, self.m_s, self.m, self.stop_check, self.cap,
                       self.average, self.p32, self.q32, self.wp, self.wq, self.size2,
                       self.rep2, self.hfix2, self.counts)
        counts = self.counts[:3]
        if extra is not None:
            return torch.cat([counts, *extra()]).tolist()  # the one sync of a round
        if then is None:
            return counts.tolist()
        if self.counts.device.type != "cuda":
            then()
            return counts.tolist()
        if self._host is None:
            self._host = torch.empty(3, dtype=torch.int64, pin_memory=True)
            self._ready = torch.cuda.Event()
        self._host.copy_(counts, non_blocking=True)
        self._ready.record()
        then()
        self._ready.synchronize()  # the one sync of a round: the counts, not the merge
        return self._host.tolist()

    def stops(self, below: int) -> bool:
        """Whether a flat cut's merges are all known after the scanned round (``below``
        of its counts): the rounds end there, whatever its pairs."""
        return self.stop_check and below >= self.need

    def commit(self, n: int, n_pairs: int, n_new: int, below: int, backend: str) -> bool:
        """Apply a scanned round; True when another round follows (``n_new`` slots)."""
        if self.stops(below):
            self.known, self.complete = below, False
            return False
        if n_pairs == 0:
            raise _no_pair(backend, n)
        self.rounds += 1
        self.m += n_pairs
        if n_new < 2:
            return False
        self.size, self.size2 = self.size2, self.size
        self.rep, self.rep2 = self.rep2, self.rep
        self.hfix, self.hfix2 = self.hfix2, self.hfix
        return True

    def merges(self) -> Merges:
        m = self.m
        if self.complete:
            self.known = m
        return Merges(self.n_all, self.m_a[:m], self.m_b[:m], self.m_h[:m], self.m_hf[:m],
                      self.m_s[:m], self.rounds, self.known, self.complete)


def dense_rounds(st: RoundState, ops: RNNOps, cur: torch.Tensor, ld: int, n: int,
                 nn: torch.Tensor, nnd: torch.Tensor, mode: int, avail: int, used: int,
                 backend: str) -> None:
    """Run the dense rounds from ``n`` active clusters whose matrix is ``cur`` (row stride
    ``ld``, row argmin/min in ``nn``/``nnd``) to the end, within ``avail`` bytes of which
    ``used`` are taken; merges are recorded in ``st``."""
    dev, dt = cur.device, cur.dtype
    itemsize = cur.element_size()
    other: torch.Tensor | None = None  # second matrix buffer once one fits
    staging: torch.Tensor | None = None
    while n >= 2:
        # ld == n: the matrix is compact (so is every one a merge on the device writes)
        ahead = _MERGE_AHEAD and other is not None and other.numel() >= n * n and ld == n
        if ahead and _ROUNDS_AHEAD > 1:
            chained_rounds(st, ops, cur, other, n, nn, nnd, mode, backend, _ROUNDS_AHEAD)
            return
        if ahead:
            # Whatever n_new is, its matrix fits the other buffer: the merge is launched
            # before the host has read the counts, and reads n_new on the device.
            merge = functools.partial(ops.merge_compact_nn, cur, ld, other, n, st.p32, st.q32,
                                      st.wp, st.wq, n, 0, n, mode, nn, nnd, count=st.counts)
            n_pairs, n_new, below = st.scan(ops, n, nn, nnd, then=merge)
            if not st.commit(n, n_pairs, n_new, below, backend):
                break
            cur, other, ld, n = other, cur, n_new, n_new
            continue
        n_pairs, n_new, below = st.scan(ops, n, nn, nnd)
        if not st.commit(n, n_pairs, n_new, below, backend):
            break
        slots = (st.p32[:n_new], st.q32[:n_new], st.wp[:n_new], st.wq[:n_new])

        if other is None:
            matrix = allocator_bytes(n_new * n_new * itemsize)
            if matrix <= avail - used:
                # the staging rows (sized from the same room) go before the matrix comes
                staging = None
                other = torch.empty(n_new * n_new, dtype=dt, device=dev)
                used += matrix
        if other is not None and other.numel() >= n_new * n_new:
            ops.merge_compact_nn(cur, ld, other, n_new, *slots, n_new, 0, n_new, mode, nn, nnd)
            cur, other, ld = other, cur, n_new
        else:
            # In place, in row chunks: new row i reads old rows >= i only, so a chunk's rows
            # can be overwritten as soon as the chunk is done (through a staging buffer).
            room = max(avail - used, 0)
            chunk = max(1, min(n_new, allocator_fit(room) // max(1, n_new * itemsize)))
            if staging is None or staging.numel() < chunk * n_new:
                staging = None
                staging = torch.empty(chunk * n_new, dtype=dt, device=dev)
            for row0 in range(0, n_new, chunk):
                nrows = min(chunk, n_new - row0)
                ops.merge_compact_nn(cur, ld, staging, n_new, *slots, n_new, row0, nrows, mode,
                                     nn, nnd)
                _view_rows(cur, ld, row0, nrows, n_new).copy_(
                    staging[: nrows * n_new].view(nrows, n_new))
        n = n_new


def chained_rounds(st: RoundState, ops: RNNOps, cur: torch.Tensor, other: torch.Tensor,
                   n: int, nn: torch.Tensor, nnd: torch.Tensor, mode: int, backend: str,
                   depth: int) -> None:
    """Run the dense rounds to the end with ``depth`` rounds launched ahead of the host.

    ``cur`` holds the compact ``n x n`` matrix (row argmin/min in ``nn``/``nnd``) and
    ``other`` room for another of that order.  Every round is chained
    (:func:`dcpe_kernels.round.round_scan` with ``prev``): it reads its order, the merges
    recorded so far and the early-stop test from the record of the round before, and its
    merge reads both orders from its own record, so neither needs the host.  The host
    keeps ``depth`` rounds queued, reads the records in order (one synchronisation a
    round, on the oldest round queued, while the device runs the rounds after it) and
    sizes the grids of the rounds it launches by the last order it read, an upper bound.
    Rounds launched after the last one do nothing (their records pass its status on).
    Every round computes what it would have computed with its counts read first, so the
    merges are the same; the cluster state in ``st`` is not kept up to date (only the
    merges are read after the rounds)."""
    from .round import EARLY_STOP, FINISHED, GO, NO_PAIR, RECORD

    dev = nn.device
    slots = depth + 1  # a record is rewritten only after the host has read it
    ring = torch.empty((slots, RECORD), dtype=torch.int64, device=dev)
    # the record the first round reads: its order and the merges recorded so far (staged
    # at once from host memory; a copy that is not non-blocking would wait for the merge
    # of the round before)
    ring[slots - 1].copy_(torch.tensor([0, n, 0, st.m, GO, n], dtype=torch.int64),
                          non_blocking=True)
    cuda = dev.type == "cuda"
    if cuda:
        host = torch.empty((slots, RECORD), dtype=torch.int64, pin_memory=True)
        ready = [torch.cuda.Event() for _ in range(slots)]
    need = -1 if st.need is None else st.need
    bound = n  # at least the order of every round not read yet
    launched = read = 0
    while True:
        while launched - read < depth:
            rec = ring[launched % slots]
            ops.round_scan(bound, nn, nnd, st.size, st.rep, st.hfix, st.m_a, st.m_b, st.m_h,
                           st.m_hf, st.m_s, st.m, False, st.cap, st.average, st.p32, st.q32,
                           st.wp, st.wq, st.size2, st.rep2, st.hfix2, rec,
                           prev=ring[(launched - 1) % slots], need=need)
            if cuda:
                host[launched % slots].copy_(rec, non_blocking=True)
                ready[launched % slots].record()
            ops.merge_compact_nn(cur, bound, other, bound, st.p32, st.q32, st.wp, st.wq,
                                 bound, 0, bound, mode, nn, nnd, count=rec)
            cur, other = other, cur
            st.size, st.size2 = st.size2, st.size
            st.rep, st.rep2 = st.rep2, st.rep
            st.hfix, st.hfix2 = st.hfix2, st.hfix
            launched += 1
        k = read % slots
        if cuda:
            ready[k].synchronize()  # the oldest round queued; the device runs the others
            pairs, n_new, below, m_next, status, order = host[k].tolist()
        else:
            pairs, n_new, below, m_next, status, order = ring[k].tolist()
        read += 1
        if status == EARLY_STOP:
            st.known, st.complete = below, False
            return
        if status == NO_PAIR:
            raise _no_pair(backend, order)
        st.rounds += 1
        st.m = m_next
        if status == FINISHED:
            return
        bound = n_new


def merges_to_linkage(mg: Merges) -> np.ndarray:
    """SciPy linkage matrix ``(m, 4)`` float64 in greedy order.

    Heights are the monotone heights (equal to the raw ones up to rounding).
    """
    if not mg.complete:
        raise ValueError("these merges were stopped early for a flat cut "
                         "(rnn_merges(n_clusters=...)); run without n_clusters for a linkage")
    order = mg.greedy_order()
    a = mg.rep_a[order].cpu().numpy()
    b = mg.rep_b[order].cpu().numpy()
    h = mg.hmono[order].cpu().numpy().astype(np.float64)
    s = mg.size[order].cpu().numpy().astype(np.float64)
    n, m = mg.n, a.shape[0]
    z = np.empty((m, 4), dtype=np.float64)
    if m == 0:
        return z
    idx = np.arange(m)
    # The cluster represented by token r is created by the merges whose rep_a == r: the id
    # of r's cluster just before merge i is the last such merge before i (or the leaf r).
    srt = np.argsort(a, kind="stable")
    prev = np.full(m, -1, dtype=np.int64)
    same = a[srt[1:]] == a[srt[:-1]]
    prev[srt[1:][same]] = srt[:-1][same]
    id_a = np.where(prev >= 0, n + prev, a)
    last = np.full(n, -1, dtype=np.int64)
    ends = np.flatnonzero(np.append(~same, True))  # last position of each key in srt
    last[a[srt[ends]]] = srt[ends]
    # rep_b is absorbed at merge i and never appears again, so its latest merge precedes i
    lb = last[b]
    id_b = np.where((lb >= 0) & (lb < idx), n + lb, b)
    z[:, 0] = np.minimum(id_a, id_b)
    z[:, 1] = np.maximum(id_a, id_b)
    z[:, 2] = h
    z[:, 3] = s
    return z


def merges_to_labels(mg: Merges, n_clusters: int) -> torch.Tensor:
    """Canonical labels after the first ``N - n_clusters`` merges in greedy order.

    Computed on the merges' device without host synchronisation.  If fewer merges exist
    (size cap), all of them are applied and more than ``n_clusters`` clusters result.
    Merges stopped early for a flat cut at ``k`` clusters can be cut at ``k`` or more.
    """
    n = mg.n
    dev = mg.rep_a.device
    t = max(0, min(n - int(n_clusters), mg.m))
    if not mg.complete and n - int(n_clusters) > mg.known:
        raise ValueError(f"these merges were stopped early and know only the first "
                         f"{mg.known} merges of the greedy order; n_clusters={n_clusters} "
                         f"needs {n - int(n_clusters)}")
    parent = torch.arange(n, dtype=torch.int64, device=dev)
    if t > 0:
        order = mg.greedy_order()[:t]
        parent[mg.rep_b[order]] = mg.rep_a[order]
        # parent[i] < i: pointer jumping reaches the roots in ceil(log2(N)) steps
        for _ in range(max(1, math.ceil(math.log2(n)))):
            parent = parent[parent]
    is_root = parent == torch.arange(n, dtype=torch.int64, device=dev)
    rank = torch.cumsum(is_root, 0) - 1
    return rank[parent]


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` (Triton kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def describe(mg: Merges) -> dict[str, Any]:
    """Small summary used by benchmarks."""
    return {"n": mg.n, "merges": mg.m, "rounds": mg.rounds}
