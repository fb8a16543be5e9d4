"""Backend registry.

Every backend is a module in this package exposing

``available() -> tuple[bool, str]``
    Whether it can run here, and if not, why (one sentence).
``accepts(x) -> bool``
    Whether it runs on data living where ``x`` lives (host array, CPU tensor, CUDA tensor).
``linkage(x, *, method, metric, max_cluster_size) -> numpy.ndarray``
    The merges, as a float64 array of shape (m, 4) in SciPy's linkage format
    (``[id_a, id_b, height, size]``, ``id_a < id_b``; leaf ids are 0..N-1 and merge ``i``
    creates cluster ``N + i``), in greedy order: children before parents, and for
    monotone linkages nondecreasing heights. ``m == N - 1`` unless a size cap
    exhausted the mergeable clusters earlier.

``x`` arrives validated (2-D, N >= 1, d >= 1, finite) and already in the compute dtype
(float32 or float64): a NumPy array for host backends (``reference``, ``cpu``) and a
``torch.Tensor`` on its own device for the tensor backends (``torch``, ``triton``, ``cuda``).
``method`` and ``metric`` are lower-case names already checked against
:data:`LINKAGES` and :data:`METRICS`; ``max_cluster_size`` is ``None`` or an int >= 1.

Tie rule: clusters are identified by their smallest token index. Backends that merge one
pair at a time (``reference``, ``torch``) merge, among pairs at exactly the same distance,
the lexicographically smallest pair ``(a, b)`` (a < b by that identity) first. Backends
that merge reciprocal-nearest-neighbour pairs in rounds (``cpu``, ``triton``, ``cuda``)
apply the same rule to each nearest-neighbour choice (the nearest neighbour among tied
candidates is the one with the smallest identity) and order merges of equal height by
round. Labels are deterministic for a given backend and thread count; across backends
they are equal on inputs without tied distances.
"""

from __future__ import annotations

import importlib
from types import ModuleType

LINKAGES = ("average", "centroid", "single", "complete", "weighted", "ward")
#: linkages defined on cluster means, hence for the Euclidean metric only
EUCLIDEAN_ONLY = ("centroid", "ward")
#: linkages of the GPU engine: its merge kernels update the matrix by a weighted mean,
#: minimum or maximum of the merged clusters' rows (see dcpe_kernels.rnn.METHOD_MODES)
GPU_LINKAGES = ("average", "single", "complete", "weighted")
METRICS = ("euclidean", "sqeuclidean", "cosine")
#: metrics whose average linkage is a function of cluster moments (its closed forms:
#: |mu_a - mu_b|^2 + s2_a + s2_b, and half of it on unit rows for cosine)
CLOSED_FORM_METRICS = ("sqeuclidean", "cosine")


def check_closed_form_metric(metric: str) -> None:
    """Raise ``ValueError`` unless average linkage with ``metric`` has a closed form."""
    if metric not in CLOSED_FORM_METRICS:
        raise ValueError(
            f"metric must be one of {CLOSED_FORM_METRICS} for the closed form of average "
            f"linkage, got {metric!r} (the Euclidean metric has no closed form)"
        )

#: backend name -> module (relative to this package)
_MODULES = {
    "reference": "reference",
    "torch": "torch_backend",
    "cpu": "cpu",
    "triton": "triton_backend",
    "cuda": "cuda_backend",
}
BACKENDS = tuple(_MODULES) + ("auto",)


def get(name: str) -> ModuleType:
    """Import and return the module of backend ``name`` (not ``"auto"``)."""
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def status() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every concrete backend."""
    out = {}
    for name in _MODULES:
        try:
            out[name] = get(name).available()
        except Exception as exc:  # an import error is a reason, not a crash
            out[name] = (False, f"import failed: {exc}")
    return out


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name, (ok, _) in status().items() if ok]
