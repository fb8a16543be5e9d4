"""dcpe: exact average-linkage clustering of VQ tokenizer codebooks (DCPE), CPU and GPU.

>>> import dcpe
>>> x = dcpe.datasets.sample_codebook()          # (16384, 8) float32
>>> labels = dcpe.cluster(x, 8192)               # canonical int64 labels, shape (16384,)
>>> Z = dcpe.linkage(x[:1000])                   # SciPy linkage format
>>> dcpe.cut(Z, 10)                              # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import datasets
from ._api import cluster, cut, linkage
from ._errors import InsufficientMemoryError
from ._version import __version__
from .backends import available_backends

__all__ = [
    "DCPE",
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

_LAZY_MODULES = {"baselines", "io", "prior", "report", "cli"}


def __getattr__(name: str) -> Any:
    # Heavy or optional parts (scikit-learn, torch, matplotlib) load on first use only.
    if name == "DCPE":
        return import_module(".estimator", __name__).DCPE
    if name == "CodebookPrior":
        return import_module(".prior", __name__).CodebookPrior
    if name in _LAZY_MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dcpe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
