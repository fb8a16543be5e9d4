"""Reading (and writing) tokenizer codebooks.

:func:`load_codebook` returns a codebook as an ``(N, d)`` float32 NumPy array from

- PyTorch checkpoints as training scripts write them: LlamaGen / GigaTok / VQGAN-LC
  ``{"model": state_dict, "ema": state_dict, "optimizer": ..., "args": argparse.Namespace}``,
  PyTorch Lightning ``.ckpt`` files ``{"state_dict": ..., "callbacks": ...,
  "hyper_parameters": ...}`` (taming, Chameleon, IBQ, Open-MAGVIT2), a bare state dict,
  or a bare tensor;
- ``.npy`` (one array), ``.npz`` (named arrays), ``.safetensors`` (needs the optional
  ``safetensors`` package).

Reading checkpoints safely
--------------------------
A PyTorch checkpoint is a pickle, and a pickle can name any function for the reader to
call. dcpe reads checkpoints with its own restricted unpickler (through ``torch.load``'s
``pickle_module``), which imports nothing and calls nothing outside an allow-list:

- allowed: what ``torch.load(weights_only=True)`` allows (tensors, storages, dtypes,
  ``OrderedDict``, ...), ``argparse.Namespace``, ``collections.defaultdict``,
  ``frozenset``/``slice``/``range`` and NumPy arrays, scalars and dtypes;
- any other class or function the file names (a Lightning callback, an OmegaConf
  container, a dataclass of a package that may not be installed) becomes an inert
  placeholder: its module is never imported, nothing of it is called, and the tensors
  stored with it still load. A tensor of a subclass that is not available loads as a
  plain tensor;
- a file that names a function that runs code or commands (``os.system``,
  ``subprocess.*``, ``builtins.eval``/``exec``/``__import__``/``open``, ``runpy``,
  ``importlib``, ...) is refused with a :class:`ValueError` that names it; nothing in
  the file is run.

``trust=True`` (``--trust-checkpoint`` in the command line) reads the file with
``torch.load(weights_only=False)`` instead: full unpickling, which imports the classes
the file names and can run code. Use it only for files you made yourself.

Which tensor is the codebook (``key=None``)
-------------------------------------------
1. If the checkpoint is a dict holding one of the wrapper keys ``"model"``, ``"ema"``,
   ``"state_dict"`` (looked for in that order), only the first one present is searched:
   LlamaGen's code-extraction script (``extract_codes_c2i.py``) encodes with
   ``checkpoint["model"]``, so the codes a prior is applied to come from that table.
   Pass ``key="ema...."`` for the EMA weights.
2. Nested dicts are flattened to dotted keys (``"model.quantize.embedding.weight"``).
3. A *candidate* is a floating-point tensor, 2-D or 3-D, whose dotted key, with numeric
   parts (``layers.0``) left out, ends with ``embedding``, ``embed``, ``embeddings``,
   ``codebook``, ``codebooks``, ``codebook_embed`` or a name that starts with
   ``embedding_``, ``embed_`` or ``codebook_`` (``embedding_vqkd``), each optionally
   followed by ``.weight`` (compared case-insensitively, leading underscores ignored).
   Names that hold statistics, not vectors (``embed_avg``, ``codebook_used``,
   ``cluster_size``, ...), are not candidates.
4. A 3-D ``(heads, K, d)`` tensor (vector-quantize-pytorch's ``_codebook.embed``) holds
   one codebook per head: with one head it is squeezed to ``(K, d)``; with several, each
   head is a separate candidate ``"<key>[i]"``.
5. Exactly one candidate: that is the codebook. A file holding a single 2-D float
   array (``.npy``, bare tensor, one-array ``.npz``/``.safetensors``) needs no rule.
   Otherwise a :class:`ValueError` lists the candidates (multi-codebook tokenizers:
   UniTok's ``quantizer.codebooks.{i}.codebook.weight``, TokenFlow's
   ``quantize.embedding_vqkd.weight`` and ``quantize.embedding_vqgan.weight``, several
   heads) or, with none, every 2-D float tensor, with their shapes; pass ``key=`` to
   choose.

``key`` is a dotted key, looked up in the whole flattened file first and then inside the
selected wrapper (so both ``"model.quantize.embedding.weight"`` and
``"quantize.embedding.weight"`` work for a LlamaGen checkpoint); ``"<key>[i]"`` selects
head ``i`` of a 3-D tensor.

Which tensor was used
---------------------
:func:`load_codebook_with_source` returns the codebook and a :class:`CodebookSource`
(key, stored shape and dtype, ``"model"``/``"ema"`` wrapper, placeholders made while
reading); :meth:`CodebookSource.describe` says it in one line. :func:`load_codebook`
logs that line at ``INFO`` level on the ``"dcpe.io"`` logger, and the command line
prints it (``codebook: ...``) in each command's output.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import tempfile
import types
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._validation import _FLOAT32_SAFE_ABS, _FLOAT32_TINY_ABS, check_path, is_tensor

__all__ = ["CodebookSource", "atomic_write", "find_codebook_candidates", "load_codebook",
           "load_codebook_with_source", "save_codebook"]

PathLike = str | os.PathLike

_log = logging.getLogger(__name__)

_WRAPPERS = ("model", "ema", "state_dict")
_NAMES = frozenset({"embedding", "embed", "embeddings", "codebook", "codebooks",
                    "codebook_embed"})
_PREFIXES = ("embedding_", "embed_", "codebook_")
_STATISTICS = frozenset({"avg", "sum", "count", "counts", "usage", "used", "size", "sizes",
                         "mask", "dim", "norm", "initted"})


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, sync: bool = True) -> Iterator[IO[Any]]:
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
    sync : bool
        Flush the file to the disk (``fsync``) before the rename (the default). A command
        that writes many small files passes ``False`` and syncs once at its end
        (:func:`os.sync`): an interrupted run still leaves no partial file, and only a
        crash of the system itself before that sync can leave files empty.

    Yields
    ------
    file object
        Write to it; do not close it.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {directory}; create it "
                                f"first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, mode) as fh:
            yield fh
            if sync:
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


# --------------------------------------------------------------------------- option names


@dataclass(frozen=True)
class _Options:
    """How the caller spells the options in messages: Python keywords or CLI flags."""

    key: str
    trust: str
    normalize: str
    no_normalize: str

    def key_is(self, key: str) -> str:
        """``key='x'`` or ``--key x``."""
        return f"{self.key}{key!r}" if self.key.endswith("=") else f"{self.key} {key}"


_PYTHON = _Options(key="key=", trust="trust=True", normalize="normalize=True",
                   no_normalize="normalize=False")
_CLI = _Options(key="--key", trust="--trust-checkpoint", normalize="--normalize",
                no_normalize="--no-normalize")


# --------------------------------------------------------------------------- safe unpickling

#: Modules whose functions run code, start processes or import modules when called.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "pty", "shutil", "runpy",
    "importlib", "ctypes", "code", "codeop", "pickle", "_pickle", "marshal", "dill",
    "multiprocessing", "socket", "webbrowser", "pdb", "bdb", "timeit", "commands", "popen2",
    "asyncio",
})
#: Built-in functions that run code, import modules or open files.
_CODE_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "exit", "quit",
    "help",
})


class _Foreign:
    """Inert stand-in for an object of a class that is not imported.

    It keeps what the file stored (constructor arguments, state, items), so tensors held
    by the object still load; it has no behaviour.
    """

    _dcpe_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Foreign:
        self = object.__new__(cls)
        object.__setattr__(self, "_dcpe_data",
                           {"args": args, "kwargs": kwargs, "state": None, "items": {},
                            "list": []})
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._dcpe_data["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._dcpe_data["items"][key] = value

    def append(self, value: Any) -> None:
        self._dcpe_data["list"].append(value)

    def extend(self, values: Any) -> None:
        self._dcpe_data["list"].extend(values)

    def __repr__(self) -> str:
        return f"<{self._dcpe_name} (not loaded)>"


def _is_foreign(obj: Any) -> bool:
    return isinstance(obj, _Foreign) or (isinstance(obj, type) and issubclass(obj, _Foreign))


class _MissingKeyError(ValueError):
    """``key`` is not in the file."""


class _RefusedGlobal(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _allowed_globals() -> dict[str, Any]:
    import torch

    allowed: dict[str, Any] = {}
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed.update(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - every torch >= 2.1 has it
        from collections import OrderedDict

        allowed.update({"collections.OrderedDict": OrderedDict, "torch.Size": torch.Size,
                        "torch.nn.parameter.Parameter": torch.nn.Parameter})
        for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
    allowed["torch._tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    allowed.update({
        "argparse.Namespace": argparse.Namespace,
        "collections.defaultdict": defaultdict,
        "builtins.frozenset": frozenset,
        "builtins.slice": slice,
        "builtins.range": range,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    })
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = reconstruct
        allowed[f"{module}.scalar"] = scalar
    return allowed


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's rebuild of a tensor subclass; a subclass that is not loaded gives the plain
    tensor."""
    import torch

    if _is_foreign(new_type):
        return func(*args)
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _restricted_pickle_module() -> tuple[types.ModuleType, list[str]]:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves names only from the
    allow-list, refuses functions that run code and makes placeholders for the rest.
    Also returns the list the placeholder names are appended to."""
    import _compat_pickle
    import pickle

    allowed = _allowed_globals()
    placeholders: dict[str, type] = {}
    foreign: list[str] = []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # names as Python 2 wrote them (protocol < 3): "__builtin__", "commands", ...
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if module.split(".")[0] in _CODE_MODULES or (
                    module == "builtins" and name in _CODE_BUILTINS):
                raise _RefusedGlobal(full)
            cls = placeholders.get(full)
            if cls is None:
                cls = type(name.rsplit(".", 1)[-1] or "Foreign", (_Foreign,),
                           {"_dcpe_name": full, "__module__": __name__})
                placeholders[full] = cls
                foreign.append(full)
            return cls

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("dcpe_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module, foreign


# --------------------------------------------------------------------------- reading files

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return line or type(exc).__name__


def _read_torch(path: Path, trust: bool, opts: _Options) -> tuple[Any, tuple[str, ...]]:
    import torch

    mmap = zipfile.is_zipfile(path)  # the zip format (torch >= 1.6) can be memory-mapped
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap), ()
        except ModuleNotFoundError as exc:
            raise ValueError(f"{path}: full unpickling needs the module {exc.name!r}, which "
                             f"is not installed; without {opts.trust} dcpe reads the file "
                             f"without it") from None
        except Exception as exc:
            raise ValueError(f"{path}: cannot read as a PyTorch checkpoint "
                             f"({_first_line(exc)}); check that the file is whole (a "
                             f"download cut short cannot be read)") from None
    module, foreign = _restricted_pickle_module()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module,
                         mmap=mmap)
    except _RefusedGlobal as exc:
        raise ValueError(
            f"{path}: refused: loading it would call {exc.name}, which can run code or "
            f"commands; nothing was run. Load it with {opts.trust} only if you made the "
            f"file yourself") from None
    except Exception as exc:
        held = (f"; it holds objects of classes dcpe does not import: "
                f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                if foreign else "")
        raise ValueError(
            f"{path}: cannot read as a PyTorch checkpoint ({_first_line(exc)}){held}; "
            f"check that the file is whole (a download cut short cannot be read), or, if "
            f"you made it yourself, {opts.trust} reads it with full unpickling"
        ) from None
    return obj, tuple(foreign)


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"reading {path} needs the 'safetensors' package "
                          f"(pip install safetensors)") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a safetensors file "
                         f"({_first_line(exc)})") from None


def _read_numpy(path: Path) -> Any:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a NumPy file ({_first_line(exc)})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {name: data[name] for name in data.files}
    return data


# --------------------------------------------------------------------------- finding the codebook


def _is_tensor(obj: Any) -> bool:
    """A NumPy array or a torch tensor (torch is not imported for this)."""
    return isinstance(obj, np.ndarray) or is_tensor(obj)


def _key_text(key: Any) -> str:
    if _is_foreign(key):
        return key._dcpe_name
    return str(key)


def _flatten(obj: Any, prefix: str = "", location: tuple[Any, ...] = ()
             ) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Flatten nested mappings, lists, tuples and placeholders to
    ``{dotted key: (array, location)}``; ``location`` is the path of keys/indices from
    the loaded object down to the array."""
    out: dict[str, tuple[Any, tuple[Any, ...]]] = {}
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif isinstance(obj, _Foreign):
        data = obj._dcpe_data
        items = [(k, data[k]) for k in ("args", "kwargs", "state", "items", "list") if data[k]]
    else:
        return out
    for k, v in items:
        text = _key_text(k)
        name = f"{prefix}.{text}" if prefix else text
        if _is_tensor(v):
            out[name] = (v, (*location, k))
        elif isinstance(v, (Mapping, list, tuple, _Foreign)):
            out.update(_flatten(v, name, (*location, k)))
    return out


