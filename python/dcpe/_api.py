"""Public functions: :func:`cluster`, :func:`linkage`, :func:`cut`."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from . import backends as _backends
from ._errors import BackendUnavailableError
from ._memory import parse_memory_limit
from ._progress import merge_progress
from ._validation import (
    Data,
    check_backend,
    check_data,
    check_int,
    check_linkage_metric,
    check_max_cluster_size,
    is_tensor,
    transposed_hint,
)

__all__ = ["cluster", "linkage", "cut"]


# --------------------------------------------------------------------------- dispatch
def _resolve_backend(name: str, data: Data, method: str) -> str:
    if name != "auto":
        ok, why = _backends.get(name).available()
        if not ok:
            here = _backends.available_backends()
            raise BackendUnavailableError(
                f"backend={name!r} is not available: {why}. Available backends here: {here}",
                backend=name, reason=why, available=here,
            )
        return name
    if data.device.startswith("cuda") and method in _backends.GPU_LINKAGES:
        for candidate in ("cuda", "triton"):
            module = _backends.get(candidate)
            if module.available()[0] and module.accepts(data.original):
                return candidate
    # No GPU kernels here (or none for this linkage): the exact O(N^2) host engine (data
    # copied to the host, results moved back), never the O(N^3) Algorithm 1.
    ok, why = _backends.get("cpu").available()
    if not ok:
        here = _backends.available_backends()
        raise BackendUnavailableError(
            f"backend='auto' needs the compiled 'cpu' backend for host data, which is not "
            f"available: {why}. Available backends here: {here}",
            backend="auto", reason=f"the compiled 'cpu' backend is not available: {why}",
            available=here,
        )
    return "cpu"


def _to_backend_input(name: str, data: Data) -> Any:
    """The validated data as the backend takes it: NumPy for host backends, else torch."""
    x, dtype = data.original, data.compute_dtype
    if name in ("reference", "cpu"):
        if data.kind == "tensor":
            x = x.detach().to("cpu", _torch_dtype(dtype)).numpy()
        return np.ascontiguousarray(x, dtype=dtype)
    import torch

    if data.kind == "tensor":
        t = x.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(_torch_dtype(dtype)).contiguous()


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return torch.float64 if dtype == np.float64 else torch.float32


def _check_accepts(name: str, data: Data) -> None:
    module = _backends.get(name)
    if name in ("triton", "cuda") and not module.accepts(data.original):
        raise ValueError(
            f"backend={name!r} runs on CUDA tensors; got {data.kind} data on {data.device}. "
            "Move the tensor to a GPU, or use backend='cpu'"
        )


def _preflight(name: str, data: Data, method: str, metric: str, memory_limit: Any,
               engine: str) -> dict[str, Any]:
    """The backend's memory preflight; returns extra keyword arguments for its run."""
    module = _backends.get(name)
    check = getattr(module, "preflight", None)
    if name == "cpu":
        plan = check(data.n, data.d, method=method, dtype=data.compute_dtype,
                     device=data.device, metric=metric, memory_limit=memory_limit,
                     engine=engine)
        return {"plan": plan}
    if name in ("cuda", "triton"):
        # the engine and its memory are planned on the device (dcpe_kernels.linear)
        if engine == "linear" and method != "average":
            raise ValueError(f"engine='linear' runs average linkage only, got "
                             f"linkage={method!r}; use engine='auto' or 'matrix'")
        return {"memory_limit": parse_memory_limit(memory_limit), "engine": engine}
    if engine != "auto":
        raise ValueError(f"engine={engine!r} selects an engine of the 'cpu', 'cuda' or "
                         f"'triton' backend; backend {name!r} has one engine. Use "
                         f"engine='auto'")
    if check is not None:
        check(data.n, data.d, method=method, dtype=data.compute_dtype, device=data.device)
    return {}


def _check_engine(engine: Any) -> str:
    from .backends.cpu import ENGINES

    if not isinstance(engine, str) or engine.lower() not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine.lower()


