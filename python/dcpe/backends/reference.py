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

Closed forms: average linkage needs only cluster moments for two metrics. With
``sqeuclidean``, ``D(A, B) = ||mu_A - mu_B||^2 + s_A + s_B``, where ``mu`` is the mean of a
cluster's tokens and ``s`` their mean squared distance to it; with ``cosine``, on unit rows,
``D(A, B) = 1 - <mu_A, mu_B>``. :func:`linkage` does not use them (it stays the literal
definition, the oracle of the tests); :func:`closed_form_linkage` runs the same greedy loop
on those formulas, so that tests can check the identities against it. The Euclidean metric
(the paper's DCPE) has no such form: the mean of ``||a - b||`` over member pairs is not a
function of a few moments of A and B.

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

from . import EUCLIDEAN_ONLY, LINKAGES, METRICS, check_closed_form_metric

#: token metrics whose average linkage has a closed form in cluster moments

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


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64; a zero row stays at the origin.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, d)`` array of any real dtype.

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float64, a new array.
    """
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1
    return x / norms[:, None]


def cluster_moments(x: np.ndarray, members: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and mean squared distance to the mean of every cluster, from its members.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, d)`` float64 token coordinates.
    members : list of list of int
        Token indices of each cluster (a partition of ``0..N-1`` or of a subset).

    Returns
    -------
    mu : numpy.ndarray
        ``(M, d)`` float64: ``mu[c]`` is the mean of the tokens of cluster ``c``, evaluated
        as ``x[t0] + mean(x[t] - x[t0])`` with ``t0`` its first member (so a cluster of
        identical rows has exactly that row as its mean).
    s : numpy.ndarray
        ``(M,)`` float64: ``s[c]`` is the mean of ``||a - mu[c]||^2`` over its tokens ``a``,
        from direct differences (two passes, no ``E[a^2] - mu^2`` cancellation).
    """
    sizes = np.fromiter((len(m) for m in members), dtype=np.intp, count=len(members))
    order = np.fromiter((t for m in members for t in m), dtype=np.intp, count=int(sizes.sum()))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    xs = x[order]
    first = np.repeat(xs[starts], sizes, axis=0)
    mu = xs[starts] + np.add.reduceat(xs - first, starts, axis=0) / sizes[:, None]
    dev = xs - np.repeat(mu, sizes, axis=0)
    s = np.add.reduceat(np.einsum("ij,ij->i", dev, dev), starts) / sizes
    return mu, s


def closed_form_distances(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average-linkage squared-Euclidean distances of all cluster pairs from their moments.

    Parameters
    ----------
    mu, s : numpy.ndarray
        Moments as returned by :func:`cluster_moments`.

    Returns
    -------
    numpy.ndarray
        ``(M, M)`` float64, ``D[a, b] = ||mu_a - mu_b||^2 + (s_a + s_b)``, which equals the
        mean of ``||x - y||^2`` over ``x`` in ``a`` and ``y`` in ``b``. Exactly symmetric.
    """
    diff = mu[:, None, :] - mu[None, :, :]
    return np.einsum("ijk,ijk->ij", diff, diff) + (s[:, None] + s[None, :])


def closed_form_linkage(x: np.ndarray, *, metric: str,
                        max_cluster_size: int | None = None) -> np.ndarray:
    """Greedy average linkage from the closed forms, moments recomputed from the members.

    Same loop as :func:`linkage` with ``method="average"`` (same tie rule, same size cap),
    but the distance of clusters ``A`` and ``B`` comes from their moments, recomputed from
    the member tokens at every step:

    ``sqeuclidean``
        ``||mu_A - mu_B||^2 + s_A + s_B`` (mean ``mu``, mean squared distance to the mean
        ``s``).
    ``cosine``
        ``1 - <mu_A, mu_B>`` with ``mu`` the mean of the unit rows (``x`` is normalised
        first; a zero row stays at the origin). It is evaluated as half the
        ``sqeuclidean`` form on the unit rows, ``(||mu_A - mu_B||^2 + s_A + s_B) / 2``: the
        same number when every row has unit length (``s = 1 - ||mu||^2``), without the
        cancellation of ``1 - <mu_A, mu_B>`` for nearly parallel clusters, and equal to the
        token distance ``||a/|a| - b/|b|||^2 / 2`` of :func:`token_distances` for
        singletons.

    The Euclidean metric (the paper's DCPE) has no such form, so it is not accepted. All
    arithmetic is in float64, whatever the dtype of ``x``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, d)`` real array, finite.
    metric : {"sqeuclidean", "cosine"}
        Token distance.
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
        For a metric without a closed form.
    """
    check_closed_form_metric(metric)
    x64 = unit_rows(x) if metric == "cosine" else np.array(x, dtype=np.float64)
    n = x64.shape[0]
    cap = np.inf if max_cluster_size is None else max_cluster_size
    members: list[list[int]] = [[t] for t in range(n)]  # sorted by identity
    ids = list(range(n))
    rows: list[list[float]] = []
    while len(members) >= 2:
        dist = closed_form_distances(*cluster_moments(x64, members))
        if metric == "cosine":
            dist *= 0.5
        c = len(members)
        frozen = np.array([len(m) > cap for m in members])
        dist[np.tril_indices(c)] = np.inf
        dist[frozen, :] = np.inf
        dist[:, frozen] = np.inf
        i, j = divmod(int(np.argmin(dist)), c)  # first minimum in row-major order
        height = dist[i, j]
        if not np.isfinite(height):
            break
        merged = sorted(members[i] + members[j])
        lo, hi = sorted((ids[i], ids[j]))
        rows.append([lo, hi, float(height), len(merged)])
        members[i] = merged
        ids[i] = n + len(rows) - 1
        del members[j], ids[j]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)