def _floating(value: Any) -> bool:
    if is_tensor(value):
        return bool(value.is_floating_point())
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _integral(value: Any) -> bool:
    """Whether ``value`` holds integers (as token ids do), by its dtype's name."""
    return re.fullmatch(r"u?int\d+", _dtype_name(value)) is not None


def _heads(value: Any) -> int | None:
    """``None`` unless ``value`` is a float (heads, K, d) tensor; then heads (1 squeezes)."""
    if _floating(value) and value.ndim == 3:
        return int(value.shape[0])
    return None


def _is_matrix(value: Any) -> bool:
    """A float tensor usable as a codebook without choosing a head."""
    return _floating(value) and (value.ndim == 2 or (value.ndim == 3 and value.shape[0] == 1))


def _as_matrix(value: Any, head: int | None) -> np.ndarray:
    """The codebook in ``value`` (head ``head`` of a 3-D tensor) as a NumPy array."""
    if value.ndim == 3:
        value = value[0 if head is None else head]
    if is_tensor(value):
        value = value.detach().to("cpu")  # a candidate: floating point (_floating())
        return (value.double() if value.dtype.itemsize > 4 else value.float()).numpy()
    return np.asarray(value)


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _dtype_name(value: Any) -> str:
    return str(value.dtype).replace("torch.", "")


