"""Backend ``cpu``: the C++ engines (``dcpe._C.linkage_cpu``) on host arrays.

Two engines compute the reducible linkages, and :func:`plan` is the one place that
chooses between them, from N, d and the memory budget (:func:`choose_engine`):

``matrix``
    reciprocal-nearest-neighbour rounds on a condensed matrix of N(N-1)/2 distances in
    the compute dtype (float32 by default; built for the clusters left after the first
    round). Every reducible linkage (average, single, complete, weighted).
``linear``
    average linkage in O(N d) memory plus a bounded cache: Euclidean by exact-bound
    searches over clusters kept as groups of token rows (a kd-tree on centroids, exact
    average distances from member pairs; above 12 dimensions a scan of the centroids, and
    each token's list of its nearest tokens, 16 of them up to 16 dimensions and about
    sqrt(N) / 2 from 64 above, which settles most searches without one),
    finished by the nearest-neighbour chain on the matrix of the clusters left once it
    fits the cache; ``sqeuclidean`` and ``cosine``
    by their closed forms on cluster moments (mean and mean squared distance to it), at
    any N. Euclidean distance, the paper's DCPE, has no such closed form.

A flat cut (:func:`labels`) stops once its merges are known: both engines set aside the
clusters with no neighbour within the ``(N - k)``-th smallest merge height found (the
linear engine's searches stop there too).

``centroid`` and ``ward`` have engines of their own on centroids (O(N d) memory).

Both engines give the same labels on inputs without tied distances. ``auto`` takes the
matrix engine for Euclidean average linkage up to :data:`LOW_D_MATRIX_MAX_N` tokens at
most :data:`LOW_D` dimensions, up to :data:`MATRIX_MAX_N` tokens at most
:data:`KDTREE_MAX_D`, up to :data:`SHORT_LISTS_MATRIX_MAX_N` tokens at most
:data:`SHORT_LISTS_MAX_D`, up to :data:`HIGH_D_MATRIX_MAX_N` tokens at most :data:`WIDE_D`,
up to :data:`WIDE_D_MATRIX_MAX_N` tokens at most :data:`MATRIX_MIN_D` and at any N above,
when its matrix fits the budget (it is the faster one there), and the linear engine
otherwise. The closed forms run on moments at most
:data:`MATRIX_MIN_D` dimensions, and above it on the matrix when it fits. OpenMP
across all cores (``OMP_NUM_THREADS`` or ``DCPE_NUM_THREADS`` to limit), the GIL released
while it runs, Ctrl-C honoured between blocks of work. See ``csrc/cpu/linkage_cpu.h`` for
the algorithms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InsufficientMemoryError
from .._memory import memory_budget
from . import CLOSED_FORM_METRICS

#: engine names of the ``engine=`` argument
ENGINES = ("auto", "matrix", "linear")
#: largest N at which ``auto`` prefers the matrix engine for Euclidean average linkage
#: from :data:`LOW_D` + 1 to :data:`KDTREE_MAX_D` dimensions. Past it, on the sample
#: codebook's generator, the linear engine took 0.34x to 0.53x the matrix engine's time at
#: 20,480 to 32,768 tokens and 9 to 12 dimensions (the whole tree; a flat cut at N/2: 0.18x
#: to 0.33x), in 71 to 98 MiB instead of 0.5 to 1.3 GiB; on isotropic Gaussian points
#: 1.00x and 1.16x at 9 dimensions and 1.74x to 2.07x at 11 and 12 (a flat cut: 0.69x, and
#: 1.51x to 1.57x); 2 cores, medians of 3 (benchmarks/results/scale-auto-d9-12-*.md). Up to
#: it the matrix engine keeps them: from 8,192 to 16,384 tokens the linear engine took
#: 0.50x to 0.83x its time on the codebook's generator, but 1.5x to 2.4x on Gaussian
#: points, and at 4,096 1.0x to 1.4x and 2.0x to 2.4x (scale-auto-d9-12-small-*.md)
MATRIX_MAX_N = 16384
#: at most :data:`LOW_D` dimensions ``auto`` prefers the matrix engine up to
#: :data:`LOW_D_MATRIX_MAX_N` tokens only, where the linear engine's kd-tree prunes best:
#: on the sample codebook's generator (2 cores, best of 3 to 5) the linear engine took the
#: whole tree of 4,096 x 8 tokens in 0.86x the matrix engine's time (0.86x to 1.07x over
#: runs), 16,384 x 8 in 0.46x (a flat cut at N/2: 0.32x), 16,384 x 2 in 0.19x; at
#: 1,024 x 8 it took 1.6x, at 16,384 x 16 1.3x
LOW_D, LOW_D_MATRIX_MAX_N = 8, 2048
#: at most this dimension the linear engine's Euclidean searches walk a kd-tree on
#: centroids; above it they scan the centroids (64 searches at a time, with each token's
#: list of its nearest tokens settling most of them). From 13 to 16 dimensions the tree
#: prunes little: on the sample codebook's generator (a flat cut at N/2, 2 cores) the scan
#: took 0.43x the tree's time at 131,072 x 16, 0.51x at 262,144 x 16 and 0.75x at
#: 131,072 x 13, and 1.04x at 131,072 x 12 (csrc/cpu/linear_linkage.cpp, uses_tree())
KDTREE_MAX_D = 12
#: ...and the closed forms' searches on moments, which scan above this dimension. At most
#: at this dimension they start on the kd-tree and leave it for the scan once it prunes
#: little (a round's searches computed the distances of d / 512 of the centroids): 0.70x
#: to 0.99x the time of staying on it at 65,536 to 1,048,576 x 8 to 16 (cosine, the whole
#: tree; benchmarks/README.md, "The closed forms leave the kd-tree")
CLOSED_KDTREE_MAX_D = 16
#: ...and there, from 17 to :data:`MATRIX_MIN_D` dimensions, ``auto`` prefers the matrix
#: engine up to this N (at most :data:`SHORT_LISTS_MAX_D`, :data:`SHORT_LISTS_MATRIX_MAX_N`).
#: At d = 16 the linear engine took 1.2x the matrix engine's time at 16,384
#: tokens (the whole tree; a flat cut at N/2: 1.2x) and 0.51x at 32,768 (a flat cut:
#: 0.24x), best of 3, before its whole trees there waited for costly searches to hand
#: over. On the sample codebook's generator (2 cores, an Intel Xeon with AMX
#: tiles; a flat cut at N/2 and the whole tree; benchmarks/results/scale-highd-auto.md and
#: scale-highd-d128.md, medians of 3 and 2 runs, the first included, each engine in a
#: process of its own), the linear engine took 0.90x to 1.55x the matrix engine's time at
#: 16,384 tokens (d = 17 to 256; 1.2x to 1.9x at 8,192, best of 3); at 32,768 0.36x to
#: 0.92x for d = 17 to 64 and 0.90x and 1.02x at d = 128; at 65,536 (where the matrix
#: needs 5.2 to 8.2 GiB, the linear engine 0.2 to 2.2) 0.40x to 0.88x for d = 17 to 128.
#: The scan without AMX tiles (DCPE_CPU_AMX=0) took the same time within 10%
HIGH_D_MATRIX_MAX_N = 16384
#: ...and from :data:`WIDE_D` + 1 to :data:`MATRIX_MIN_D` dimensions up to this N instead.
#: On two AMD EPYC cores with AVX2 (no AMX tiles; the sample codebook's generator, float32,
#: each call in a process of its own, two to four runs, alternating engines) the matrix
#: engine took 0.53x to 0.85x the linear engine's time at 24,576 tokens and d = 80, 96 and
#: 128 (the whole tree and a flat cut at N/2), 0.80x to 0.99x at 32,768 and 1.01x to 1.55x
#: at 40,960; 0.49x to 0.78x at 16,384 x 24 to 128. At d = 24 and 64 it took 0.63x to 0.86x
#: at 24,576 tokens (but 1.06x and 1.19x for a flat cut at d = 24) and 0.92x to 1.49x at
#: 32,768, and on the Intel Xeon above 1.09x (the whole tree) and 1.46x (a flat cut) at
#: 32,768 x 64, against 0.98x and 1.11x at 32,768 x 128: d = 17 to 64 keep
#: :data:`HIGH_D_MATRIX_MAX_N`, and past 24,576 tokens the engines are about even at d = 128
#: on both machines, the matrix in twice the memory
WIDE_D, WIDE_D_MATRIX_MAX_N = 64, 24576
#: from 13 to this dimension the linear engine's scan keeps short lists (16 tokens each),
#: which settle most searches, and a whole tree hands over to the clusters' matrix only
#: once their searches have become costly (handover_now() and kLowDimListMaxDim in
#: csrc/cpu/linear_linkage.cpp)
SHORT_LISTS_MAX_D = 16
#: above this dimension ``auto`` prefers the matrix engine whenever it fits, for Euclidean
#: average linkage and for the closed forms (``sqeuclidean``, ``cosine``). At d = 256 the
#: linear engine took 1.08x to 1.18x the matrix engine's time at 32,768 and 65,536 tokens,
#: in half its memory (4.3 against 8.3 GiB at 65,536), and the moments of the closed forms
#: 1.5x to 2.8x (``cosine``, the whole tree, 16,384 to 65,536 tokens;
#: scale-highd-auto-cosine.md). At most this dimension the closed forms run on moments at
#: any N: ``cosine`` on them took 0.21x to 0.59x the matrix engine's time from 16,384 to
#: 65,536 tokens at d = 17 to 64 (flat cuts at N/2 and whole trees; at 16,384 x 128 1.2x
#: for the whole tree, 0.85x for a flat cut), 0.53x to 1.1x at 2,048 and 4,096 tokens
MATRIX_MIN_D = 128
#: the linear engine's cache: at most this many times the size of the data...
_CACHE_PER_DATA = 64
#: ...within these bounds, and at most a quarter of the budget (at most 16 dimensions a
#: larger bound did not help: a flat cut of 1,048,576 x 16 at N/2 took 428 s under a 4 GiB
#: cache against 414 s under 2 GiB, 2 cores, with the same hand-over)
_CACHE_MIN, _CACHE_MAX = 256 << 20, 2 << 30
#: ...above :data:`KDTREE_MAX_D` dimensions at most this much instead: above 16 dimensions
#: the clusters go to their matrix as soon as it fits (a flat cut's, unless its merges are
#: already known; from 13 to 16 dimensions, once their searches have become costly:
#: handover_now() in csrc/cpu/linear_linkage.cpp), and the hand-over sums every token pair
#: once however many clusters are left, so the sooner the better. On 131,072 x 256 (the
#: sample codebook's generator, 2 cores, the default budget of a 24 GiB machine, so a cache
#: of a quarter of it, 5.75 GiB, where the 2 GiB bound gave 2 GiB) a flat cut at N/16 took
#: 138 s instead of 225 s and at N/4 128 s instead of 208 s, with a peak of 7.2 and 6.1 GiB
#: instead of 3.4 GiB; at N/2, whose merges are known before the clusters fit, 68 s instead
#: of 72 s (benchmarks/results/scale-d256-131k-default-n*).
_CACHE_MAX_HIGH_D = 8 << 30
#: from 13 to :data:`SHORT_LISTS_MAX_D` dimensions ``auto`` prefers the matrix engine up to
#: this N (11,585), the most tokens whose float32 matrix fits the linear engine's least
#: cache (:data:`_CACHE_MIN`): up to it that engine would build the same matrix itself at
#: once, more slowly. On the sample codebook's generator (2 cores, medians of 3, the whole
#: tree) the linear engine took 1.9x the matrix engine's time at 10,240 x 16 and 8,192 x 13
#: and 16, but 0.72x to 0.77x at 12,288 x 13 and 16, 0.55x at 14,336 x 16 and 0.56x to 0.59x
#: at 16,384 x 13 and 16; on isotropic Gaussian points 1.7x to 1.8x, then 0.89x to 0.92x,
#: 0.87x and 0.73x to 0.87x (benchmarks/results/scale-d16-auto-*.md)
SHORT_LISTS_MATRIX_MAX_N = (1 + math.isqrt(1 + 2 * _CACHE_MIN)) // 2  # n (n - 1) / 2 * 4 <= it


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


@dataclass(frozen=True)
class Plan:
    """What :func:`choose_engine` chose: the engine, and the linear engine's cache in bytes."""

    engine: str
    cache_bytes: int = 0


