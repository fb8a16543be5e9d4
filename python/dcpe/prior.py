"""The codebook prior: a partition of a tokenizer's codebook into clusters, and the
operations an autoregressive model needs from it.

>>> import dcpe
>>> x = dcpe.datasets.sample_codebook()[:1000]
>>> prior = dcpe.CodebookPrior.from_codebook(x, 100)
>>> prior.num_tokens, prior.num_clusters
(1000, 100)

Training on cluster indices: ``prior.to_clusters(tokens)``. Decoding: draw a token of the
predicted cluster uniformly, ``prior.sample_tokens(cluster_ids)``. Cluster-oriented loss
(IAR): ``prior.cluster_loss(token_logits, target_tokens)``.

Codebook fingerprint
--------------------
:func:`codebook_sha256` is the SHA-256 of the ASCII header ``"float32:{N}x{d};"``
followed by the codebook's bytes as a C-contiguous little-endian float32 array. It is
stored with a saved prior so that :meth:`CodebookPrior.load` can refuse a prior made for
another codebook.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import check_int
from ._validation import is_tensor as _is_tensor
from .io import atomic_write

if TYPE_CHECKING:
    import torch

__all__ = ["CodebookPrior", "codebook_sha256"]

_FORMAT = "dcpe-codebook-prior"
_FORMAT_VERSION = 1
_REDUCES = ("mean", "sum", "logsumexp")
_METHODS = ("dcpe", "kmeans", "balanced_kmeans", "centroid_free_kmeans")
_TABLES = ("labels", "sizes", "indices", "indptr")


def _codebook_array(codebook: Any, name: str = "codebook") -> np.ndarray:
    if _is_tensor(codebook):
        codebook = codebook.detach().float().cpu().numpy()
    arr = np.asarray(codebook)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype="<f4")


def codebook_sha256(codebook: Any) -> str:
    """Fingerprint of a codebook.

    Parameters
    ----------
    codebook : array-like or torch.Tensor
        ``(N, d)`` codebook.

    Returns
    -------
    str
        Hex SHA-256 of ``b"float32:{N}x{d};"`` followed by the C-contiguous little-endian
        float32 bytes of the codebook.
    """
    arr = _codebook_array(codebook)
    h = hashlib.sha256(f"float32:{arr.shape[0]}x{arr.shape[1]};".encode("ascii"))
    h.update(arr.tobytes())
    return h.hexdigest()


def _version() -> str:
    from ._version import __version__

    return __version__


def _int_array(values: Any, name: str) -> np.ndarray:
    """Array-like ``values`` (not a tensor) as a contiguous int64 NumPy array."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _int_tensor(values: Any, name: str) -> tuple[Any, bool]:
    """``values`` as an int64 tensor (on its device) and whether it came from NumPy."""
    import torch

    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        return values.to(torch.int64), False
    return torch.from_numpy(_int_array(values, name)), True


def _check_range(t: Any, name: str, high: int, what: str, ignore: int | None = None) -> None:
    """Every entry of ``t`` (NumPy array or tensor) other than ``ignore`` in [0, high)."""
    v = t if ignore is None else t[t != ignore]
    if v.reshape(-1).shape[0] == 0:
        return
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside the valid {what} range "
                         f"[0, {high - 1}]")