def _matches_rule(key: str) -> bool:
    parts = [p.lower().lstrip("_") for p in key.split(".") if p and not p.isdigit()]
    if not parts:
        return False
    name = parts[-2] if parts[-1] == "weight" and len(parts) >= 2 else parts[-1]
    if name in _NAMES:
        return True
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            words = name[len(prefix):].split("_")
            return all(words) and not any(w in _STATISTICS for w in words)
    return False


def _expand(table: Mapping[str, tuple[Any, tuple[Any, ...]]], keys: list[str]) -> list[str]:
    """Keys with every (heads > 1, K, d) tensor replaced by its heads ``key[i]``."""
    out = []
    for k in keys:
        h = _heads(table[k][0])
        out.extend([f"{k}[{i}]" for i in range(h)] if h is not None and h > 1 else [k])
    return out


def find_codebook_candidates(tensors: Mapping[str, Any]) -> list[str]:
    """Keys of ``tensors`` (flattened, dotted) that look like a codebook.

    Parameters
    ----------
    tensors : mapping of str to array or tensor
        A flattened state dict.

    Returns
    -------
    list of str
        The keys meeting the module's candidate rule, in input order; a
        ``(heads, K, d)`` tensor with several heads gives one key ``"<key>[i]"`` per head.
    """
    table = {k: (v, (k,)) for k, v in tensors.items()}
    keys = [k for k, (v, _) in table.items()
            if _matches_rule(k) and (_is_matrix(v) or _heads(v) is not None)]
    return _expand(table, keys)


