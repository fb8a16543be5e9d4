"""Backend ``torch``: Algorithm 1 of the DCPE paper in PyTorch tensor operations.

This is the published baseline, kept literal so that benchmarks measure it as such:

1. the dense ``N x N`` matrix of token distances (direct coordinate differences, in row
   blocks to bound memory), diagonal ``+inf``;
2. per merge: the global argmin of the matrix (one host synchronisation), the row and
   column of the merged cluster recomputed from rows ``i`` and ``j`` weighted by cluster
   sizes (Lance--Williams), and the **compaction** of the matrix (row and column ``j``
   removed with ``index_select``), so a run costs O(N^3) time and O(N^2) memory.

Lance--Williams updates, for clusters ``i``, ``j`` of sizes ``n_i``, ``n_j`` merged:

``average`` (DCPE, Eq. 2)   ``(n_i D_i + n_j D_j) / (n_i + n_j)``
``single`` / ``complete``   ``min(D_i, D_j)`` / ``max(D_i, D_j)``
``weighted`` (WPGMA)        ``(D_i + D_j) / 2``
``centroid``                not the Lance--Williams recursion on squared distances (it
                            subtracts ``n_i n_j D_ij^2 / (n_i + n_j)^2`` and loses all
                            digits for close clusters); instead the centroids are kept
                            (as float64 coordinate sums) and the merged cluster's row is
                            recomputed as direct differences to the other centroids.
``ward``                    likewise from the centroids:
                            ``sqrt(2 n_i n_c / (n_i + n_c)) ||mean_i - mean_c||`` (SciPy's
                            Ward distance; the recursion would cancel the same way).

The matrix is symmetric and every update writes row and column ``i`` from the same
values, so it stays exactly symmetric; the merged cluster keeps the smaller slot ``i``,
so slots stay sorted by cluster identity (smallest token index). ``torch.min`` over the
flattened matrix returns the first minimum in row-major order, which in a symmetric
matrix is the lexicographically smallest pair ``(a, b)``, ``a < b``: the tie rule shared
by all backends. Clusters frozen by ``max_cluster_size`` get ``+inf`` rows and columns;
the run stops when no finite entry remains.

Works on any device and in the dtype of the input tensor (float32 or float64).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import EUCLIDEAN_ONLY, LINKAGES, METRICS

if TYPE_CHECKING:  # torch is imported lazily, on first use
    import torch

#: elements of the (rows, N, d) difference temporary per block
_BLOCK_ELEMENTS = 1 << 24


def available() -> tuple[bool, str]:
    """Whether PyTorch can be imported.

    Returns
    -------
    tuple of (bool, str)
        ``(True, version)`` or ``(False, why)``.
    """
    try:
        import torch
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, f"PyTorch is not importable ({exc.__class__.__name__}: {exc})"
    return True, f"PyTorch {torch.__version__} (O(N^3) Algorithm 1 on any torch device)"


def accepts(x: object) -> bool:
    """Whether ``x`` is a torch tensor (on any device).

    Parameters
    ----------
    x : object
        The (validated) input.

    Returns
    -------
    bool
    """
    try:
        import torch
    except Exception:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor)


def token_distances(x: torch.Tensor, metric: str) -> torch.Tensor:
    """Dense token distance matrix by direct differences, in blocks of rows.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32 or float64 on any device; distances are computed in its dtype.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Token distance; cosine is ``||a/|a| - b/|b|||^2 / 2`` (= ``1 - cos``), a zero row
        being left at the origin.

    Returns
    -------
    torch.Tensor
        ``(N, N)`` exactly symmetric, zero diagonal, same dtype and device as ``x``.
    """
    import torch

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "cosine":
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        x = x / torch.where(norms == 0, torch.ones_like(norms), norms)
    n, d = x.shape
    out = torch.empty((n, n), dtype=x.dtype, device=x.device)
    rows = max(1, _BLOCK_ELEMENTS // max(1, n * d))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        diff = x[r0:r1, None, :] - x[None, :, :]
        block = diff.mul_(diff).sum(dim=2)
        if metric == "euclidean":
            block.sqrt_()
        elif metric == "cosine":
            block.mul_(0.5)
        out[r0:r1] = block
    # Copy the strict upper triangle onto the lower one so that D[a, b] is D[b, a] bit
    # for bit, whatever the reduction order of the kernels above.
    upper = torch.triu(out, diagonal=1)
    out = upper + upper.T
    return out


def linkage(x: torch.Tensor, *, method: str = "average", metric: str = "euclidean",
            max_cluster_size: int | None = None) -> np.ndarray:
    """Greedy agglomerative clustering by Algorithm 1 (dense matrix, argmin, compaction).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32 or float64 tensor on any device, finite (validated by the caller).
    method : {"average", "centroid", "single", "complete", "weighted", "ward"}
        Cluster distance; ``"average"`` is DCPE.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Token distance; ``"centroid"`` and ``"ward"`` require ``"euclidean"``.
    max_cluster_size : int or None
        A cluster whose size exceeds this takes no further part in merging; the run stops
        when fewer than two mergeable clusters remain.

    Returns
    -------
    numpy.ndarray
        ``(m, 4)`` float64 SciPy linkage matrix in greedy order, ``m <= N - 1``.

    Raises
    ------
    ValueError
        For an unknown ``method``/``metric``, or ``"centroid"``/``"ward"`` with another
        metric.
    """
    import torch

    if method not in LINKAGES:
        raise ValueError(f"method must be one of {LINKAGES}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if method in EUCLIDEAN_ONLY and metric != "euclidean":
        raise ValueError(f"linkage {method!r} requires metric 'euclidean', got {metric!r}")
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    n = int(x.shape[0])
    z = np.empty((max(n - 1, 0), 4), dtype=np.float64)
    if n < 2:
        return z
    cap = max_cluster_size
    device, dtype = x.device, x.dtype
    inf = float("inf")

    with torch.no_grad():
        dist = token_distances(x, metric)
        dist.fill_diagonal_(inf)
        # centroid coordinate sums (a copy: .to() would alias a float64 input)
        sums = x.to(torch.float64, copy=True) if method in EUCLIDEAN_ONLY else None
        sizes = [1] * n  # per slot
        ids = list(range(n))  # SciPy id per slot
        m = 0
        while len(ids) >= 2:
            c = len(ids)
            value, flat = torch.min(dist.reshape(-1), dim=0)
            # one host synchronisation per merge: value and index together
            height, flat_f = torch.stack((value.to(torch.float64),
                                          flat.to(torch.float64))).tolist()
            if not height < inf:
                break  # no finite pair: fewer than two mergeable clusters
            i, j = divmod(int(flat_f), c)  # i < j: first minimum of a symmetric matrix
            ni, nj = sizes[i], sizes[j]
            size = ni + nj
            lo, hi = sorted((ids[i], ids[j]))
            z[m] = (lo, hi, height, size)

            if method == "average":
                row = (dist[i] * ni + dist[j] * nj) / size
            elif method == "single":
                row = torch.minimum(dist[i], dist[j])
            elif method == "complete":
                row = torch.maximum(dist[i], dist[j])
            elif method == "weighted":
                row = (dist[i] + dist[j]) * 0.5
            else:  # centroid, ward: recompute from the centroids, no cancellation
                sums[i] += sums[j]
                counts = torch.tensor(sizes, dtype=torch.float64, device=device)
                counts[i] = size
                means = sums / counts[:, None]
                diff = means - means[i]
                sq = (diff * diff).sum(dim=1)
                if method == "ward":
                    sq = sq * (2.0 * size * counts / (size + counts))
                row = torch.sqrt(sq).to(dtype)
                # keep frozen clusters frozen
                row = torch.where(torch.isinf(dist[j]) & torch.isinf(dist[i]),
                                  torch.full_like(row, inf), row)
            if cap is not None and size > cap:
                row = torch.full_like(row, inf)
            dist[i] = row
            dist[:, i] = row
            dist[i, i] = inf
            sizes[i] = size
            ids[i] = n + m
            m += 1

            # compaction: drop slot j (literal, as in the paper)
            keep = torch.cat((torch.arange(0, j, device=device),
                              torch.arange(j + 1, c, device=device)))
            dist = dist.index_select(0, keep).index_select(1, keep)
            if sums is not None:
                sums = sums.index_select(0, keep)
            del sizes[j], ids[j]
    return z[:m]
