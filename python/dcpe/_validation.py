"""Input checks shared by the public API. Every check runs before any clustering work."""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, EUCLIDEAN_ONLY, LINKAGES, METRICS

#: Largest |x| for which float32 squared distances cannot overflow (d <= 2**20).
_FLOAT32_SAFE_ABS = 1e15
#: ... and float64 ones (d <= 2**20), nor the squared norms that cosine scales rows by.
_FLOAT64_SAFE_ABS = 1e150
#: Smallest largest |x| (other than 0) for which float32 squared distances keep their
#: precision: a difference of one unit in the last place of the largest value, squared,
#: stays above float32's smallest normal number (1.2e-38), so no distance underflows.
#: :func:`dcpe.cluster` takes smaller values (its float32 distances then underflow to 0,
#: ties; ``dtype='float64'`` avoids that); the baselines, whose objective is summed in the
#: data's dtype, refuse them.
_FLOAT32_TINY_ABS = 1e-10
#: ... and float64 ones (2.2e-308).
_FLOAT64_TINY_ABS = 1e-130


def check_not_a_container(x: Any, name: str) -> None:
    """Refuse, with the way out, the objects a codebook is commonly taken from rather than
    the codebook itself: a ``torch.nn.Module`` (the quantizer's ``nn.Embedding``), a
    mapping (a checkpoint or ``state_dict``) or a list or tuple of tensors. NumPy would
    read them as arrays of objects, and the error would not say what to pass."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.nn.Module):
        kind = f"torch.nn.{type(x).__name__}" if type(x).__module__.startswith("torch.nn") \
            else type(x).__name__
        weight = getattr(x, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            raise TypeError(f"{name} is a {kind} module, not its codebook; pass its weight: "
                            f"{name}.weight (LlamaGen's: vq_model.quantize.embedding.weight)")
        found = [f"{name}.{path}.weight" for path, m in x.named_modules()
                 if path and isinstance(m, torch.nn.Embedding) and m.weight.ndim == 2]
        hint = f"pass {found[0]}" if len(found) == 1 else \
            f"pass one of {', '.join(found[:3])}" if found else \
            "pass the (N, d) codebook tensor (LlamaGen's: vq_model.quantize.embedding.weight)"
        raise TypeError(f"{name} is a {kind} module, not a codebook; {hint}")
    if isinstance(x, Mapping):
        keys = [k for k, v in x.items()
                if getattr(v, "ndim", None) == 2 and isinstance(k, str)]
        hint = f" (here {name}[{keys[0]!r}]?)" if len(keys) == 1 else \
            f" (one of {', '.join(repr(k) for k in keys[:3])}?)" if keys else ""
        raise TypeError(f"{name} is a {type(x).__name__} (a checkpoint or state_dict?), not a "
                        f"codebook; pass the (N, d) codebook tensor in it{hint}, or read a "
                        f"checkpoint file with dcpe.io.load_codebook(path)")
    if isinstance(x, (list, tuple)) and x and all(is_tensor(t) for t in x):
        # rows (1-D tensors) read as an array, unless they require grad
        if any(t.ndim >= 2 for t in x):
            raise TypeError(f"{name} is a {type(x).__name__} of {len(x)} tensors, not one "
                            f"codebook; pass one (N, d) tensor (torch.cat({name}) joins them)")
        if any(t.requires_grad for t in x):
            raise TypeError(f"{name} is a {type(x).__name__} of {len(x)} tensors that require "
                            f"grad; pass one (N, d) tensor (torch.stack({name}).detach())")


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def check_path(name: str, value: Any) -> Path:
    """``value`` as a :class:`~pathlib.Path`: one path, a ``str`` or ``os.PathLike``; any
    other object is a ``TypeError`` that names the argument (and, for a list or an array,
    what to give instead)."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    hint = ""
    if isinstance(value, (list, tuple)):
        hint = "; give one path (call once per file)"
    elif hasattr(value, "shape"):
        hint = "; it names a file, not data (are two arguments swapped?)"
    raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}{hint}")


@dataclass
class Data:
    """Validated input: the original object and what the dispatcher needs to know of it."""

    original: Any
    kind: str  # "numpy", "tensor"
    n: int
    d: int
    compute_dtype: np.dtype  # float32 or float64
    device: str  # "cpu" or e.g. "cuda:0"


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}; got {value!r}")
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {list(choices)}")
    return value


def check_linkage_metric(linkage: Any, metric: Any) -> tuple[str, str]:
    linkage = check_choice("linkage", linkage, LINKAGES)
    metric = check_choice("metric", metric, METRICS)
    if linkage in EUCLIDEAN_ONLY and metric != "euclidean":
        what = {"centroid": "the Euclidean distance between cluster means",
                "ward": "the increase of the within-cluster sum of squares"}[linkage]
        raise ValueError(
            f"linkage={linkage!r} is {what}; metric={metric!r} is not supported with it "
            f"(use metric='euclidean')"
        )
    return linkage, metric