_HEAD = re.compile(r"^(.*)\[(\d+)\]$")


def _split_head(key: str) -> tuple[str, int | None]:
    m = _HEAD.match(key)
    return (m.group(1), int(m.group(2))) if m else (key, None)


def _listing(table: Mapping[str, tuple[Any, tuple[Any, ...]]], keys: list[str]) -> str:
    shown = []
    for k in keys[:20]:
        base, head = _split_head(k)
        value = table[base][0] if base in table else table[k][0]
        shape = _shape_of(value)
        if head is not None:
            shape = shape[1:]
        shown.append(f"{k} {list(shape)} {_dtype_name(value)}")
    more = f", ... ({len(keys) - 20} more)" if len(keys) > 20 else ""
    return "; ".join(shown) + more


@dataclass(frozen=True)
class CodebookSource:
    """Where a loaded codebook came from.

    Attributes
    ----------
    path : str
        The file.
    key : str or None
        Dotted key of the tensor in the whole file (``"model.quantize.embedding.weight"``,
        ``"_codebook.embed[1]"`` for head 1), usable as ``key=``; ``None`` for a file
        that is one array.
    location : tuple
        Keys and indices from the loaded object down to the tensor, e.g.
        ``("model", "quantize.embedding.weight")`` (dotted keys are ambiguous when state
        dict keys contain dots; this is not).
    head : int or None
        Head taken from a ``(heads, K, d)`` tensor.
    wrapper : str or None
        ``"model"``, ``"ema"`` or ``"state_dict"`` when the tensor sits in that wrapper.
    stored_shape : tuple of int
        Shape of the tensor in the file.
    dtype : str
        Its dtype in the file.
    shape : tuple of int
        ``(N, d)`` of the returned codebook.
    normalize : bool
        Whether the rows were L2-normalised.
    alternatives : tuple of str
        The same tensor under the file's other wrappers (``"ema.quantize.embedding.weight"``).
    foreign : tuple of str
        Classes the file names that were not imported (inert placeholders).
    trained_l2_norm : bool or None
        ``codebook_l2_norm`` of the training arguments the checkpoint stores (LlamaGen's
        ``vq_train.py`` saves them as ``checkpoint["args"]``; Lightning's
        ``hyper_parameters`` when a plain dict): True when the tokenizer's quantizer
        L2-normalises the rows before it looks up the nearest one, so that their
        directions are what it compares. ``None`` when the file does not say.
    """

    path: str
    key: str | None
    location: tuple[Any, ...]
    head: int | None
    wrapper: str | None
    stored_shape: tuple[int, ...]
    dtype: str
    shape: tuple[int, int]
    normalize: bool
    alternatives: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()
    trained_l2_norm: bool | None = None

    def describe(self) -> str:
        """One line: which tensor was used, its shape and dtype, and what else is there."""
        what = self.key if self.key is not None else "the array it holds"
        text = f"{Path(self.path).name}: {what} {list(self.stored_shape)} {self.dtype}"
        notes = []
        if self.wrapper is not None:
            notes.append(f'from checkpoint["{self.wrapper}"]')
        if self.alternatives:
            notes.append("also in the file: " + ", ".join(self.alternatives))
        if notes:
            text += f" ({'; '.join(notes)})"
        if self.normalize:
            text += ", rows L2-normalised"
        if self.foreign:
            names = ", ".join(self.foreign[:3]) + (", ..." if len(self.foreign) > 3 else "")
            text += f"; {len(self.foreign)} class(es) not needed were not loaded ({names})"
        return text