def _run(x: Any, *, linkage: str, metric: str, max_cluster_size: Any, backend: str,
         dtype: Any, n_clusters: Any = None, want_z: bool = True, memory_limit: Any = None,
         engine: Any = "auto", progress: Any = False) -> tuple[Data, Any, Any, str]:
    """Validate everything, run the backend; returns (data, Z or None, labels or None, name).

    ``progress``: as in :func:`cluster`, or a callable taking ``(merges_done,
    merges_total)`` that the ``cpu`` backend calls from time to time.
    """
    _check_not_a_path(x)
    method, metric = check_linkage_metric(linkage, metric)
    backend = check_backend(backend)
    cap = check_max_cluster_size(max_cluster_size)
    parse_memory_limit(memory_limit)
    engine = _check_engine(engine)
    data = check_data(x, dtype)
    k = None
    if n_clusters is not None:
        try:
            k = check_int("n_clusters", n_clusters, 1, data.n)
        except ValueError as exc:
            raise ValueError(f"{exc}{transposed_hint(data.n, data.d, n_clusters)}") from None
    if metric == "cosine":
        _check_no_zero_rows(data)
    name = _resolve_backend(backend, data, method)
    _check_accepts(name, data)
    extra = _preflight(name, data, method, metric, memory_limit, engine)
    callback, bar = merge_progress(progress) if name == "cpu" else (None, None)
    if callback is not None:
        total = max(data.n - 1, 0)
        extra["progress"] = lambda done: callback(min(int(done), total), total)
    module = _backends.get(name)
    xin = _to_backend_input(name, data)
    try:
        if k is not None and not want_z and hasattr(module, "labels"):
            labels = module.labels(xin, k, method=method, metric=metric,
                                   max_cluster_size=cap, **extra)
            return data, None, labels, name
        z = module.linkage(xin, method=method, metric=metric, max_cluster_size=cap, **extra)
    finally:
        if bar is not None:
            bar.close()
    return data, np.ascontiguousarray(z, dtype=np.float64), None, name


def _check_not_a_path(x: Any) -> None:
    """A file name given as ``x`` gets an error that says how to read the file."""
    if isinstance(x, (str, os.PathLike)):
        raise TypeError(
            f"x is a file name ({os.fspath(x)!r}), not an array; read the codebook first with "
            f"x = dcpe.io.load_codebook({os.fspath(x)!r}) (checkpoints, .npy, .npz, "
            f".safetensors), then pass x"
        )


def _check_no_zero_rows(data: Data) -> None:
    x = data.original
    zero = (x == 0).all(dim=1) if data.kind == "tensor" else (x == 0).all(axis=1)
    n_zero = int(zero.sum())
    if n_zero:
        first = int(zero.nonzero()[0][0]) if data.kind == "tensor" else int(np.argmax(zero))
        raise ValueError(
            f"cosine distance is undefined for the zero vector: x has {n_zero} zero row(s) "
            f"(first: row {first}); remove the zero rows, or use the euclidean metric"
        )


def _warn_if_short(n: int, k: int, n_found: int, cap: Any) -> None:
    if n_found > k:
        warnings.warn(
            f"max_cluster_size={cap} left fewer than two mergeable clusters before reaching "
            f"n_clusters={k}: returning {n_found} clusters",
            UserWarning,
            stacklevel=3,
        )


def _labels_from_z(z: np.ndarray, n: int, k: int) -> np.ndarray:
    try:
        from . import _C
    except ImportError:
        return _cut_numpy(z, n, k)
    return _C.cut_cpu(z, n, k)


def _cut_numpy(z: np.ndarray, n: int, k: int) -> np.ndarray:
    parent = np.arange(n + max(len(z), 0))

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for t in range(min(len(z), n - k)):
        a, b = int(z[t, 0]), int(z[t, 1])
        parent[find(a)] = n + t
        parent[find(b)] = n + t
    roots = np.array([find(i) for i in range(n)])
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)


