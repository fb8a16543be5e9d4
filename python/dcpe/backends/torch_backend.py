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

**Closed forms.** Average linkage with ``metric="sqeuclidean"`` or ``"cosine"`` does not
need the matrix: the mean over member pairs of ``||a - b||^2`` is
``||mu_A - mu_B||^2 + s_A + s_B`` (``mu`` the cluster mean, ``s`` the mean squared distance
of its tokens to ``mu``), and cosine distance is half of that on unit rows, i.e.
``1 - <mu_A, mu_B>`` with ``mu`` the mean of the unit rows. :func:`linkage` therefore
always runs these two cases on :func:`closed_form_linkage`, an O(N d)-memory engine on
the cluster moments (float64, on the device of ``x``): the merges are the greedy ones, as
with Algorithm 1, up to rounding (the heights are the closed-form values, computed in
float64 also for float32 input), in far less time and memory. Every other case, and in
particular the Euclidean metric of the paper's DCPE, which has no such form, runs
Algorithm 1 as above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import (
    CLOSED_FORM_METRICS,
    EUCLIDEAN_ONLY,
    LINKAGES,
    METRICS,
    check_closed_form_metric,
)

if TYPE_CHECKING:  # torch is imported lazily, on first use
    import torch

#: elements of the (rows, N, d) difference temporary per block
_BLOCK_ELEMENTS = 1 << 24


def _sqrt_(t: torch.Tensor) -> torch.Tensor:
    """``t``'s correctly rounded (IEEE) square root, in place, as SciPy and the other
    backends take it. PyTorch's ``sqrt`` of a CPU tensor is not always correctly rounded
    (with MKL's vector math on some x86 CPUs, about 1 value in 150 is one ulp off), so on
    the CPU NumPy's is taken instead; on CUDA PyTorch's is IEEE's."""
    if t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad:
        np.sqrt(t.numpy(), out=t.numpy())
        return t
    return t.sqrt_()


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
            _sqrt_(block)
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

    Average linkage with ``metric="sqeuclidean"`` or ``"cosine"`` runs on
    :func:`closed_form_linkage` instead (O(N d) memory, heights in float64).

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
    if method == "average" and metric in CLOSED_FORM_METRICS:
        return closed_form_linkage(x, metric=metric, max_cluster_size=max_cluster_size)
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
                row = _sqrt_(sq).to(dtype)
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


# --------------------------------------------------------------------------- closed forms


def _moment_distances(mu: torch.Tensor, s: torch.Tensor, dead: torch.Tensor,
                      rows: torch.Tensor) -> torch.Tensor:
    """Closed-form distances from the clusters in slots ``rows`` to every slot.

    ``D[r, t] = ||mu_r - mu_t||^2 + (s_r + s_t)``; ``+inf`` where ``t`` is dead or is
    ``rows[r]`` itself. A pair gets the same value whichever of its two clusters the row
    belongs to: the squared coordinate differences are equal, they are reduced over the
    same contiguous last dimension, and ``s_r + s_t`` is commutative.
    """
    import torch

    diff = mu.index_select(0, rows)[:, None, :] - mu[None, :, :]
    out = diff.mul_(diff).sum(dim=2)
    out += s.index_select(0, rows)[:, None] + s[None, :]
    out.masked_fill_(dead[None, :], float("inf"))
    out[torch.arange(rows.numel(), device=mu.device), rows] = float("inf")
    return out