def _select(obj: Any, key: str | None, path: Path, opts: _Options
            ) -> tuple[str | None, tuple[Any, ...], int | None, str | None, tuple[str, ...], Any]:
    """Find the codebook: ``(key, location, head, wrapper, alternatives, value)``."""
    if _is_tensor(obj):
        if key is not None and _split_head(key)[0] != "":
            raise _MissingKeyError(f"{path}: holds a single tensor, not a dict; "
                                   f"{opts.key_is(key)} cannot be looked up")
        head = _split_head(key)[1] if key is not None else None
        table = {"": (obj, ())}
        return _check_choice(table, "", head, path, opts, whole=True) + (None, (), obj)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a tensor or a dict "
                         f"of tensors; give the tokenizer's checkpoint or its (N, d) codebook")
    if "token_to_cluster" in obj and "metadata" in obj:
        raise ValueError(f"{path}: is a dcpe prior (a cluster table), not a codebook; give "
                         f"the tokenizer checkpoint or codebook file it was made from")
    table = _flatten(obj)
    wrapper = next((w for w in _WRAPPERS if isinstance(obj.get(w), Mapping)), None)
    prefix = f"{wrapper}." if wrapper else ""
    scope = [k for k in table if k.startswith(prefix)]

    if key is not None:
        base, head = _split_head(key)
        for full in (base, prefix + base):
            if full in table:
                _, location, head = _check_choice(table, full, head, path, opts)
                first = full.split(".", 1)[0]
                w = first if first in _WRAPPERS and isinstance(obj.get(first), Mapping) else None
                return (_with_head(full, head), location, head, w,
                        _alternatives(table, obj, full, w), table[full][0])
        floats = [k for k, (v, _) in table.items() if _is_matrix(v) or _heads(v)]
        candidates = [k for k in floats if _matches_rule(k)]
        if head is None:
            # a key that names a part of the file (``ema``, ``model.quantize``): the one
            # codebook candidate under it, as the rule would find it there
            under = [k for k in _expand(table, candidates)
                     if any(k.startswith(f + ".") for f in (base, prefix + base))]
            if len(under) == 1:
                return _select(obj, under[0], path, opts)
            if under:
                raise ValueError(
                    f"{path}: several tensors under {base!r} look like a codebook; choose "
                    f"one with {opts.key_is(under[0])} or another of: "
                    f"{_listing(table, under)}")
        if candidates:
            listing = "codebook candidates in the file: " + _listing(table, _expand(table,
                                                                                   candidates))
        else:
            listing = "float tensors in the file: " + (
                _listing(table, _expand(table, floats)) if floats else "none")
        if candidates or floats:
            listing += f"; give one of them with {opts.key}"
        raise _MissingKeyError(f"{path}: no key {base!r}; {listing}")

    floats = [k for k in scope if _is_matrix(table[k][0]) or _heads(table[k][0])]
    if len(scope) == 1 and len(floats) == 1:
        candidates = _expand(table, floats)
    else:
        candidates = _expand(table, [k for k in floats if _matches_rule(k)])
    if len(candidates) == 1:
        full, head = _split_head(candidates[0])
        _, location, head = _check_choice(table, full, head, path, opts)
        return (candidates[0], location, head, wrapper,
                _alternatives(table, obj, full, wrapper), table[full][0])
    where = f' in checkpoint["{wrapper}"]' if wrapper else ""
    if candidates:
        raise ValueError(
            f"{path}: several tensors{where} look like a codebook (a tokenizer with several "
            f"codebooks?); choose one with {opts.key_is(candidates[0])} or another of: "
            f"{_listing(table, candidates)}")
    matrices = _expand(table, floats)
    listing = _listing(table, matrices) if matrices else "none"
    raise ValueError(f"{path}: no codebook found{where} (no float tensor whose key ends with "
                     f"'embedding.weight', 'codebook', 'embed', ...); choose one with "
                     f"{opts.key}. Float tensors: {listing}")


