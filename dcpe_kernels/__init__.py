"""Triton kernels of dcpe (exact agglomerative clustering on the GPU).

Importing this package never fails: without Triton, :data:`HAS_TRITON` is False and the
kernel launchers raise ``RuntimeError``.  The reciprocal-nearest-neighbour driver
(:mod:`dcpe_kernels.rnn`) is pure PyTorch and is shared by the ``triton`` and ``cuda``
backends.

Kernels (Liger-Kernel layout: ``_<op>_<variant>_kernel``, a host launcher, and a PyTorch
``_reference_<op>`` beside each):

* :func:`pairwise.pairwise_nn` — ``_pairwise_dist_rownn_kernel``: dense dissimilarities
  from direct differences, with row nearest neighbours;
* :func:`merge.merge_compact_nn` — ``_merge_compact_rownn_kernel``: Lance–Williams merge of
  all reciprocal pairs of a round, compaction and the next row nearest neighbours;
* :func:`round.round_scan` — ``_round_scan_oneblock_kernel``: a round's O(n) bookkeeping
  (reciprocal pairs, merge records, the next round's slots and weights) in one launch;

and for the matrix-free rounds of :mod:`dcpe_kernels.linear` (average linkage past the
dense matrix's memory):

* :func:`centroid.centroid_nn` — ``_centroid_nn_tiled_kernel``: each cluster's smallest
  upper bound (Euclidean) or closed-form nearest neighbour (sqeuclidean, cosine);
* :func:`centroid.candidate_pairs` — ``_candidate_pairs_tiled_kernel``: the pairs whose
  lower bound is within that upper bound;
* :func:`gram.centroid_nn_gram`, :func:`gram.candidate_pairs_gram` —
  ``_centroid_nn_gram_kernel``, ``_candidate_pairs_gram_kernel``: the same two scans from a
  tile of the centroids' Gram matrix (a float64 matrix product), past
  :data:`linear.GRAM_MIN_DIM` dimensions;
* :func:`pair_average.pair_average` — ``_pair_average_tiled_kernel`` and
  ``_pair_average_packed_kernel`` (the smallest pairs, many per program): their exact
  average distances, over token pairs, in float64;
* :func:`pair_average.cluster_matrix` — ``_cluster_matrix_rowlanes_kernel``: the clusters'
  dense matrix, to hand the last rounds to the dense engine.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, TRITON_IMPORT_ERROR
from .centroid import (
    _reference_candidate_pairs,
    _reference_centroid_nn,
    candidate_pairs,
    centroid_nn,
)
from .gram import (
    _reference_candidate_pairs_gram,
    _reference_centroid_nn_gram,
    candidate_pairs_gram,
    centroid_nn_gram,
)
from .merge import _reference_merge_compact_nn, merge_compact_nn
from .pair_average import (
    _reference_cluster_matrix,
    _reference_pair_average,
    cluster_matrix,
    pair_average,
)
from .pairwise import _reference_pairwise_nn, pairwise_nn
from .round import _reference_round_scan, round_scan

__all__ = [
    "HAS_TRITON",
    "TRITON_IMPORT_ERROR",
    "ReferenceOps",
    "TritonOps",
    "candidate_pairs",
    "candidate_pairs_gram",
    "centroid_nn",
    "centroid_nn_gram",
    "cluster_matrix",
    "merge_compact_nn",
    "pair_average",
    "pairwise_nn",
    "round_scan",
]


class TritonOps:
    """:class:`dcpe_kernels.rnn.RNNOps` backed by the Triton kernels."""

    pairwise_nn = staticmethod(pairwise_nn)
    merge_compact_nn = staticmethod(merge_compact_nn)
    round_scan = staticmethod(round_scan)
    centroid_nn = staticmethod(centroid_nn)
    candidate_pairs = staticmethod(candidate_pairs)
    centroid_nn_gram = staticmethod(centroid_nn_gram)
    candidate_pairs_gram = staticmethod(candidate_pairs_gram)
    pair_average = staticmethod(pair_average)
    cluster_matrix = staticmethod(cluster_matrix)


class ReferenceOps:
    """:class:`dcpe_kernels.rnn.RNNOps` backed by the PyTorch references (any device).

    Slow and memory-hungry (it materialises gathered copies); used to test the driver.
    """

    round_scan = staticmethod(_reference_round_scan)
    centroid_nn = staticmethod(_reference_centroid_nn)
    candidate_pairs = staticmethod(_reference_candidate_pairs)
    centroid_nn_gram = staticmethod(_reference_centroid_nn_gram)
    candidate_pairs_gram = staticmethod(_reference_candidate_pairs_gram)
    pair_average = staticmethod(_reference_pair_average)
    cluster_matrix = staticmethod(_reference_cluster_matrix)

    @staticmethod
    def pairwise_nn(x: torch.Tensor, out: torch.Tensor, ld: int, metric: int,
                    nn: torch.Tensor, nnd: torch.Tensor) -> None:
        n = x.shape[0]
        d, nn_, nnd_ = _reference_pairwise_nn(x, metric)
        out[: n * ld].view(n, ld)[:, :n].copy_(d)
        nn[:n] = nn_
        nnd[:n] = nnd_

    @staticmethod
    def merge_compact_nn(src: torch.Tensor, ld_src: int, dst: torch.Tensor, ld_dst: int,
                         p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor,
                         n_new: int, row0: int, nrows: int, mode: int, nn: torch.Tensor,
                         nnd: torch.Tensor, count: torch.Tensor | None = None) -> None:
        if count is not None:  # the orders read from the round's record (row0 is 0)
            n_new = nrows = ld_dst = int(count[1])
            ld_src = int(count[5])
            p, q, wp, wq = p[:n_new], q[:n_new], wp[:n_new], wq[:n_new]
            if n_new == 0:
                return
        n_old = int(max(int(p.max()), int(q.max()))) + 1
        old = src[: n_old * ld_src].view(n_old, ld_src)[:, :n_old]
        new, nn_, nnd_ = _reference_merge_compact_nn(old, p, q, wp, wq, mode)
        sl = slice(row0, row0 + nrows)
        dst[: nrows * ld_dst].view(nrows, ld_dst)[:, :n_new].copy_(new[sl])
        nn[sl] = nn_[sl]
        nnd[sl] = nnd_[sl]