def has_closed_form(method: str, metric: str) -> bool:
    """Average linkage whose cluster distance is a function of cluster moments."""
    return method == "average" and metric in CLOSED_FORM_METRICS


def workspace_bytes(n: int, d: int, method: str, dtype: np.dtype, engine: str = "matrix",
                    metric: str = "euclidean", cache_bytes: int = 0) -> int:
    """Bytes of memory the engine allocates for an (n, d) problem."""
    return int(_ext().workspace_bytes_cpu(n, d, method, np.dtype(dtype).itemsize, _threads(),
                                          engine, metric, cache_bytes))


def choose_engine(n: int, d: int, *, method: str, metric: str, dtype: np.dtype,
         memory_limit: Any = None, engine: str = "auto") -> Plan:
    """Choose the engine for an (n, d) problem within the memory budget.

    Parameters
    ----------
    n, d : int
        Problem size.
    method, metric : str
        Validated linkage and metric names.
    dtype : numpy.dtype
        Compute dtype (float32 or float64).
    memory_limit : None, int or str
        Budget in bytes or a string such as ``"8GiB"``; ``None``: the available host
        memory (``DCPE_MEMORY_LIMIT`` lowers it). The input copy counts against it.
    engine : {"auto", "matrix", "linear"}
        ``"auto"`` chooses; the others force an engine (``"linear"``: average linkage only).

    Returns
    -------
    Plan

    Raises
    ------
    InsufficientMemoryError
        Nothing fits: the matrix for linkages that need it, or O(N d) for the others.
    ValueError
        ``engine="linear"`` with a linkage other than average.
    """
    dtype = np.dtype(dtype)
    budget = memory_budget(memory_limit)
    what = f"backend='cpu' on N={n}, d={d} ({dtype.name})"
    data = n * d * dtype.itemsize  # the input copy in the compute dtype
    if method in ("centroid", "ward"):
        _require(data + workspace_bytes(n, d, method, dtype), budget, what)
        return Plan("matrix")
    if engine == "linear" and method != "average":
        raise ValueError(f"engine='linear' computes average linkage only; got "
                         f"linkage={method!r}. Use engine='auto' or 'matrix'")
    matrix_needs = data + workspace_bytes(n, d, method, dtype)
    closed = has_closed_form(method, metric)
    if engine == "matrix" or method != "average":
        _require(matrix_needs, budget, what + " (matrix engine)", method)
        return Plan("matrix")
    if d > MATRIX_MIN_D:
        prefer_matrix = True
    elif closed:
        prefer_matrix = False
    else:
        prefer_matrix = n <= (LOW_D_MATRIX_MAX_N if d <= LOW_D else
                              MATRIX_MAX_N if d <= KDTREE_MAX_D else
                              SHORT_LISTS_MATRIX_MAX_N if d <= SHORT_LISTS_MAX_D else
                              HIGH_D_MATRIX_MAX_N if d <= WIDE_D else
                              WIDE_D_MATRIX_MAX_N)
    if engine == "auto" and prefer_matrix and matrix_needs <= budget:
        return Plan("matrix")
    base = data + workspace_bytes(n, d, method, dtype, "linear", metric, 0)
    _require(base, budget, what + " (linear-memory engine)")
    if closed:
        return Plan("linear")
    cache_max = _CACHE_MAX_HIGH_D if d > KDTREE_MAX_D else _CACHE_MAX
    cache = min(max(_CACHE_MIN, _CACHE_PER_DATA * data), cache_max, budget // 4,
                budget - base)
    return Plan("linear", max(0, int(cache)))