class CodebookPrior:
    """A partition of the ``N`` tokens of a codebook into ``k`` clusters.

    Build one with :meth:`from_labels` or :meth:`from_codebook`, or read one with
    :meth:`load`. The tables live on one torch device (CPU by default, see :meth:`to`);
    methods accept inputs on any device and answer on the input's device. A prior made
    from NumPy labels (or read from ``.npz``) keeps NumPy tables until a tensor is asked
    for, so building, saving, loading and :meth:`to_clusters` on NumPy input do not import
    torch.

    Attributes
    ----------
    method, linkage : str or None
        How the clusters were made (``"dcpe"`` + ``"average"`` for DCPE).
    max_cluster_size : int or None
        The size cap used, if any.
    codebook_sha256 : str or None
        Fingerprint of the codebook (see :func:`codebook_sha256`), if it was given.
    codebook_shape : tuple of int or None
        ``(N, d)`` of that codebook.
    dcpe_version : str
        Version of dcpe that made the prior.
    meta : dict
        Extra JSON-serialisable metadata.
    """

    def __init__(self, token_to_cluster: Any, *, method: str | None = "dcpe",
                 linkage: str | None = "average", max_cluster_size: int | None = None,
                 codebook_sha256: str | None = None,
                 codebook_shape: tuple[int, int] | None = None,
                 dcpe_version: str | None = None, meta: dict[str, Any] | None = None) -> None:
        host = not _is_tensor(token_to_cluster)
        if host:  # a copy: later changes to the caller's array do not reach the tables
            labels = _int_array(token_to_cluster, "labels").copy()
        else:
            labels = _int_tensor(token_to_cluster, "labels")[0].contiguous()
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (one cluster id per token), "
                             f"got shape {tuple(labels.shape)}")
        if labels.shape[0] == 0:
            raise ValueError("labels must not be empty")
        lo = int(labels.min())
        if lo < 0:
            raise ValueError(f"labels must be >= 0, got {lo}")
        k = int(labels.max()) + 1
        if host:
            sizes = np.bincount(labels, minlength=k).astype(np.int64)
        else:
            import torch

            sizes = torch.bincount(labels, minlength=k)
        n_empty = int((sizes == 0).sum())
        if n_empty:
            first = int((sizes == 0).nonzero()[0][0])
            raise ValueError(f"labels must use every cluster id 0..{k - 1}; "
                             f"{n_empty} id(s) have no token, e.g. {first}")
        if max_cluster_size is not None:
            max_cluster_size = check_int("max_cluster_size", max_cluster_size, 1)
        # the tables: NumPy (host) until a tensor is asked for, or torch from the start
        self._host: dict[str, np.ndarray] | None = None
        self._t: tuple[Any, Any, Any, Any] | None = None
        if host:
            self._host = {"labels": labels, "sizes": sizes,
                          "indices": np.argsort(labels, kind="stable"),
                          "indptr": np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])}
        else:
            self._t = (labels, sizes, torch.argsort(labels, stable=True),
                       torch.cat([labels.new_zeros(1), torch.cumsum(sizes, dim=0)]))
        self.method = method
        self.linkage = linkage
        self.max_cluster_size = max_cluster_size
        self.codebook_sha256 = codebook_sha256
        self.codebook_shape = tuple(int(s) for s in codebook_shape) if codebook_shape else None
        self.dcpe_version = dcpe_version if dcpe_version is not None else _version()
        self.meta = dict(meta or {})
        self._np_cache: dict[str, np.ndarray] = {}
        self._dev_cache: dict[str, tuple[Any, Any, Any]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_labels(cls, labels: Any, *, method: str = "dcpe", linkage: str | None = "average",
                    max_cluster_size: int | None = None, codebook: Any = None,
                    **meta: Any) -> CodebookPrior:
        """Make a prior from cluster labels.

        Parameters
        ----------
        labels : array-like or torch.Tensor
            ``(N,)`` integer cluster id of every token. Ids must be ``0..k-1`` with every
            id used; the numbering is kept as given.
        method : str
            Name of the method that produced the labels (metadata).
        linkage : str or None
            Linkage used (metadata; ``None`` for centroid methods).
        max_cluster_size : int, optional
            Size cap used (metadata).
        codebook : array-like or torch.Tensor, optional
            The ``(N, d)`` codebook; its fingerprint is stored so that :meth:`load` can
            check it later.
        **meta
            Extra JSON-serialisable metadata.

        Returns
        -------
        CodebookPrior
        """
        if not isinstance(method, str):
            raise TypeError(f"method must be a string, got {method!r}")
        sha = shape = None
        if codebook is not None:
            arr = _codebook_array(codebook)
            n = labels.shape[0] if _is_tensor(labels) else len(labels)
            if arr.shape[0] != n:
                raise ValueError(f"codebook has {arr.shape[0]} rows but labels has {n} "
                                 f"entries")
            sha, shape = codebook_sha256(arr), arr.shape
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise TypeError(f"extra metadata must be JSON-serialisable ({exc})") from None
        return cls(labels, method=method, linkage=linkage, max_cluster_size=max_cluster_size,
                   codebook_sha256=sha, codebook_shape=shape, meta=meta)

    @classmethod
    def from_codebook(cls, codebook: Any, n_clusters: int, *, linkage: str = "average",
                      max_cluster_size: int | None = None, backend: str = "auto",
                      method: str = "dcpe", metric: str = "euclidean",
                      seed: int = 0) -> CodebookPrior:
        """Cluster a codebook and make its prior.

        Parameters
        ----------
        codebook : array-like or torch.Tensor
            ``(N, d)`` codebook.
        n_clusters : int
            Number of clusters ``k``.
        linkage : str
            Linkage for ``method="dcpe"`` (``"average"`` is DCPE).
        max_cluster_size : int, optional
            Size cap for ``method="dcpe"`` (see :func:`dcpe.cluster`).
        backend : str
            Backend for ``method="dcpe"``.
        method : {"dcpe", "kmeans", "balanced_kmeans", "centroid_free_kmeans"}
            ``"dcpe"`` calls :func:`dcpe.cluster`; the others call the function of the same
            name in :mod:`dcpe.baselines` (k-means++ initialisation, ``seed``).
        metric : str
            Token distance for ``method="dcpe"`` (stored in ``meta`` when not Euclidean).
        seed : int
            Seed for the baselines.

        Returns
        -------
        CodebookPrior
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
        arr = _codebook_array(codebook)
        if method == "dcpe":
            import dcpe

            labels = dcpe.cluster(codebook, n_clusters, linkage=linkage, metric=metric,
                                  max_cluster_size=max_cluster_size, backend=backend)
            meta: dict[str, Any] = {} if metric == "euclidean" else {"metric": metric}
            link: str | None = linkage
        else:
            from . import baselines

            labels = getattr(baselines, method)(codebook, n_clusters, seed=seed).labels
            meta = {"seed": int(seed)}
            link = None
            max_cluster_size = None
        if _is_tensor(labels):
            labels = labels.cpu()
        return cls.from_labels(labels, method=method, linkage=link,
                               max_cluster_size=max_cluster_size, codebook=arr, **meta)

    # ------------------------------------------------------------------ properties

    @property
    def num_tokens(self) -> int:
        """Number of tokens ``N``."""
        return int((self._host["labels"] if self._host is not None else self._t[0]).shape[0])

    @property
    def num_clusters(self) -> int:
        """Number of clusters ``k``."""
        return int((self._host["sizes"] if self._host is not None else self._t[1]).shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the tables."""
        return self._labels.device

    def _torch_tables(self) -> tuple[Any, Any, Any, Any]:
        """(labels, sizes, indices, indptr) as tensors, made from the NumPy tables once."""
        if self._t is None:
            import torch

            self._t = tuple(torch.from_numpy(self._host[name]) for name in _TABLES)
        return self._t

    @property
    def _labels(self) -> torch.Tensor:
        return self._torch_tables()[0]

    @property
    def _sizes(self) -> torch.Tensor:
        return self._torch_tables()[1]

    @property
    def _indices(self) -> torch.Tensor:
        return self._torch_tables()[2]

    @property
    def _indptr(self) -> torch.Tensor:
        return self._torch_tables()[3]

    @property
    def token_to_cluster(self) -> torch.Tensor:
        """``(N,)`` int64 cluster id of every token."""
        return self._labels

    @property
    def cluster_sizes(self) -> torch.Tensor:
        """``(k,)`` int64 number of tokens in every cluster."""
        return self._sizes

    @property
    def indptr(self) -> torch.Tensor:
        """``(k + 1,)`` int64 CSR offsets: cluster ``c`` is ``indices[indptr[c]:indptr[c+1]]``."""
        return self._indptr

    @property
    def indices(self) -> torch.Tensor:
        """``(N,)`` int64 token ids grouped by cluster, ascending within a cluster."""
        return self._indices

    def members(self, c: int) -> torch.Tensor:
        """Token ids of cluster ``c``, ascending.

        Parameters
        ----------
        c : int
            Cluster id in ``[0, k)``.

        Returns
        -------
        torch.Tensor
            int64 token ids on the prior's device.
        """
        c = check_int("c", c, 0, self.num_clusters - 1)
        return self._indices[int(self._indptr[c]):int(self._indptr[c + 1])]

    def to(self, device: str | torch.device) -> CodebookPrior:
        """A copy of the prior with its tables on ``device``."""
        new = CodebookPrior.__new__(CodebookPrior)
        new.__dict__.update(self.__dict__)
        new._t = tuple(t.to(device) for t in self._torch_tables())
        new._host = None
        new.meta = dict(self.meta)
        new._np_cache = {}
        new._dev_cache = {}
        return new

    def __repr__(self) -> str:
        return (f"CodebookPrior(num_tokens={self.num_tokens}, num_clusters={self.num_clusters}, "
                f"method={self.method!r}, linkage={self.linkage!r}, "
                f"largest_cluster={int(self._numpy('sizes').max())})")

    # ------------------------------------------------------------------ tables on devices

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._dev_cache:
            self._dev_cache[key] = (self._labels.to(device), self._indptr.to(device),
                                    self._indices.to(device))
        return self._dev_cache[key]

    def _numpy(self, name: str) -> np.ndarray:
        if self._host is not None:
            return self._host[name]
        if name not in self._np_cache:
            self._np_cache[name] = getattr(self, f"_{name}").cpu().numpy()
        return self._np_cache[name]

    # ------------------------------------------------------------------ token <-> cluster

    def to_clusters(self, tokens: Any) -> Any:
        """Map token ids to cluster ids.

        Parameters
        ----------
        tokens : array-like or torch.Tensor
            Integer token ids in ``[0, N)``, any shape, any device.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            int64 cluster ids, same shape; NumPy for NumPy/array-like input, otherwise a
            tensor on the input's device.

        Raises
        ------
        TypeError
            Non-integer ``tokens``.
        ValueError
            A token id outside ``[0, N)``.
        """
        if not _is_tensor(tokens):
            arr = _int_array(tokens, "tokens")
            _check_range(arr, "tokens", self.num_tokens, "token id")
            return self._numpy("labels")[arr]
        t, _ = _int_tensor(tokens, "tokens")
        _check_range(t, "tokens", self.num_tokens, "token id")
        labels, _, _ = self._tables(t.device)
        return labels[t]

    def sample_tokens(self, cluster_ids: Any, generator: Any = None) -> Any:
        """Draw a uniformly random token of each given cluster (the decoding step).

        Token ``indices[indptr[c] + floor(u * size[c])]`` with ``u`` uniform in
        ``[0, 1)`` (float64), fully vectorized.

        Parameters
        ----------
        cluster_ids : array-like or torch.Tensor
            Integer cluster ids in ``[0, k)``, any shape, any device.
        generator : torch.Generator, numpy.random.Generator, int or None
            Source of ``u``. A ``torch.Generator`` draws on its own device (the result is
            moved to the ids' device). A ``numpy.random.Generator`` or an int seed (for
            ``numpy.random.default_rng``) is accepted for NumPy input only. ``None``:
            torch's global RNG on the ids' device for tensors, a fresh unseeded NumPy
            generator for NumPy input.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            int64 token ids, same shape and container/device as ``cluster_ids``.
        """
        import torch

        c, from_numpy = _int_tensor(cluster_ids, "cluster_ids")
        _check_range(c, "cluster_ids", self.num_clusters, "cluster id")
        shape = tuple(c.shape)
        if from_numpy:
            if isinstance(generator, torch.Generator):
                u = torch.rand(shape, generator=generator, dtype=torch.float64,
                               device=generator.device).cpu().numpy()
            elif generator is None or isinstance(generator, (int, np.integer)):
                if isinstance(generator, bool):
                    raise TypeError(f"generator must be a torch.Generator, "
                                    f"numpy.random.Generator, int or None, got {generator!r}")
                u = np.random.default_rng(generator).random(shape)
            elif isinstance(generator, np.random.Generator):
                u = generator.random(shape)
            else:
                raise TypeError(f"generator must be a torch.Generator, numpy.random.Generator, "
                                f"int or None, got {type(generator).__name__}")
            ci = c.numpy()
            indptr, indices = self._numpy("indptr"), self._numpy("indices")
            size = indptr[ci + 1] - indptr[ci]
            off = np.minimum(np.floor(u * size).astype(np.int64), size - 1)
            return indices[indptr[ci] + off]
        if generator is None:
            u = torch.rand(shape, dtype=torch.float64, device=c.device)
        elif isinstance(generator, torch.Generator):
            u = torch.rand(shape, generator=generator, dtype=torch.float64,
                           device=generator.device).to(c.device)
        else:
            raise TypeError(f"generator must be a torch.Generator or None for tensor input, "
                            f"got {type(generator).__name__}")
        _, indptr, indices = self._tables(c.device)
        start = indptr[c]
        size = indptr[c + 1] - start
        off = torch.minimum(torch.floor(u * size).to(torch.int64), size - 1)
        return indices[start + off]

    # ------------------------------------------------------------------ logits and loss

    def cluster_logits(self, token_logits: Any, reduce: str = "mean") -> Any:
        """Pool token logits into cluster logits (differentiable).

        Parameters
        ----------
        token_logits : torch.Tensor or array-like
            ``(..., N)`` floating-point logits over the codebook.
        reduce : {"mean", "sum", "logsumexp"}
            How the logits of a cluster's tokens are combined. ``"mean"`` (default, as in
            the paper for DCPE's unequal clusters): the average logit, free of any bias
            from cluster size. ``"sum"``: with unequal clusters, a large cluster gets a
            large logit just because it has many tokens. ``"logsumexp"``: the log of the
            cluster's total (unnormalised) probability mass.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            ``(..., k)`` cluster logits, same dtype, device and container.
        """
        import torch

        if reduce not in _REDUCES:
            raise ValueError(f"reduce must be one of {', '.join(_REDUCES)}; got {reduce!r}")
        from_numpy = not isinstance(token_logits, torch.Tensor)
        logits = torch.from_numpy(np.asarray(token_logits)) if from_numpy else token_logits
        if not logits.is_floating_point():
            raise TypeError(f"token_logits must be floating point, got dtype {logits.dtype}")
        if logits.ndim < 1 or logits.shape[-1] != self.num_tokens:
            raise ValueError(f"token_logits must have shape (..., {self.num_tokens}) "
                             f"(last dimension = number of tokens), "
                             f"got {tuple(logits.shape)}")
        labels, _, _ = self._tables(logits.device)
        sizes = self._sizes.to(logits.device)
        out_shape = tuple(logits.shape[:-1]) + (self.num_clusters,)
        if reduce == "logsumexp":
            peak = torch.full(out_shape, -float("inf"), dtype=logits.dtype, device=logits.device)
            index = labels.expand_as(logits)
            peak = peak.scatter_reduce(-1, index, logits.detach(), reduce="amax")
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
            shifted = torch.exp(logits - peak.gather(-1, index))
            total = torch.zeros(out_shape, dtype=logits.dtype, device=logits.device)
            total = total.index_add(-1, labels, shifted)
            out = torch.log(total) + peak
        else:
            out = torch.zeros(out_shape, dtype=logits.dtype, device=logits.device)
            out = out.index_add(-1, labels, logits)
            if reduce == "mean":
                out = out / sizes.to(logits.dtype)
        return out.detach().numpy() if from_numpy else out

    def cluster_loss(self, token_logits: torch.Tensor, target_tokens: torch.Tensor, *,
                     reduce: str = "mean", ignore_index: int = -100,
                     reduction: str = "mean") -> torch.Tensor:
        """IAR's cluster-oriented cross-entropy.

        Cross-entropy between :meth:`cluster_logits` and the clusters of the target
        tokens.

        Parameters
        ----------
        token_logits : torch.Tensor
            ``(..., N)`` logits.
        target_tokens : torch.Tensor
            Integer token ids of shape ``token_logits.shape[:-1]``; entries equal to
            ``ignore_index`` are ignored.
        reduce : {"mean", "sum", "logsumexp"}
            Pooling of token logits into cluster logits (see :meth:`cluster_logits`;
            ``"mean"`` is the default for DCPE's clusters of unequal size).
        ignore_index : int
            Target value that contributes no loss.
        reduction : {"mean", "sum", "none"}
            As in :func:`torch.nn.functional.cross_entropy`; ``"none"`` returns a tensor of
            the targets' shape.

        Returns
        -------
        torch.Tensor
            The loss (differentiable with respect to ``token_logits``).
        """
        import torch

        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
        if not isinstance(token_logits, torch.Tensor):
            raise TypeError(f"token_logits must be a torch.Tensor, "
                            f"got {type(token_logits).__name__}")
        target, _ = _int_tensor(target_tokens, "target_tokens")
        target = target.to(token_logits.device)
        if token_logits.ndim < 1 or tuple(target.shape) != tuple(token_logits.shape[:-1]):
            raise ValueError(f"target_tokens must have shape token_logits.shape[:-1] = "
                             f"{tuple(token_logits.shape[:-1])}, got {tuple(target.shape)}")
        ignore_index = check_int("ignore_index", ignore_index, -(2**63))
        _check_range(target, "target_tokens", self.num_tokens, "token id", ignore=ignore_index)
        logits = self.cluster_logits(token_logits, reduce=reduce)
        labels, _, _ = self._tables(target.device)
        keep = target != ignore_index
        target_clusters = torch.where(keep, labels[torch.where(keep, target, 0)],
                                      torch.full_like(target, ignore_index))
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, self.num_clusters), target_clusters.reshape(-1),
            ignore_index=ignore_index, reduction=reduction)
        if reduction == "none":
            loss = loss.reshape(target.shape)
        return loss

    # ------------------------------------------------------------------ persistence

    def metadata(self) -> dict[str, Any]:
        """The metadata stored with the prior (JSON-serialisable)."""
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "linkage": self.linkage,
            "num_tokens": self.num_tokens,
            "num_clusters": self.num_clusters,
            "max_cluster_size": self.max_cluster_size,
            "codebook_sha256": self.codebook_sha256,
            "codebook_shape": list(self.codebook_shape) if self.codebook_shape else None,
            "dcpe_version": self.dcpe_version,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the prior to ``path`` (``.pt`` or ``.npz``), atomically.

        The file holds the ``(N,)`` int64 token-to-cluster table and :meth:`metadata`:
        method, linkage, k, codebook SHA-256 and shape, size cap and dcpe version. It is
        written to a temporary file in the same directory and moved into place with
        :func:`os.replace`, so no partial file is ever left at ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            Destination; the extension chooses the format.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".pt", ".npz"):
            raise ValueError(f"path must end with .pt or .npz, got {str(path)!r}")
        meta_json = json.dumps(self.metadata())
        labels = np.ascontiguousarray(self._numpy("labels"))
        with atomic_write(path, "wb") as fh:
            if suffix == ".pt":
                import torch

                torch.save({"token_to_cluster": torch.from_numpy(labels),
                            "metadata": meta_json}, fh)
            else:
                np.savez(fh, token_to_cluster=labels, metadata=np.array(meta_json))

    @classmethod
    def load(cls, path: str | os.PathLike, codebook: Any = None,
             map_location: str | torch.device = "cpu") -> CodebookPrior:
        """Read a prior written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.pt`` or ``.npz`` prior file.
        codebook : array-like or torch.Tensor, optional
            If given, its fingerprint must equal the stored one.
        map_location : str or torch.device
            Device of the loaded tables.

        Returns
        -------
        CodebookPrior

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            The file is not a readable prior, or it was made for another codebook.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"prior file not found: {path}")
        suffix = path.suffix.lower()
        if suffix not in (".pt", ".npz"):
            raise ValueError(f"{path}: a prior file must end with .pt or .npz")
        try:
            if suffix == ".pt":
                import torch

                data = torch.load(path, weights_only=True, map_location="cpu")
                labels = data["token_to_cluster"]
                meta_json = data["metadata"]
            else:
                with np.load(path, allow_pickle=False) as data:
                    labels = np.array(data["token_to_cluster"])
                    meta_json = str(data["metadata"][()])
            meta = json.loads(meta_json)
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise ValueError("not a dcpe codebook prior")
            if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
                raise ValueError(f"format version {meta['format_version']} is newer than "
                                 f"this dcpe understands ({_FORMAT_VERSION})")
            prior = cls(labels, method=meta.get("method"), linkage=meta.get("linkage"),
                        max_cluster_size=meta.get("max_cluster_size"),
                        codebook_sha256=meta.get("codebook_sha256"),
                        codebook_shape=meta.get("codebook_shape"),
                        dcpe_version=meta.get("dcpe_version") or "unknown",
                        meta=meta.get("meta") or {})
            if prior.num_clusters != meta.get("num_clusters") or \
                    prior.num_tokens != meta.get("num_tokens"):
                raise ValueError("the cluster table does not match its metadata")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a readable dcpe prior file ({msg})") from None
        if codebook is not None:
            prior.check_codebook(codebook, source=str(path))
        return prior.to(map_location) if str(map_location) != "cpu" else prior

    def check_codebook(self, codebook: Any, source: str | None = None) -> None:
        """Raise :class:`ValueError` unless ``codebook`` is the one the prior was made for.

        Without a stored fingerprint only the number of tokens is checked.
        """
        arr = _codebook_array(codebook)
        where = f"{source}: " if source else ""
        if self.codebook_sha256 is None:
            if arr.shape[0] != self.num_tokens:
                raise ValueError(f"{where}the prior has {self.num_tokens} tokens but the "
                                 f"codebook has {arr.shape[0]} rows")
            return
        sha = codebook_sha256(arr)
        if sha != self.codebook_sha256:
            stored_shape = tuple(self.codebook_shape) if self.codebook_shape else None
            raise ValueError(
                f"{where}the prior was made for another codebook: stored sha256 "
                f"{self.codebook_sha256[:12]} shape {stored_shape}, given codebook sha256 "
                f"{sha[:12]} shape {tuple(arr.shape)}")
