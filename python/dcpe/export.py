"""Export a codebook prior in the files other projects read.

IAR (``dcpe export iar``, :func:`export_iar`)
---------------------------------------------
IAR trains on a codebook whose rows are reordered so that every cluster is a contiguous
range of token ids, and maps the ids of extracted codes with ``x = mapping[x]``.
:func:`export_iar` writes, into one directory:

``mapping.pt``
    A 1-D int64 tensor of length ``N``, ``mapping[old] = new``, a permutation (IAR's
    ``--mapping-path``).
``<checkpoint stem>-reordered<suffix>``
    The tokenizer checkpoint with every entry as it was except the codebook rows, which
    are permuted so that ``reordered[mapping[i]] == original[i]``. When the codebook is
    stored under both ``"model"`` and ``"ema"`` (LlamaGen, GigaTok), both tables are
    permuted the same way. Optimizer state is copied unchanged: it refers to the old
    order, so do not resume tokenizer training from this file.
``clusters.json``
    Cluster sizes and start offsets in the new order, method, k and the codebook
    fingerprints (see :func:`write_iar` for the fields).

The new order (:func:`iar_permutation`): clusters one after the other in cluster order
(cluster ``c`` occupies new ids ``offsets[c]`` to ``offsets[c + 1] - 1``, as
:attr:`dcpe.CodebookPrior.offsets`); inside a cluster, a nearest-neighbour walk: start
at the cluster's smallest token id, then repeatedly go to the nearest token of the
cluster not yet visited (Euclidean distance on the codebook the prior was made from,
L2-normalised if it was; ties go to the smaller token id). Neighbouring new ids are then
similar tokens, as in IAR's own balanced k-means script.

With equal clusters (``dcpe cluster --method balanced -k N/128``, IAR's setting) token
``new`` belongs to cluster ``new // (N / k)``, which is what IAR's training script
assumes. With DCPE's unequal clusters use the offsets in ``clusters.json``, or
``CodebookPrior.load(prior).permuted()``, whose :meth:`~dcpe.CodebookPrior.cluster_loss`
pools the contiguous segments directly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from .io import _l2_normalized, atomic_write

__all__ = ["export_iar", "iar_permutation", "write_iar"]

_FORMAT = "dcpe-iar-export"
_WITHIN = ("nearest-neighbour walk: start at the cluster's smallest token id, then the "
           "nearest unvisited token of the cluster (Euclidean; ties to the smaller id)")


def iar_permutation(prior: Any, codebook: Any) -> np.ndarray:
    """The old-to-new token permutation of an IAR export.

    Parameters
    ----------
    prior : CodebookPrior
        The clusters.
    codebook : array-like or torch.Tensor
        The ``(N, d)`` codebook the prior was made from (normalised if it was), used for
        the nearest-neighbour walk inside each cluster.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 ``mapping`` with ``mapping[old] = new``: cluster ``c`` occupies
        ``prior.offsets[c]`` to ``prior.offsets[c + 1] - 1``, its tokens in the walk
        order described in the module docstring.

    Raises
    ------
    TypeError
        ``prior`` is not a :class:`~dcpe.CodebookPrior`, or the codebook is not numeric.
    ValueError
        The codebook does not have one row per token of the prior, or is not 2-D.
    """
    from .prior import CodebookPrior, _codebook_array

    if not isinstance(prior, CodebookPrior):
        raise TypeError(f"prior must be a CodebookPrior, got {type(prior).__name__}")
    x = _codebook_array(codebook).astype(np.float64)
    n = prior.num_tokens
    if x.shape[0] != n:
        raise ValueError(f"codebook has {x.shape[0]} rows but the prior has {n} tokens")
    indptr, indices = prior._numpy("indptr"), prior._numpy("indices")
    mapping = np.empty(n, dtype=np.int64)
    for c in range(prior.num_clusters):
        start, stop = int(indptr[c]), int(indptr[c + 1])
        members = indices[start:stop]  # ascending token ids
        mapping[members[_walk(x[members])]] = np.arange(start, stop)
    return mapping


def _walk(pts: np.ndarray) -> np.ndarray:
    """Visiting order of a nearest-neighbour walk from row 0 (ties: lowest row)."""
    s = pts.shape[0]
    if s <= 2:
        return np.arange(s)
    order = np.empty(s, dtype=np.int64)
    visited = np.zeros(s, dtype=bool)
    cur = 0
    for j in range(s):
        order[j] = cur
        visited[cur] = True
        if j == s - 1:
            break
        d = np.square(pts - pts[cur]).sum(axis=1)
        d[visited] = np.inf
        cur = int(np.argmin(d))
    return order


# --------------------------------------------------------------------------- reading


def _as_made(prior: Any, raw: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """A checkpoint's codebook rows as the prior was made from them, and whether that is
    L2-normalised: the reading (raw, or normalised; the one the prior records first) whose
    fingerprint is the prior's, or None when neither is. A prior without a fingerprint is
    taken at its word (its recorded ``normalize``)."""
    from .prior import codebook_sha256

    stored = prior.meta.get("normalize")
    if prior.codebook_sha256 is None:
        return (_l2_normalized(raw) if stored else raw), bool(stored)
    for normalize in ([bool(stored)] if stored is not None else [False, True]):
        rows = _l2_normalized(raw) if normalize else raw
        if codebook_sha256(rows) == prior.codebook_sha256:
            return rows, normalize
    return None


def _read_checkpoint(path: Path, key: str | None, trust: bool, cli: bool
                     ) -> tuple[Any, np.ndarray, Any, dict[str, str] | None]:
    """The whole file, its codebook (float32, as stored) and where the codebook is.

    This is the one place that reads through :mod:`dcpe.io`: the codebook and its
    :class:`~dcpe.io.CodebookSource` come from the same reader and key rule as
    ``dcpe cluster``, and the object is read with the same restricted unpickler.
    Returns ``(object, codebook, source, safetensors metadata)``.
    """
    from . import io

    opts = io._CLI if cli else io._PYTHON
    arr, source = io._load(path, key, False, trust, opts)
    suffix = path.suffix.lower()
    meta = None
    if suffix in (".npy", ".npz"):
        obj = io._read_numpy(path)
    elif suffix == ".safetensors":
        from safetensors import safe_open

        obj = io._read_safetensors(path)
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
    else:
        obj, _ = io._read_torch(path, trust, opts)
    return obj, arr, source, meta


def _get(obj: Any, location: tuple[Any, ...]) -> Any:
    for part in location:
        obj = obj[part]
    return obj


def _storage_ptr(t: Any) -> int | None:
    try:
        return int(t.untyped_storage().data_ptr())
    except (AttributeError, RuntimeError):
        return None


def _tensors(obj: Any, location: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every torch tensor inside nested dicts, lists and tuples, with its location."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [(location, obj)]
    items: list[tuple[Any, Any]]
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        return []
    out: list[tuple[tuple[Any, ...], Any]] = []
    for k, v in items:
        out.extend(_tensors(v, (*location, k)))
    return out


def _loc_text(location: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in location)


def _targets(obj: Any, source: Any, n: int, path: Path) -> list[tuple[Any, ...]]:
    """Locations of the codebook tables to permute: the chosen one, and the same state
    dict entry under the file's other wrappers ("model" and "ema")."""
    locations = [tuple(source.location)]
    if source.wrapper is not None and source.location and source.location[0] == source.wrapper:
        for alt in source.alternatives:
            wrapper = alt.split(".", 1)[0]
            loc = (wrapper, *source.location[1:])
            try:
                value = _get(obj, loc)
            except (KeyError, IndexError, TypeError):
                continue
            if tuple(value.shape) == tuple(source.stored_shape):
                locations.append(loc)
    for loc in locations:
        parent = _get(obj, loc[:-1]) if loc else None
        if loc and not isinstance(parent, (MutableMapping, list)):
            raise ValueError(f"{path}: the codebook {_loc_text(loc)} sits in a "
                             f"{type(parent).__name__}, which cannot be updated in place; "
                             f"export supports codebooks in dicts and lists")
    return locations


