"""Backend ``reference``: the literal definition of greedy agglomerative clustering.

At every step the distance between **every** pair of current clusters is recomputed
from scratch from the token coordinates, the globally closest mergeable pair is merged
(tie rule below), and the loop repeats. Nothing is cached between steps except the
cluster memberships, so one step costs O(N^2 d) and a full run O(N^3 d): this backend
exists to be obviously right, not fast (tests use it with N up to a few hundred).

Cluster distances, for clusters A and B with token distance ``delta``:

``average``
    Eq. 2 of the DCPE paper: ``sum(delta(a, b) for a in A for b in B) / (|A| |B|)``.
``single`` / ``complete``
    ``min`` / ``max`` of ``delta(a, b)`` over the same pairs.
``centroid``
    Euclidean distance between the coordinate means of A and B (Euclidean metric only).
``ward``
    Ward's criterion: merging A and B increases the within-cluster sum of squares by
    ``|A||B| / (|A| + |B|) * ||mean_A - mean_B||^2``; the distance reported (and compared)
    is SciPy's ``sqrt(2 |A||B| / (|A| + |B|)) * ||mean_A - mean_B||`` (Euclidean only).
``weighted`` (WPGMA)
    Has no closed form over the members: it is *defined* by the recursion
    ``D(A u B, C) = (D(A, C) + D(B, C)) / 2`` starting from token distances, so it is the
    one method implemented with a Lance--Williams update of a cluster distance matrix.

Token distances (``metric``): ``euclidean`` ``||a - b||``; ``sqeuclidean`` ``||a - b||^2``;
``cosine`` ``1 - cos(a, b)``, evaluated as ``||a/|a| - b/|b|||^2 / 2`` (the same number,
without the cancellation of ``1 - a.b/(|a||b|)`` for nearly parallel vectors; a zero row
is left at the origin, i.e. at cosine distance 0.5 from every unit vector). All token
distances are computed from direct coordinate differences, never from the
``|a|^2 + |b|^2 - 2 a.b`` expansion.

Precision: token distances are evaluated in the compute dtype of ``x`` (float32 or
float64); sums, means, centroids and the recursion are carried in float64, so for a given
set of token distances this is the most accurate answer the package can give.

Tie rule (shared by all backends): clusters are identified by their smallest token index;
among pairs at exactly the same distance the lexicographically smallest pair ``(a, b)``,
``a < b`` by that identity, is merged first. Here the current clusters are kept sorted by
identity and the first minimum of the strict upper triangle in row-major order is taken,
which is exactly that pair.
"""

from __future__ import annotations

import numpy as np

from . import EUCLIDEAN_ONLY, LINKAGES, METRICS

#: rows per block when forming token differences (bounds the (rows, N, d) temporary)
_BLOCK_ELEMENTS = 1 << 22


def available() -> tuple[bool, str]:
    """Whether this backend can run here.

    Returns
    -------
    tuple of (bool, str)
        Always ``(True, ...)``: it needs NumPy only.
    """
    return True, "pure NumPy, always available (O(N^3 d): meant for N up to a few hundred)"


def accepts(x: object) -> bool:
    """Whether ``x`` lives where this backend runs.

    Parameters
    ----------
    x : object
        The (validated) input.

    Returns
    -------
    bool
        True for NumPy arrays (host data).
    """
    return isinstance(x, np.ndarray)


def token_distances(x: np.ndarray, metric: str) -> np.ndarray:
    """Dense matrix of token distances, from direct coordinate differences.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, d)`` float32 or float64; the distances are evaluated in this dtype.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Token distance.

    Returns
    -------
    numpy.ndarray
        ``(N, N)`` symmetric, zero diagonal, dtype of ``x``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = np.asarray(x)
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        norms[norms == 0] = 1  # a zero row stays at the origin
        x = x / norms[:, None]
    n, d = x.shape
    out = np.empty((n, n), dtype=x.dtype)
    rows = max(1, _BLOCK_ELEMENTS // max(1, n * d))
    for r0 in range(0, n, rows):
        diff = x[r0:r0 + rows, None, :] - x[None, :, :]
        out[r0:r0 + rows] = np.einsum("ijk,ijk->ij", diff, diff)
    if metric == "euclidean":
        np.sqrt(out, out=out)
    elif metric == "cosine":
        out *= 0.5
    # (a - b)^2 == (b - a)^2 exactly, so out is symmetric; make it so regardless.
    upper = np.triu(out, 1)
    return upper + upper.T


def _groups(members: list[list[int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Token order grouping the clusters consecutively, and each group's start."""
    order = np.fromiter((t for m in members for t in m), dtype=np.intp, count=n)
    sizes = np.fromiter((len(m) for m in members), dtype=np.intp, count=len(members))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return order, starts