def _follow(data: Data, array: np.ndarray) -> Any:
    """Return ``array`` in the container and on the device of the input."""
    if data.kind == "tensor":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(data.device)
    return array


# --------------------------------------------------------------------------- public API
def cluster(
    x: Any,
    n_clusters: int,
    *,
    linkage: str = "average",
    metric: str = "euclidean",
    max_cluster_size: int | None = None,
    backend: str = "auto",
    dtype: Any = None,
    memory_limit: int | str | None = None,
    engine: str = "auto",
    progress: bool | None = False,
) -> Any:
    """Partition the rows of ``x`` into ``n_clusters`` clusters by exact agglomerative clustering.

    With the defaults this is DCPE: average linkage, i.e. start from singletons and
    ``N - n_clusters`` times merge the two clusters with the smallest mean pairwise
    Euclidean distance between their tokens.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (N, d)
        Codebook vectors. NumPy arrays, array-likes and torch tensors (CPU or CUDA) of
        float16, bfloat16, float32, float64 or integer type.
    n_clusters : int
        Number of clusters k, ``1 <= k <= N``.
    linkage : {"average", "centroid", "single", "complete", "weighted", "ward"}
        ``"average"`` is DCPE; ``"centroid"`` (Euclidean distance between cluster means) is
        the "DCPE w/ centroid" ablation; ``"ward"`` merges the pair that increases the
        within-cluster sum of squares least (heights as SciPy's, scikit-learn's default).
        The GPU backends have average, single, complete and weighted; ``backend="auto"``
        runs centroid and ward on the host engine.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Token distance. ``"cosine"`` is ``1 - cos``; ``"centroid"`` and ``"ward"`` need
        ``"euclidean"``.
    max_cluster_size : int, optional
        Size cap, the rule of the paper's IAR setting (which uses ``N // k``): a cluster
        whose size exceeds it takes no further part in merging. Two clusters of up to
        ``max_cluster_size`` tokens each may still merge, so a cluster can reach
        ``2 * max_cluster_size`` tokens: the cap is not a hard bound on sizes (on the
        sample codebook, ``n_clusters=512, max_cluster_size=32`` gives sizes 2 to 59). If
        fewer than two mergeable clusters remain before ``n_clusters`` is reached, a
        ``UserWarning`` is issued and more than ``n_clusters`` clusters are returned.
    backend : {"auto", "cpu", "cuda", "triton", "torch", "reference"}
        ``"auto"`` uses ``"cpu"`` for host data and ``"cuda"`` (else ``"triton"``, else
        ``"cpu"`` with a copy to the host) for CUDA tensors. A backend that was asked for
        explicitly and cannot run raises :class:`dcpe.BackendUnavailableError`
        saying why; there is no fallback.
    dtype : {None, "float32", "float64"}
        Compute precision. Default: float64 for float64 input, float32 otherwise.
    memory_limit : int or str, optional
        Memory budget of the ``cpu``, ``cuda`` and ``triton`` backends, in bytes or as a
        string such as ``"8GiB"`` or ``"512MiB"`` (``KiB``/``MiB``/``GiB``/``K``/``M``/``G``
        are powers of 1024, ``KB``/``MB``/``GB`` powers of 1000). Default: the available
        host memory (``DCPE_MEMORY_LIMIT`` lowers it), or for CUDA tensors the device's
        free memory; an explicit limit is capped by it too. The engine is chosen within
        it (see ``engine``), and :class:`dcpe.InsufficientMemoryError` is raised, before
        any work, only when not even O(N d) fits (for average, centroid and ward linkage
        on the host, average linkage on the GPU; the other linkages need the matrix).
    engine : {"auto", "matrix", "linear"}
        Engine of the ``cpu``, ``cuda`` and ``triton`` backends. ``"matrix"`` stores the
        distances (N(N-1)/2 on the host, N x N on the GPU); ``"linear"`` (average linkage)
        needs O(N d) memory (plus, on the host, a cache of at most a quarter of the
        budget; on the GPU the clusters' own matrix once it fits) and is exact too.
        ``"auto"`` on the host takes the matrix engine for Euclidean average linkage up
        to 2,048 tokens at d <= 8, up to 11,585 at 13 <= d <= 16, up to 16,384 at other
        d <= 64, up to 24,576 at 65 <= d <= 128 and at any N above when it fits, the
        linear engine otherwise (the faster one there);
        on the GPU the matrix engine up to 131,072 tokens when it fits.
        Average linkage with ``"sqeuclidean"`` or ``"cosine"`` runs on cluster moments
        (their closed forms) in the linear engines, in O(N d) memory; ``"auto"`` on the
        host takes it at d <= 128, and above the matrix engine when it fits (faster
        there).
        Other backends take ``"auto"``.
    progress : bool or None
        A progress bar of the merges on standard error for runs of the ``cpu`` backend
        longer than two seconds: ``True`` always, ``None`` when standard error is a
        terminal, ``False`` (default) never.

    Returns
    -------
    labels : numpy.ndarray or torch.Tensor, int64, shape (N,)
        Canonical labels: clusters are numbered ``0..k-1`` in order of their smallest token
        index, so results of different backends compare with ``==``. NumPy (or array-like)
        input gives a NumPy array; a tensor gives a tensor on the same device.

    Notes
    -----
    Exactness: on inputs without tied distances the partition equals SciPy's
    ``linkage(x, "average")`` cut at ``n_clusters`` and scikit-learn's
    ``AgglomerativeClustering(linkage="average")``. Ties are broken deterministically: a
    cluster is identified by its smallest token index and, among pairs at the same
    distance, the lexicographically smallest pair merges first (backends that merge
    several reciprocal-nearest-neighbour pairs at once apply this rule to each
    nearest-neighbour choice). Exactly ``n_clusters`` clusters are returned even when the
    cut falls among tied heights. For the non-monotone ``"centroid"`` linkage the result is
    the state after the first ``N - n_clusters`` merges in greedy order.

    Raises
    ------
    ValueError, TypeError
        Bad input, before any work: not 2-D, empty, NaN/Inf rows, ``n_clusters`` outside
        ``[1, N]``, ``max_cluster_size < 1``, unknown linkage/metric/backend/engine,
        non-numeric dtype, a ``memory_limit`` that is not a positive size. A file name
        given as ``x`` is a ``TypeError`` that points to :func:`dcpe.io.load_codebook`.
    dcpe.BackendUnavailableError
        ``backend`` names a backend that cannot run here (a ``RuntimeError``).
    dcpe.InsufficientMemoryError
        The problem cannot fit in available memory (a ``MemoryError`` and a ``ValueError``).

    Examples
    --------
    >>> import dcpe
    >>> x = dcpe.datasets.sample_codebook()
    >>> labels = dcpe.cluster(x[:2048], 256)
    >>> int(labels.max()) + 1
    256
    """
    k = check_int("n_clusters", n_clusters, -(2**63))  # type only; range once N is known
    data, z, labels, _ = _run(x, linkage=linkage, metric=metric,
                              max_cluster_size=max_cluster_size, backend=backend, dtype=dtype,
                              n_clusters=k, want_z=False, memory_limit=memory_limit,
                              engine=engine, progress=progress)
    if labels is not None:  # computed by the backend (GPU backends: on the device)
        n_found = int(labels.max()) + 1 if data.n else 0
        _warn_if_short(data.n, k, n_found, max_cluster_size)
        return _follow(data, labels) if isinstance(labels, np.ndarray) else labels
    out = _labels_from_z(z, data.n, k)
    _warn_if_short(data.n, k, data.n - min(len(z), data.n - k), max_cluster_size)
    return _follow(data, out)