def _check_shared(obj: Any, locations: list[tuple[Any, ...]], path: Path) -> None:
    """Refuse a codebook whose storage another tensor of the file shares (tied weights):
    permuting one copy would silently change what the other means."""
    entries = _tensors(obj)
    chosen = set(locations)
    for loc in locations:
        ptr = _storage_ptr(_get(obj, loc))
        if ptr is None or ptr == 0:
            continue
        for other, t in entries:
            if other not in chosen and _storage_ptr(t) == ptr:
                raise ValueError(f"{path}: the codebook {_loc_text(loc)} shares its storage "
                                 f"with {_loc_text(other)} (tied weights); export cannot "
                                 f"permute one without the other")


def _permute_rows(value: Any, order: Any, head: int | None) -> Any:
    """``value`` with rows reordered, ``new[j] = old[order[j]]`` (along the rows of head
    ``head`` for a (heads, K, d) tensor); same type, dtype and device."""
    if isinstance(value, np.ndarray):
        out = value.copy()
        if value.ndim == 3:
            h = 0 if head is None else head
            out[h] = value[h][order]
        else:
            out = value[order].copy()
        return out
    import torch

    idx = torch.as_tensor(order, dtype=torch.int64, device=value.device)
    with torch.no_grad():
        if value.ndim == 3:
            h = 0 if head is None else head
            out = value.detach().clone()
            out[h] = value[h].index_select(0, idx)
        else:
            out = value.detach().index_select(0, idx).clone()
    if isinstance(value, torch.nn.Parameter):
        out = torch.nn.Parameter(out, requires_grad=value.requires_grad)
    return out


