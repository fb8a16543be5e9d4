"""Backend ``triton``: exact agglomerative clustering with fused Triton kernels.

Reciprocal-nearest-neighbour rounds (Murtagh 1983; Müllner 2011) over a dense
dissimilarity matrix on the device; see :mod:`dcpe_kernels.rnn` for the algorithm and
:mod:`dcpe_kernels.pairwise` / :mod:`dcpe_kernels.merge` / :mod:`dcpe_kernels.round` for
the kernels.  Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` (tests).

Supported: linkages average, weighted, single, complete (the reducible ones);
metrics euclidean, sqeuclidean, cosine; ``max_cluster_size``.  Heights are computed in
the dtype of ``x`` (float32 or float64).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

NAME = "triton"


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> tuple[bool, str]:
    """Whether Triton kernels can run here, and if not, why."""
    try:
        from dcpe_kernels import HAS_TRITON, TRITON_IMPORT_ERROR
    except Exception as exc:  # the package itself is missing
        return False, f"the dcpe_kernels package cannot be imported ({exc})"
    if not HAS_TRITON:
        return False, f"triton is not importable ({TRITON_IMPORT_ERROR})"
    if _interpret():
        return True, "triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return True, f"triton on {torch.cuda.get_device_name(0)}"


def accepts(x: object) -> bool:
    """CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``."""
    if not isinstance(x, torch.Tensor):
        return False
    return x.is_cuda or (x.device.type == "cpu" and _interpret())


def _merges(x: torch.Tensor, method: str, metric: str, max_cluster_size: int | None,
            n_clusters: int | None = None, memory_limit: int | None = None,
            engine: str = "auto"):
    from dcpe_kernels import TritonOps
    from dcpe_kernels.linear import run_merges

    if not accepts(x):
        raise ValueError(f"the {NAME!r} backend needs a CUDA tensor (or a CPU tensor with "
                         f"TRITON_INTERPRET=1); got a tensor on {x.device}")
    dev = x.device
    ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx:
        return run_merges(x, method=method, metric=metric, max_cluster_size=max_cluster_size,
                          ops=TritonOps, backend=NAME, n_clusters=n_clusters,
                          memory_limit=memory_limit, engine=engine)


def linkage(x: torch.Tensor, *, method: str = "average", metric: str = "euclidean",
            max_cluster_size: int | None = None, memory_limit: int | None = None,
            engine: str = "auto") -> np.ndarray:
    """Merges of ``x`` in SciPy linkage format.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32/float64, finite.
    method, metric : str
        See the module docstring for what is supported.
    max_cluster_size : int, optional
        Clusters larger than this take no further part in merging.
    memory_limit : int, optional
        Device bytes the engine may use; default (and at most) the device's free memory.
    engine : {"auto", "matrix", "linear"}
        Dense rounds over the ``N x N`` matrix, or matrix-free rounds in ``O(N d)``
        memory (average linkage; :mod:`dcpe_kernels.linear`); ``auto`` takes the dense
        engine while its matrix fits and ``N <= 131072``.

    Returns
    -------
    numpy.ndarray
        ``(m, 4)`` float64, greedy order, ``m = N - 1`` unless the size cap stopped earlier.
    """
    from dcpe_kernels.rnn import merges_to_linkage

    return merges_to_linkage(_merges(x, method, metric, max_cluster_size,
                                     memory_limit=memory_limit, engine=engine))


def labels(x: torch.Tensor, n_clusters: int, *, method: str = "average",
           metric: str = "euclidean", max_cluster_size: int | None = None,
           memory_limit: int | None = None, engine: str = "auto") -> torch.Tensor:
    """Canonical int64 labels on ``x``'s device after the first ``N - n_clusters`` merges.

    If the size cap leaves fewer merges, all are applied (more than ``n_clusters``
    clusters result; the caller reports it).  The rounds stop as soon as those merges are
    known (:func:`dcpe_kernels.rnn.rnn_merges` with ``n_clusters``).  ``memory_limit``
    and ``engine`` as in :func:`linkage`.
    """
    from dcpe_kernels.rnn import merges_to_labels

    mg = _merges(x, method, metric, max_cluster_size, n_clusters=n_clusters,
                 memory_limit=memory_limit, engine=engine)
    return merges_to_labels(mg, n_clusters)