def linkage(
    x: Any,
    *,
    linkage: str = "average",
    metric: str = "euclidean",
    backend: str = "auto",
    dtype: Any = None,
    memory_limit: int | str | None = None,
    engine: str = "auto",
    progress: bool | None = False,
) -> Any:
    """The full merge tree of exact agglomerative clustering, in SciPy's linkage format.

    Parameters
    ----------
    x, linkage, metric, backend, dtype, memory_limit, engine, progress
        As in :func:`cluster`.

    Returns
    -------
    Z : numpy.ndarray or torch.Tensor, float64, shape (N - 1, 4)
        Row ``i`` merges clusters ``Z[i, 0] < Z[i, 1]`` (leaves are ``0..N-1``, row ``i``
        creates cluster ``N + i``) at height ``Z[i, 2]`` into a cluster of ``Z[i, 3]``
        tokens. Rows are in greedy order (nondecreasing heights for monotone linkages), so
        ``scipy.cluster.hierarchy`` functions accept it. A tensor input gives a float64
        tensor on the same device (``Z.cpu().numpy()`` for SciPy).

    Examples
    --------
    >>> import dcpe, scipy.cluster.hierarchy as sch
    >>> Z = dcpe.linkage(dcpe.datasets.sample_codebook()[:500])
    >>> sch.is_valid_linkage(Z)
    True
    """
    data, z, _, _ = _run(x, linkage=linkage, metric=metric, max_cluster_size=None,
                         backend=backend, dtype=dtype, memory_limit=memory_limit,
                         engine=engine, progress=progress)
    return _follow(data, z)


