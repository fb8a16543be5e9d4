"""Reading (and writing) tokenizer codebooks.

:func:`load_codebook` returns a codebook as an ``(N, d)`` float32 NumPy array from

- PyTorch checkpoints (``torch.load(..., weights_only=True, map_location="cpu")``):
  LlamaGen VQ checkpoints ``{"model": {..., "quantize.embedding.weight": W}}``,
  taming-style wrappers ``{"ema": ...}`` / ``{"state_dict": ...}``, a bare state dict,
  or a bare tensor;
- ``.npy`` (one array), ``.npz`` (named arrays), ``.safetensors`` (needs the optional
  ``safetensors`` package).

Which tensor is the codebook (``key=None``)
-------------------------------------------
1. If the checkpoint is a dict holding one of the wrapper keys ``"ema"``, ``"model"``,
   ``"state_dict"`` (looked for in that order, as LlamaGen's own loader does), only the
   first one present is searched.
2. Nested dicts are flattened to dotted keys (``"model.quantize.embedding.weight"``).
3. A *candidate* is a floating-point tensor that is 2-D (or 3-D with a leading dimension
   of 1, which is squeezed) whose dotted key, split at dots, ends with one of
   ``embedding.weight``, ``embed.weight``, ``codebook.weight``, ``codebook``,
   ``embed``, ``embedding``, ``embeddings``, ``codebook_embed`` (compared
   case-insensitively, the last component may carry a leading underscore).
4. Exactly one candidate: that is the codebook. A file holding a single 2-D float
   array (``.npy``, bare tensor, one-array ``.npz``/``.safetensors``) needs no rule.
   Otherwise a :class:`ValueError` lists the candidates (or, with none, every 2-D float
   tensor) with their shapes; pass ``key=`` to choose.

``key`` is a dotted key, looked up in the whole flattened file first and then inside the
selected wrapper (so both ``"model.quantize.embedding.weight"`` and
``"quantize.embedding.weight"`` work for a LlamaGen checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._validation import is_tensor

__all__ = ["atomic_write", "find_codebook_candidates", "load_codebook", "save_codebook"]

PathLike = str | os.PathLike

_WRAPPERS = ("ema", "model", "state_dict")
_SUFFIXES = (
    ("embedding", "weight"),
    ("embed", "weight"),
    ("codebook", "weight"),
    ("codebook",),
    ("embed",),
    ("embedding",),
    ("embeddings",),
    ("codebook_embed",),
)


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it onto ``path``.

    The temporary file lives in the same directory (``.<name>.<random>.tmp``) and is
    renamed with :func:`os.replace`, so readers see either the old file or the complete
    new one. On any exception the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Its directory must exist.
    mode : str
        ``"wb"`` or ``"w"``.

    Yields
    ------
    file object
        Write to it; do not close it.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {directory}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    with atomic_write(path, "wb") as fh:
        writer(fh)


# --------------------------------------------------------------------------- loading


def _is_tensor(obj: Any) -> bool:
    """A NumPy array or a torch tensor (torch is not imported for this)."""
    return isinstance(obj, np.ndarray) or is_tensor(obj)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings (and lists/tuples) to ``{dotted key: array}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return out
    for k, v in items:
        name = f"{prefix}.{k}" if prefix else k
        if _is_tensor(v):
            out[name] = v
        elif isinstance(v, (Mapping, list, tuple)):
            out.update(_flatten(v, name))
    return out


def _as_float_matrix(value: Any) -> np.ndarray | None:
    """The value as a 2-D floating NumPy array, or None if it is not one."""
    if is_tensor(value):
        if not value.is_floating_point():
            return None
        shape = tuple(value.shape)
        if len(shape) == 3 and shape[0] == 1:
            value = value[0]
        if value.ndim != 2:
            return None
        return value.detach().float().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return None
        if value.ndim == 3 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != 2:
            return None
        return value
    return None


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _dtype_name(value: Any) -> str:
    return str(value.dtype).replace("torch.", "")


def _matches_rule(key: str) -> bool:
    parts = [p.lower() for p in key.split(".")]
    parts[-1] = parts[-1].lstrip("_")
    for suffix in _SUFFIXES:
        if len(parts) >= len(suffix) and tuple(parts[-len(suffix):]) == suffix:
            return True
    return False


def find_codebook_candidates(tensors: Mapping[str, Any]) -> list[str]:
    """Keys of ``tensors`` (flattened, dotted) that look like a codebook.

    Parameters
    ----------
    tensors : mapping of str to array or tensor
        A flattened state dict.

    Returns
    -------
    list of str
        The keys meeting the module's candidate rule, in input order.
    """
    return [k for k, v in tensors.items()
            if _matches_rule(k) and _as_float_matrix(v) is not None]


def _describe(tensors: Mapping[str, Any], keys: list[str]) -> str:
    shown = [f"{k} {list(_shape_of(tensors[k]))} {_dtype_name(tensors[k])}" for k in keys[:20]]
    more = f", ... ({len(keys) - 20} more)" if len(keys) > 20 else ""
    return "; ".join(shown) + more


def _select(tensors: dict[str, Any], scope: dict[str, Any], key: str | None,
            path: Path) -> np.ndarray:
    if key is not None:
        for table in (tensors, scope):
            if key in table:
                arr = _as_float_matrix(table[key])
                if arr is None:
                    raise ValueError(
                        f"{path}: key {key!r} holds a tensor of shape "
                        f"{list(_shape_of(table[key]))} and dtype {_dtype_name(table[key])}; "
                        f"a codebook must be a 2-D floating-point tensor")
                return arr
        matrices = [k for k, v in tensors.items() if _as_float_matrix(v) is not None]
        listing = _describe(tensors, matrices) if matrices else "none"
        raise ValueError(f"{path}: no key {key!r}; 2-D float tensors in the file: {listing}")
    matrices = [k for k, v in scope.items() if _as_float_matrix(v) is not None]
    if len(scope) == 1 and len(matrices) == 1:
        return _as_float_matrix(scope[matrices[0]])  # type: ignore[return-value]
    candidates = find_codebook_candidates(scope)
    if len(candidates) == 1:
        return _as_float_matrix(scope[candidates[0]])  # type: ignore[return-value]
    if candidates:
        raise ValueError(f"{path}: several tensors look like a codebook, pass key= to "
                         f"choose one: {_describe(scope, candidates)}")
    listing = _describe(scope, matrices) if matrices else "none"
    raise ValueError(f"{path}: no codebook found (no 2-D float tensor whose key ends with "
                     f"'embedding.weight', 'codebook', 'embed', ...); pass key= to choose. "
                     f"2-D float tensors in the file: {listing}")


def _read_torch(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({msg})") from None


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"reading {path} needs the 'safetensors' package "
                          f"(pip install safetensors)") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a safetensors file ({exc})") from None


def _read_numpy(path: Path) -> Any:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a NumPy file ({exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {name: data[name] for name in data.files}
    return data


def load_codebook(path: PathLike, key: str | None = None, normalize: bool = False
                  ) -> np.ndarray:
    """Load a tokenizer codebook.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy``, ``.npz``, ``.safetensors`` file, or anything else read as a PyTorch
        checkpoint (``.pt``, ``.pth``, ``.ckpt``, ``.bin``, ...).
    key : str, optional
        Dotted key of the codebook tensor inside the file. ``None`` applies the rule
        described in the module docstring.
    normalize : bool
        L2-normalise every row, as LlamaGen does with ``F.normalize(w, dim=-1)``
        (norms clamped to at least 1e-12).

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float32, C-contiguous, a copy owned by the caller.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file cannot be read, no or several codebook candidates (the message lists
        them with their shapes), ``key`` not found, or the tensor is not a finite 2-D
        float matrix with N >= 1 and d >= 1.
    ImportError
        A ``.safetensors`` file without the ``safetensors`` package.

    Examples
    --------
    >>> from dcpe.io import load_codebook
    >>> w = load_codebook("vq_ds16_c2i.pt", normalize=True)  # doctest: +SKIP
    >>> w.shape                                               # doctest: +SKIP
    (16384, 8)
    """
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a string or None, got {key!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"codebook file not found: {path}")
    if path.is_dir():
        raise ValueError(f"codebook path is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        obj = _read_numpy(path)
    elif suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path)

    if _is_tensor(obj):
        if key is not None:
            raise ValueError(f"{path}: holds a single tensor, not a dict; "
                             f"key={key!r} cannot be looked up")
        arr = _as_float_matrix(obj)
        if arr is None:
            raise ValueError(f"{path}: holds a tensor of shape {list(_shape_of(obj))} and "
                             f"dtype {_dtype_name(obj)}; a codebook must be a 2-D "
                             f"floating-point tensor")
    elif isinstance(obj, Mapping):
        tensors = _flatten(obj)
        scope = tensors
        for wrapper in _WRAPPERS:
            if isinstance(obj.get(wrapper), Mapping):
                scope = _flatten(obj[wrapper])
                break
        arr = _select(tensors, scope, key, path)
    else:
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a tensor or a dict "
                         f"of tensors")

    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: the codebook has shape {list(arr.shape)}; "
                         f"need N >= 1 rows and d >= 1 columns")
    bad = int((~np.isfinite(arr).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{path}: the codebook has {bad} row(s) containing NaN or Inf")
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr /= np.maximum(norms, np.float32(1e-12))
    return arr


def save_codebook(path: PathLike, codebook: Any, key: str = "codebook") -> None:
    """Write a codebook atomically, as ``.npy``, ``.npz``, ``.pt`` or ``.safetensors``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the format follows the extension (``.pt``/``.pth`` write a bare
        tensor, ``.npz`` and ``.safetensors`` one entry named ``key``).
    codebook : array-like or torch.Tensor
        ``(N, d)`` numbers, stored as float32.
    key : str
        Entry name for ``.npz`` and ``.safetensors``.
    """
    import torch

    if isinstance(codebook, torch.Tensor):
        codebook = codebook.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(codebook), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"codebook must be 2-D (N, d), got shape {list(arr.shape)}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _write_atomic(path, lambda fh: np.save(fh, arr))
    elif suffix == ".npz":
        _write_atomic(path, lambda fh: np.savez(fh, **{key: arr}))
    elif suffix in (".pt", ".pth"):
        _write_atomic(path, lambda fh: torch.save(torch.from_numpy(arr), fh))
    elif suffix == ".safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise ImportError("writing .safetensors files needs the 'safetensors' package "
                              "(pip install safetensors)") from None
        data = save({key: torch.from_numpy(arr)})
        _write_atomic(path, lambda fh: fh.write(data))
    else:
        raise ValueError(f"path must end with .npy, .npz, .pt, .pth or .safetensors, "
                         f"got {str(path)!r}")
