"""Backend ``cpu``: the C++ engine (``dcpe._C.linkage_cpu``) on host arrays.

O(N^2) time, at most N(N-1)/2 distances stored in the compute dtype (float32 by default;
the matrix is built for the clusters left after the first round of merges),
OpenMP across all cores (``OMP_NUM_THREADS`` or ``DCPE_NUM_THREADS`` to limit), the GIL
released while it runs, and Ctrl-C honoured between blocks of work. See
``csrc/cpu/linkage_cpu.h`` for the algorithms.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._memory import check_host_memory


def _ext() -> Any:
    from .. import _C

    return _C


def available() -> tuple[bool, str]:
    try:
        _ext()
    except ImportError as exc:
        return False, f"the compiled extension dcpe._C could not be imported ({exc})"
    return True, ""


def accepts(x: Any) -> bool:
    return True  # host arrays; tensors are copied to the host by the dispatcher


def _threads() -> int:
    value = os.environ.get("DCPE_NUM_THREADS", "")
    return int(value) if value.strip() else 0


def workspace_bytes(n: int, d: int, method: str, dtype: np.dtype) -> int:
    """Bytes of memory the engine allocates for an (n, d) problem."""
    return int(_ext().workspace_bytes_cpu(n, d, method, np.dtype(dtype).itemsize, _threads()))


def preflight(n: int, d: int, *, method: str, dtype: np.dtype, device: str) -> None:
    # the input copy in the compute dtype comes on top of the engine's workspace
    needed = workspace_bytes(n, d, method, dtype) + n * d * np.dtype(dtype).itemsize
    check_host_memory(needed, f"backend='cpu' on N={n}, d={d} ({np.dtype(dtype).name})")


def linkage(x: np.ndarray, *, method: str, metric: str,
            max_cluster_size: int | None) -> np.ndarray:
    return _ext().linkage_cpu(x, method, metric, max_cluster_size or 0, _threads())


def labels(x: np.ndarray, n_clusters: int, *, method: str, metric: str,
           max_cluster_size: int | None) -> np.ndarray:
    """Canonical labels after the first ``N - n_clusters`` merges in greedy order.

    The centroid engine finds merges in greedy order, so it stops after those merges;
    the other engines build the whole tree (their merges come out of order) and it is cut.
    """
    n = x.shape[0]
    if method == "centroid" and n_clusters == n:  # no merge needed (max_merges=0 means all)
        z = np.empty((0, 4))
    else:
        stop = n - n_clusters if method == "centroid" else 0
        z = _ext().linkage_cpu(x, method, metric, max_cluster_size or 0, _threads(), stop)
    return _ext().cut_cpu(z, n, n_clusters)