def check_backend(backend: Any) -> str:
    try:
        return check_choice("backend", backend, BACKENDS)
    except ValueError as exc:
        from .backends import available_backends

        raise ValueError(f"{exc}; available here: {available_backends() + ['auto']}") from None


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        ) from None
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} is out of range: must be {bound}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed of the baselines: an int in ``[0, 2**64 - 1]``, the range of
    ``torch.Generator.manual_seed`` for non-negative seeds."""
    return check_int(name, value, 0, 2**64 - 1)


def transposed_hint(n: int, d: int, k: int) -> str:
    """A next step for ``k`` above the ``n`` tokens of an ``(n, d)`` codebook whose columns
    could be the tokens (``d >= k``), else ``""``."""
    if n < k <= d:
        return (f"; the codebook is {n} x {d}: if its {d} columns are the tokens, "
                f"transpose it (a row per token)")
    return ""


def check_max_cluster_size(value: Any) -> int | None:
    if value is None:
        return None
    return check_int("max_cluster_size", value, 1)


def _resolve_dtype(dtype: Any, input_is_f64: bool) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float64) if input_is_f64 else np.dtype(np.float32)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        if dtype == torch.float32:
            return np.dtype(np.float32)
        if dtype == torch.float64:
            return np.dtype(np.float64)
    else:
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            resolved = None
        if resolved in (np.dtype(np.float32), np.dtype(np.float64)):
            return resolved
    raise ValueError(f"dtype={dtype!r} is not supported; use None, 'float32' or 'float64'")


def check_data(x: Any, dtype: Any = None) -> Data:
    """Check shape, element type and finiteness of ``x``; decide the compute dtype."""
    if is_tensor(x):
        import torch

        if x.is_complex() or x.dtype in (torch.bool,) or not (
            x.is_floating_point() or x.dtype in (torch.int8, torch.uint8, torch.int16,
                                                 torch.int32, torch.int64)
        ):
            raise TypeError(f"x has dtype {x.dtype}; a real (float or integer) tensor is needed")
        shape = tuple(x.shape)
        kind, device, is_f64 = "tensor", str(x.device), x.dtype == torch.float64
    else:
        if isinstance(x, np.ndarray):
            arr = x
        else:
            check_not_a_container(x, "x")
            try:
                arr = np.asarray(x)
            except Exception as exc:
                raise TypeError(f"x cannot be read as an array: {exc}") from exc
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"x has dtype {arr.dtype} (kind {arr.dtype.kind!r}); a real (float or integer) "
                "array is needed"
            )
        shape = arr.shape
        kind, device, is_f64 = "numpy", "cpu", arr.dtype == np.float64
        x = arr
    if len(shape) != 2:
        raise ValueError(f"x must be 2-D (N, d); got shape {shape}")
    n, d = int(shape[0]), int(shape[1])
    if n == 0 or d == 0:
        raise ValueError(f"x must have at least one row and one column; got shape {shape}")
    compute = _resolve_dtype(dtype, is_f64)
    _check_finite(x, kind, compute)
    return Data(original=x, kind=kind, n=n, d=d, compute_dtype=compute, device=device)


def _check_finite(x: Any, kind: str, compute: np.dtype) -> None:
    if kind == "tensor":
        import torch

        x = x.detach()  # a codebook straight from the model: an nn.Parameter
        if x.is_floating_point():
            bad_rows = (~torch.isfinite(x)).any(dim=1)
            n_bad = int(bad_rows.sum())
            if n_bad:
                first = int(torch.nonzero(bad_rows)[0, 0])
                raise ValueError(
                    f"x has {n_bad} row(s) containing NaN or Inf (first: row {first})"
                )
        big = float(x.abs().max()) if x.numel() else 0.0
    else:
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                bad_rows = ~finite.all(axis=1)
                raise ValueError(
                    f"x has {int(bad_rows.sum())} row(s) containing NaN or Inf "
                    f"(first: row {int(np.argmax(bad_rows))})"
                )
        big = float(np.abs(x).max()) if x.size else 0.0
    if compute == np.float32 and big > _FLOAT32_SAFE_ABS:
        raise ValueError(
            f"x has values up to {big:.3g}, too large for float32 distances; "
            "pass dtype='float64'"
        )
    if big > _FLOAT64_SAFE_ABS:
        raise ValueError(
            f"x has values up to {big:.3g}, too large even for float64 distances; "
            "scale the codebook down (for example, divide it by its largest absolute value)"
        )