def _row_minima(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the minimum and the smallest column index attaining it."""
    import torch

    # amin, not min(dim=...): the latter splits even a few rows across threads on the CPU
    value = dist.amin(dim=1)
    cols = torch.arange(dist.shape[1], device=dist.device)
    index = torch.where(dist == value[:, None], cols, dist.shape[1]).amin(dim=1)
    return value, index


def _rows_per_block(n_slots: int, d: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_slots * d))


def closed_form_linkage(x: torch.Tensor, *, metric: str,
                        max_cluster_size: int | None = None) -> np.ndarray:
    """Greedy average linkage from cluster moments, in O(N d) memory (no N x N matrix).

    Each cluster ``A`` is kept as its size, mean ``mu_A`` and mean squared distance to the
    mean ``s_A``, in float64 on the device of ``x``; the average-linkage distance is

    ``sqeuclidean``
        ``D(A, B) = ||mu_A - mu_B||^2 + s_A + s_B``;
    ``cosine``
        ``D(A, B) = 1 - <mu_A, mu_B>`` on unit rows (``x`` normalised first; a zero row
        stays at the origin), evaluated as half the ``sqeuclidean`` form on the unit rows,
        ``(||mu_A - mu_B||^2 + s_A + s_B) / 2``: the same number without the cancellation
        of ``1 - <mu_A, mu_B>`` for nearly parallel clusters, and for singletons the token
        distance ``||a/|a| - b/|b|||^2 / 2`` of the other backends.

    A merge combines the moments exactly: with ``C = A u B`` and ``delta = mu_B - mu_A``,
    ``mu_C = mu_A + |B| / |C| delta`` (``= (|A| mu_A + |B| mu_B) / |C|``; equal means stay
    bit for bit equal) and
    ``s_C = (|A| s_A + |B| s_B) / |C| + |A| |B| / |C|^2 ||delta||^2``, a sum of
    non-negative terms (``||mu_A - mu_C|| = |B| / |C| ||delta||``), so no digits cancel.

    The Euclidean metric (the paper's DCPE) has no such form and is not accepted.

    Algorithm: greedy merging with cached nearest neighbours (Muellner's "generic"
    algorithm). Every mergeable cluster ``c`` keeps ``nn[c]``, the smallest-identity
    cluster among those at the smallest distance from it, and that distance ``nnd[c]``.
    Each step merges the pair ``(c, nn[c])`` of smallest ``nnd`` (tie rule below), then

    1. computes the distances from the merged cluster to all others (one O(M d) vector
       operation): its own ``nn``, and for every other cluster whose cached neighbour is
       farther, or as far but of larger identity, the merged cluster becomes the new
       ``nn``;
    2. recomputes ``nn`` from scratch for every cluster whose ``nn`` was one of the two
       merged clusters.

    Every other cluster lost two candidates that were not its nearest (or were tied with
    it at a larger identity) and gained one that step 1 checked, so all cached neighbours
    are exact after each step. Average linkage is reducible, so step 1 changes a cached
    neighbour only on an exact tie; it is done regardless, which keeps the caches exact
    whatever the rounding. Dead slots are compacted away (order kept) when they are the
    majority. Memory: the moments, O(N d), and blocks of the ``(rows, M, d)`` difference
    temporary of at most ``_BLOCK_ELEMENTS`` elements (at least one row).

    Tie rule (the documented one): clusters are identified by their smallest token index
    and slots stay sorted by it (a merged cluster keeps the smaller slot; compaction keeps
    the order), so slot order is identity order. The step merges the pair minimising
    ``(nnd[c], min(c, nn[c]), max(c, nn[c]))``. That is the lexicographically smallest pair
    ``(p, q)``, ``p < q``, among the pairs at the smallest distance ``v``: ``nn[p] = q``,
    since a cluster ``r < q`` at distance ``v`` from ``p`` would give a smaller pair
    ``(p, r)`` or ``(r, p)``; and any other ``c`` with ``nnd[c] = v`` gives a pair at
    distance ``v``, hence not smaller than ``(p, q)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` tensor on any device (float64 must be supported there), finite.
    metric : {"sqeuclidean", "cosine"}
        Token distance.
    max_cluster_size : int or None
        A merged cluster whose size exceeds this is frozen: it takes no further part in
        merging. The run stops when fewer than two mergeable clusters remain.

    Returns
    -------
    numpy.ndarray
        ``(m, 4)`` float64 SciPy linkage matrix in greedy order, ``m <= N - 1``; heights
        are the closed-form distances.

    Raises
    ------
    ValueError
        For a metric without a closed form.
    """
    import torch

    check_closed_form_metric(metric)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    n = int(x.shape[0])
    z = np.empty((max(n - 1, 0), 4), dtype=np.float64)
    if n < 2:
        return z
    cap = max_cluster_size
    device = x.device
    inf = float("inf")

    with torch.no_grad():
        mu = x.detach().to(torch.float64, copy=True)  # a copy: updated in place below
        if metric == "cosine":
            norms = torch.linalg.vector_norm(mu, dim=1, keepdim=True)
            mu /= torch.where(norms == 0, torch.ones_like(norms), norms)
        d = int(mu.shape[1])
        s = torch.zeros(n, dtype=torch.float64, device=device)
        dead = torch.zeros(n, dtype=torch.bool, device=device)
        slots = torch.arange(n, device=device)
        nn = torch.empty(n, dtype=torch.int64, device=device)
        nnd = torch.empty(n, dtype=torch.float64, device=device)
        step = _rows_per_block(n, d)
        for r0 in range(0, n, step):
            rows = slots[r0:r0 + step]
            nnd[rows], nn[rows] = _row_minima(_moment_distances(mu, s, dead, rows))
        sizes = [1] * n  # per slot
        ids = list(range(n))  # SciPy id per slot
        n_live = n  # mergeable clusters
        m = 0
        while n_live >= 2:
            n_slots = len(ids)
            best = nnd.min()
            pair = torch.minimum(slots, nn) * n_slots + torch.maximum(slots, nn)
            key = torch.where(nnd == best, pair, n_slots * n_slots).min()
            # one host synchronisation: the height and the pair together (exact in float64)
            height, flat = torch.stack((best, key.to(torch.float64))).tolist()
            if not height < inf:
                break  # no finite pair: fewer than two mergeable clusters
            i, j = divmod(int(flat), n_slots)  # i < j
            ni, nj = sizes[i], sizes[j]
            size = ni + nj
            lo, hi = sorted((ids[i], ids[j]))
            z[m] = (lo, hi, height, size)

            delta = mu[j] - mu[i]
            s[i] = ((ni * s[i] + nj * s[j]) / size
                    + (ni * nj / (size * size)) * (delta * delta).sum())
            mu[i] += delta * (nj / size)  # = (ni mu_i + nj mu_j) / size; exact if delta = 0
            sizes[i] = size
            ids[i] = n + m
            m += 1
            # clusters whose cached neighbour was one of the merged pair (not i itself)
            stale = (nn == i) | (nn == j)
            dead[j] = True
            nnd[j] = inf
            n_live -= 1
            frozen = cap is not None and size > cap
            if frozen:
                dead[i] = True
                n_live -= 1
            stale &= ~dead
            stale[i] = False
            nnd[i] = inf
            rows = stale.nonzero().flatten()
            if not frozen:
                rows = torch.cat((slots[i:i + 1], rows))
            step = _rows_per_block(n_slots, d)
            for r0 in range(0, rows.numel(), step):
                block = rows[r0:r0 + step]
                dist = _moment_distances(mu, s, dead, block)
                if r0 == 0 and not frozen:
                    # the merged cluster (first row) as a candidate of everyone else
                    new = dist[0]
                    closer = ((new < nnd) | ((new == nnd) & (nn > i))) & ~dead
                    nn = torch.where(closer, i, nn)
                    nnd = torch.where(closer, new, nnd)
                nnd[block], nn[block] = _row_minima(dist)

            if n_live <= n_slots // 2 and n_slots > 64:  # compact: drop dead slots
                keep = (~dead).nonzero().flatten()
                where = torch.full((n_slots,), -1, dtype=torch.int64, device=device)
                where[keep] = torch.arange(keep.numel(), device=device)
                mu, s, nnd = mu[keep], s[keep], nnd[keep]
                nn = where[nn[keep]]
                dead = torch.zeros(keep.numel(), dtype=torch.bool, device=device)
                slots = torch.arange(keep.numel(), device=device)
                kept = keep.tolist()
                sizes = [sizes[t] for t in kept]
                ids = [ids[t] for t in kept]
    z = z[:m]
    if metric == "cosine":
        z[:, 2] *= 0.5  # exact: the comparisons above are unchanged by the halving
    return z