def _with_head(key: str, head: int | None) -> str:
    return key if head is None else f"{key}[{head}]"


def _check_choice(table: Mapping[str, tuple[Any, tuple[Any, ...]]], full: str,
                  head: int | None, path: Path, opts: _Options, whole: bool = False
                  ) -> tuple[str | None, tuple[Any, ...], int | None]:
    """Check that ``table[full]`` (head ``head``) is a usable codebook tensor."""
    value, location = table[full]
    name = "the file" if whole else f"key {full!r}"
    shown = "" if whole else full
    if not _floating(value) or value.ndim not in (2, 3):
        if not whole:
            step = f"choose the codebook with {opts.key}"
        elif _integral(value):  # token ids, such as LlamaGen's extracted codes
            mapper = "`dcpe remap`" if opts is _CLI else "CodebookPrior.to_clusters"
            step = (f"token ids (extracted codes) are mapped to clusters with {mapper}, "
                    f"after clustering the tokenizer's checkpoint; a codebook of integer "
                    f"levels is read once saved as floats")
        else:
            step = "give the tokenizer's checkpoint or its (N, d) codebook"
        raise ValueError(f"{path}: {name} holds a tensor of shape {list(_shape_of(value))} "
                         f"and dtype {_dtype_name(value)}; a codebook must be a 2-D "
                         f"floating-point tensor; {step}")
    if value.ndim == 2:
        if head is not None:
            raise ValueError(f"{path}: {name} holds a 2-D tensor of shape "
                             f"{list(_shape_of(value))}; [{head}] selects a head of a 3-D "
                             f"(heads, K, d) tensor only")
        return (shown or None), location, None
    h = int(value.shape[0])
    if head is None:
        if h == 1:
            return (shown or None), location, None
        raise ValueError(f"{path}: {name} holds {h} codebooks (shape "
                         f"{list(_shape_of(value))}, one per head); choose one with "
                         f"{opts.key_is(f'{shown}[0]')} ... {opts.key_is(f'{shown}[{h - 1}]')}")
    if head >= h:
        raise ValueError(f"{path}: {name} has {h} heads (shape {list(_shape_of(value))}); "
                         f"head [{head}] does not exist")
    return _with_head(shown, head) if shown else f"[{head}]", location, head


