"""Backend ``cuda``: exact agglomerative clustering with CUDA C++ kernels (``dcpe._C.cuda``).

Same engine as the ``triton`` backend — reciprocal-nearest-neighbour rounds (Murtagh 1983;
Müllner 2011) over a dense dissimilarity matrix, driven by :mod:`dcpe_kernels.rnn` — with
the two O(n^2) passes written in CUDA (``csrc/cuda/rnn_kernels.cu``; the matrix-free
engine's centroid scans and exact cluster averages in ``csrc/cuda/linear_kernels.cu``).
Device pointers, sizes and the current stream are passed to the extension as integers; the
extension does not allocate device memory (all buffers are PyTorch tensors, so
``torch.cuda.max_memory_allocated`` accounts for everything).

Supported: linkages average, weighted, single, complete; metrics euclidean,
sqeuclidean, cosine; ``max_cluster_size``; float32 and float64.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch

NAME = "cuda"


def _ext() -> ModuleType:
    """The ``dcpe._C.cuda`` submodule, or raise ``RuntimeError`` saying why not."""
    try:
        from dcpe import _C
    except ImportError as exc:
        raise RuntimeError(f"the compiled extension dcpe._C is not built ({exc})") from exc
    if not getattr(_C, "has_cuda", False) or not hasattr(_C, "cuda"):
        raise RuntimeError("dcpe._C was built without CUDA kernels (nvcc not found at build "
                           "time, or DCPE_SKIP_CUDA was set)")
    return _C.cuda


def available() -> tuple[bool, str]:
    """Whether the CUDA kernels are built and a CUDA device is visible."""
    try:
        _ext()
    except RuntimeError as exc:
        return False, str(exc)
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible to PyTorch"
    return True, f"CUDA kernels on {torch.cuda.get_device_name(0)}"


def accepts(x: object) -> bool:
    """CUDA tensors only."""
    return isinstance(x, torch.Tensor) and x.is_cuda


def _dtype_code(t: torch.Tensor) -> int:
    if t.dtype == torch.float32:
        return 0
    if t.dtype == torch.float64:
        return 1
    raise ValueError(f"the {NAME!r} backend computes in float32 or float64, got {t.dtype}")


class CudaOps:
    """:class:`dcpe_kernels.rnn.RNNOps` backed by ``dcpe._C.cuda``.

    The extension module and the stream are looked up through :meth:`_lib` and
    :meth:`_stream`, so that the same argument marshalling can drive another build of
    the same kernels (the tests run them on the CPU: ``tests/cuda_sim``).
    """

    @staticmethod
    def _lib() -> Any:
        return _ext()

    @staticmethod
    def _stream(t: torch.Tensor) -> int:
        return torch.cuda.current_stream(t.device).cuda_stream

    @classmethod
    def pairwise_nn(cls, x: torch.Tensor, out: torch.Tensor, ld: int, metric: int,
                    nn: torch.Tensor, nnd: torch.Tensor) -> None:
        ext = cls._lib()
        n, dim = x.shape
        ext.pairwise_nn(_dtype_code(x), x.data_ptr(), out.data_ptr(), nn.data_ptr(),
                        nnd.data_ptr(), n, dim, ld, metric, cls._stream(x))

    @classmethod
    def merge_compact_nn(cls, src: torch.Tensor, ld_src: int, dst: torch.Tensor, ld_dst: int,
                         p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor,
                         n_new: int, row0: int, nrows: int, mode: int, nn: torch.Tensor,
                         nnd: torch.Tensor, count: torch.Tensor | None = None) -> None:
        ext = cls._lib()
        ext.merge_compact_nn(_dtype_code(src), src.data_ptr(), ld_src, dst.data_ptr(), ld_dst,
                             p.data_ptr(), q.data_ptr(), wp.data_ptr(), wq.data_ptr(), n_new,
                             row0, nrows, mode, nn.data_ptr(), nnd.data_ptr(),
                             0 if count is None else count.data_ptr(), cls._stream(src))

    @classmethod
    def round_scan(cls, n: int, nn: torch.Tensor, nnd: torch.Tensor, size: torch.Tensor,
                   rep: torch.Tensor, hfix: torch.Tensor, m_a: torch.Tensor, m_b: torch.Tensor,
                   m_h: torch.Tensor, m_hf: torch.Tensor, m_s: torch.Tensor, m: int,
                   check: bool, cap: int, average: bool, p: torch.Tensor, q: torch.Tensor,
                   wp: torch.Tensor, wq: torch.Tensor, size_out: torch.Tensor,
                   rep_out: torch.Tensor, hfix_out: torch.Tensor, counts: torch.Tensor,
                   prev: torch.Tensor | None = None, need: int = -1) -> None:
        ext = cls._lib()
        ptrs = [t.data_ptr() for t in (nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s)]
        outs = [t.data_ptr() for t in (p, q, wp, wq, size_out, rep_out, hfix_out, counts)]
        ext.round_scan(_dtype_code(nnd), n, *ptrs, m, bool(check), int(cap), bool(average),
                       *outs, 0 if prev is None else prev.data_ptr(), int(need),
                       cls._stream(nnd))

    @classmethod
    def centroid_nn(cls, mu_t: torch.Tensor, s2: torch.Tensor, n: int, mode: int,
                    scale: float, out: torch.Tensor, nn: torch.Tensor, rows: torch.Tensor,
                    nrows: int) -> None:
        ext = cls._lib()
        ext.centroid_nn(_dtype_code(mu_t), mu_t.data_ptr(), s2.data_ptr(), int(n),
                        int(mu_t.shape[0]), int(mode), float(scale), out.data_ptr(),
                        nn.data_ptr(), rows.data_ptr(), int(nrows), cls._stream(mu_t))

    @classmethod
    def candidate_pairs(cls, mu_t: torch.Tensor, s2: torch.Tensor, rad: torch.Tensor,
                        tau: torch.Tensor, n: int, rel: float, absm: float, pa: torch.Tensor,
                        pb: torch.Tensor, count: torch.Tensor, capacity: int,
                        rows: torch.Tensor, nrows: int, needy: torch.Tensor) -> None:
        ext = cls._lib()
        ext.candidate_pairs(_dtype_code(mu_t), mu_t.data_ptr(), s2.data_ptr(), rad.data_ptr(),
                            tau.data_ptr(), int(n), int(mu_t.shape[0]), float(rel),
                            float(absm), pa.data_ptr(), pb.data_ptr(), count.data_ptr(),
                            int(capacity), rows.data_ptr(), int(nrows), needy.data_ptr(),
                            cls._stream(mu_t))

    #: the Gram scans' lanes are rows: the engine gives them the transpose of a contiguous
    #: (n, rows) product, read coalesced (dcpe_kernels.linear._GramPlan)
    gram_by_columns = True

    @classmethod
    def centroid_nn_gram(cls, g: torch.Tensor, nrm: torch.Tensor, gerr: float,
                         s2: torch.Tensor, n: int, c0: int, c1: int, out: torch.Tensor,
                         nn: torch.Tensor, rows: torch.Tensor, nrows: int) -> None:
        from dcpe_kernels.gram import _check_gram

        _check_gram(g, nrm, n, c0, c1, nrows)
        ext = cls._lib()
        ext.centroid_nn_gram(_dtype_code(s2), g.data_ptr(), int(g.stride(0)), int(g.stride(1)),
                             nrm.data_ptr(), float(gerr), s2.data_ptr(), int(n), int(c0),
                             int(c1), out.data_ptr(), nn.data_ptr(), rows.data_ptr(),
                             int(nrows), cls._stream(s2))

    @classmethod
    def candidate_pairs_gram(cls, g: torch.Tensor, nrm: torch.Tensor, gerr: float,
                             s2: torch.Tensor, rad: torch.Tensor, tau: torch.Tensor, n: int,
                             c0: int, c1: int, rel: float, absm: float, pa: torch.Tensor,
                             pb: torch.Tensor, count: torch.Tensor, capacity: int,
                             rows: torch.Tensor, nrows: int, needy: torch.Tensor) -> None:
        from dcpe_kernels.gram import _check_gram

        _check_gram(g, nrm, n, c0, c1, nrows)
        ext = cls._lib()
        ext.candidate_pairs_gram(_dtype_code(s2), g.data_ptr(), int(g.stride(0)),
                                 int(g.stride(1)), nrm.data_ptr(), float(gerr), s2.data_ptr(),
                                 rad.data_ptr(), tau.data_ptr(), int(n), int(c0), int(c1),
                                 float(rel), float(absm), pa.data_ptr(), pb.data_ptr(),
                                 count.data_ptr(), int(capacity), rows.data_ptr(), int(nrows),
                                 needy.data_ptr(), cls._stream(s2))

    @classmethod
    def pair_average(cls, x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor,
                     pa: torch.Tensor, pb: torch.Tensor, count: torch.Tensor, capacity: int,
                     val: torch.Tensor) -> None:
        from dcpe_kernels.pair_average import token_strides

        ext = cls._lib()
        if val.dtype not in (x.dtype, torch.float64):
            raise ValueError(f"pair_average writes {x.dtype} or float64, got {val.dtype}")
        ext.pair_average(_dtype_code(x), x.data_ptr(), int(x.shape[1]), *token_strides(x),
                         offsets.data_ptr(),
                         sizes.data_ptr(), pa.data_ptr(), pb.data_ptr(), count.data_ptr(),
                         int(capacity), val.data_ptr(), val.dtype != x.dtype, cls._stream(x))

    @classmethod
    def cluster_matrix(cls, x: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor,
                       n: int, out: torch.Tensor, ld: int, nn: torch.Tensor,
                       nnd: torch.Tensor) -> None:
        from dcpe_kernels.pair_average import token_strides

        ext = cls._lib()
        ext.cluster_matrix(_dtype_code(x), x.data_ptr(), int(x.shape[1]), *token_strides(x),
                           offsets.data_ptr(),
                           sizes.data_ptr(), int(n), out.data_ptr(), int(ld), nn.data_ptr(),
                           nnd.data_ptr(), cls._stream(x))


def _merges(x: torch.Tensor, method: str, metric: str, max_cluster_size: int | None,
            n_clusters: int | None = None, memory_limit: int | None = None,
            engine: str = "auto"):
    from dcpe_kernels.linear import run_merges

    if not accepts(x):
        raise ValueError(f"the {NAME!r} backend needs a CUDA tensor; got a tensor on "
                         f"{getattr(x, 'device', type(x).__name__)}")
    _ext()
    with torch.cuda.device(x.device):
        return run_merges(x.contiguous(), method=method, metric=metric,
                          max_cluster_size=max_cluster_size, ops=CudaOps, backend=NAME,
                          n_clusters=n_clusters, memory_limit=memory_limit, engine=engine)


def linkage(x: torch.Tensor, *, method: str = "average", metric: str = "euclidean",
            max_cluster_size: int | None = None, memory_limit: int | None = None,
            engine: str = "auto") -> np.ndarray:
    """Merges of ``x`` in SciPy linkage format.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, d)`` float32/float64 CUDA tensor, finite.
    method, metric : str
        See the module docstring for what is supported.
    max_cluster_size : int, optional
        Clusters larger than this take no further part in merging.
    memory_limit : int, optional
        Device bytes the engine may use; default (and at most) the device's free memory.
    engine : {"auto", "matrix", "linear"}
        Dense rounds over the ``N x N`` matrix, or matrix-free rounds in ``O(N d)``
        memory (average linkage; :mod:`dcpe_kernels.linear`); ``auto`` takes the dense
        engine while its matrix fits and ``N <= 131072``.

    Returns
    -------
    numpy.ndarray
        ``(m, 4)`` float64, greedy order, ``m = N - 1`` unless the size cap stopped earlier.
    """
    from dcpe_kernels.rnn import merges_to_linkage

    return merges_to_linkage(_merges(x, method, metric, max_cluster_size,
                                     memory_limit=memory_limit, engine=engine))


def labels(x: torch.Tensor, n_clusters: int, *, method: str = "average",
           metric: str = "euclidean", max_cluster_size: int | None = None,
           memory_limit: int | None = None, engine: str = "auto") -> torch.Tensor:
    """Canonical int64 labels on ``x``'s device after the first ``N - n_clusters`` merges.

    If the size cap leaves fewer merges, all are applied (more than ``n_clusters``
    clusters result; the caller reports it).  The rounds stop as soon as those merges are
    known (:func:`dcpe_kernels.rnn.rnn_merges` with ``n_clusters``).  ``memory_limit``
    and ``engine`` as in :func:`linkage`.
    """
    from dcpe_kernels.rnn import merges_to_labels

    mg = _merges(x, method, metric, max_cluster_size, n_clusters=n_clusters,
                 memory_limit=memory_limit, engine=engine)
    return merges_to_labels(mg, n_clusters)