def _require(needed: int, budget: int, what: str, method: str = "average") -> None:
    if needed > budget:
        hint = "raise memory_limit (--memory-limit in the CLI) or DCPE_MEMORY_LIMIT, or free memory"
        if method in ("single", "complete", "weighted"):
            hint += "; average linkage runs in O(N d) memory"
        raise InsufficientMemoryError(needed, budget, what, hint)


def preflight(n: int, d: int, *, method: str, dtype: np.dtype, device: str,
              metric: str = "euclidean", memory_limit: Any = None,
              engine: str = "auto") -> Plan:
    """:func:`choose_engine`, under the name the dispatcher calls before any work."""
    return choose_engine(n, d, method=method, metric=metric, dtype=dtype, memory_limit=memory_limit,
                engine=engine)


def linkage(x: np.ndarray, *, method: str, metric: str, max_cluster_size: int | None,
            plan: Plan | None = None,
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """SciPy linkage matrix of ``x`` by the engine of ``plan`` (default: chosen here)."""
    if plan is None:
        n, d = x.shape
        plan = choose_engine(n, d, method=method, metric=metric, dtype=x.dtype)
    return _ext().linkage_cpu(x, method, metric, max_cluster_size or 0, _threads(), 0,
                              plan.engine, plan.cache_bytes, progress)


def labels(x: np.ndarray, n_clusters: int, *, method: str, metric: str,
           max_cluster_size: int | None, plan: Plan | None = None,
           progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Canonical labels after the first ``N - n_clusters`` merges in greedy order.

    Every engine stops once those merges are known (``max_merges = N - n_clusters``):
    the centroid engine finds merges in greedy order and stops after them; the matrix and
    linear-memory engines, whose merges come out of order, set aside every cluster whose
    nearest distance exceeds the ``(N - n_clusters)``-th smallest merge height found so
    far (all of its merges sort after the cut) and stop when no cluster is left, so they
    return those merges and some later ones, not the whole tree (``csrc/cpu/``).
    """
    n = x.shape[0]
    if n_clusters == n:  # no merge needed (max_merges=0 would mean all)
        return _ext().cut_cpu(np.empty((0, 4)), n, n_clusters)
    if plan is None:
        plan = choose_engine(n, x.shape[1], method=method, metric=metric, dtype=x.dtype)
    z = _ext().linkage_cpu(x, method, metric, max_cluster_size or 0, _threads(),
                           n - n_clusters, plan.engine, plan.cache_bytes, progress)
    return _ext().cut_cpu(z, n, n_clusters)