def _alternatives(table: Mapping[str, Any], obj: Mapping[str, Any], full: str,
                  wrapper: str | None) -> tuple[str, ...]:
    if wrapper is None:
        return ()
    rest = full[len(wrapper) + 1:]
    return tuple(f"{w}.{rest}" for w in _WRAPPERS
                 if w != wrapper and isinstance(obj.get(w), Mapping) and f"{w}.{rest}" in table)


# --------------------------------------------------------------------------- loading


def _l2_normalized(arr: np.ndarray, copy: bool = True) -> np.ndarray:
    """Float32 rows L2-normalised (norms clamped to at least 1e-12): the rows
    ``normalize=True`` reads, bit for bit (the prior's fingerprint depends on them). A copy,
    or with ``copy=False`` ``arr`` itself when it is a C-contiguous float32 array (a copy
    otherwise)."""
    out = np.array(arr, dtype=np.float32, order="C", copy=True if copy else None)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
    return out


def _trained_l2_norm(obj: Any) -> bool | None:
    """``codebook_l2_norm`` of the training arguments stored beside the weights: an
    ``argparse.Namespace`` or a dict under ``"args"`` (LlamaGen's and GigaTok's
    checkpoints) or ``"hyper_parameters"`` (Lightning), when it is a bool; else None."""
    if not isinstance(obj, Mapping):
        return None
    for name in ("args", "hyper_parameters"):
        holder = obj.get(name)
        if isinstance(holder, argparse.Namespace):
            value = vars(holder).get("codebook_l2_norm")
        elif isinstance(holder, Mapping):
            value = holder.get("codebook_l2_norm")
        else:
            continue
        if isinstance(value, bool):
            return value
    return None


def _normalize_note(source: CodebookSource, opts: _Options) -> str | None:
    """One line when the rows are read otherwise than the checkpoint's quantizer compares
    them (``source.trained_l2_norm`` against ``source.normalize``); else None."""
    trained = source.trained_l2_norm
    if trained is None or trained == source.normalize:
        return None
    name = Path(source.path).name
    if trained:
        return (f"{name} was trained with codebook_l2_norm=True (its args): its quantizer "
                f"compares L2-normalised rows, not the raw rows read here; "
                f"{opts.normalize} clusters them as it does")
    return (f"{name} was trained with codebook_l2_norm=False (its args): its quantizer "
            f"compares the raw rows, not the L2-normalised rows read here; "
            f"{opts.no_normalize} clusters them as it does")


def _load(path: PathLike, key: str | None, normalize: bool, trust: bool, opts: _Options
          ) -> tuple[np.ndarray, CodebookSource]:
    path = check_path("path", path)
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a string or None, got {key!r}")
    normalize = bool(normalize)
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be True or False, got {trust!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"codebook file not found: {path}; check the path")
    if path.is_dir():
        raise ValueError(f"codebook path is a directory, not a file: {path}; give the "
                         f"checkpoint file inside it")
    suffix = path.suffix.lower()
    foreign: tuple[str, ...] = ()
    if suffix in (".npy", ".npz"):
        obj = _read_numpy(path)
    elif suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        obj, foreign = _read_torch(path, trust, opts)

    chosen, location, head, wrapper, alternatives, value = _select(obj, key, path, opts)
    stored = _as_matrix(value, head)
    with np.errstate(over="ignore"):  # values past float32's range: refused below
        arr = np.array(stored, dtype=np.float32, order="C", copy=True)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: the codebook has shape {list(arr.shape)}; "
                         f"need N >= 1 rows and d >= 1 columns")
    bad = int((~np.isfinite(stored).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{path}: the codebook has {bad} row(s) containing NaN or Inf; "
                         f"check that it is the trained codebook (a trained one is finite)")
    big = float(np.abs(stored).max())
    if big > _FLOAT32_SAFE_ABS:
        # the codebook is read as float32, whose squared distances would overflow
        raise ValueError(f"{path}: the codebook has values up to {big:.3g}, too large for "
                         f"float32 distances; scale it down (for example, divide it by its "
                         f"largest absolute value) and save it again")
    if 0.0 < big < _FLOAT32_TINY_ABS:
        # ... or underflow (the k-means of `dcpe report` refuses such float32 data)
        raise ValueError(f"{path}: the codebook has values of at most {big:.3g}, too small "
                         f"for float32 distances; scale it up (for example, divide it by "
                         f"its largest absolute value) and save it again")
    if normalize:
        arr = _l2_normalized(arr, copy=False)  # arr is this call's own copy
    source = CodebookSource(
        path=str(path), key=chosen, location=location, head=head, wrapper=wrapper,
        stored_shape=_shape_of(value), dtype=_dtype_name(value),
        shape=(int(arr.shape[0]), int(arr.shape[1])), normalize=normalize,
        alternatives=alternatives, foreign=foreign, trained_l2_norm=_trained_l2_norm(obj))
    return arr, source


def load_codebook_with_source(path: PathLike, key: str | None = None, normalize: bool = False,
                              *, trust: bool = False) -> tuple[np.ndarray, CodebookSource]:
    """Load a tokenizer codebook and say which tensor it is.

    Parameters
    ----------
    path, key, normalize, trust
        As in :func:`load_codebook`.

    Returns
    -------
    codebook : numpy.ndarray
        ``(N, d)`` float32, C-contiguous, a copy owned by the caller.
    source : CodebookSource
        Which tensor of the file it is (key, shape, dtype, ``model``/``ema`` wrapper);
        ``source.describe()`` says it in one line.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError, ImportError
        As :func:`load_codebook`.

    Warns
    -----
    UserWarning
        As :func:`load_codebook`.
    """
    arr, source = _load(path, key, normalize, trust, _PYTHON)
    note = _normalize_note(source, _PYTHON)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=2)
    return arr, source