def _cluster_distances(x: np.ndarray, members: list[list[int]], method: str,
                       metric: str) -> np.ndarray:
    """Distances between all current clusters, recomputed from the coordinates."""
    c = len(members)
    if method in EUCLIDEAN_ONLY:
        means = np.stack([x[m].astype(np.float64).mean(axis=0) for m in members])
        diff = means[:, None, :] - means[None, :, :]
        sq = np.einsum("ijk,ijk->ij", diff, diff)
        if method == "ward":
            sizes = np.array([len(m) for m in members], dtype=np.float64)
            sq *= 2.0 * np.outer(sizes, sizes) / (sizes[:, None] + sizes[None, :])
        return np.sqrt(sq)
    n = x.shape[0]
    delta = token_distances(x, metric).astype(np.float64)
    order, starts = _groups(members, n)
    blocks = delta[np.ix_(order, order)]
    if method == "average":
        sums = np.add.reduceat(np.add.reduceat(blocks, starts, axis=0), starts, axis=1)
        sizes = np.array([len(m) for m in members], dtype=np.float64)
        return sums / np.outer(sizes, sizes)
    if method == "single":
        return np.minimum.reduceat(np.minimum.reduceat(blocks, starts, axis=0), starts, axis=1)
    if method == "complete":
        return np.maximum.reduceat(np.maximum.reduceat(blocks, starts, axis=0), starts, axis=1)
    raise AssertionError(f"no closed form for {method!r} ({c} clusters)")


def linkage(x: np.ndarray, *, method: str = "average", metric: str = "euclidean",
            max_cluster_size: int | None = None) -> np.ndarray:
    """Greedy agglomerative clustering by the literal definition.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, d)`` float32 or float64, finite (validated by the caller).
    method : {"average", "centroid", "single", "complete", "weighted", "ward"}
        Cluster distance; ``"average"`` is DCPE (Eq. 2).
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Token distance. ``"centroid"`` and ``"ward"`` require ``"euclidean"``.
    max_cluster_size : int or None
        A cluster whose size exceeds this takes no further part in merging; when fewer
        than two mergeable clusters remain the run stops early.

    Returns
    -------
    numpy.ndarray
        ``(m, 4)`` float64 in SciPy's linkage format and greedy order, ``m <= N - 1``.

    Raises
    ------
    ValueError
        For an unknown ``method``/``metric``, or ``"centroid"``/``"ward"`` with a metric
        other than ``"euclidean"``.
    """
    if method not in LINKAGES:
        raise ValueError(f"method must be one of {LINKAGES}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if method in EUCLIDEAN_ONLY and metric != "euclidean":
        raise ValueError(f"linkage {method!r} requires metric 'euclidean', got {metric!r}")
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    n = x.shape[0]
    cap = np.inf if max_cluster_size is None else max_cluster_size

    # Current clusters, kept sorted by identity (smallest token index): members[s][0].
    members: list[list[int]] = [[t] for t in range(n)]
    ids = list(range(n))  # SciPy id of the cluster in each slot
    wpgma = token_distances(x, metric).astype(np.float64) if method == "weighted" else None
    rows: list[list[float]] = []
    while len(members) >= 2:
        if wpgma is not None:
            dist = wpgma.copy()
        else:
            dist = _cluster_distances(x, members, method, metric)
        c = len(members)
        frozen = np.array([len(m) > cap for m in members])
        dist[np.tril_indices(c)] = np.inf
        dist[frozen, :] = np.inf
        dist[:, frozen] = np.inf
        flat = int(np.argmin(dist))  # first minimum in row-major order = the tie rule
        i, j = divmod(flat, c)
        height = dist[i, j]
        if not np.isfinite(height):
            break  # fewer than two mergeable clusters
        merged = sorted(members[i] + members[j])
        lo, hi = sorted((ids[i], ids[j]))
        rows.append([lo, hi, float(height), len(merged)])
        # slot i keeps the smaller identity (i < j), so the slots stay sorted by identity
        members[i] = merged
        ids[i] = n + len(rows) - 1
        del members[j], ids[j]
        if wpgma is not None:
            new = 0.5 * (wpgma[i] + wpgma[j])
            wpgma[i, :] = new
            wpgma[:, i] = new
            wpgma[i, i] = 0.0
            wpgma = np.delete(np.delete(wpgma, j, axis=0), j, axis=1)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)
