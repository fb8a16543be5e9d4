"""dcpe: exact average-linkage clustering of VQ tokenizer codebooks (DCPE), CPU and GPU.

>>> import dcpe
>>> x = dcpe.datasets.sample_codebook()          # (16384, 8) float32
>>> labels = dcpe.cluster(x, 8192)               # canonical int64 labels, shape (16384,)
>>> Z = dcpe.linkage(x[:1000])                   # SciPy linkage format
>>> dcpe.cut(Z, 10)                              # doctest: +SKIP
"""

# No ``from __future__ import annotations`` and no module-level helper imports here: the
# package namespace holds the public API only (``dir(dcpe)``).
from . import datasets
from ._api import cluster, cut, linkage
from ._errors import BackendUnavailableError, InsufficientMemoryError
from ._version import __version__
from .backends import available_backends

__all__ = [
    "DCPE",
    "BackendUnavailableError",
    "CodebookPrior",
    "InsufficientMemoryError",
    "__version__",
    "available_backends",
    "baselines",
    "cluster",
    "cut",
    "datasets",
    "io",
    "linkage",
]

#: Submodules imported on first use (scikit-learn, torch, matplotlib load only then).
_LAZY_MODULES = ("baselines", "io", "prior", "report", "cli", "export", "sweep",
                 "llamagen")
_LAZY_CLASSES = {"DCPE": "estimator", "CodebookPrior": "prior"}


def __getattr__(name: str) -> object:
    from importlib import import_module

    if name in _LAZY_CLASSES:
        return getattr(import_module(f".{_LAZY_CLASSES[name]}", __name__), name)
    if name in _LAZY_MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dcpe' has no attribute {name!r}")


def __dir__() -> list[str]:
    dunder = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted(dunder | set(__all__) | set(_LAZY_MODULES) | {"backends"})