def load_codebook(path: PathLike, key: str | None = None, normalize: bool = False, *,
                  trust: bool = False) -> np.ndarray:
    """Load a tokenizer codebook.

    Which tensor was used (key, shape, dtype, ``model`` or ``ema``) is logged at ``INFO``
    level on the ``"dcpe.io"`` logger; :func:`load_codebook_with_source` returns it.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy``, ``.npz``, ``.safetensors`` file, or anything else read as a PyTorch
        checkpoint (``.pt``, ``.pth``, ``.ckpt``, ``.bin``, ...).
    key : str, optional
        Dotted key of the codebook tensor inside the file (``"<key>[i]"`` for head ``i``
        of a ``(heads, K, d)`` tensor). ``None`` applies the rule described in the module
        docstring: ``checkpoint["model"]`` before ``"ema"``, one candidate or a list. A key
        that names a part of the file rather than a tensor (``"ema"``,
        ``"model.quantize"``) takes the one codebook candidate under it (several: an error
        that lists them).
    normalize : bool
        L2-normalise every row, as LlamaGen does with ``F.normalize(w, dim=-1)``
        (norms clamped to at least 1e-12).
    trust : bool
        Read a PyTorch checkpoint with full unpickling (``torch.load(weights_only=False)``),
        which imports the classes it names and can run code. The default reads it with a
        restricted unpickler that never does (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float32, C-contiguous, a copy owned by the caller.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file cannot be read; it names a function that runs code (refused unless
        ``trust=True``); no or several codebook candidates (the message lists them with
        their shapes); ``key`` not found; or the tensor is not a finite 2-D float matrix
        with N >= 1 and d >= 1.
    TypeError
        ``key`` is not a string, or ``trust`` not a bool.
    ImportError
        A ``.safetensors`` file without the ``safetensors`` package.

    Warns
    -----
    UserWarning
        The checkpoint's training arguments say how its quantizer compares the rows
        (``codebook_l2_norm``, :attr:`CodebookSource.trained_l2_norm`) and ``normalize``
        reads them otherwise: LlamaGen's tokenizers compare L2-normalised rows, so their
        raw rows give another clustering than the one the tokenizer's geometry implies.

    Examples
    --------
    >>> from dcpe.io import load_codebook
    >>> w = load_codebook("vq_ds16_c2i.pt", normalize=True)  # doctest: +SKIP
    >>> w.shape                                               # doctest: +SKIP
    (16384, 8)
    """
    arr, source = _load(path, key, normalize, trust, _PYTHON)
    _log.info("codebook %s", source.describe())
    note = _normalize_note(source, _PYTHON)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=2)
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
    path = check_path("path", path)
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
