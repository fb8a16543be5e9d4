"""Matrix-free reciprocal-nearest-neighbour rounds for average linkage on a device.

The dense engine (:mod:`dcpe_kernels.rnn`) keeps the ``N x N`` dissimilarity matrix, which
limits it to about 130,000 tokens on the largest GPUs.  This engine keeps ``O(N d)``:

* the tokens, sorted so that every active cluster is a contiguous segment;
* per cluster its size, smallest token index, monotone height, centroid and the sum of
  squared distances of its tokens to the centroid (float64; merged with the parallel
  formula of Chan, Golub & LeVeque 1979), and for Euclidean a radius bound.

A round is the same as a dense round (Murtagh 1983; Müllner 2011, arXiv:1109.2378): every
active cluster's nearest neighbour by the exact average distance (ties to the smallest
slot), the reciprocal pairs merged at once by :func:`dcpe_kernels.round.round_scan`, one
host synchronisation.  Only the nearest neighbours are found differently:

* ``sqeuclidean`` and ``cosine`` (on unit rows): average linkage is the closed form
  ``scale * (|mu_a - mu_b|^2 + s2_a + s2_b)`` on the moments (``s2`` the mean squared
  distance to the centroid), so one ``O(n^2 d)`` scan of the centroids gives every nearest
  neighbour (:func:`dcpe_kernels.centroid.centroid_nn`, mode 1), in float64;
* ``euclidean``: one scan gives every cluster the smallest upper bound ``tau_a`` (Jensen),
  a second lists the pairs whose lower bound (centroid distance, and mean square over the
  largest possible distance) is within ``tau_a`` (:func:`dcpe_kernels.centroid.
  candidate_pairs`), and only those get an exact average over their token pairs, summed
  in float64 (:func:`dcpe_kernels.pair_average.pair_average`).  Every cluster's nearest
  neighbour is among its candidates, so the result is that of the dense engine.  In the
  first round every cluster is one token, the upper bound is the exact distance, and the
  first scan alone gives every nearest neighbour.  Once the
  clusters' own matrix fits ``handover_bytes`` (and, by default, a round's exact sums cover
  1/64 of all token pairs: late rounds of a whole dendrogram, whose clusters are large)
  it is built in one pass over the token pairs and the dense rounds finish: with
  :func:`dcpe_kernels.pair_average.cluster_matrix` (one lane per pair) while every
  cluster is small, else from the list of all pairs with ``pair_average``, which gives a
  large pair a whole block.  A flat cut at ``k = N/2`` usually stops before.

From :data:`GRAM_MIN_DIM` dimensions on (Euclidean), both centroid scans take their
squared centroid distances from tiles of the Gram matrix of the centroids less the tokens'
mean, float64 matrix products on the device's matrix units (2 d operations per pair there
against 3 d scalar ones from coordinate differences), with a rigorous error interval
(:mod:`dcpe_kernels.gram`, :class:`_Scans`): the bounds only widen, so the candidates still
hold every nearest neighbour, whose average is still summed exactly.  The first round then
lists and sums its candidates (a token pair each) instead of taking the scan's minimum as
the distance.

Past 16 dimensions the tokens are kept as the columns of a ``(d, N)`` array, so that the
lanes summing a pair read adjacent addresses for every coordinate (:class:`_Tokens`; the
sums are the same bits as from rows).  A pair of clusters with at least 2**20 token pairs
is summed in 128 parts of its larger cluster, each part a pair of its own for
``pair_average`` (:func:`_pair_sums`): a few large pairs do not leave the device to one
block each.

Reducibility (Bruynooghe 1977) spares most searches after the first round: a cluster
that did not merge and whose nearest neighbour did not merge keeps it, so only merged
clusters and those whose neighbour merged search (:func:`_carry_neighbours`).  Most of
those need no centroid scan either (Euclidean): the new clusters of a cluster and of its
old nearest neighbour give both an upper bound (:func:`_neighbour_bounds`), which serves as
the candidate threshold in place of the scan's smallest bound when it is within
:data:`_BOUND_FACTOR` of the old nearest distance (a lower bound of the new one).  A looser
threshold only lets more pairs through to the exact sums, all of which are candidates of
the searching cluster; the nearest neighbour, and every pair tied with it, is among them.
On the sample codebook 7 to 9% of the searching clusters still scan after the first
round (benchmarks/linear_work.py counts it).

From :data:`STORE_MIN_DIM` dimensions on, the exact averages summed are kept from round
to round (:class:`_PairStore`, a sparse Lance-Williams update: a merged cluster's average
to another is the size-weighted mean of its parts' averages).  A candidate pair whose
average is held is not summed again, and one held in part (some pairs of its parts known)
is summed over the missing pairs of parts only.  In those rounds most candidate pairs come
back: a searching cluster lists much the same neighbourhood as its parts did.  Each
cluster's smallest complete average held is an upper bound of its nearest distance, so
it also tightens the thresholds (and spares a centroid scan, like the old neighbour's
bound).  The store costs a round a few passes over its entries and a sort of those of
the merged clusters and of the round's new averages, small next to token pairs of 256
coordinates; below the threshold the engine runs without it, as before.  At d = 256
(k = N/2; benchmarks/results/linear-work-d256.md) it leaves 3.3 times fewer token pairs to
sum at N = 4,096 and 6.8 times fewer at N = 32,768.  What is left is mostly new pairs of small
clusters, whose centroid bounds come to about 0.85 of their averages.

A round's list of candidate pairs has a room (grown when a list overflows it; the list is
then scanned again in the larger room, and the overflowed one sums none of its pairs).  The
round works through the list a chunk of at most :data:`_PAIR_CHUNK` entries at a time
(:func:`_chunks`): the sums, the store's lookups and update and the nearest-neighbour
passes keep their temporaries per chunk, so that the room costs only the pairs themselves
and the store's new averages (:data:`_PAIR_BYTES`, :data:`_STORE_PAIR_BYTES` per entry).
The store gives way to the pairs: when a round's list needs its share of the budget, it
keeps fewer entries (the smallest averages) or, if even an empty store's temporaries do
not fit, the rounds go on without it; the engine fails for lack of memory only where it
would without the store.

The budget: the preflight (:func:`linear_required_bytes`) counts what a run needs with
the initial room; everything larger is sized from what the budget leaves past that count
(``spare`` in :func:`linear_merges`): the room for candidate pairs and one chunk's
temporaries, the store, and the Gram tiles past the smallest (reserved beside the room,
with which they are alive during the scans).  The hand-over's two matrices are sized from
the same bytes, so the room, the store and the round's temporaries go before they come,
each as PyTorch's caching allocator may count it (:func:`dcpe_kernels.rnn.
allocator_bytes`: up to 1 MiB past what a tensor over 1 MiB asks for, with the default
``PYTORCH_CUDA_ALLOC_CONF``).  The other sizes
are not rounded so: the engine's own tensors take at most 0.62 of the preflight's count as
asked for and 0.74 as the allocator may count them (d = 8, N = 65,536 to 1,048,576, under
budgets of the count and of 256 MiB more; ``benchmarks/linear_work.py --memory``).  On a
CUDA device the preflight also counts cuBLAS's workspace from :data:`GRAM_MIN_DIM`
dimensions on (:func:`dcpe_kernels.rnn.blas_workspace_bytes`): PyTorch allocates it at a
stream's first matrix product, which may be a Gram tile of this run, and keeps it.

A flat cut needs only the first ``N - k`` merges of the greedy order.  Once that many are
recorded, the ``(N - k)``-th smallest of their heights, ``U``, bounds the cut's height, and
the searches stop at ``U`` (Euclidean): a cluster with no neighbour within ``U`` can only
merge after the cut (reducibility) and is set aside for good (:func:`_set_aside`).  At
``k = N/2`` on the sample codebook (d = 8, N = 65,536 to 1,048,576) the exact sums cover 7
to 9 times fewer token pairs in the same rounds (benchmarks/results/linear-work.md); at
d = 256 the rounds before the cut is known hold most of the sums.

Merges, the early stop for a flat cut and the size cap are those of the dense engine
(merge records, tie rule and slot order are the same, so labels agree with the dense
engine and the ``cpu`` backend on inputs without tied distances).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .gram import gram_error
from .rnn import (
    Merges,
    RoundState,
    _insufficient,
    allocator_bytes,
    blas_workspace_bytes,
    budget_for,
    dense_rounds,
    memory_available,
)

__all__ = [
    "CLOSED_FORM_SCALE",
    "DEFAULT_HANDOVER_BYTES",
    "DENSE_MAX_N",
    "ENGINES",
    "choose_engine",
    "linear_merges",
    "linear_required_bytes",
    "run_merges",
    "trace_rounds",
]

#: metric -> factor of the closed form (``None``: no closed form, bounds and exact sums)
CLOSED_FORM_SCALE: dict[str, float | None] = {"euclidean": None, "sqeuclidean": 1.0,
                                              "cosine": 0.5}
#: default size of the clusters' matrix (two buffers) at which the dense rounds take over
DEFAULT_HANDOVER_BYTES = 64 << 30
#: ... and, by default, once a round's exact sums cover at least this fraction of all token
#: pairs: the hand-over costs one pass over all token pairs, while the rounds before it sum
#: only their candidates' (a flat cut at k = N/2 usually never gets there)
HANDOVER_WORK_FRACTION = 1 / 64
#: the hand-over builds the matrix with one lane per cluster pair (cluster_matrix) while
#: every cluster has at most this many tokens, else from the list of all pairs
#: (pair_average, which gives a large pair a whole block / program)
_LANE_MAX_SIZE = 32
#: bytes per entry of the room for candidate pairs (pa, pb, val), and per entry of a chunk of
#: it, the temporaries of its exact sums and of the nearest-neighbour passes: a round works
#: through its list a chunk at a time (:func:`_chunks`), so that only the pairs themselves
#: take room in proportion to a round's count
_PAIR_BYTES = 16
_PAIR_CHUNK_BYTES = 96
#: most entries of a chunk; at most an eighth of what the budget leaves goes to a chunk's
#: temporaries (:func:`_chunk_size`)
_PAIR_CHUNK = 1 << 24
#: a pair of at least this many token pairs is summed in parts, all over the device
_SPLIT_WORK = 1 << 20
#: ... in this many parts of its larger cluster (each a pair of its own for pair_average)
_SPLIT_PARTS = 128
#: at most this many pairs are split per call (any more are summed whole)
_SPLIT_MAX = 512
#: pairs per pair_average call when the hand-over builds the matrix from all pairs
_MATRIX_CHUNK = 1 << 25
#: Euclidean, while every cluster is one token: the centroid scan's minimum is the exact
#: nearest-neighbour distance (the first round skips the candidate scan and the sums)
_SINGLETON_ROUND = True
#: Euclidean, after the first round: a cluster that searches takes as its threshold the
#: upper bound to the new cluster of its (or its part's) old nearest neighbour, and skips
#: the centroid scan, when that bound is at most this factor times its old nearest
#: distance (a lower bound of the new one); the others scan (:func:`_neighbour_bounds`)
_BOUND_FACTOR = 2.0
#: Euclidean, for a flat cut: clusters that cannot merge before the cut are set aside
#: (:func:`_set_aside`)
_SET_ASIDE = True
#: tokens of at least this many dimensions are kept as columns (:class:`_Tokens`)
_COLUMNS_MIN_DIM = 17
#: when the candidate pairs overflow their room (the round then runs again, and the
#: overflowed list sums none of its pairs: only the round's synchronisation tells the host),
#: the new room is the next power of two of this many times the count (the counts of the
#: early rounds of a high-dimensional codebook grow by up to about 1.5x a round; with 1.25
#: a second list overflowed at N = 4,096 x 256, benchmarks/linear_work.py)
_PAIRS_GROWTH = 2.0
#: a list past the largest room the budget allows goes through it a batch of searching
#: clusters at a time (:func:`_batched_pairs`): at first in as many batches of consecutive
#: rows as this many times the count fills rooms (a batch past the room is halved)
_BATCH_HEADROOM = 2.0
#: when a round lists fewer than 1/_PAIRS_SHRINK of the room's pairs, the next rounds use
#: a view of the room of the next power of two of _PAIRS_HEADROOM times the count (0: never).
#: The passes over a round's list go over its whole view, so the views summed over the rounds
#: are what they cost; with 4 (was 8) they are 3% to 41% smaller on the counts recorded at
#: N = 4,096 to 65,536 x 256 (benchmarks/results/linear-work-d256-*.json), and none of those
#: rounds would list past its view (3, with a headroom of 1.5, would at 32,768)
_PAIRS_SHRINK = 4
_PAIRS_HEADROOM = 2.0
#: initial room for candidate pairs, per active cluster
_PAIRS_PER_CLUSTER = 8
#: ... from STORE_MIN_DIM dimensions on, up to this many per cluster within a quarter of the
#: budget left: the first rounds of a high-dimensional codebook list far more pairs (46 to
#: 129 per cluster in the second round at N = 4,096 to 16,384 x 256, 1,455 at 262,144 x 256
#: on an H200), and a list past its room costs a second candidate scan, O(n^2 d)
_PAIRS_PER_CLUSTER_HIGH_D = 2048
#: ... but the first round of the Gram scans (every cluster one token, a pair or two each:
#: 0.85 per cluster at N = 2,048 and 4,096 x 256) goes through a view of this many per
#: cluster of that room; a list past it is listed again in the whole room, as any list past
#: its room (the room's passes cost a few hundred bytes written per entry, whether or not
#: it holds a pair)
_PAIRS_PER_CLUSTER_FIRST = 8
#: Euclidean tokens of at least this many dimensions keep the exact averages already summed
#: from round to round (:class:`_PairStore`): a token pair costs ``O(d)`` reads, an entry of
#: the store a few sorted words, and in the high-dimensional rounds most candidate pairs
#: come back round after round (below it the engine runs as without the store)
STORE_MIN_DIM = 32
#: bytes per entry of the store at its peak (its keys and values, and the temporaries of
#: the round's update over the store and the round's new entries)
_STORE_BYTES = 128
#: ... per entry of the room for candidate pairs: the round's new averages for the update
#: (keys and float64 values) and the update's temporaries over them
_STORE_PAIR_BYTES = 48
#: ... and per entry of a chunk, the store's own temporaries (its lookup, the pairs not in
#: it and their float64 averages, and the list of up to three missing pairs of parts per
#: pair with the sums' own temporaries over it)
_STORE_CHUNK_BYTES = 320
_MIN_PAIRS = 1024
#: Euclidean tokens of at least this many dimensions take the centroid scans' squared
#: distances from float64 matrix products, a tile of columns at a time
#: (:mod:`dcpe_kernels.gram`): 2 d operations per pair on the matrix units and 16 bytes of
#: tile written and read, against 3 d scalar operations from coordinate differences (an
#: H200 took 5.6e12 coordinate differences a second in the first round at 262,144 x 256): by
#: that count the products win from about 64 dimensions on (benchmarks/bench_kernels.py
#: times both).  The first
#: round then sums its candidates (its bounds are no longer exact distances), a token pair
#: each
GRAM_MIN_DIM = 64
#: a tile of the Gram matrix (every row that scans, a range of columns) takes at most this
#: many bytes (and an eighth of what the budget leaves), and at least _GRAM_MIN_COLS
#: columns of float64
_GRAM_TILE_BYTES = 1 << 30
_GRAM_MIN_COLS = 64


def linear_required_bytes(n: int, d: int, itemsize: int,
                          device: torch.device | str | None = None) -> int:
    """Device bytes the matrix-free engine needs for ``n`` tokens of dimension ``d``.

    At its peak: three copies of the tokens (input, sorted, and the next order or the
    radius pass's gather), three of the float64 centroids (current, next, a difference),
    two in the compute dtype (the transposed centroids and the radius pass's), the
    bound pass's two float64 blocks of :func:`_bound_rows` rows, about 288 bytes of
    per-cluster state and temporaries, and the initial room for candidate pairs (about
    40 bytes each).  (On an H200 the peak of 262,144 x 8 tokens was 18 bytes per cluster
    above a count with 256 bytes per cluster; the room for candidate pairs grows past its
    initial size only within the budget, checked before it grows, and a round's list past
    the largest room goes through it in batches of clusters, :func:`_batched_pairs`: the
    initial room holds any one cluster's list.)  From
    :data:`STORE_MIN_DIM` dimensions on, the pair store's temporaries for that initial room
    too; the store itself takes a share of what the budget leaves (:class:`_PairStore`).
    From :data:`GRAM_MIN_DIM` dimensions on, the centred float64 centroids, a copy of those
    that scan and the smallest tile of the Gram matrix (:data:`_GRAM_MIN_COLS` columns);
    larger tiles take at most an eighth of what the budget leaves; and, on a CUDA
    ``device``, the cuBLAS workspace that PyTorch allocates at a stream's first matrix
    product and keeps (:func:`dcpe_kernels.rnn.blas_workspace_bytes`, 32 MiB by default):
    the run may be the one that allocates it.
    """
    per_pair = 40 + (_STORE_CHUNK_BYTES if d >= STORE_MIN_DIM else 0)
    # from GRAM_MIN_DIM dimensions on, the centred float64 centroids (in place of the
    # transposed ones, counted above), those of the rows that scan and the smallest tile
    # of the Gram matrix
    gram = (2 * n * d * 8 + _GRAM_MIN_COLS * n * 8 + blas_workspace_bytes(device)
            if d >= GRAM_MIN_DIM else 0)
    return ((3 * n * d + 2 * n * d) * itemsize + 3 * n * d * 8
            + 2 * min(n, _bound_rows(d)) * d * 8 + 288 * n + _PAIRS_PER_CLUSTER * per_pair * n
            + gram)


def _chunk_size(free: int, per_entry: int) -> int:
    """Entries of a chunk of the list of candidate pairs: a power of two, at most
    :data:`_PAIR_CHUNK`, whose temporaries (``per_entry`` bytes each) take at most an eighth
    of ``free``; at least :data:`_MIN_PAIRS`."""
    fit = max(1, free // (8 * per_entry))
    return min(_PAIR_CHUNK, max(_MIN_PAIRS, 1 << (fit.bit_length() - 1)))


def _pair_room(free: int, per_pair: int, per_chunk: int, chunk: int) -> int:
    """Most entries of the room for candidate pairs within ``free`` bytes: ``per_pair``
    bytes each, and the temporaries of one chunk (``per_chunk`` bytes per entry, at most
    ``chunk`` entries)."""
    small = max(0, free) // (per_pair + per_chunk)
    if small <= chunk:
        return small
    return (free - chunk * per_chunk) // per_pair


def _chunks(pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor, n: int, capacity: int,
            chunk: int) -> Iterator[tuple[slice, tuple[torch.Tensor, ...], torch.Tensor]]:
    """The list's entries ``k < count`` (of ``capacity``) a chunk of at most ``chunk``
    at a time: its slice, :func:`_live_pairs` of it and its own count (on the device)."""
    for c0 in range(0, capacity, chunk):
        c1 = min(capacity, c0 + chunk)
        cnt = (count - c0).clamp(0, c1 - c0)
        yield slice(c0, c1), _live_pairs(pa[c0:c1], pb[c0:c1], cnt, n), cnt


def _bound_rows(d: int) -> int:
    """Rows per block of :func:`_neighbour_bounds` (two float64 blocks of 128 MiB at most)."""
    return max(1, (1 << 24) // max(1, d))


def _margins(x: torch.Tensor, dim: int) -> tuple[float, float]:
    """Relative and absolute rounding margins of the bounds (float32-representable)."""
    eps = float(torch.finfo(x.dtype).eps)
    rel = 8.0 * (dim + 4) * eps
    scale = float(x.abs().max()) if x.numel() else 0.0
    absm = 8.0 * math.sqrt(dim) * eps * scale + float(torch.finfo(x.dtype).tiny)
    return float(np.float32(rel * 1.0001)), float(np.float32(absm * 1.0001))


class _Tokens:
    """Tokens sorted by cluster, with each cluster's first row (Euclidean only).

    ``x`` is ``(ntok, d)``: rows of a contiguous array up to :data:`_COLUMNS_MIN_DIM`
    dimensions, else the columns of a contiguous ``(d, ntok)`` array ``xt`` (``x = xt.T``),
    so that the exact sums read the tokens of a cluster at adjacent addresses for every
    coordinate (:func:`dcpe_kernels.pair_average.token_strides`).  The sums are the same
    bits in either layout."""

    def __init__(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        self.xt = x.T.contiguous() if x.shape[1] >= _COLUMNS_MIN_DIM else None
        self.x = x if self.xt is None else self.xt.T
        self.offsets = torch.arange(n, dtype=torch.int64, device=x.device)
        self.ntok = n

    def regroup(self, p: torch.Tensor, q: torch.Tensor, old_size: torch.Tensor,
                new_size: torch.Tensor, ntok: int) -> torch.Tensor:
        """Reorder for the next round's slots (``p``/``q`` old slots, ``q`` -1 if none);
        returns the slot of every new row."""
        dev = self.x.device
        n_new = p.shape[0]
        offsets = torch.cumsum(new_size, 0) - new_size
        slot = torch.repeat_interleave(torch.arange(n_new, device=dev), new_size,
                                       output_size=ntok)
        local = torch.arange(ntok, device=dev) - offsets[slot]
        ps, qs = p[slot], q[slot]
        n_p = old_size[ps]
        from_p = local < n_p
        src = torch.where(from_p, self.offsets[ps] + local,
                          self.offsets[qs.clamp_min(0)] + (local - n_p))
        if self.xt is None:
            self.x = self.x[src]
        else:
            self.xt = self.xt.index_select(1, src)
            self.x = self.xt.T
        self.offsets = offsets
        self.ntok = ntok
        return slot


def _radius(tokens: _Tokens, slot: torch.Tensor, mu: torch.Tensor, n: int) -> torch.Tensor:
    """``max |x - mu|`` per cluster in the compute dtype (margins applied by the caller),
    with one token-sized temporary (``mu - x``: the same norms as ``x - mu``)."""
    diff = mu.to(tokens.x.dtype).index_select(0, slot).sub_(tokens.x)
    nrm = torch.linalg.vector_norm(diff, dim=1)
    del diff
    out = torch.zeros(n, dtype=tokens.x.dtype, device=tokens.x.device)
    return out.scatter_reduce(0, slot, nrm, "amax")


def _pack(mask: torch.Tensor, size: int, *srcs: torch.Tensor, fill: float = 0
          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The entries of each of ``srcs`` where ``mask`` is set, in order, at the front of a
    new tensor of length ``size`` (the rest ``fill``), without a host synchronisation; and
    each entry's place (``size`` where ``mask`` is not set)."""
    pos = torch.where(mask, torch.cumsum(mask, 0) - 1, size)
    return pos, [torch.full((size + 1,), fill, dtype=src.dtype, device=src.device)
                 .scatter_(0, pos, src)[:size] for src in srcs]


def _pair_minima(lo: torch.Tensor, hi: torch.Tensor, val: torch.Tensor,
                 n: int) -> torch.Tensor:
    """Per slot ``0 .. n-1``, the smallest ``val`` of the pairs ``(lo, hi)`` it is in
    (float64, ``inf`` where none; a pair with ``lo`` or ``hi`` equal to ``n`` counts for
    none)."""
    out = torch.full((n + 1,), float("inf"), dtype=torch.float64, device=val.device)
    return out.scatter_reduce(0, lo, val, "amin").scatter_reduce(0, hi, val, "amin")[:n]


class _PairStore:
    """Exact averages already summed, carried from round to round (a sparse Lance-Williams
    update; Lance & Williams 1967).

    Average linkage satisfies ``d(P u Q, M) = (|P| d(P, M) + |Q| d(Q, M)) / (|P| + |Q|)``:
    the average of two clusters follows from the averages of the pairs of their parts.  The
    store holds, per cluster pair, keyed ``lo * N + hi`` by slots and sorted by key (unused
    entries, key ``SENT``, at the end), the float64 average (as ``pair_average`` writes it
    before rounding) over the token pairs it knows, and ``miss``: which pairs of parts it
    lacks (bit ``2 i + j``: part ``i`` of ``lo`` with part ``j`` of ``hi``; part 0 of a
    cluster merged in the last round is the old cluster its tokens start with, part 1 the
    other; 0: complete).  A round looks its candidate pairs up (:meth:`lookup`): a complete
    entry is not summed, an incomplete one only over its missing parts
    (:func:`_stored_sums`).

    The update has two halves around the round's synchronisation.  :meth:`plan`, launched
    in the round's ``carry``, sorts the entries out: a complete pair of two clusters that
    neither merge nor leave stays, under its new slots (slots keep their order, so these
    keys stay sorted); one that touches a merged cluster changes; the others go, and so, for
    a flat cut, does a pair of two clusters set aside (neither searches again).  After the
    synchronisation, which reads how many change, :meth:`apply` sorts only the changed
    entries and the round's new averages, combines the entries of each new pair in a fixed
    order (its parts'), keeping a pair with some parts missing as an incomplete entry, and
    merges them into the staying ones.  So a round costs a few passes over the store and a
    sort of what changed.  A value is the direct sum's up to the order of the float64
    additions (as for the split pairs of :func:`_pair_sums`), and is deterministic.
    Entries past the store's room (a share of the memory budget) are dropped, the largest
    averages first: the store is a cache, never needed for the result, and it gives its
    room up to a round's candidate pairs when they need it (:meth:`shrink`).
    """

    SENT = torch.iinfo(torch.int64).max
    #: keep incomplete entries (False: only the pairs whose parts were all known)
    PARTS = True
    #: bits of the pairs of parts of (lo, hi) with (1 or 2) x (1 or 2) parts
    _NEED = (1, 3, 5, 15)

    def __init__(self, n_all: int, dev: torch.device, room: int,
                 chunk: int = _PAIR_CHUNK) -> None:
        self.mult = n_all
        self.room = max(0, int(room))
        #: the round's new averages are gone through this many at a time (:func:`_chunks`)
        self.chunk = max(1, int(chunk))
        self.key = torch.empty(0, dtype=torch.int64, device=dev)
        self.val = torch.empty(0, dtype=torch.float64, device=dev)
        self.miss = torch.empty(0, dtype=torch.int64, device=dev)
        self.part = torch.empty(0, dtype=torch.int64, device=dev)  # size of part 0, per slot
        #: at least the entries with missing parts (only the last :meth:`apply` makes them)
        self.incomplete = 0
        self.planned: dict[str, torch.Tensor] | None = None
        #: per slot, the smallest complete average held (``inf``: none), or None
        self.low: torch.Tensor | None = None

    def lookup(self, live: torch.Tensor, a: torch.Tensor, b: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
        """``(keys, found, values, miss)`` of the live pairs ``(a, b)`` (:func:`_live_pairs`;
        ``miss`` 0 where not found)."""
        key = torch.where(live, torch.minimum(a, b) * self.mult + torch.maximum(a, b),
                          self.SENT)
        if self.key.numel() == 0:
            zero = torch.zeros(key.shape, dtype=torch.int64, device=key.device)
            return key, torch.zeros_like(live), zero.to(torch.float64), zero
        idx = torch.searchsorted(self.key, key).clamp_max_(self.key.numel() - 1)
        found = live & (self.key[idx] == key)
        return key, found, self.val[idx], torch.where(found, self.miss[idx], 0)

    def plan(self, new_key: torch.Tensor, new_val: torch.Tensor, new_of: torch.Tensor,
             p: torch.Tensor, q: torch.Tensor, old_size: torch.Tensor,
             aside: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first half of the update, before the synchronisation.

        ``new_key``/``new_val``: the round's new complete averages (``SENT`` keys: none);
        ``new_of``: old slot -> new slot (-1: left); ``p``/``q``: new slot -> its old slots
        (``q`` -1: none); ``old_size``: the old slots' sizes; ``aside``: the old slots set
        aside for good (:func:`_set_aside`), optional: a pair of two of them is never
        looked up again (neither searches), and goes.  Returns, per new
        slot (``(n,)`` float64, ``inf`` where none), the smallest complete average it keeps
        without a merge (an upper bound of its next nearest distance), and the counts
        ``[staying, changing, new, entries now]`` (int64, read at the synchronisation)."""
        i64 = torch.int64
        n = new_of.shape[0]
        valid = self.key != self.SENT
        kk = torch.where(valid, self.key, 0)
        a, b = kk // self.mult, kk % self.mult
        na, nb = new_of[a], new_of[b]
        alive = valid & (self.miss == 0) & (na >= 0) & (nb >= 0) & (na != nb)
        if aside is not None:
            alive &= ~(aside[a] & aside[b])
        merged = q >= 0  # per new slot
        stay = alive & ~merged[na.clamp_min(0)] & ~merged[nb.clamp_min(0)]
        change = alive & ~stay
        low = _pair_minima(torch.where(stay, na, n), torch.where(stay, nb, n), self.val, n)
        del kk, a, b
        # the round's new averages, a chunk at a time (their temporaries are per chunk)
        fresh = torch.empty(new_key.shape, dtype=torch.bool, device=new_key.device)
        for c0 in range(0, new_key.numel(), self.chunk):
            sl = slice(c0, c0 + self.chunk)
            nk = new_key[sl]
            fk = torch.where(nk != self.SENT, nk, 0)
            f_a, f_b = fk // self.mult, fk % self.mult
            fa, fb = new_of[f_a], new_of[f_b]
            fr = (nk != self.SENT) & (fa >= 0) & (fb >= 0) & (fa != fb)
            if aside is not None:
                fr &= ~(aside[f_a] & aside[f_b])
            fresh[sl] = fr
            # new averages of two clusters that neither merge nor leave hold as they are
            fstay = fr & ~merged[fa.clamp_min(0)] & ~merged[fb.clamp_min(0)]
            low = torch.minimum(low, _pair_minima(torch.where(fstay, fa, n),
                                                  torch.where(fstay, fb, n),
                                                  new_val[sl].to(torch.float64), n))
        self.planned = {"stay": stay, "skey": na * self.mult + nb, "change": change,
                        "new_key": new_key, "new_val": new_val, "fresh": fresh,
                        "new_of": new_of, "q": q, "old_size": old_size[:n].clone(),
                        "part": old_size[p]}
        counts = torch.stack([stay.sum(), change.sum(), fresh.sum(), valid.sum()]).to(i64)
        return low, counts

    def apply(self, n_stay: int, n_change: int, n_new: int) -> None:
        """The second half, after the synchronisation (the counts of :meth:`plan`): the
        store of the next round."""
        pl = self.planned
        self.planned = None
        if pl is None:
            return
        i64, f64 = torch.int64, torch.float64
        dev = self.key.device
        # the staying entries, compacted in their (sorted) order under the new slots
        _, (s_key, s_val) = _pack(pl["stay"], n_stay, pl["skey"], self.val)
        # the changing entries and the round's new averages: only these are sorted
        m = n_change + n_new
        _, (k_change, v_change) = _pack(pl["change"], n_change, self.key, self.val)
        _, (k_new, v_new) = _pack(pl["fresh"], n_new, pl["new_key"], pl["new_val"].to(f64))
        keys, vals = torch.cat([k_change, k_new]), torch.cat([v_change, v_new])
        del k_change, v_change, k_new, v_new
        c_key, c_val, c_miss = self._combine(keys, vals, pl)
        # merge the two sorted lists (their keys differ): each entry's place is its rank
        # in its own list plus the number of the other list's keys below it
        total = n_stay + m
        out_key = torch.full((total + 1,), self.SENT, dtype=i64, device=dev)
        out_val = torch.zeros(total + 1, dtype=f64, device=dev)
        out_miss = torch.zeros(total + 1, dtype=i64, device=dev)
        ar_s = torch.arange(n_stay, device=dev)
        ps = ar_s + torch.searchsorted(c_key, s_key)
        out_key.scatter_(0, ps, s_key)
        out_val.scatter_(0, ps, s_val)
        ar_c = torch.arange(m, device=dev)
        pc = torch.where(c_key != self.SENT, ar_c + torch.searchsorted(s_key, c_key), total)
        out_key.scatter_(0, pc, c_key)
        out_val.scatter_(0, pc, c_val)
        out_miss.scatter_(0, pc, c_miss)
        self.key, self.val, self.miss = out_key[:total], out_val[:total], out_miss[:total]
        self.part = pl["part"]
        self.incomplete = m
        self._fit(pl["part"].shape[0])

    def shrink(self, room: int) -> None:
        """Give up room (a round's candidate pairs need it): at most ``room`` entries from
        now on, the smallest averages staying.  Between rounds, or in a round whose list is
        listed again (its plan is dropped)."""
        self.room = max(0, int(room))
        self.planned = None
        if self.key.numel() > self.room:
            self._fit(self.part.shape[0] if self.part.numel() else self.mult)

    def _fit(self, n: int) -> None:
        """Keep at most :attr:`room` entries (the smallest averages, in key order), and
        each of the ``n`` slots' smallest complete average: an upper bound of its nearest
        distance."""
        key, val, miss = self.key, self.val, self.miss
        if key.numel() > self.room:
            keep = torch.topk(torch.where(key != self.SENT, val, float("inf")), self.room,
                              largest=False).indices.sort().values
            key, val, miss = key[keep], val[keep], miss[keep]
        self.key, self.val, self.miss = key, val, miss
        on = (key != self.SENT) & (miss == 0)
        kk = torch.where(on, key, 0)
        self.low = _pair_minima(torch.where(on, kk // self.mult, n),
                                torch.where(on, kk % self.mult, n), val, n)

    def _combine(self, keys: torch.Tensor, vals: torch.Tensor, pl: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, ...]:
        """Sort the changing and new entries (old slots) by their new pair and combine each
        new pair's (at most four) entries in the order of its parts: keys (``SENT`` past
        the pairs made, at the end), averages over the token pairs known, missing bits."""
        i64, f64 = torch.int64, torch.float64
        new_of, q = pl["new_of"], pl["q"]
        old_size = pl["old_size"]
        a, b = keys // self.mult, keys % self.mult
        na, nb = new_of[a], new_of[b]
        swap = na > nb
        lo, hi = torch.where(swap, nb, na), torch.where(swap, na, nb)
        olo, ohi = torch.where(swap, b, a), torch.where(swap, a, b)
        # which parts of the two new clusters the old pair joins (0 .. 3): a fixed order of
        # the entries of a new pair, whatever their order in the list
        part = 2 * (olo == q[lo]).to(i64) + (ohi == q[hi]).to(i64)
        wt = (old_size[a] * old_size[b]).to(f64)
        w = vals * wt
        sk, order = torch.sort((lo * self.mult + hi) * 4 + part)
        del a, b, na, nb, swap, lo, hi, olo, ohi, part
        sw, swt = w[order], wt[order]
        del w, wt, order
        seg, bits = sk >> 2, 1 << (sk & 3)
        del sk
        total, known, have = sw.clone(), swt.clone(), bits.clone()
        for j in (1, 2, 3):  # the (at most three) later entries of the same new pair
            same = torch.zeros_like(seg, dtype=torch.bool)
            same[:-j] = seg[j:] == seg[:-j]
            for acc, src in ((total, sw), (known, swt)):
                shifted = torch.zeros_like(src)
                shifted[:-j] = src[j:]
                acc += torch.where(same, shifted, 0.0)
            shifted_bits = torch.zeros_like(bits)
            shifted_bits[:-j] = bits[j:]
            have |= torch.where(same, shifted_bits, 0)
        del sw, swt, bits
        head = torch.ones_like(seg, dtype=torch.bool)
        head[1:] = seg[1:] != seg[:-1]
        parts = 1 + (q >= 0).to(i64)
        slo, shi = seg // self.mult, seg % self.mult
        need = torch.tensor(self._NEED, dtype=i64, device=seg.device)[
            2 * (parts[slo] - 1) + (parts[shi] - 1)]
        miss = need & ~have
        if not self.PARTS:
            head &= miss == 0
        m = seg.numel()
        _, (out_key,) = _pack(head, m, seg, fill=self.SENT)
        # the average over the token pairs known
        _, (out_val, out_miss) = _pack(head, m, total / known, miss)
        return out_key, out_val, out_miss


#: sinks of :func:`trace_rounds` (the innermost one is called)
_TRACE: list[Callable[[dict[str, Any]], None]] = []


@contextlib.contextmanager
def trace_rounds(sink: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Within the block, every matrix-free run calls ``sink(record)`` once per round.

    A diagnostic for benchmarks (not thread-safe; costs one event per phase): the record
    of a round holds ``round``, ``n`` (active clusters), ``rows`` (clusters that search),
    ``pairs`` (candidate pairs, Euclidean), ``token_pairs`` (token pairs summed exactly),
    ``max_size`` (largest cluster), ``scan_rows`` (clusters that scan the centroids;
    Euclidean), ``room`` (the length of the list of candidate pairs; Euclidean),
    ``relisted`` (lists of candidate pairs past their room, scanned again in a larger one;
    Euclidean), in a round whose list is longer than the largest room the budget allows
    ``batches`` (the lists it made, a batch of searching clusters each) and ``rescanned``
    (the clusters listed again, those of a batch past the room: :func:`_batched_pairs`),
    and ``ms``, the time per phase: ``scan`` (centroid scan), ``candidates``,
    ``sums`` (exact averages), ``select`` (nearest neighbours, the round's bookkeeping and the next
    round's moments and thresholds, up to its synchronisation), ``update`` (the new token
    order and radii, counted in the next round) and ``handover`` / ``dense`` (matrix and
    dense rounds).  On a GPU the times come from CUDA events read after the round's own
    synchronisation; elsewhere from the host clock.  The last record of a run has
    ``done`` set and the run's ``rounds`` (dense rounds after a hand-over included).
    """
    _TRACE.append(sink)
    try:
        yield
    finally:
        _TRACE.remove(sink)


class _Phases:
    """Phase clock of :func:`trace_rounds` (does nothing without a sink)."""

    def __init__(self, dev: torch.device, sink: Callable[[dict[str, Any]], None] | None):
        self.sink = sink
        self.cuda = dev.type == "cuda"
        self.pending: list[tuple[str, Any, Any]] = []
        self.last: Any = self._now() if sink is not None else None

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, name: str) -> None:
        """The phase ``name`` ends here (it began at the previous mark)."""
        if self.sink is not None:
            now = self._now()
            self.pending.append((name, self.last, now))
            self.last = now

    def emit(self, **record: Any) -> None:
        """Hand the round's record to the sink (after the round's synchronisation)."""
        if self.sink is None:
            return
        if self.cuda:
            self.last.synchronize()  # the stream is idle here: no wait
        ms: dict[str, float] = {}
        for name, a, b in self.pending:
            ms[name] = ms.get(name, 0.0) + (a.elapsed_time(b) if self.cuda else (b - a) * 1e3)
        self.pending = []
        record["ms"] = {k: round(v, 3) for k, v in ms.items()}
        self.sink(record)


def linear_merges(x: torch.Tensor, *, metric: str, max_cluster_size: int | None, ops: Any,
                  backend: str = "triton", n_clusters: int | None = None,
                  memory_budget: int | None = None,
                  handover_bytes: int | None = None,
                  pair_store: bool | None = None) -> Merges:
    """Average-linkage merges of ``x`` without an ``N x N`` matrix (module docstring).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32 or float64, finite, on the device the kernels run on.
    metric : str
        ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
    max_cluster_size : int or None
        Clusters larger than this take no further part in merging.
    ops : object
        The kernels: ``centroid_nn``, ``candidate_pairs``, ``pair_average``,
        ``cluster_matrix`` and the dense engine's ``round_scan`` and ``merge_compact_nn``
        (:class:`dcpe_kernels.TritonOps`, ``CudaOps`` or :class:`dcpe_kernels.ReferenceOps`).
    backend : str
        Name used in error messages.
    n_clusters : int, optional
        Stop once the first ``N - n_clusters`` merges of the greedy order are known.
    memory_budget : int, optional
        Bytes the engine may use (default: what the device reports free).
    handover_bytes : int, optional
        The dense rounds take over (Euclidean) once two matrices of the active clusters
        fit in this many bytes and in the budget; 0 never hands over.  Default: once they
        fit :data:`DEFAULT_HANDOVER_BYTES` and a round's exact sums cover
        :data:`HANDOVER_WORK_FRACTION` of all token pairs.
    pair_store : bool, optional
        Keep the exact averages already summed from round to round (:class:`_PairStore`;
        Euclidean).  Default: from :data:`STORE_MIN_DIM` dimensions on.  The merges are
        the same either way.

    Returns
    -------
    Merges
        As :func:`dcpe_kernels.rnn.rnn_merges` returns them.

    Raises
    ------
    InsufficientMemoryError
        Before any work, when even ``O(N d)`` does not fit.
    """
    if metric not in CLOSED_FORM_SCALE:
        raise ValueError(f"metric={metric!r} is not supported by the matrix-free engine; "
                         f"supported: {sorted(CLOSED_FORM_SCALE)}")
    dev, dt = x.device, x.dtype
    n_all, dim = int(x.shape[0]), int(x.shape[1])
    itemsize = x.element_size()
    i64, f64 = torch.int64, torch.float64
    if n_all < 2:
        return Merges.none(n_all, dev, dt)
    needed = linear_required_bytes(n_all, dim, itemsize, dev)
    avail = budget_for(dev, memory_budget, needed,
                       f"{backend} backend: matrix-free rounds on {n_all} x {dim} tokens")
    handover = DEFAULT_HANDOVER_BYTES if handover_bytes is None else int(handover_bytes)
    handover = min(handover, avail - needed)
    work_floor = HANDOVER_WORK_FRACTION if handover_bytes is None else 0.0

    scale = CLOSED_FORM_SCALE[metric]
    xs = x.contiguous()
    if metric == "cosine":  # unit rows, as the dense engine takes them
        norms = torch.linalg.vector_norm(xs, dim=1)
        xs = xs / torch.where(norms > 0, norms, 1)[:, None]

    st = RoundState.new(n_all, dev, dt, max_cluster_size, n_clusters, True)
    mu = xs.to(f64)  # (n, d) centroids
    m2 = torch.zeros(n_all, dtype=f64, device=dev)  # sum of squared distances to mu
    # each cluster's nearest neighbour and distance (best: float64 for the closed forms),
    # kept from round to round for clusters that need no new search; *2: the next round's
    nn, nn2 = (torch.zeros(n_all, dtype=i64, device=dev) for _ in range(2))
    nnd, nnd2 = (torch.zeros(n_all, dtype=dt, device=dev) for _ in range(2))
    bdt = f64 if scale is not None else dt
    best, best2 = (torch.zeros(n_all, dtype=bdt, device=dev) for _ in range(2))
    needy = torch.ones(n_all, dtype=torch.int8, device=dev)  # searches this round
    needy2 = torch.empty_like(needy)
    rows = torch.arange(n_all, dtype=torch.int32, device=dev)
    nrows = n_all
    tokens = rad = store = None
    # bytes per entry of the room for candidate pairs, per entry of a chunk of it, and the
    # store's share of the budget
    pair_bytes, chunk_bytes, store_bytes = _PAIR_BYTES, _PAIR_CHUNK_BYTES, 0
    chunk = _PAIR_CHUNK
    # the round's new exact averages for the store: keys (SENT: none) and float64 values
    fresh: list[torch.Tensor] = []
    # the first round of a Euclidean run needs no exact sums (_SINGLETON_ROUND), and only
    # the later rounds have thresholds from the old neighbours (_BOUND_FACTOR)
    singletons = _SINGLETON_ROUND
    # past GRAM_MIN_DIM dimensions (Euclidean), the scans' dd from tiles of a Gram matrix;
    # its bounds are not exact distances, so the first round sums its candidates too
    gram = None
    if scale is None and dim >= GRAM_MIN_DIM and hasattr(ops, "candidate_pairs_gram"):
        gram = _GramPlan(mu.mean(0), dim, max(_GRAM_MIN_COLS * 8 * n_all,
                                              min(_GRAM_TILE_BYTES, (avail - needed) // 8)),
                         bool(getattr(ops, "gram_by_columns", False)))
        singletons = False
    # what the budget leaves past the preflight for the room for candidate pairs, one chunk
    # of its temporaries and the store: less a Gram tile's bytes past the smallest (which the
    # preflight counts), alive with the room during a round's scans
    spare = avail - needed - (max(0, gram.tile_bytes - _GRAM_MIN_COLS * 8 * n_all)
                              if gram is not None else 0)
    bounded, n_unknown, searched_scan = False, 0, n_all
    largest = 1  # the largest cluster (read at each synchronisation)
    if scale is None:
        tokens = _Tokens(xs)
        rad = torch.zeros(n_all, dtype=dt, device=dev)
        rel, absm = _margins(xs, dim)
        capacity = max(_MIN_PAIRS, _PAIRS_PER_CLUSTER * n_all)
        if pair_store is None:
            pair_store = dim >= STORE_MIN_DIM
        pair_store = pair_store and n_all < (1 << 30)
        if pair_store:
            pair_bytes += _STORE_PAIR_BYTES
            chunk_bytes += _STORE_CHUNK_BYTES
        chunk = _chunk_size(spare, chunk_bytes)
        if dim >= STORE_MIN_DIM:
            capacity = max(capacity, min(_PAIRS_PER_CLUSTER_HIGH_D * n_all, _pair_room(
                spare // 4, pair_bytes, chunk_bytes, chunk)))
        if pair_store:
            # half of what the budget leaves past the initial room for candidate pairs
            left = spare - capacity * pair_bytes - min(capacity, chunk) * chunk_bytes
            store = _PairStore(n_all, dev, max(0, left) // (2 * _STORE_BYTES), chunk)
            store_bytes = store.room * _STORE_BYTES
        pa = torch.zeros(capacity, dtype=torch.int32, device=dev)
        pb = torch.zeros(capacity, dtype=torch.int32, device=dev)
        val = torch.empty(capacity, dtype=dt, device=dev)
        pairs_buf = (pa, pb, val)  # the room; pa, pb, val: views of its first `capacity`
        if gram is not None:  # the first round's view (_PAIRS_PER_CLUSTER_FIRST)
            capacity = min(capacity, max(_MIN_PAIRS, _PAIRS_PER_CLUSTER_FIRST * n_all))
            pa, pb, val = (t[:capacity] for t in pairs_buf)
        count = torch.zeros(1, dtype=i64, device=dev)
        scratch = torch.empty(n_all, dtype=i64, device=dev)
        # the next round's thresholds from the old neighbours, and who must scan for one
        bound = torch.full((n_all,), float("inf"), dtype=dt, device=dev)
        unknown = torch.zeros(n_all, dtype=torch.int8, device=dev)
    nxt: dict[str, torch.Tensor] = {}  # the next round's moments, from carry()
    round_work = [torch.zeros(1, dtype=i64, device=dev)]  # token pairs the round summed
    del xs
    n = n_all
    # flat cut (Euclidean): the (N - k)-th smallest monotone height recorded, once known
    # (:func:`_cut_height`); a cluster farther than it from all others is set aside
    cut: torch.Tensor | None = None

    def carry(n: int) -> tuple[torch.Tensor, ...]:
        """After the round's scan: the next round's kept neighbours, who searches, the
        next round's moments and (Euclidean) thresholds, all launched before the round's
        synchronisation, with the counts it reads."""
        kept, p, q, new_of = _new_slots(st, n)
        needy_next = _carry_neighbours(kept, p, q, new_of, nn[:n], nnd, best, nn2, nnd2,
                                       best2)
        needy2[:n] = needy_next.to(torch.int8)
        out = [needy_next.sum().reshape(1)]
        size_next = torch.where(kept, st.size2[:n], 1)
        nxt["mu"], nxt["m2"] = _merge_moments(mu, m2, st.size, p, q, size_next)
        if tokens is not None:
            kept_size = torch.where(kept, st.size2[:n], 0)  # tokens of the next round's slots
            out += [count, kept_size.sum().reshape(1), round_work[0],
                    kept_size.max().reshape(1)]
            known, tail = None, []
            if store is not None and fresh:
                aside = None
                if cut is not None:  # (see _set_aside)
                    aside = (nn[:n] == torch.arange(n, device=dev)) & torch.isinf(nnd[:n])
                known, counts = store.plan(fresh[0], fresh[1], new_of, p, q, st.size, aside)
                tail = [fresh[3], counts]
            elif store is not None:  # (the first round has no sums)
                store.planned = None
                tail = [torch.zeros(5, dtype=i64, device=dev)]
            ub = _neighbour_bounds(kept, p, new_of, nn[:n], nnd[:n], nxt["mu"], nxt["m2"],
                                   size_next, _BOUND_FACTOR, known)
            bound[:n] = _up_to(ub, dt)
            need_scan = needy_next & ~torch.isfinite(ub)
            unknown[:n] = need_scan.to(torch.int8)
            out += [need_scan.sum().reshape(1), *tail]
        return tuple(out)

    clock = _Phases(dev, _TRACE[-1] if _TRACE else None)
    while n >= 2:
        clock.mark("update")
        searched = nrows
        s2 = m2[:n] / st.size[:n].to(f64)
        if scale is not None:
            mut = mu[:n].T.contiguous()
            ops.centroid_nn(mut, s2, n, 1, scale, best, nn, rows, nrows)
            clock.mark("scan")
            nnd[:n] = best[:n].to(dt)
            vals = st.scan(ops, n, nn, nnd, lambda n=n: carry(n))
            if vals[0] == 0 and nrows < n and not st.stops(vals[2]):
                # a unit of rounding in the moments can make a merged cluster nearer to some
                # C than both of its parts were, which C's kept nearest neighbour does not
                # know, and leave the round without a reciprocal pair: every cluster then
                # searches again (with every nearest neighbour current, the nearest pair,
                # ties to the smallest identities, is reciprocal); the scan only launched
                # the next round's state, which this one replaces
                rows = torch.arange(n, dtype=torch.int32, device=dev)
                nrows = searched = n
                ops.centroid_nn(mut, s2, n, 1, scale, best, nn, rows, nrows)
                nnd[:n] = best[:n].to(dt)
                vals = st.scan(ops, n, nn, nnd, lambda n=n: carry(n))
            clock.mark("select")
        else:
            scans = None  # (the last round's centroids are not kept alongside)
            s2t = s2.to(dt)
            scans = _Scans(ops, mu[:n], s2t, gram)
            if bounded:
                # the thresholds from the old neighbours; the rest scan for theirs
                scans.bounds(best, scratch, _compact(unknown[:n], n_unknown), n_unknown)
                use = (needy[:n] != 0) & (unknown[:n] == 0)
                best[:n] = torch.where(use, bound[:n], best[:n])
                searched_scan = n_unknown
            else:
                scans.bounds(best, scratch, rows, nrows)
                searched_scan = nrows
            if store is not None and store.low is not None:
                # the smallest average the store holds of each cluster is an upper bound of
                # its nearest distance too (the scans above could not wait for it)
                best[:n] = torch.minimum(best[:n], _up_to(store.low[:n], dt))
            clock.mark("scan")
            if singletons:
                # every cluster one token: the bound sqrt(dd + 0 + 0) is the exact distance,
                # rounded as pair_average rounds it, and the scan's argmin is the smallest
                # slot among the nearest: no candidates, no sums
                count.zero_()
                round_work[0] = torch.zeros(1, dtype=i64, device=dev)
                nn[:n] = scratch[:n]
                nnd[:n] = best[:n]
                vals = st.scan(ops, n, nn, nnd, lambda n=n: carry(n))
                clock.mark("select")
            relisted = 0  # lists past their room, listed again
            batches = rescanned = 0  # (a list past the largest room: _batched_pairs)
            cand_rows = 0 if singletons else nrows  # clusters of the candidate scan
            while not singletons:
                count.zero_()
                tau = best if cut is None else torch.minimum(best, cut)
                scans.candidates(rad, tau, rel, absm, pa, pb, count, capacity, rows, nrows,
                                 needy)
                clock.mark("candidates")
                # a list past its room is listed again in a larger one after the round's
                # synchronisation, so none of its pairs is summed (on the device: no pair is
                # live); the count itself still goes to the synchronisation
                listed = torch.where(count > capacity, 0, count)
                pieces = functools.partial(_chunks, pa, pb, listed, n, capacity, chunk)
                one = None
                if capacity <= chunk:  # one chunk: its live pairs once for all the passes
                    one = list(pieces())
                    pieces = functools.partial(iter, one)
                work = torch.zeros(1, dtype=i64, device=dev)
                if store is not None:
                    new_key = torch.empty(capacity, dtype=i64, device=dev)
                    new_val = torch.empty(capacity, dtype=f64, device=dev)
                    reused = torch.zeros(1, dtype=i64, device=dev)
                for sl, live_ab, cnt in pieces():
                    m = sl.stop - sl.start
                    if store is None:
                        _pair_sums(ops, tokens.x, tokens.offsets, st.size, n, pa[sl], pb[sl],
                                   cnt, m, val[sl], live_ab, largest)
                        work += _pair_work(*live_ab, st.size)
                    else:
                        k_c, v_c, w_c, r_c = _stored_sums(ops, store, tokens, st.size, n,
                                                          pa[sl], pb[sl], m, val[sl], live_ab,
                                                          largest)
                        new_key[sl], new_val[sl] = k_c, v_c
                        del k_c, v_c
                        work += w_c
                        reused += r_c
                    del live_ab
                if store is not None:
                    fresh[:] = [new_key, new_val, work, reused]
                    del new_key, new_val
                round_work[0] = work
                clock.mark("sums")
                _nearest_from_pairs(pieces, val, n, needy, nn, nnd)
                if cut is not None:
                    _set_aside(nn, nnd, n, cut)
                vals = st.scan(ops, n, nn, nnd, lambda n=n: carry(n))
                clock.mark("select")
                if vals[4] <= capacity:
                    break
                relisted += 1
                room = _pair_room(spare - store_bytes, pair_bytes, chunk_bytes, chunk)
                if vals[4] > room and store is not None:
                    # the store is a cache: it gives up room to the candidate pairs, down to
                    # none (then the rounds go on without it, as below STORE_MIN_DIM)
                    fresh.clear()
                    want = math.ceil(vals[4] * _PAIRS_GROWTH)
                    free = spare - want * pair_bytes - min(want, chunk) * chunk_bytes
                    if free >= _STORE_BYTES * _MIN_PAIRS:
                        store.shrink(free // _STORE_BYTES)
                        store_bytes = store.room * _STORE_BYTES
                    else:
                        store, store_bytes = None, 0
                        pair_bytes -= _STORE_PAIR_BYTES
                        chunk_bytes -= _STORE_CHUNK_BYTES
                    room = _pair_room(spare - store_bytes, pair_bytes, chunk_bytes, chunk)
                # past the largest room the list goes through it a batch of searching
                # clusters at a time (_batched_pairs), in the whole room: at least the
                # first one, which holds any one cluster's list (8 pairs per cluster)
                batched = vals[4] > room
                capacity = (max(room, pairs_buf[0].shape[0]) if batched else
                            min(room, 1 << math.ceil(math.log2(vals[4] * _PAIRS_GROWTH))))
                if capacity > pairs_buf[0].shape[0]:
                    del pa, pb, val, pieces
                    one = None
                    pairs_buf = ()  # the old room goes before the new one is allocated
                    pairs_buf = (torch.zeros(capacity, dtype=torch.int32, device=dev),
                                 torch.zeros(capacity, dtype=torch.int32, device=dev),
                                 torch.empty(capacity, dtype=dt, device=dev))
                pa, pb, val = (t[:capacity] for t in pairs_buf)
                if batched:
                    round_work[0], batches, rescanned = _batched_pairs(
                        ops, scans, tokens, st.size, n, (rad, tau, rel, absm), pa, pb, val,
                        count, capacity, chunk, rows, nrows, needy, nn, nnd,
                        math.ceil(vals[4] * _BATCH_HEADROOM / capacity), largest, backend,
                        clock)
                    if cut is not None:
                        _set_aside(nn, nnd, n, cut)
                    vals = st.scan(ops, n, nn, nnd, lambda n=n: carry(n))
                    clock.mark("select")
                    break
            if (not singletons and st.rounds > 0 and _PAIRS_SHRINK
                    and vals[4] * _PAIRS_SHRINK < capacity):
                # far fewer pairs than room (the late rounds, a flat cut's set-aside): the
                # next rounds' passes over the list take a shorter view of the same room
                # (not after the first round: its clusters of one token list a pair or
                # two each, far fewer than the next round's)
                capacity = min(capacity, max(_MIN_PAIRS, 1 << max(0, math.ceil(math.log2(
                    max(1.0, _PAIRS_HEADROOM * vals[4]))))))
                pa, pb, val = (t[:capacity] for t in pairs_buf)
        n_pairs, n_new, below, nrows = vals[:4]
        extra: dict[str, Any] = {}
        if tokens is not None:
            extra = {"scan_rows": searched_scan, "pairs": vals[4], "token_pairs": vals[6],
                     "max_size": vals[7], "room": capacity, "relisted": relisted,
                     "cand_rows": cand_rows, "gram": gram is not None}
            if batches:
                extra.update(batches=batches, rescanned=rescanned)
        if store is not None:
            extra.update(reused=vals[9], store=vals[13], sorted=vals[11] + vals[12])
        clock.emit(round=st.rounds + 1, n=n, rows=searched, **extra)
        old_size = st.size
        if not st.commit(n, n_pairs, n_new, below, backend):
            break
        singletons = singletons and n_pairs == 0
        if gram is not None and st.rounds == 1:  # the whole room from the second round on
            capacity = pairs_buf[0].shape[0]
            pa, pb, val = pairs_buf
        if tokens is not None:
            n_unknown = vals[8]
            bounded = _BOUND_FACTOR > 0
            largest = vals[7]
        if store is not None:
            store.apply(*vals[10:13])
            fresh.clear()
        nn, nn2, nnd, nnd2, best, best2 = nn2, nn, nnd2, nnd, best2, best
        needy, needy2 = needy2, needy
        rows = _compact(needy[:n_new], nrows)
        p = st.p32[:n_new].to(i64)
        q = st.q32[:n_new].to(i64)
        new_size = st.size[:n_new]
        mu, m2 = nxt["mu"][:n_new], nxt["m2"][:n_new]
        nxt.clear()
        n = n_new
        if tokens is not None and _SET_ASIDE:
            cut = _cut_height(st)
        if tokens is not None:
            slot = tokens.regroup(p, q, old_size, new_size, vals[5])
            r = _radius(tokens, slot, mu, n)
            rad = r + (r * rel + absm)
            matrix = allocator_bytes(n * n * itemsize)
            if (2 * matrix <= handover and n > 1
                    and vals[6] >= work_floor * tokens.ntok * tokens.ntok):
                # the room for candidate pairs, its last chunk's temporaries, the scans and
                # the store go before the clusters' matrices take their place: those are
                # sized from what the budget leaves past the preflight, as they were
                pa = pb = val = pieces = one = scans = store = None
                pairs_buf = ()
                cur = torch.empty(n * n, dtype=dt, device=dev)
                if vals[7] <= _LANE_MAX_SIZE:
                    ops.cluster_matrix(tokens.x, tokens.offsets, new_size, n, cur, n, nn, nnd)
                else:
                    room = avail - needed - matrix
                    _matrix_from_pairs(ops, tokens, new_size, n, cur, nn, nnd,
                                       max(1024, min(_MATRIX_CHUNK, room // 48)), largest)
                used = needed + matrix
                del tokens, mu, m2, rad
                clock.mark("handover")
                dense_rounds(st, ops, cur, n, n, nn, nnd, 0, avail, used, backend)
                clock.mark("dense")
                break
    clock.emit(done=True, rounds=st.rounds)
    return st.merges()


def _cut_height(st: RoundState) -> torch.Tensor | None:
    """For a flat cut at ``k`` clusters, once at least ``N - k`` merges are recorded: the
    ``(N - k)``-th smallest of their monotone heights, ``U`` (a 0-d tensor on the device;
    else None).

    Merges still to come can only add heights, so the ``(N - k)``-th smallest height of
    the whole dendrogram is at most ``U``, and a merge found later with a monotone height
    of at least ``U`` sorts after the first ``N - k`` merges of the greedy order (heights,
    then discovery order): it cannot change the cut.  ``U`` only decreases as merges are
    recorded.
    """
    if st.need is None or st.need < 1 or st.m < st.need:
        return None
    return torch.kthvalue(st.m_hf[: st.m], st.need).values


def _set_aside(nn: torch.Tensor, nnd: torch.Tensor, n: int, cut: torch.Tensor) -> None:
    """Set aside every cluster whose nearest distance exceeds ``cut`` (:func:`_cut_height`):
    it points to itself at ``+inf``, so it never merges again, never searches again
    (:func:`_carry_neighbours`) and does not hold back the early stop.

    Average linkage is reducible: every later distance of such a cluster ``C``, to any
    cluster or merged cluster, is at least its nearest distance ``delta_C > U`` (up to the
    rounding of the averages, within one unit in the last place: at least ``U``), so all
    of its later merges sort after the cut.  No other cluster loses its nearest neighbour:
    one whose nearest distance is at most ``U`` has a neighbour closer than ``U``, which
    is then not set aside.  So the searches can also stop at ``U`` (the candidate
    threshold ``min(tau, U)``): a cluster whose nearest distance is at most ``U`` finds
    it, one with none within ``U`` finds none or one beyond ``U``, and is set aside.  The
    merges below ``U``, which make the cut, are those of the full run.
    """
    over = nnd[:n] > cut
    nn[:n] = torch.where(over, torch.arange(n, device=nn.device), nn[:n])
    nnd[:n] = torch.where(over, float("inf"), nnd[:n])


def _new_slots(st: RoundState, n: int) -> tuple[torch.Tensor, ...]:
    """The scanned round's slot map, on the device (before its synchronisation): ``kept``
    (new slot ``j < n`` exists), ``p``/``q`` (its old slots: the kept one, and the merged
    partner or -1; 0 / -1 past the new count) and ``new_of`` (old slot -> new slot, -1
    for a cluster that left)."""
    dev = st.p32.device
    ar = torch.arange(n, device=dev)
    kept = ar < st.counts[1]
    p = torch.where(kept, st.p32[:n].to(torch.int64), 0)
    q = torch.where(kept, st.q32[:n].to(torch.int64), -1)
    new_of = torch.full((n + 1,), -1, dtype=torch.int64, device=dev)
    new_of.scatter_(0, torch.where(kept, p, n), ar)
    new_of.scatter_(0, torch.where(kept & (q >= 0), q, n), ar)
    new_of[n] = -1
    return kept, p, q, new_of[:n]


def _carry_neighbours(kept: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                      new_of: torch.Tensor, nn: torch.Tensor, nnd: torch.Tensor,
                      best: torch.Tensor, nn2: torch.Tensor, nnd2: torch.Tensor,
                      best2: torch.Tensor) -> torch.Tensor:
    """The next round's slots that search again (bool ``(n,)``, False past the new count),
    with the others' nearest neighbours carried into ``nn2``/``nnd2``/``best2``
    (``kept``/``p``/``q``/``new_of``: the slot map of :func:`_new_slots`; ``nn``: the
    ``n`` old slots' neighbours).

    Average linkage is reducible (Bruynooghe 1977; Müllner 2011): a merged cluster is never
    closer to a third cluster than the nearer of its parts.  So a cluster that did not
    merge, and whose nearest neighbour did not merge or leave (size cap), keeps that
    neighbour and distance.  Only merged clusters and those whose neighbour merged search.
    (On exactly tied distances the kept neighbour may not be the one with the smallest
    slot among the tied; results are deterministic either way.)  Runs on the device,
    launched after the round's scan and before its synchronisation.
    """
    n = nn.shape[0]
    ar = torch.arange(n, device=nn.device)
    merged = (nn[nn] == ar) & (nn != ar)  # old slots in a reciprocal pair (not set aside)
    t = nn[p]  # the old neighbour of each new slot's cluster
    target = new_of[t]  # (a neighbour that merged has a new slot, but is `merged`)
    needy = kept & ((q >= 0) | (target < 0) | merged[t])
    nn2[:n] = torch.where(needy, 0, target.clamp_min(0))
    nnd2[:n] = nnd[:n][p]
    best2[:n] = best[:n][p]
    return needy


def _neighbour_bounds(kept: torch.Tensor, p: torch.Tensor, new_of: torch.Tensor,
                      nn: torch.Tensor, nnd: torch.Tensor, mu: torch.Tensor, m2: torch.Tensor,
                      size: torch.Tensor, factor: float,
                      known: torch.Tensor | None = None) -> torch.Tensor:
    """Upper bounds of the next round's nearest-neighbour distances (float64 ``(n,)``,
    ``inf`` where none is taken), on the device, before the round's synchronisation.

    Every old cluster ``a`` and its nearest neighbour ``nn[a]`` lie in two new clusters
    ``A`` and ``B`` (old slot ``p`` or ``q`` of a new slot); when they differ,
    ``sqrt(|mu_A - mu_B|^2 + s2_A + s2_B)`` bounds the average distance of ``A`` and ``B``
    (Jensen), hence the nearest distance of both.  Each new cluster takes the smallest of
    its bounds, kept when at most ``factor`` times its old nearest distance ``nnd[p]``,
    which bounds the new one from below (reducibility): a looser bound would let through
    too many candidates.  ``mu``/``m2``/``size``: the new clusters' moments (rows past the
    new count unused); ``kept``/``p``/``new_of``: the slot map of :func:`_new_slots`;
    ``known``: optional further upper bounds per new slot (the smallest exact average the
    pair store holds for it, :meth:`_PairStore.plan`), under the same rule.
    """
    n = nn.shape[0]
    dev = nn.device
    na, nb = new_of, new_of[nn]
    ok = (na >= 0) & (nb >= 0) & (na != nb)
    na, nb = torch.where(ok, na, 0), torch.where(ok, nb, 0)
    s2 = m2 / size.to(torch.float64)
    ub = torch.empty(n, dtype=torch.float64, device=dev)
    step = _bound_rows(mu.shape[1])
    for r0 in range(0, n, step):  # blocks of rows: two (rows, d) temporaries at most
        ia, ib = na[r0:r0 + step], nb[r0:r0 + step]
        diff = mu.index_select(0, ia).sub_(mu.index_select(0, ib))
        ub[r0:r0 + step] = torch.linalg.vector_norm(diff, dim=1).square() + (s2[ia] + s2[ib])
        del diff
    ub = torch.where(ok, ub.sqrt_(), float("inf"))
    out = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
    out = out.scatter_reduce(0, na, ub, "amin").scatter_reduce(0, nb, ub, "amin")
    if known is not None:
        out = torch.minimum(out, known)
    low = nnd[p].to(torch.float64)
    return torch.where(kept & (out <= factor * low), out, float("inf"))


def _up_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, rounded up (a threshold never below its float64 value)."""
    y = x.to(dtype)
    return torch.where(y.to(x.dtype) < x, torch.nextafter(y, torch.full_like(y, float("inf"))),
                       y)


def _compact(flags: torch.Tensor, count: int) -> torch.Tensor:
    """int32 indices of the nonzero ``flags`` (``count`` of them), without a host sync."""
    n = flags.shape[0]
    on = flags != 0
    pos = torch.cumsum(on, 0) - 1
    out = torch.empty(count + 1, dtype=torch.int32, device=flags.device)
    out.scatter_(0, torch.where(on, pos, count),
                 torch.arange(n, dtype=torch.int32, device=flags.device))
    return out[:count]


def _live_pairs(pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor,
                n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs ``k < count`` of ``pa``/``pb`` as a mask and int64 slots, without reading
    ``count`` on the host.  Past the count both slots are ``k mod n``: spread over the
    ``n`` clusters, the masked entries of the scatters of :func:`_nearest_from_pairs` do not
    queue their atomic minima on one slot (most of the list, in a round with far fewer
    pairs than the room for them)."""
    ar = torch.arange(pa.shape[0], device=pa.device)
    live = ar < count
    spread = ar.remainder_(max(1, n))
    return (live, torch.where(live, pa.to(torch.int64), spread),
            torch.where(live, pb.to(torch.int64), spread))


def _pair_sums(ops: Any, x: torch.Tensor, offsets: torch.Tensor, size: torch.Tensor, n: int,
               pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor, capacity: int,
               val: torch.Tensor, live_ab: tuple[torch.Tensor, ...] | None = None,
               largest: int | None = None) -> None:
    """``ops.pair_average`` of the pairs ``k < count`` into ``val``, without leaving a large
    pair to one block (one program): the first :data:`_SPLIT_MAX` pairs of at least
    :data:`_SPLIT_WORK` token pairs are summed in :data:`_SPLIT_PARTS` parts of their larger
    cluster, each part a pair of its own (float64 averages, times their token pairs), and
    the parts added in a fixed order.  The value is that of one sum up to the order of the
    float64 additions; everything stays on the device (no host synchronisation).
    ``live_ab``: :func:`_live_pairs` of these pairs, when the caller has it.  ``largest``:
    an upper bound of ``size`` known on the host (the largest cluster, read at the last
    synchronisation); when no pair can be split under it, the pairs go to one
    ``pair_average`` as they are, without the passes over the list that pick the split
    ones (the same values: none would be)."""
    if capacity <= 0:
        return
    if largest is not None and (largest < _SPLIT_PARTS or largest * largest < _SPLIT_WORK):
        ops.pair_average(x, offsets, size, pa, pb, count, capacity, val)
        return
    dev = val.device
    i64, f64 = torch.int64, torch.float64
    ar = torch.arange(capacity, device=dev)
    live, a, b = _live_pairs(pa, pb, count, n) if live_ab is None else live_ab
    n_a, n_b = size[a], size[b]
    # (the larger cluster has at least one token per part)
    big = live & (n_a * n_b >= _SPLIT_WORK) & (torch.maximum(n_a, n_b) >= _SPLIT_PARTS)
    del n_a, n_b
    rank = torch.cumsum(big, 0) - 1
    take = big & (rank < _SPLIT_MAX)
    # the other pairs whole; a split pair is replaced by the small pair (0, 1) there
    ops.pair_average(x, offsets, size, torch.where(take, 0, pa), torch.where(take, 1, pb),
                     count, capacity, val)
    # the split pairs: slot j < _SPLIT_MAX holds pair k_of[j]
    k_of = torch.zeros(_SPLIT_MAX + 1, dtype=i64, device=dev)
    k_of = k_of.scatter(0, torch.where(take, rank, _SPLIT_MAX), ar)[:_SPLIT_MAX]
    n_take = take.sum()
    a_j, b_j = a[k_of], b[k_of]
    lo_j, hi_j = torch.minimum(a_j, b_j), torch.maximum(a_j, b_j)
    nl_j, nh_j = size[lo_j], size[hi_j]
    split_hi = nh_j >= nl_j
    c_s = torch.where(split_hi, hi_j, lo_j)  # the cluster cut into parts
    c_o = torch.where(split_hi, lo_j, hi_j)
    parts = torch.arange(_SPLIT_PARTS + 1, device=dev)
    edges = (parts[None, :] * size[c_s][:, None]) // _SPLIT_PARTS
    part_size = edges[:, 1:] - edges[:, :-1]
    part_off = offsets[c_s][:, None] + edges[:, :-1]
    # the parts are clusters n, n + 1, ...: the uncut cluster is always the smaller slot
    offsets_x = torch.cat([offsets[:n], part_off.reshape(-1)])
    sizes_x = torch.cat([size[:n], part_size.reshape(-1)])
    m = _SPLIT_MAX * _SPLIT_PARTS
    pa_x = c_o.repeat_interleave(_SPLIT_PARTS).to(torch.int32)
    pb_x = (n + torch.arange(m, device=dev)).to(torch.int32)
    val_x = torch.zeros(m, dtype=f64, device=dev)
    ops.pair_average(x, offsets_x, sizes_x, pa_x, pb_x, (n_take * _SPLIT_PARTS).reshape(1), m,
                     val_x)
    weight = part_size.to(f64) * size[c_o].to(f64)[:, None]
    sums = val_x.view(_SPLIT_MAX, _SPLIT_PARTS) * weight  # rows past n_take are not used
    avg = (sums.sum(1) / (nl_j.to(f64) * nh_j.to(f64))).to(val.dtype)
    # into their places; the rows past n_take write the first split pair's value again (the
    # same bits), or, with none split, entry 0 its own value
    real = torch.arange(_SPLIT_MAX, device=dev) < n_take
    first = torch.where(n_take > 0, avg[0], val[0])
    val.scatter_(0, torch.where(real, k_of, k_of[0]), torch.where(real, avg, first))


def _stored_sums(ops: Any, store: _PairStore, tokens: _Tokens, size: torch.Tensor, n: int,
                 pa: torch.Tensor, pb: torch.Tensor, capacity: int, val: torch.Tensor,
                 live_ab: tuple[torch.Tensor, ...], largest: int | None = None
                 ) -> list[torch.Tensor]:
    """The averages of the pairs ``k < count`` into ``val``, with ``store``
    (:class:`_PairStore`): a pair it holds complete takes its value; one it holds in part
    is summed over its missing pairs of parts only (each part a cluster of its own for
    :func:`_pair_sums`: part 0 of a slot its first :attr:`_PairStore.part` tokens, part 1
    the rest), added in the order of the parts to the known ones; the others are summed
    whole.  Returns the round's new complete entries for :meth:`_PairStore.plan` (keys,
    ``SENT`` where none, and float64 averages), and the token pairs summed and those whose
    average the store held (int64 ``(1,)`` each, on the device).  ``largest``: as for
    :func:`_pair_sums`."""
    f64 = torch.float64
    dev = val.device
    live, a, b = live_ab
    key, found, known, miss = store.lookup(live, a, b)
    todo = live & ~found
    pos, (pa_u, pb_u) = _pack(todo, capacity, pa[:capacity], pb[:capacity])
    val64 = torch.zeros(capacity + 1, dtype=f64, device=dev)
    _pair_sums(ops, tokens.x, tokens.offsets, size, n, pa_u, pb_u, todo.sum().reshape(1),
               capacity, val64[:capacity], largest=largest)
    avg = torch.where(todo, val64[pos], known)
    del pa_u, pb_u, val64
    partial = found & (miss != 0)
    pairs = torch.where(live, size[a] * size[b], 0)
    work = torch.where(todo, pairs, 0).sum()
    # the pairs held in part: at most the store's incomplete entries (a bound known on the
    # host), so their passes go over as many entries, not over the whole list
    mp = min(capacity, store.incomplete) if store.part.numel() else 0
    if mp:
        ppos, (a_p, b_p, miss_p, known_p) = _pack(partial, mp, a, b, miss, known)
        lo_p, hi_p = torch.minimum(a_p, b_p), torch.maximum(a_p, b_p)
        # their missing pairs of parts: (pair j, bit i) -> a pair of part clusters (none
        # past the pairs held in part, whose miss is 0)
        bit = torch.arange(4, device=dev)
        flag = ((miss_p[:, None] >> bit) & 1) == 1  # (mp, 4)
        part0 = store.part[:n]
        psize = torch.stack([part0, size[:n] - part0], 1)  # (n, 2): tokens of each part
        ulo, uhi = bit >> 1, bit & 1
        vlo = n + 2 * lo_p[:, None] + ulo  # part clusters n .. 3n - 1
        vhi = n + 2 * hi_p[:, None] + uhi
        m = 3 * mp  # at most three missing pairs of parts per pair
        fpos, (pa_v, pb_v) = _pack(flag.reshape(-1), m, vlo.reshape(-1).to(torch.int32),
                                   vhi.reshape(-1).to(torch.int32))
        fpos = fpos.view(-1, 4)
        offs = tokens.offsets[:n]
        offsets_x = torch.cat([offs, torch.stack([offs, offs + part0], 1).reshape(-1)])
        sizes_x = torch.cat([size[:n], psize.reshape(-1)])
        val_v = torch.zeros(m + 1, dtype=f64, device=dev)
        _pair_sums(ops, tokens.x, offsets_x, sizes_x, 3 * n, pa_v, pb_v,
                   flag.sum().reshape(1), m, val_v[:m], largest=largest)
        del pa_v, pb_v
        wt = (psize[lo_p[:, None], ulo] * psize[hi_p[:, None], uhi]).to(f64)  # (mp, 4)
        wt = torch.where(flag, wt, 0.0)
        total = (size[lo_p] * size[hi_p]).to(f64)
        s = known_p * (total - wt.sum(1))  # the known token pairs' sum
        for i in range(4):  # in the order of the parts
            s = s + torch.where(flag[:, i], wt[:, i] * val_v[fpos[:, i]], 0.0)
        avg = torch.where(partial, torch.cat([s / total, s.new_zeros(1)])[ppos], avg)
        work = work + wt.sum().to(torch.int64)
    val[:capacity] = avg.to(val.dtype)
    summed = todo | partial
    reused = pairs.sum() - work
    return [torch.where(summed, key, _PairStore.SENT), avg, work.reshape(1),
            reused.reshape(1)]


def _pair_work(live: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               size: torch.Tensor) -> torch.Tensor:
    """Token pairs the round's exact sums covered (on the device; :func:`_live_pairs`)."""
    return (torch.where(live, size[a] * size[b], 0)).sum().reshape(1)


def _matrix_from_pairs(ops: Any, tokens: _Tokens, size: torch.Tensor, n: int,
                       cur: torch.Tensor, nn: torch.Tensor, nnd: torch.Tensor,
                       chunk: int, largest: int | None = None) -> None:
    """The clusters' matrix from the exact averages of all their pairs, in chunks of
    ``chunk`` pairs (``pair_average`` sums a large pair with a whole block or
    program), with row minima and smallest argmins; the same values as ``cluster_matrix``
    up to the order of the float64 sums, and exactly symmetric (one sum per pair).
    ``largest``: as for :func:`_pair_sums`."""
    dev = cur.device
    d = cur[: n * n].view(n, n)
    d.fill_(float("inf"))
    rows = torch.arange(n, device=dev)
    a0 = 0
    while a0 < n - 1:
        # rows a0 .. a1 - 1, each with its pairs (a, b > a)
        a1, total = a0, 0
        while a1 < n - 1 and (total == 0 or total + (n - 1 - a1) <= chunk):
            total += n - 1 - a1
            a1 += 1
        lengths = (n - 1) - rows[a0:a1]
        a = torch.repeat_interleave(rows[a0:a1], lengths, output_size=total)
        starts = torch.cumsum(lengths, 0) - lengths
        b = torch.arange(total, device=dev) - starts[a - a0] + a + 1
        pa, pb = a.to(torch.int32), b.to(torch.int32)
        val = torch.empty(total, dtype=cur.dtype, device=dev)
        count = torch.full((1,), total, dtype=torch.int64, device=dev)
        _pair_sums(ops, tokens.x, tokens.offsets, size, n, pa, pb, count, total, val,
                   largest=largest)
        d[a, b] = val
        d[b, a] = val
        a0 = a1
    step = max(1, (1 << 26) // max(n, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        block = d[r0:r1]
        best = block.min(dim=1).values
        nnd[r0:r1] = best
        # the first column at the minimum (argmax of a boolean returns the first maximum)
        nn[r0:r1] = (block == best[:, None]).to(torch.uint8).argmax(dim=1)


def _nearest_from_pairs(pieces: Callable[[], Any], val: torch.Tensor, n: int,
                        needy: torch.Tensor, nn: torch.Tensor, nnd: torch.Tensor) -> None:
    """The nearest neighbour of every searching cluster (``needy``) among the evaluated
    pairs (smallest slot on ties), on the device; the others keep ``nn``/``nnd``.
    ``pieces()`` gives the list a chunk at a time as :func:`_chunks` does (slice and
    :func:`_live_pairs`): two passes over it, the minima, then the smallest slot at them."""
    _set_nearest(*_pair_nearest(pieces, val, n, needy), n, needy, nn, nnd)


def _pair_nearest(pieces: Callable[[], Any], val: torch.Tensor, n: int,
                  needy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot, the smallest value of the evaluated pairs it is in (``inf`` where none)
    and the smallest other slot at it (``n`` where none) (:func:`_nearest_from_pairs`)."""
    dev = val.device

    def sides(sl: slice, live: torch.Tensor, b: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        v = val[sl]
        inf = torch.full_like(v, float("inf"))
        # the emitting side always searches; the other side only if it is needy
        return torch.where(live, v, inf), torch.where(live & (needy[b] != 0), v, inf)

    best = torch.full((n,), float("inf"), dtype=val.dtype, device=dev)
    for sl, (live, a, b), *_ in pieces():
        va, vb = sides(sl, live, b)
        best.scatter_reduce_(0, a, va, "amin").scatter_reduce_(0, b, vb, "amin")
    big = torch.full((), n, dtype=torch.int64, device=dev)
    idx = torch.full((n,), n, dtype=torch.int64, device=dev)
    for sl, (live, a, b), *_ in pieces():
        va, vb = sides(sl, live, b)
        take_b = torch.where(live & (va == best[a]), b, big)
        take_a = torch.where(live & (vb == best[b]), a, big)
        idx.scatter_reduce_(0, a, take_b, "amin").scatter_reduce_(0, b, take_a, "amin")
    return best, idx


def _set_nearest(best: torch.Tensor, idx: torch.Tensor, n: int, needy: torch.Tensor,
                 nn: torch.Tensor, nnd: torch.Tensor) -> None:
    """``nn``/``nnd`` of the searching clusters from :func:`_pair_nearest`."""
    # every searching cluster has a pair unless the pairs overflowed (that round is run
    # again): a cluster without one points to itself, which the round scan never merges
    ar = torch.arange(n, device=best.device)
    on = needy[:n] != 0
    nn[:n] = torch.where(on, torch.where(idx >= n, ar, idx), nn[:n])
    nnd[:n] = torch.where(on, best, nnd[:n])


def _batched_pairs(ops: Any, scans: Any, tokens: _Tokens, size: torch.Tensor, n: int,
                   thresholds: tuple[torch.Tensor, torch.Tensor, float, float],
                   pa: torch.Tensor, pb: torch.Tensor, val: torch.Tensor,
                   count: torch.Tensor, capacity: int, chunk: int, rows: torch.Tensor,
                   nrows: int, needy: torch.Tensor, nn: torch.Tensor, nnd: torch.Tensor,
                   batches: int, largest: int | None, backend: str,
                   clock: Any = None) -> tuple[torch.Tensor, int, int]:
    """A round whose list of candidate pairs is longer than the largest room the budget
    allows: the searching clusters ``rows[:nrows]`` list their candidates, which are summed
    and reduced to nearest neighbours, a batch of consecutive rows at a time in the room of
    ``capacity`` pairs.  A pair is listed by one of its clusters whatever the batches
    (the candidate scans decide it by its two clusters and ``needy``), so every searching
    cluster sees the pairs of one list; the minima of the batches and their smallest slots
    give the nearest neighbours of that list (ties to the smallest slot), and ``count``
    ends as its length.  Each batch is read by the host (its count): one past the room is
    halved and listed again.  ``thresholds``: ``(rad, tau, rel, absm)`` of
    ``scans.candidates``; ``batches``: the first number of batches.  Returns the token
    pairs summed (int64 ``(1,)``, on the device), the lists made and the rows listed again
    (those of the batches that were halved)."""
    dev = val.device
    i64 = torch.int64
    rad, tau, rel, absm = thresholds
    best = torch.full((n,), float("inf"), dtype=val.dtype, device=dev)
    idx = torch.full((n,), n, dtype=i64, device=dev)
    work = torch.zeros(1, dtype=i64, device=dev)
    total = torch.zeros(1, dtype=i64, device=dev)
    step = max(1, -(-nrows // max(1, batches)))
    todo = [(r0, min(nrows, r0 + step)) for r0 in range(0, nrows, step)][::-1]  # a stack
    lists = again = 0
    while todo:
        r0, r1 = todo.pop()
        count.zero_()
        scans.candidates(rad, tau, rel, absm, pa, pb, count, capacity, rows[r0:], r1 - r0,
                         needy)
        if clock is not None:
            clock.mark("candidates")
        listed = int(count[0])  # a synchronisation per batch (these rounds only)
        if listed > capacity:
            if r1 - r0 == 1:
                raise _insufficient(
                    needed=listed * (_PAIR_BYTES + _PAIR_CHUNK_BYTES), available=capacity
                    * (_PAIR_BYTES + _PAIR_CHUNK_BYTES),
                    what=f"{backend} backend: {listed:,} candidate pairs of one cluster in "
                         f"a matrix-free round", hint="use backend='cpu'")
            mid = (r0 + r1) // 2
            todo += [(mid, r1), (r0, mid)]
            again += r1 - r0
            continue
        lists += 1
        if listed == 0:
            continue
        pieces = functools.partial(_chunks, pa, pb, count, n, listed, chunk)
        if listed <= chunk:  # one chunk: its live pairs once for the sums and both passes
            pieces = functools.partial(iter, list(pieces()))
        for sl, live_ab, cnt in pieces():
            _pair_sums(ops, tokens.x, tokens.offsets, size, n, pa[sl], pb[sl], cnt,
                       sl.stop - sl.start, val[sl], live_ab, largest)
            work += _pair_work(*live_ab, size)
        b_best, b_idx = _pair_nearest(pieces, val, n, needy)
        # the smaller value, and at equal values the smaller slot: the pair of the whole
        # list a single pass would pick
        idx = torch.where(b_best < best, b_idx,
                          torch.where(b_best == best, torch.minimum(idx, b_idx), idx))
        best = torch.minimum(best, b_best)
        total += count
        if clock is not None:
            clock.mark("sums")
    _set_nearest(best, idx, n, needy, nn, nnd)
    count.copy_(total)
    return work, lists, again


class _GramPlan:
    """How a run takes its scans from the Gram matrix (:mod:`dcpe_kernels.gram`): the
    common centre of the centroids (the tokens' mean, float64), the error bound, the bytes
    of a tile of ``G`` and its layout (``by_columns``: the tile is the transpose of a
    contiguous ``(n, rows)`` product, for kernels whose lanes are rows)."""

    def __init__(self, centre: torch.Tensor, dim: int, tile_bytes: int,
                 by_columns: bool) -> None:
        self.centre = centre
        self.gerr = gram_error(dim)
        self.tile_bytes = int(tile_bytes)
        self.by_columns = by_columns


class _Scans:
    """A Euclidean round's two centroid scans over its ``n`` clusters (``mu``: ``(n, d)``
    float64 centroids, ``s2``: compute dtype): from coordinate differences
    (``ops.centroid_nn`` mode 0, ``ops.candidate_pairs``) or, with a :class:`_GramPlan`,
    from tiles of the Gram matrix of the centred centroids, a float64 matrix product per
    tile of rows (``ops.centroid_nn_gram``, ``ops.candidate_pairs_gram``)."""

    def __init__(self, ops: Any, mu: torch.Tensor, s2: torch.Tensor,
                 gram: _GramPlan | None) -> None:
        self.ops, self.s2, self.gram, self.n = ops, s2, gram, int(mu.shape[0])
        if gram is None:
            self.mu_t = torch.empty((mu.shape[1], self.n), dtype=s2.dtype,
                                    device=mu.device).copy_(mu.T)
        else:
            self.mu_c = mu - gram.centre
            self.nrm = self.mu_c.square().sum(1)

    def _each_tile(self, rows: torch.Tensor, nrows: int,
                   fn: Callable[[torch.Tensor, int, int, torch.Tensor, int], None]) -> None:
        """``fn(G tile, c0, c1, rows, nrows)`` over the columns, a tile at a time: the rows
        ``rows[:nrows]`` against the clusters ``c0 .. c1 - 1`` (one tile alive at once)."""
        gram, mu_c, n = self.gram, self.mu_c, self.n
        if nrows == 0:
            return
        # every row in each tile (a program / thread per row fills the device)
        sub = mu_c if nrows == n else mu_c.index_select(0, rows[:nrows].long())
        step = max(_GRAM_MIN_COLS, gram.tile_bytes // (8 * nrows))
        for c0 in range(0, n, step):
            c1 = min(n, c0 + step)
            cols = mu_c[c0:c1]
            g = torch.mm(cols, sub.T).T if gram.by_columns else torch.mm(sub, cols.T)
            fn(g, c0, c1, rows, nrows)
            del g

    def bounds(self, best: torch.Tensor, nn: torch.Tensor, rows: torch.Tensor,
               nrows: int) -> None:
        """Each cluster of ``rows[:nrows]``'s smallest upper bound into ``best``."""
        ops, n = self.ops, self.n
        if self.gram is None:
            ops.centroid_nn(self.mu_t, self.s2, n, 0, 1.0, best, nn, rows, nrows)
            return
        self._each_tile(rows, nrows, lambda g, c0, c1, r, k: ops.centroid_nn_gram(
            g, self.nrm, self.gram.gerr, self.s2, n, c0, c1, best, nn, r, k))
        if nrows:  # the root of the smallest square (a bound: any rounding of it will do)
            r = rows[:nrows].long()
            best.index_copy_(0, r, best.index_select(0, r).sqrt())

    def candidates(self, rad: torch.Tensor, tau: torch.Tensor, rel: float, absm: float,
                   pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor, capacity: int,
                   rows: torch.Tensor, nrows: int, needy: torch.Tensor) -> None:
        """The candidate pairs of the clusters ``rows[:nrows]`` (all those with ``needy``)."""
        ops, n = self.ops, self.n
        if self.gram is None:
            ops.candidate_pairs(self.mu_t, self.s2, rad, tau, n, rel, absm, pa, pb, count,
                                capacity, rows, nrows, needy)
            return
        self._each_tile(rows, nrows, lambda g, c0, c1, r, k: ops.candidate_pairs_gram(
            g, self.nrm, self.gram.gerr, self.s2, rad, tau, n, c0, c1, rel, absm, pa, pb,
            count, capacity, r, k, needy))


def _merge_moments(mu: torch.Tensor, m2: torch.Tensor, old_size: torch.Tensor,
                   p: torch.Tensor, q: torch.Tensor, new_size: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids and sums of squared deviations of the next round's slots (Chan, Golub &
    LeVeque 1979: ``M2 = M2_p + M2_q + |mu_p - mu_q|^2 n_p n_q / n``), with two ``(n, d)``
    temporaries besides ``mu`` (the result and the difference)."""
    f64 = torch.float64
    has_q = q >= 0
    qc = q.clamp_min(0)
    n_p = old_size[p].to(f64)
    n_q = torch.where(has_q, old_size[qc], 0).to(f64)
    n_t = new_size.to(f64)
    mu_new = mu.index_select(0, p)
    delta = mu.index_select(0, qc).sub_(mu_new)  # mu_q - mu_p
    cross = torch.linalg.vector_norm(delta, dim=1).square() * (n_p * n_q / n_t)
    mu_new.add_(delta.mul_((n_q / n_t)[:, None]))
    m2_new = m2[p] + torch.where(has_q, m2[qc] + cross, 0)
    return mu_new, m2_new


#: the dense engine is used up to this many tokens when its matrix fits (past it the
#: matrix-free rounds are as fast and need far less memory)
DENSE_MAX_N = 131072
ENGINES = ("auto", "matrix", "linear")


def choose_engine(n: int, d: int, itemsize: int, *, method: str, budget: int,
                  engine: str = "auto", backend: str = "triton",
                  device: torch.device | str | None = None) -> str:
    """``"matrix"`` (dense rounds) or ``"linear"`` (matrix-free rounds) for ``n`` tokens.

    ``auto`` takes the dense engine while its matrix fits ``budget`` and ``n <=``
    :data:`DENSE_MAX_N` (any ``n`` for the linkages that only it runs), else the
    matrix-free rounds (average linkage).  ``device``: where the tokens are (on a CUDA
    device the matrix-free preflight, :func:`linear_required_bytes`, counts cuBLAS's
    workspace).

    Raises
    ------
    ValueError
        An unknown engine, or ``"linear"`` for a linkage other than average.
    InsufficientMemoryError
        When the chosen engine cannot fit ``budget``.
    """
    from .rnn import required_bytes

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    dense = required_bytes(n, d, itemsize)
    linear = linear_required_bytes(n, d, itemsize, device)
    if engine == "linear" and method != "average":
        raise ValueError(f"engine='linear' runs average linkage only, got linkage={method!r}; "
                         f"use engine='auto' or 'matrix'")
    if engine == "auto":
        if method != "average" or (dense <= budget and n <= DENSE_MAX_N):
            engine = "matrix"
        else:
            engine = "linear"
    needed = dense if engine == "matrix" else linear
    if needed > budget:
        what = (f"{backend} backend: {n}x{n} dissimilarity matrix" if engine == "matrix"
                else f"{backend} backend: matrix-free rounds on {n} x {d} tokens")
        if engine == "linear":
            hint = "free device memory or pass a larger memory_limit, or use backend='cpu'"
        elif method == "average":
            hint = "engine='auto' or 'linear' needs only O(N d) memory for average linkage"
        else:
            hint = (f"linkage={method!r} needs the matrix; use linkage='average' (O(N d) "
                    f"memory) or backend='cpu'")
        raise _insufficient(needed, budget, what, hint)
    return engine


def run_merges(x: torch.Tensor, *, method: str, metric: str, max_cluster_size: int | None,
               ops: Any, backend: str, n_clusters: int | None = None,
               memory_limit: int | None = None, engine: str = "auto",
               handover_bytes: int | None = None) -> Merges:
    """The merges of ``x`` by the engine :func:`choose_engine` picks within
    ``min(memory_limit, free device memory)``."""
    from .rnn import rnn_merges, supported_or_raise

    supported_or_raise(method, metric, backend)
    budget = memory_available(x.device)
    if memory_limit is not None:
        budget = min(budget, int(memory_limit))
    n, d = int(x.shape[0]), int(x.shape[1])
    chosen = choose_engine(n, d, x.element_size(), method=method, budget=budget,
                           engine=engine, backend=backend, device=x.device)
    if chosen == "matrix":
        return rnn_merges(x, method=method, metric=metric, max_cluster_size=max_cluster_size,
                          ops=ops, backend=backend, n_clusters=n_clusters,
                          memory_budget=budget)
    return linear_merges(x, metric=metric, max_cluster_size=max_cluster_size, ops=ops,
                         backend=backend, n_clusters=n_clusters, memory_budget=budget,
                         handover_bytes=handover_bytes)