# --------------------------------------------------------------------------- writing


def write_iar(out_dir: str | os.PathLike, *, mapping: Any, checkpoint_name: str,
              checkpoint_writer: Any, clusters: dict[str, Any]) -> dict[str, Path]:
    """Write the three files of an IAR export, all or none.

    Every file goes to a temporary file in ``out_dir`` first; they are moved into place
    only after all three were written, so a failure leaves no new file behind.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory (created if missing; removed again on failure if it was created
        here and is empty).
    mapping : numpy.ndarray
        ``(N,)`` int64 old-to-new permutation.
    checkpoint_name : str
        File name of the reordered checkpoint.
    checkpoint_writer : callable
        ``writer(file)`` writes the reordered checkpoint to a binary file object.
    clusters : dict
        Content of ``clusters.json``.

    Returns
    -------
    dict
        ``{"mapping": path, "checkpoint": path, "clusters": path}``.
    """
    import torch

    from ._validation import check_path

    out = check_path("out_dir", out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"mapping": out / "mapping.pt", "checkpoint": out / checkpoint_name,
             "clusters": out / "clusters.json"}
    mapping_t = torch.from_numpy(np.ascontiguousarray(mapping, dtype=np.int64))
    try:
        with contextlib.ExitStack() as stack:
            fm = stack.enter_context(atomic_write(paths["mapping"], "wb"))
            fc = stack.enter_context(atomic_write(paths["checkpoint"], "wb"))
            fj = stack.enter_context(atomic_write(paths["clusters"], "w"))
            torch.save(mapping_t, fm)
            checkpoint_writer(fc)
            json.dump(clusters, fj, indent=2)
            fj.write("\n")
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return paths


def _writer(obj: Any, suffix: str, safetensors_meta: dict[str, str] | None) -> Any:
    if suffix == ".npy":
        return lambda fh: np.save(fh, obj)
    if suffix == ".npz":
        if isinstance(obj, Mapping):
            return lambda fh: np.savez(fh, **obj)
        return lambda fh: np.savez(fh, obj)
    if suffix == ".safetensors":
        from safetensors.torch import save

        return lambda fh: fh.write(save(dict(obj), metadata=safetensors_meta))
    import torch

    return lambda fh: torch.save(obj, fh)


def export_iar(prior: Any, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
               key: str | None = None, trust: bool = False) -> dict[str, Any]:
    """Write IAR's files for a prior: ``mapping.pt``, the reordered checkpoint and
    ``clusters.json`` (see the module docstring).

    Everything is checked before anything is written: the checkpoint is read, its
    codebook found (``key``, the same rule as :func:`dcpe.io.load_codebook`) and
    compared with the prior's fingerprint, raw or L2-normalised (the prior's
    ``meta["normalize"]`` or the fingerprint decides).

    Parameters
    ----------
    prior : CodebookPrior or str or os.PathLike
        The prior, or a prior file (``.npz``/``.pt``).
    checkpoint : str or os.PathLike
        The tokenizer checkpoint (``.pt``/``.pth``/``.ckpt``/``.bin``, ``.safetensors``,
        ``.npz`` or ``.npy``).
    out_dir : str or os.PathLike
        Output directory (created if missing).
    key : str, optional
        Dotted key of the codebook in the checkpoint.
    trust : bool
        Read the checkpoint with full unpickling (see :func:`dcpe.io.load_codebook`);
        needed when it holds objects of classes dcpe does not import, because those
        could not be written back.

    Returns
    -------
    dict
        ``paths`` (``mapping``, ``checkpoint``, ``clusters``), ``permuted`` (locations
        of the permuted tables as dotted text), ``source`` (the
        :class:`~dcpe.io.CodebookSource`), ``normalize``, ``mapping`` (the permutation),
        ``sizes`` (cluster sizes, int64, in cluster order). IAR's ``train_c2i.py`` takes
        every ``--cluster-size`` consecutive new ids as one cluster, which matches the
        prior only when all sizes are equal (``--method balanced``).

    Raises
    ------
    FileNotFoundError
        The prior or the checkpoint does not exist.
    ValueError
        Unreadable files, no codebook or several candidates (choose with ``key``), a
        prior made for another codebook, a checkpoint holding objects that were not
        loaded (without ``trust``), tied codebook storage, or an output path that is a
        file or would overwrite an input.
    TypeError
        Bad argument types.
    """
    return _export_iar(prior, checkpoint, out_dir, key=key, trust=trust, cli=False)


