"""The codebook prior: a partition of a tokenizer's codebook into clusters, and the
operations an autoregressive model needs from it.

>>> import dcpe
>>> x = dcpe.datasets.sample_codebook()[:1000]
>>> prior = dcpe.CodebookPrior.from_codebook(x, 100)
>>> prior.num_tokens, prior.num_clusters
(1000, 100)

Training on cluster indices: ``prior.to_clusters(tokens)``. Decoding: draw a token of the
predicted cluster uniformly, ``prior.sample_tokens(cluster_ids)``. Cluster-oriented loss
(IAR): ``prior.cluster_loss(token_logits, target_tokens)``. Contiguous layout (IAR's
reordered codebook): ``new = prior.permutation[old]`` puts cluster ``c`` at new ids
``prior.offsets[c]`` to ``prior.offsets[c + 1] - 1``; ``prior.permuted()`` is the prior
over the new ids (see also :mod:`dcpe.export`).

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
import pickle
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import check_int, check_not_a_container, check_path
from ._validation import is_tensor as _is_tensor
from .io import _first_line, atomic_write

if TYPE_CHECKING:
    import torch

__all__ = ["CodebookPrior", "codebook_sha256"]

#: the next step of an error about a codebook that is not the prior's
_OTHER_CODEBOOK_STEP = ("give the codebook the prior was made from, read as it was "
                        "then (raw or normalised)")
_NORMALIZED_STEP = ("read it as dcpe.io.load_codebook(path, normalize=True) does, or "
                    "normalise its rows")
_FORMAT = "dcpe-codebook-prior"
_FORMAT_VERSION = 1
_REDUCES = ("mean", "sum", "logsumexp")
_ALGORITHMS = ("auto", "segment", "scatter")
_METHODS = ("dcpe", "kmeans", "balanced_kmeans", "centroid_free_kmeans")
_TABLES = ("labels", "sizes", "indices", "indptr")


def _codebook_array(codebook: Any, name: str = "codebook") -> np.ndarray:
    if _is_tensor(codebook):
        codebook = codebook.detach().float().cpu().numpy()
    check_not_a_container(codebook, name)
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
    """Array-like ``values`` (not a tensor) as a C-contiguous int64 NumPy array of the same
    shape (a scalar gives a 0-d array)."""
    try:
        arr = np.asarray(values)
    except ValueError as exc:  # ragged nested sequences
        raise TypeError(f"{name} must be an array of integers ({exc})") from None
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.require(arr.astype(np.int64, copy=False), requirements="C")


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


_UNSET: Any = object()  # "argument not given"


def _is_clustering_result(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`dcpe.baselines.ClusteringResult` (without importing
    the baselines, and so torch, when they are not loaded)."""
    baselines = sys.modules.get("dcpe.baselines")
    return baselines is not None and isinstance(obj, baselines.ClusteringResult)


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

    Parameters
    ----------
    token_to_cluster : array-like or torch.Tensor
        ``(N,)`` integer cluster id of every token, ids ``0..k-1`` with every id used. The
        values are copied.
    method, linkage, max_cluster_size, codebook_sha256, codebook_shape, dcpe_version, meta
        Stored as the attributes of the same names (see above). :meth:`from_labels` and
        :meth:`from_codebook` fill them in for you.

    Raises
    ------
    TypeError
        ``token_to_cluster`` does not hold integers (floating-point, boolean or complex
        values, or a ragged sequence), or ``max_cluster_size`` is not an integer.
    ValueError
        ``token_to_cluster`` is not 1-D, is empty, holds a negative id, or leaves an id in
        ``0..max`` without a token (the message gives how many and the first one); or
        ``max_cluster_size < 1``.

    Notes
    -----
    Layout: :attr:`permutation` sends every token id to its position when the tokens are
    laid out cluster after cluster (cluster ``c`` occupies ``offsets[c]`` to
    ``offsets[c + 1] - 1``). A prior whose labels never decrease
    (:attr:`is_contiguous`, e.g. one made by :meth:`permuted`) is already in that layout;
    :meth:`cluster_logits` and :meth:`cluster_loss` then pool each cluster as one
    contiguous segment of the logits instead of scattering every logit to its cluster.
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
            labels = _int_tensor(token_to_cluster, "labels")[0].clone().contiguous()
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
        # layout facts used by the segment path of cluster_logits
        self._contiguous = bool((labels[1:] >= labels[:-1]).all())
        self._equal_size = int(sizes.min()) == int(sizes.max())
        self.method = method
        self.linkage = linkage
        self.max_cluster_size = max_cluster_size
        self.codebook_sha256 = codebook_sha256
        self.codebook_shape = tuple(int(s) for s in codebook_shape) if codebook_shape else None
        self.dcpe_version = dcpe_version if dcpe_version is not None else _version()
        self.meta = dict(meta or {})
        self._np_cache: dict[str, np.ndarray] = {}
        self._dev_cache: dict[str, tuple[Any, Any, Any]] = {}
        self._perm: Any = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_labels(cls, labels: Any, *, method: str | None = _UNSET,
                    linkage: str | None = _UNSET, max_cluster_size: int | None = None,
                    codebook: Any = None, **meta: Any) -> CodebookPrior:
        """Make a prior from cluster labels.

        Parameters
        ----------
        labels : array-like, torch.Tensor or dcpe.baselines.ClusteringResult
            ``(N,)`` integer cluster id of every token. Ids must be ``0..k-1`` with every
            id used; the numbering is kept as given. A :class:`ClusteringResult` from
            :mod:`dcpe.baselines` gives its ``labels``.
        method : str or None
            Name of the method that produced the labels (metadata). Default: ``"dcpe"``
            for labels; for a :class:`ClusteringResult`, which does not record its method,
            ``None`` (pass e.g. ``method="kmeans"`` to record it).
        linkage : str or None
            Linkage used (metadata). Default: ``"average"`` for labels, ``None`` for a
            :class:`ClusteringResult` (centroid methods have no linkage).
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

        Raises
        ------
        TypeError
            ``method`` is not a string (or ``None``), the labels are not integers, or the
            extra metadata is not JSON-serialisable.
        ValueError
            As for the constructor, or ``codebook`` does not have one row per label.
        """
        result = _is_clustering_result(labels)
        if result:
            labels = labels.labels
        if method is _UNSET:
            method = None if result else "dcpe"
        if linkage is _UNSET:
            linkage = None if result else "average"
        if method is not None and not isinstance(method, str):
            raise TypeError(f"method must be a string or None, got {method!r}")
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise TypeError(f"extra metadata must be JSON-serialisable ({exc})") from None
        prior = cls(labels, method=method, linkage=linkage, max_cluster_size=max_cluster_size,
                    meta=meta)
        if codebook is not None:
            prior._record_codebook(codebook, "labels has {n} entries")
        return prior

    @classmethod
    def from_codebook(cls, codebook: Any, n_clusters: int, *, linkage: str = "average",
                      max_cluster_size: int | None = None, backend: str = "auto",
                      method: str = "dcpe", metric: str = "euclidean",
                      seed: int = 0, memory_limit: int | str | None = None,
                      progress: bool | None = False) -> CodebookPrior:
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
        memory_limit : int or str, optional
            Memory budget for ``method="dcpe"`` (see :func:`dcpe.cluster`).
        progress : bool or None
            Progress bar of the merges for ``method="dcpe"`` (see :func:`dcpe.cluster`).

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
                                  max_cluster_size=max_cluster_size, backend=backend,
                                  memory_limit=memory_limit, progress=progress)
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

    @property
    def offsets(self) -> torch.Tensor:
        """``(k + 1,)`` int64 start of every cluster in the permuted layout, and ``N``.

        After ``new = permutation[old]``, cluster ``c`` is the contiguous range of new ids
        ``offsets[c] .. offsets[c + 1] - 1``. The values equal :attr:`indptr`.
        """
        return self._indptr

    @property
    def permutation(self) -> torch.Tensor:
        """``(N,)`` int64 permutation ``new = permutation[old]`` laying the clusters out
        contiguously, in cluster order.

        Cluster ``c`` goes to the new ids ``offsets[c] .. offsets[c + 1] - 1``; inside a
        cluster the tokens keep ascending id order, so ``permutation[indices[j]] == j``.
        ``dcpe export iar`` writes a permutation with the same clusters at the same
        offsets but with each cluster's tokens in nearest-neighbour order
        (:func:`dcpe.export.iar_permutation`); :meth:`permuted` gives the prior over the
        new ids for either one.
        """
        if self._perm is None:
            import torch

            idx = self._indices
            perm = torch.empty_like(idx)
            perm[idx] = torch.arange(idx.shape[0], device=idx.device)
            self._perm = perm
        return self._perm

    @property
    def is_contiguous(self) -> bool:
        """Whether the labels never decrease, i.e. the token ids are already in the permuted
        layout (``permutation`` is the identity)."""
        return self._contiguous

    def permuted(self, codebook: Any = None) -> CodebookPrior:
        """The same clusters over the new token ids of a contiguous layout.

        Valid for any permutation that keeps the clusters contiguous and in cluster order
        (:attr:`permutation`, or the file ``dcpe export iar`` writes): token ``new`` of
        cluster ``c`` has ``offsets[c] <= new < offsets[c + 1]``. Use it with a model
        trained on the reordered codebook; its :meth:`cluster_logits` and
        :meth:`cluster_loss` take the segment path.

        Parameters
        ----------
        codebook : array-like or torch.Tensor, optional
            The reordered ``(N, d)`` codebook, to store its fingerprint. Without it the new
            prior has no fingerprint (the old one describes the old order).

        Returns
        -------
        CodebookPrior
            Labels ``0, ..., 0, 1, ..., k - 1`` (cluster ``c`` repeated ``size[c]`` times);
            method, linkage, size cap and metadata are copied, and ``meta["permuted"]`` is
            ``True``.
        """
        sizes = self._numpy("sizes")
        labels = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)
        meta = dict(self.meta)
        meta["permuted"] = True
        prior = CodebookPrior(labels, method=self.method, linkage=self.linkage,
                              max_cluster_size=self.max_cluster_size,
                              dcpe_version=self.dcpe_version, meta=meta)
        if codebook is not None:
            prior._record_codebook(codebook, "the prior has {n} tokens")
        return prior

    def _record_codebook(self, codebook: Any, what: str) -> None:
        """Record ``codebook``'s fingerprint and shape; its rows must be this prior's tokens
        (``what`` names them in the error, with ``{n}`` their number)."""
        arr = _codebook_array(codebook)
        if arr.shape[0] != self.num_tokens:
            raise ValueError(f"codebook has {arr.shape[0]} rows but "
                             f"{what.format(n=self.num_tokens)}")
        self.codebook_sha256 = codebook_sha256(arr)
        self.codebook_shape = tuple(int(v) for v in arr.shape)

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
        new._perm = None
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
        numpy.ndarray, numpy.int64, int or torch.Tensor
            int64 cluster ids, same shape. An array-like gives a NumPy array and a tensor a
            tensor on its device (a 0-d tensor gives a 0-d tensor). A scalar gives a
            scalar: a Python ``int`` for a Python ``int``, a ``numpy.int64`` for a NumPy
            integer or a 0-d NumPy array (as NumPy indexing does).

        Raises
        ------
        TypeError
            Non-integer ``tokens`` (``bool`` included).
        ValueError
            A token id outside ``[0, N)``.
        """
        if not _is_tensor(tokens):
            arr = _int_array(tokens, "tokens")
            _check_range(arr, "tokens", self.num_tokens, "token id")
            out = self._numpy("labels")[arr]
            if arr.ndim == 0:
                return int(out) if isinstance(tokens, int) else np.int64(out)
            return out
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

    def cluster_logits(self, token_logits: Any, reduce: str = "mean", *,
                       algorithm: str = "auto") -> Any:
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
        algorithm : {"auto", "segment", "scatter"}
            ``"scatter"`` adds every logit into its cluster (``index_add``), for any
            labels. ``"segment"`` reads the logits in the permuted layout (see
            :attr:`permutation`; no reordering is needed when :attr:`is_contiguous`) and
            reduces each cluster as one contiguous segment: a reshape to ``(..., k, N/k)``
            when all clusters have the same size, :func:`torch.segment_reduce` at
            :attr:`offsets` otherwise, with no scatter-adds. ``"auto"`` (default):
            ``"segment"`` for a contiguous prior (e.g. from :meth:`permuted`),
            ``"scatter"`` otherwise. Both give the same values up to floating-point
            rounding.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            ``(..., k)`` cluster logits, same dtype, device and container.

        Raises
        ------
        TypeError
            Non-floating-point logits.
        ValueError
            Unknown ``reduce`` or ``algorithm``, or a last dimension other than ``N``.
        """
        import torch

        if reduce not in _REDUCES:
            raise ValueError(f"reduce must be one of {', '.join(_REDUCES)}; got {reduce!r}")
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(_ALGORITHMS)}; "
                             f"got {algorithm!r}")
        from_numpy = not isinstance(token_logits, torch.Tensor)
        logits = torch.from_numpy(np.asarray(token_logits)) if from_numpy else token_logits
        if not logits.is_floating_point():
            raise TypeError(f"token_logits must be floating point, got dtype {logits.dtype}")
        self._check_vocabulary(tuple(logits.shape))
        if algorithm == "auto":
            algorithm = "segment" if self._contiguous else "scatter"
        if algorithm == "segment" and logits.numel() > 0:
            out = self._segment_pool(logits, reduce)
        else:
            out = self._scatter_pool(logits, reduce)
        return out.detach().numpy() if from_numpy else out

    def _scatter_pool(self, logits: torch.Tensor, reduce: str) -> torch.Tensor:
        """Cluster pooling for any labels: every logit is added into its cluster."""
        import torch

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
            return torch.log(total) + peak
        out = torch.zeros(out_shape, dtype=logits.dtype, device=logits.device)
        out = out.index_add(-1, labels, logits)
        if reduce == "mean":
            out = out / sizes.to(logits.dtype)
        return out

    def _segment_pool(self, logits: torch.Tensor, reduce: str) -> torch.Tensor:
        """Cluster pooling on the permuted layout: one contiguous segment per cluster."""
        import torch

        n, k = self.num_tokens, self.num_clusters
        lead = tuple(logits.shape[:-1])
        if not self._contiguous:  # bring the logits into the permuted layout
            _, _, indices = self._tables(logits.device)
            logits = torch.index_select(logits, -1, indices)
        if self._equal_size:
            seg = logits.reshape(lead + (k, n // k))
            if reduce == "sum":
                return seg.sum(dim=-1)
            if reduce == "mean":
                return seg.mean(dim=-1)
            return torch.logsumexp(seg, dim=-1)
        # (N, M) with the token axis first, so that one (k + 1,) offsets table serves
        # every row of the batch
        _, indptr, _ = self._tables(logits.device)
        cols = logits.reshape(-1, n).T.contiguous()

        def seg_reduce(data: torch.Tensor, how: str) -> torch.Tensor:
            return torch.segment_reduce(data, how, offsets=indptr, axis=0)

        if reduce == "logsumexp":
            peak = seg_reduce(cols.detach(), "max")
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
            sizes = self._sizes.to(logits.device)
            spread = torch.repeat_interleave(peak, sizes, dim=0, output_size=n)
            out = torch.log(seg_reduce(torch.exp(cols - spread), "sum")) + peak
        else:
            out = seg_reduce(cols, "sum")
            if reduce == "mean":
                out = out / self._sizes.to(device=logits.device, dtype=out.dtype).unsqueeze(1)
        return out.T.reshape(lead + (k,))

    def _check_vocabulary(self, shape: tuple[int, ...]) -> None:
        """Token logits have the vocabulary last; the error names the likely layout."""
        n = self.num_tokens
        if len(shape) >= 1 and shape[-1] == n:
            return
        msg = (f"token_logits must have shape (..., {n}) (last dimension = number of "
               f"tokens), got {shape}")
        if n in shape:
            axis = shape.index(n)
            msg += (f"; the tokens are dimension {axis}: move them last with "
                    f"token_logits.movedim({axis}, -1) (cross_entropy's (B, N, T) layout "
                    f"is not the one taken here)")
        elif len(shape) >= 1 and shape[-1] > n:
            msg += (f"; if the last {shape[-1] - n} are logits of other ids (padding, "
                    f"class or special tokens), pass token_logits[..., :{n}]")
        else:
            msg += f"; give logits over the {n} tokens of the codebook the prior was made for"
        raise ValueError(msg)

    def cluster_loss(self, token_logits: torch.Tensor, target_tokens: torch.Tensor, *,
                     reduce: str = "mean", ignore_index: int = -100,
                     reduction: str = "mean", algorithm: str = "auto") -> torch.Tensor:
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
        algorithm : {"auto", "segment", "scatter"}
            How the logits are pooled (see :meth:`cluster_logits`).

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
        self._check_vocabulary(tuple(token_logits.shape))
        target, _ = _int_tensor(target_tokens, "target_tokens")
        target = target.to(token_logits.device)
        if token_logits.ndim < 1 or tuple(target.shape) != tuple(token_logits.shape[:-1]):
            raise ValueError(f"target_tokens must have shape token_logits.shape[:-1] = "
                             f"{tuple(token_logits.shape[:-1])}, got {tuple(target.shape)}")
        ignore_index = check_int("ignore_index", ignore_index, -(2**63))
        _check_range(target, "target_tokens", self.num_tokens, "token id", ignore=ignore_index)
        logits = self.cluster_logits(token_logits, reduce=reduce, algorithm=algorithm)
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
        path = check_path("path", path)
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
        path = check_path("path", path)
        if not path.exists():
            raise FileNotFoundError(f"prior file not found: {path}; check the path (dcpe "
                                    f"cluster writes one)")
        suffix = path.suffix.lower()
        if suffix not in (".pt", ".npz"):
            raise ValueError(f"{path}: a prior file must end with .pt or .npz; give the file "
                             f"that dcpe cluster wrote")
        try:
            if suffix == ".pt":
                import torch

                data = torch.load(path, weights_only=True, map_location="cpu")
                if isinstance(data, torch.Tensor):  # e.g. IAR's mapping.pt (dcpe export)
                    raise ValueError(f"it holds one tensor of shape {tuple(data.shape)}, not "
                                     f"a prior's tables: IAR's mapping.pt?")
                if not isinstance(data, dict):
                    raise ValueError(f"it holds a {type(data).__name__}, not a prior's "
                                     f"tables")
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
            if isinstance(exc, pickle.UnpicklingError):  # torch's weights_only refusal
                msg = ("it holds pickled Python objects, which a prior never does: a "
                       "tokenizer or training checkpoint?")
            elif isinstance(exc, KeyError):
                msg = (f"no {exc.args[0]!r} table: a codebook or checkpoint rather than a "
                       f"prior?")
            else:
                msg = _first_line(exc)
            raise ValueError(f"{path}: not a readable dcpe prior file ({msg}); give a prior "
                             f"written by dcpe cluster or CodebookPrior.save") from None
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
                                 f"codebook has {arr.shape[0]} rows; "
                                 f"{_OTHER_CODEBOOK_STEP}")
            return
        sha = codebook_sha256(arr)
        if sha != self.codebook_sha256:
            from .io import _l2_normalized

            if codebook_sha256(_l2_normalized(arr)) == self.codebook_sha256:
                raise ValueError(
                    f"{where}the prior was made from this codebook's rows L2-normalised, "
                    f"and these are raw; {_NORMALIZED_STEP}")
            stored_shape = tuple(self.codebook_shape) if self.codebook_shape else None
            raise ValueError(
                f"{where}the prior was made for another codebook: stored sha256 "
                f"{self.codebook_sha256[:12]} shape {stored_shape}, given codebook sha256 "
                f"{sha[:12]} shape {tuple(arr.shape)}; {_OTHER_CODEBOOK_STEP}")