def cut(Z: Any, n_clusters: int) -> Any:
    """Cut a linkage matrix into ``n_clusters`` clusters: apply its first ``N - k`` merges.

    Unlike ``scipy.cluster.hierarchy.fcluster(Z, k, "maxclust")``, this returns exactly
    ``k`` clusters even when the cut falls among tied heights, and for non-monotone
    linkages (centroid) it takes the first merges in Z's (greedy) order rather than the
    lowest heights.

    Parameters
    ----------
    Z : array_like or torch.Tensor, shape (N - 1, 4)
        A linkage matrix, e.g. from :func:`linkage` or SciPy.
    n_clusters : int
        ``1 <= n_clusters <= N``.

    Returns
    -------
    labels : numpy.ndarray or torch.Tensor, int64, shape (N,)
        Canonical labels (clusters numbered in order of their smallest token index). A
        tensor ``Z`` gives a tensor on its device.

    Raises
    ------
    TypeError
        ``Z`` cannot be read as a float64 array, or ``n_clusters`` is not an integer
        (``bool`` and ``float`` included).
    ValueError
        ``Z`` does not have shape ``(N - 1, 4)``; ``Z`` holds NaN or Inf; ``n_clusters`` is
        outside ``[1, N]``; or one of the ``N - n_clusters`` rows applied refers to a
        cluster that does not exist yet or merges a cluster with itself (not a valid
        linkage matrix). Heights are not checked.

    Examples
    --------
    >>> import dcpe
    >>> Z = dcpe.linkage(dcpe.datasets.sample_codebook()[:500])
    >>> labels = dcpe.cut(Z, 10)
    >>> int(labels.max()) + 1
    10
    """
    if is_tensor(Z):
        device = str(Z.device)
        z = Z.detach().to("cpu", dtype=__import__("torch").float64).numpy()
    else:
        device = None
        try:
            z = np.asarray(Z, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Z cannot be read as a float64 array: {exc}") from exc
    if z.ndim != 2 or z.shape[1] != 4:
        raise ValueError(f"Z must have shape (N - 1, 4); got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("Z contains NaN or Inf")
    n = len(z) + 1
    k = check_int("n_clusters", n_clusters, 1, n)
    labels = _labels_from_z(np.ascontiguousarray(z), n, k)
    if device is not None:
        import torch

        return torch.from_numpy(labels).to(device)
    return labels