def _export_iar(prior: Any, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                key: str | None, trust: bool, cli: bool) -> dict[str, Any]:
    """:func:`export_iar`; ``cli`` spells options as command-line flags in messages."""
    from ._validation import check_path
    from ._version import __version__
    from .prior import CodebookPrior, codebook_sha256

    checkpoint, out_dir = check_path("checkpoint", checkpoint), check_path("out_dir", out_dir)
    if isinstance(prior, (str, os.PathLike)):
        prior_path: Path | None = Path(prior)
        prior = CodebookPrior.load(prior)
    elif isinstance(prior, CodebookPrior):
        prior_path = None
    else:
        raise TypeError(f"prior must be a CodebookPrior or a prior file path, "
                        f"got {type(prior).__name__}")
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be True or False, got {trust!r}")
    ckpt = Path(checkpoint)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out}")
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint file not found: {ckpt}; check the path")
    name = f"{ckpt.stem}-reordered{ckpt.suffix}"
    inputs = {ckpt.resolve()} | ({prior_path.resolve()} if prior_path else set())
    for target in ("mapping.pt", name, "clusters.json"):
        if (out / target).resolve() in inputs:
            raise ValueError(f"output {out / target} would overwrite an input file; "
                             f"choose another output directory")

    flag = "--key" if cli else "key="
    trust_flag = "--trust-checkpoint" if cli else "trust=True"
    obj, raw, source, st_meta = _read_checkpoint(ckpt, key, trust, cli)
    n = prior.num_tokens
    if raw.shape[0] != n:
        raise ValueError(f"{ckpt}: the codebook {source.key or ''} has {raw.shape[0]} rows "
                         f"but the prior has {n} tokens; choose the codebook with {flag}")
    made = _as_made(prior, raw)
    if made is None:
        raise ValueError(
            f"{ckpt}: the prior was made for another codebook (stored sha256 "
            f"{prior.codebook_sha256[:12]}, shape {prior.codebook_shape}); this "
            f"checkpoint's {source.key or 'codebook'} has shape {list(raw.shape)} and "
            f"matches neither raw nor L2-normalised; choose another tensor with {flag} "
            f"or the checkpoint the prior was made from")
    x, normalize = made
    if source.foreign:
        names = ", ".join(source.foreign[:3]) + (", ..." if len(source.foreign) > 3 else "")
        raise ValueError(f"{ckpt}: holds objects of classes dcpe did not import ({names}); "
                         f"a reordered copy could not write them back. If you made the file "
                         f"yourself, add {trust_flag}")
    locations = _targets(obj, source, n, ckpt) if source.location else [()]
    _check_shared(obj, locations, ckpt)

    mapping = iar_permutation(prior, x)
    order = np.empty(n, dtype=np.int64)
    order[mapping] = np.arange(n)  # new row j holds old row order[j]
    for loc in locations:
        new = _permute_rows(_get(obj, loc), order, source.head)
        if loc:
            _get(obj, loc[:-1])[loc[-1]] = new
        else:
            obj = new
    sizes = prior._numpy("sizes")
    indptr = prior._numpy("indptr")
    equal = int(sizes.min()) == int(sizes.max())
    clusters = {
        "format": _FORMAT,
        "format_version": 1,
        "method": prior.method,
        "linkage": prior.linkage,
        "k": prior.num_clusters,
        "num_tokens": n,
        "max_cluster_size": prior.max_cluster_size,
        "codebook_sha256": codebook_sha256(x),
        "reordered_codebook_sha256": codebook_sha256(x[order]),
        "codebook_shape": [int(s) for s in x.shape],
        "normalize": normalize,
        "checkpoint": ckpt.name,
        "reordered_checkpoint": name,
        "codebook_key": source.key,
        "permuted": [_loc_text(loc) for loc in locations],
        "mapping": "mapping.pt: mapping[old] = new",
        "within_cluster_order": _WITHIN,
        "equal_sizes": equal,
        "cluster_size": int(sizes[0]) if equal else None,
        "sizes": [int(s) for s in sizes],
        "offsets": [int(o) for o in indptr],
        "dcpe_version": __version__,
    }
    paths = write_iar(out, mapping=mapping, checkpoint_name=name,
                      checkpoint_writer=_writer(obj, ckpt.suffix.lower(), st_meta),
                      clusters=clusters)
    return {"paths": paths, "permuted": clusters["permuted"], "source": source,
            "normalize": normalize, "mapping": mapping, "sizes": np.asarray(sizes, np.int64)}
