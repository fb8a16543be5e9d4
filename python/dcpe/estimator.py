"""``dcpe.DCPE``: a scikit-learn style estimator around :func:`dcpe.cluster`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._api import _follow, _labels_from_z, _run, _warn_if_short
from ._validation import check_int

try:  # scikit-learn is optional; without it a minimal get_params/set_params is used
    from sklearn.base import BaseEstimator, ClusterMixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class BaseEstimator:  # type: ignore[no-redef]
        _param_names = ("n_clusters", "distance_threshold", "linkage", "metric",
                        "max_cluster_size", "backend", "dtype", "memory_limit", "engine")

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self._param_names}

        def set_params(self, **params: Any) -> BaseEstimator:
            for name, value in params.items():
                if name not in self._param_names:
                    raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
                setattr(self, name, value)
            return self

    class ClusterMixin:  # type: ignore[no-redef]
        def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> Any:
            self.fit(X, **kwargs)
            return self.labels_


class DCPE(ClusterMixin, BaseEstimator):
    """Exact agglomerative clustering of a codebook (average linkage: DCPE).

    Attribute names follow :class:`sklearn.cluster.AgglomerativeClustering`.

    Parameters
    ----------
    n_clusters : int or None, default 8192
        Number of clusters (``1 <= n_clusters <= N``); ``None`` with ``distance_threshold``.
    distance_threshold : float, optional
        Instead of ``n_clusters``, as in scikit-learn: the number of clusters is one more
        than the number of merges of height at least ``distance_threshold`` (plus the
        clusters that ``max_cluster_size`` left unmerged), and the tree is cut there (its
        first merges in order, as :func:`dcpe.cut`). For monotone linkages (all but
        ``"centroid"``) these are exactly the merges below the threshold. Give exactly
        one of ``n_clusters`` and ``distance_threshold``; the other must be ``None``.
    linkage, metric, max_cluster_size, backend, dtype, memory_limit, engine
        As in :func:`dcpe.cluster`.

    Attributes
    ----------
    labels_ : numpy.ndarray or torch.Tensor, int64, shape (N,)
        Canonical cluster labels (container and device follow the input).
    n_clusters_ : int
        Number of clusters found: ``n_clusters``, or more when ``max_cluster_size`` stopped
        the merging early (a ``UserWarning`` says so); with ``distance_threshold``, the
        number it gives.
    children_ : numpy.ndarray, int64, shape (m, 2)
        The merged clusters of each merge, as in scikit-learn (leaves ``< N``; ``N + i`` is
        the cluster formed by merge ``i``); ``m = N - 1`` without a size cap.
    distances_ : numpy.ndarray, float64, shape (m,)
        Height of each merge.
    linkage_matrix_ : numpy.ndarray, float64, shape (m, 4)
        The merges in SciPy's linkage format.
    n_leaves_, n_features_in_ : int
        N and d.

    Examples
    --------
    >>> import dcpe
    >>> est = dcpe.DCPE(n_clusters=64).fit(dcpe.datasets.sample_codebook()[:1024])
    >>> est.n_clusters_
    64
    """

    def __init__(self, n_clusters: int | None = 8192, *,
                 distance_threshold: float | None = None, linkage: str = "average",
                 metric: str = "euclidean", max_cluster_size: int | None = None,
                 backend: str = "auto", dtype: Any = None,
                 memory_limit: int | str | None = None, engine: str = "auto") -> None:
        self.n_clusters = n_clusters
        self.distance_threshold = distance_threshold
        self.linkage = linkage
        self.metric = metric
        self.max_cluster_size = max_cluster_size
        self.backend = backend
        self.dtype = dtype
        self.memory_limit = memory_limit
        self.engine = engine

    def fit(self, X: Any, y: Any = None) -> DCPE:
        """Cluster the rows of ``X``; ``y`` is ignored."""
        threshold = self.distance_threshold
        if (self.n_clusters is None) == (threshold is None):
            raise ValueError(
                f"give exactly one of n_clusters and distance_threshold, the other None; "
                f"got n_clusters={self.n_clusters!r}, distance_threshold={threshold!r} "
                f"(for a threshold: DCPE(n_clusters=None, distance_threshold=t))")
        if threshold is not None:
            threshold = _check_threshold(threshold)
        else:
            check_int("n_clusters", self.n_clusters, -(2**63))  # range checked with N
        data, z, _, _ = _run(X, linkage=self.linkage, metric=self.metric,
                             max_cluster_size=self.max_cluster_size, backend=self.backend,
                             dtype=self.dtype, n_clusters=self.n_clusters, want_z=True,
                             memory_limit=self.memory_limit, engine=self.engine)
        if threshold is None:
            k = int(self.n_clusters)
        else:  # scikit-learn's count; the clusters a size cap left unmerged stay apart
            k = data.n - len(z) + int(np.count_nonzero(z[:, 2] >= threshold))
        labels = _labels_from_z(z, data.n, k)
        self.n_clusters_ = int(labels.max()) + 1 if data.n else 0
        if threshold is None:
            _warn_if_short(data.n, k, self.n_clusters_, self.max_cluster_size)
        self.labels_ = _follow(data, labels)
        self.linkage_matrix_ = z
        self.children_ = z[:, :2].astype(np.int64)
        self.distances_ = z[:, 2].copy()
        self.n_leaves_ = data.n
        self.n_features_in_ = data.d
        return self

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> Any:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_


def _check_threshold(value: Any) -> float:
    """``distance_threshold``: a real number ``>= 0`` (a bool is not one)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"distance_threshold must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    if not value >= 0:  # NaN too
        raise ValueError(f"distance_threshold must be a height >= 0 (as in scikit-learn), "
                         f"got {value!r}; give one such as 0.5")
    return float(value)
