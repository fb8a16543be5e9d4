"""Centroid-based baselines that DCPE is compared with, in PyTorch (CPU and CUDA).

Three methods from the literature on codebook priors:

:func:`kmeans`
    Lloyd's algorithm with ``"k-means++"`` (greedy, as in scikit-learn) or ``"random"``
    initialisation: the paper's *k-means* and *k-means++* rows.
:func:`balanced_kmeans`
    k-means whose clusters all have the same size, as in IAR: ``N // k`` tokens each, and
    when ``k`` does not divide ``N`` exactly ``N % k`` clusters get one token more, so
    sizes differ by at most 1.
:func:`centroid_free_kmeans`
    The paper's "k-means w/o centroid" ablation: a token joins the cluster whose current
    members are at the smallest *mean* distance from it.

:func:`kmeans_plusplus`
    The greedy k-means++ seeding on its own (as ``sklearn.cluster.kmeans_plusplus``): its
    centers can start :func:`kmeans` and :func:`balanced_kmeans` (``init=``), so that
    both start from one seeding computed once.

All of them

- accept an ``(N, d)`` NumPy array, array-like or ``torch.Tensor`` (any device) and answer
  in the same container: NumPy in, NumPy out; torch in, torch out on the same device;
- compute in float32, or in float64 for float64 input, and refuse data whose squared
  distances would overflow or underflow there: the largest absolute value (unless 0) must
  lie between 1e-10 and 1e15 for float32 data (float64 data: 1e-130 and 1e150);
- are deterministic for a given ``seed``: the random numbers come from a CPU
  ``torch.Generator`` whatever the device, so a NumPy array and the same data as a CPU
  tensor give identical results;
- return canonical labels: clusters are numbered ``0..k-1`` in order of their smallest
  token index, like :func:`dcpe.cluster` (``centers`` is reordered to match);
- chunk the ``N x k`` distance computations so that memory stays bounded
  (16,384 x 8 into 8,192 clusters needs well under 100 MB of scratch space).
- use no more threads than the CPUs that other processes leave free, measured as they
  run (Linux): short parallel loops, such as the two per center of k-means++ seeding,
  would otherwise wait at every barrier for a thread that a competing process has
  descheduled. PyTorch's thread count is lowered for the call when needed and then
  restored. The kernels compute every assignment the same way whatever the number of
  threads (only float64 totals such as ``inertia`` may differ in their last bits).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from ._threads import host_threads, limit_threads
from ._validation import (
    _FLOAT32_SAFE_ABS,
    _FLOAT32_TINY_ABS,
    _FLOAT64_SAFE_ABS,
    _FLOAT64_TINY_ABS,
    check_int,
    check_not_a_container,
    check_seed,
)

__all__ = ["ClusteringResult", "balanced_kmeans", "centroid_free_kmeans", "kmeans",
           "kmeans_plusplus"]

#: Number of matrix elements a single chunk of a distance computation may hold.
_CHUNK_ELEMENTS = 1 << 22

#: From this many dimensions and centers on, the host's nearest-center search ranks the
#: centers by a matrix product first (:func:`_nearest_by_product`; the same answers).
_PRODUCT_MIN_D = 13
_PRODUCT_MIN_K = 128
#: :func:`_nearest_after_moves` searches again only while the moved centers' share plus the
#: share of points whose answer moved stays below this.
_MOVES_AT_MOST = 0.5
#: :func:`balanced_kmeans` starts a step's assignment from the previous step's prices and
#: assignment only while the centers' mean squared move is less than this fraction of the
#: tokens' mean squared distance to them; otherwise from no prices, as the first step.
#: On the sample codebook's generator (8 to 256 dimensions, 128 to 8,192 clusters) the
#: second step, where the seeds (tokens) give way to their clusters' means, moved the
#: centers by 0.69 to 7.9 times the tokens' distance, and the third by 0.06 to 0.18 times.
#: Started from no prices, the second step's assignment took 0.52x to 0.77x the time of
#: the warm start (5.7 s against 9.6 s at 262,144 x 8, k = 2,048; 3.2 s against 5.8 s at
#: 65,536 x 256, k = 512), with fewer bids and list refreshes: the seeds' prices were
#: further from the new centers' than no prices. Whole runs took 0.81x to 1.01x the time
#: (benchmarks/README.md): the later steps start from other prices and take other bids.
#: At the third step the warm start was faster at 8 dimensions (0.56x to 0.75x the time
#: from no prices), even at 65,536 x 256 and slower at 16,384 x 256 and x 64 (1.16x and
#: 1.25x), and at the fourth faster there (0.79x and 0.87x).
_WARM_MOVE_BELOW = 1.0 / 3.0

_F = TypeVar("_F", bound=Callable[..., Any])


def _fit_threads(func: _F) -> _F:
    """Run ``func`` with its threads held to the CPUs that other processes leave free
    (:func:`dcpe._threads.limit_threads`), so a busy machine slows it down in proportion
    instead of stalling every parallel loop."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with limit_threads():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ClusteringResult(NamedTuple):
    """Outcome of a baseline clustering.

    Attributes
    ----------
    labels : numpy.ndarray or torch.Tensor
        ``(N,)`` int64 canonical cluster ids (0..k-1, numbered by smallest token index).
    centers : numpy.ndarray or torch.Tensor
        ``(k, d)`` cluster means in the compute dtype, row ``c`` for cluster ``c``.
    inertia : float
        k-means objective of the result: sum over tokens of the squared Euclidean
        distance to the mean of their cluster.
    n_iter : int
        Number of assignment steps performed.
    history : tuple of float
        The method's objective after every assignment step. For :func:`kmeans` and
        :func:`balanced_kmeans` it is the sum of squared distances to the centers used in
        that step, and it never increases. For :func:`centroid_free_kmeans` it is the
        mean over tokens of the mean distance to the members of their cluster (no
        monotonicity guarantee), evaluated on the assignment each step starts from.

    The objectives (``inertia``, ``history``) are summed in one fixed order, so they do not
    depend on the thread count.
    """

    labels: Any
    centers: Any
    inertia: float
    n_iter: int
    history: tuple[float, ...]


# --------------------------------------------------------------------------- validation


def _prepare(x: Any, name: str = "x") -> tuple[torch.Tensor, bool]:
    """Validate ``x`` and return it as a float tensor plus whether it came from NumPy."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
        from_numpy = False
    else:
        if isinstance(x, (str, os.PathLike)):
            raise TypeError(f"{name} is a file name ({os.fspath(x)!r}), not an array; read the "
                            f"codebook first with dcpe.io.load_codebook({os.fspath(x)!r})")
        check_not_a_container(x, name)
        try:
            a = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array-like of numbers ({exc})") from None
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
        from_numpy = True
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have N >= 1 rows and d >= 1 columns, "
                         f"got shape {tuple(t.shape)}")
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    bad = ~torch.isfinite(t).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        raise ValueError(f"{name} has {n_bad} row(s) containing NaN or Inf")
    _check_range(t, name)
    return t.contiguous(), from_numpy


def _check_range(t: torch.Tensor, name: str, data: str | None = None) -> None:
    """Refuse values whose squared distances overflow or underflow in ``t``'s dtype:
    float32 data must have its largest absolute value (unless 0) between 1e-10 and 1e15,
    float64 data between 1e-130 and 1e150. :func:`dcpe.cluster` has the same upper
    limits; it takes smaller values, whose distances are ties once they underflow, but
    the objective of Lloyd's steps (summed in the data's dtype) would then stop them.
    ``data`` names the argument whose dtype sets ``t``'s (default: ``name``)."""
    data = data or name
    big = float(t.abs().max())
    if big == 0.0:
        return
    what = f"{name} has values up to {big:.3g}" if big > 1.0 \
        else f"{name} has values of at most {big:.3g}"
    if t.dtype == torch.float32 and not _FLOAT32_TINY_ABS <= big <= _FLOAT32_SAFE_ABS:
        raise ValueError(f"{what}, too {'large' if big > 1.0 else 'small'} for float32 "
                         f"distances; pass float64 data ({data}.astype('float64') or "
                         f"{data}.double())")
    if not _FLOAT64_TINY_ABS <= big <= _FLOAT64_SAFE_ABS:
        size, way = ("large", "down") if big > 1.0 else ("small", "up")
        raise ValueError(f"{what}, too {size} even for float64 distances; scale it {way} "
                         f"(for example, divide it by its largest absolute value)")


def _check_tol(tol: Any) -> float:
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"tol must be a number, got {tol!r}") from None
    if not (t >= 0.0 and math.isfinite(t)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return t


def _check_init(init: Any) -> str:
    if not isinstance(init, str):
        raise TypeError(f"init must be 'k-means++' or 'random', got {type(init).__name__}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    return init


def _check_init_or_centers(init: Any, x: torch.Tensor, k: int) -> str | torch.Tensor:
    """``init`` as a method name, or as ``(k, d)`` initial centers in ``x``'s dtype and on
    its device (checked like the data: real, finite)."""
    if isinstance(init, str):
        return _check_init(init)
    if not isinstance(init, (np.ndarray, torch.Tensor, list, tuple)):
        raise TypeError("init must be 'k-means++', 'random' or a (k, d) array of initial "
                        f"centers, got {type(init).__name__}")
    if (isinstance(init, tuple) and len(init) == 2
            and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in init)
            and init[0].ndim == 2 and init[1].ndim == 1):
        raise TypeError("init is a (centers, indices) pair, as kmeans_plusplus returns; pass "
                        "the centers: init=kmeans_plusplus(x, k)[0]")
    ndim = init.ndim if isinstance(init, (np.ndarray, torch.Tensor)) else None
    if ndim is not None and ndim != 2:
        if isinstance(init, np.ndarray):
            integral = init.dtype.kind in "iu"
        else:
            integral = not (init.dtype.is_floating_point or init.dtype.is_complex)
        hint = " (token indices? pass their rows: init=x[indices])" if (
            ndim == 1 and integral) else ""
        raise ValueError(f"init must be a (k, d) = ({k}, {x.shape[1]}) array of initial "
                         f"centers, got shape {tuple(init.shape)}{hint}")
    c, _ = _prepare(init, "init")
    if tuple(c.shape) != (k, x.shape[1]):
        raise ValueError(f"init must have shape (k, d) = ({k}, {x.shape[1]}), "
                         f"got {tuple(c.shape)}")
    c = c.to(device=x.device, dtype=x.dtype).contiguous()
    _check_range(c, "init", data="x")  # in x's dtype
    return c


def _output(t: torch.Tensor, from_numpy: bool) -> Any:
    return t.cpu().numpy() if from_numpy else t


# --------------------------------------------------------------------------- helpers


def _row_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


def _sequential_sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``|x_i - c_i|^2`` for paired rows, as the compiled search computes it: coordinate
    differences in float64, squared and added in coordinate order, each operation rounded
    on its own (one elementwise kernel each, so nothing fuses them)."""
    diff = x.to(torch.float64) - c.to(torch.float64)
    sq = diff.mul_(diff).T.contiguous()  # a coordinate's terms in one run
    acc = sq[0].clone()
    for t in range(1, sq.shape[0]):
        acc += sq[t]
    return acc


def _sq_dist_rows(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared distance (float64) of each row of ``x`` to ``c[labels]``, as the
    nearest-center search computes it (:func:`_sequential_sq_dist`: differences, no
    expansion, so that nearly equal points are not hit by cancellation), on every device:
    Lloyd's step keeps a token's old center unless the search's new one is closer by these
    distances, which the search itself ranks by. Host tensors use the compiled
    ``dcpe._C.paired_sq_dist_cpu``, the same values bit for bit in one pass; other devices
    :func:`_sq_dist_rows_torch`."""
    ext = _host_ext(x)
    if ext is not None and c.dtype == x.dtype:
        return torch.from_numpy(ext.paired_sq_dist_cpu(
            x.contiguous().numpy(), c.contiguous().numpy(), labels.contiguous().numpy(),
            num_threads=host_threads()))
    return _sq_dist_rows_torch(x, c, labels)


def _sq_dist_rows_torch(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
    """:func:`_sq_dist_rows` in PyTorch, on any device, a chunk of rows at a time."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = _row_chunk(x.shape[1])
    for i in range(0, x.shape[0], step):
        out[i:i + step] = _sequential_sq_dist(x[i:i + step], c[labels[i:i + step]])
    return out


def _total(values: torch.Tensor) -> float:
    """The sum of ``values`` in one fixed order: NumPy's pairwise sum on the host; on CUDA,
    PyTorch's sum (the same on one device from run to run). PyTorch's sum on the host
    splits a large tensor among its threads, so its last bits would follow the thread
    count, which :func:`host_threads` fits to the machine's load at every step: the
    baselines' objectives, and the decisions taken on them (the tolerance, a balanced
    step's acceptance, the best of ``n_init``), are summed here instead."""
    if values.device.type == "cuda":
        return float(values.sum())
    return float(np.sum(values.detach().cpu().numpy()))


def _host_ext(x: torch.Tensor) -> Any:
    """``dcpe._C`` when ``x`` is a float32/float64 host tensor and the extension is built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    try:
        from . import _C
    except ImportError:  # pragma: no cover - the Python half used alone
        return None
    return _C


def _nearest(x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest row of ``c`` for every row of ``x``, ties to the smallest index;
    rows of ``c`` where ``mask`` is False are skipped.

    Host tensors use the compiled search (``dcpe._C.nearest_cpu``: squared distances from
    coordinate differences in double; a kd-tree over the centers up to 12 dimensions from
    256 centers on, an exhaustive scan otherwise, with the same answer); above 12
    dimensions from 128 centers on, the scan's answer found from a matrix product
    (:func:`_nearest_by_product`; ``DCPE_CPU_PRODUCTS=0``: the scan). CUDA tensors, or a
    build without the extension: :func:`_nearest_matmul`, the same rule on the device.
    Other devices (which may lack float64): the host's answer, on a host copy.
    """
    if x.device.type not in ("cpu", "cuda"):
        host = _nearest(x.cpu(), c.cpu(), None if mask is None else mask.cpu())
        return host.to(x.device)
    ext = _host_ext(x)
    if ext is not None and x.shape[1] >= _PRODUCT_MIN_D and c.shape[0] >= _PRODUCT_MIN_K \
            and os.environ.get("DCPE_CPU_PRODUCTS") != "0":
        return _nearest_by_product(x, c, mask, ext)
    if ext is not None:
        m = None if mask is None else mask.numpy().astype(bool)
        return torch.from_numpy(ext.nearest_cpu(x.contiguous().numpy(),
                                                c.to(x.dtype).contiguous().numpy(), m,
                                                num_threads=host_threads()))
    return _nearest_matmul(x, c, mask)


def _float32_products_exact(device_type: str = "cpu") -> bool:
    """Whether PyTorch's float32 matrix products on ``device_type`` ("cpu" or "cuda") round
    in float32 (IEEE), not through bfloat16 or TF32 (``torch.set_float32_matmul_precision``,
    ``torch.backends.cuda.matmul.allow_tf32`` and the ``fp32_precision`` settings allow
    that; LlamaGen's training script turns TF32 on): the error bound of
    :func:`_product_chunks` holds only then."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
        if device_type == "cuda":  # allow_tf32 = True sets the precision to "high"
            owners = (torch.backends, torch.backends.cuda.matmul)
        else:
            mkldnn = getattr(torch.backends, "mkldnn", None)
            owners = (torch.backends, mkldnn, getattr(mkldnn, "matmul", None))
    except RuntimeError:  # legacy and new precision settings mixed: do not guess
        return False
    for owner in owners:
        if getattr(owner, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of matrix products of ``x``'s rows: float32 for float32 data when PyTorch
    keeps float32 products in float32 on its device (:func:`_float32_products_exact`),
    else float64."""
    exact = x.dtype == torch.float32 and _float32_products_exact(x.device.type)
    return torch.float32 if exact else torch.float64


class _ProductChunk(NamedTuple):
    """Rows ``start:stop`` of ``x``, their approximations ``approx[i, j]`` of the squared
    distances to the centers less a constant of the row, and each row's ``slack``."""

    start: int
    stop: int
    approx: torch.Tensor
    slack: torch.Tensor


def _product_chunks(x: torch.Tensor, c: torch.Tensor, usable: torch.Tensor, step: int
                    ) -> Iterator[_ProductChunk]:
    """The approximate squared distances of :func:`_nearest_by_product` and
    :func:`_nearest_matmul`, ``step`` rows of ``x`` at a time, on ``x``'s device.

    Points and centers are shifted by the usable centers' mean and rounded to the working
    precision: float32 for float32 data when :func:`_float32_products_exact`, else float64
    (unit roundoff u, smallest subnormal eta; the data's range, which :func:`_check_range`
    bounds, keeps the products far from overflow). One matrix product per chunk gives
    ``a[i, j] = |c_j|^2 - 2 x_i.c_j`` of these rows, within (d + 2) u (|x_i| + |c_j|)^2 (the
    sums of the dot product and the norm, and two additions) plus, where coordinates or
    products fall below the normal range, at most (2 d + 16) eta; the shift's rounding
    moves the squared distance by at most 2 u (|x_i| + |c_j|)^2, plus
    2 sqrt(d) (|x_i| + |c_j|) eta <= u (|x_i| + |c_j|)^2 + d eta for coordinates below the
    normal range; and the host's distance ``s[i, j]`` (differences in double, summed in
    order) is within (d + 2) 2^-53 |x_i - c_j|^2 of the exact one. So ``a[i, j]`` is within
    ``slack[i] = 4 (d + 4) u (|x_i| + max_j |c_j|)^2 + (16 d + 64) eta`` of ``s[i, j]``
    less a constant of the row: more than twice the sum of the bounds, which covers the
    roundings of the bound itself (``eta`` stands for the underflows: at most one smallest
    subnormal per operation). Masked centers get ``a = inf``.
    """
    k, d = c.shape
    work = _product_dtype(x)
    unit, eta = (2.0 ** -24, 2.0 ** -149) if work == torch.float32 else (2.0 ** -53, 2.0 ** -1074)
    mean = c[usable].to(torch.float64).mean(dim=0)
    cw = (c.to(torch.float64) - mean).to(work)
    c_sq = cw.to(torch.float64).square().sum(dim=1)
    c_max = float(c_sq[usable].max().sqrt())
    c_sq = c_sq.masked_fill(~usable, float("inf")).to(work)
    scale, floor = 4.0 * (d + 4) * unit, (16 * d + 64) * eta
    for i in range(0, x.shape[0], step):
        xw = x[i:i + step].to(torch.float64) - mean
        slack = (xw.square().sum(dim=1).sqrt() + c_max).square_().mul_(scale).add_(floor)
        approx = torch.addmm(c_sq.unsqueeze(0), xw.to(work), cw.T, alpha=-2.0)
        yield _ProductChunk(i, min(i + step, x.shape[0]), approx, slack)


def _nearest_by_product(x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
                        ext: Any) -> torch.Tensor:
    """:func:`_nearest` on the host from ``_PRODUCT_MIN_D`` dimensions on: the answer of the
    compiled scan, with the centers ranked by a matrix product first.

    With ``a[i, j]`` and ``slack[i]`` of :func:`_product_chunks`, the scan's answer j* has
    ``s[i, j*] <= s[i, m]`` for the center m of the smallest ``a``, so
    ``a[i, j*] <= a[i, m] + 2 slack[i]``; ``dcpe._C.nearest_refine_cpu`` computes ``s``
    only for the centers within that of the row's smallest, as the scan computes them, and
    keeps the first smallest. On codebooks that is one or a few centers per point; at worst
    every center, the scan's own work.
    """
    k = c.shape[0]
    usable = torch.ones(k, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    first = int(torch.nonzero(usable)[0])
    xs = x.contiguous()
    cs = c.to(x.dtype).contiguous().numpy()
    threads = host_threads()
    out = torch.empty(x.shape[0], dtype=torch.int64)
    step = min(_row_chunk(k), 4096)  # a chunk's shifted rows stay in cache
    for ch in _product_chunks(xs, c, usable, step):
        out[ch.start:ch.stop] = torch.from_numpy(ext.nearest_refine_cpu(
            xs[ch.start:ch.stop].numpy(), cs, ch.approx.numpy(), ch.slack.numpy(), first,
            num_threads=threads))
    return out


def _nearest_matmul(x: torch.Tensor, c: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_nearest` on the device of ``x`` (CUDA, or the host without the extension):
    the host's answer, the first nearest center by squared distances from coordinate
    differences in double, summed in order.

    The centers are ranked by a matrix product (:func:`_product_chunks`, in float64 where
    float32 products may round through TF32 or bfloat16); a row whose smallest
    approximation is the only one within twice its slack has its answer, and only the rows
    with several such centers get those centers' distances (:func:`_sequential_sq_dist`),
    the first smallest kept. The host's distances are these for float32 data (their
    squares are exact in double); for float64 data above 12 dimensions the compiled scan
    may fuse its multiply-adds, and a distance can then differ in its last bit.
    """
    k, d = c.shape
    dev = x.device
    usable = torch.ones(k, dtype=torch.bool, device=dev) if mask is None \
        else mask.to(device=dev, dtype=torch.bool)
    first = int(torch.nonzero(usable)[0])
    c = c.to(x.dtype)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=dev)
    pair_step = max(1, _CHUNK_ELEMENTS // d)
    for ch in _product_chunks(x, c, usable, _row_chunk(k)):
        low, arg = ch.approx.min(dim=1)
        near = ch.approx <= (low.to(torch.float64) + 2.0 * ch.slack).unsqueeze(1)
        near &= usable
        count = near.sum(dim=1)
        res = torch.where(count > 0, arg, torch.full_like(arg, first))
        rows = torch.nonzero(count > 1).flatten()
        if rows.numel():
            sub, cols = torch.nonzero(near[rows], as_tuple=True)
            dist = torch.empty(sub.numel(), dtype=torch.float64, device=dev)
            xb = x[ch.start:ch.stop]
            for p in range(0, sub.numel(), pair_step):
                q = slice(p, p + pair_step)
                dist[q] = _sequential_sq_dist(xb[rows[sub[q]]], c[cols[q]])
            m = rows.numel()
            best = torch.full((m,), float("inf"), dtype=torch.float64, device=dev)
            best.scatter_reduce_(0, sub, dist, reduce="amin")
            first_best = torch.full((m,), k, dtype=torch.int64, device=dev)
            first_best.scatter_reduce_(0, sub, torch.where(dist == best[sub], cols, k),
                                       reduce="amin")
            res[rows] = first_best
        out[ch.start:ch.stop] = res
    return out


def _segment_sums(values: torch.Tensor, labels: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (float64) of the rows of ``values`` and the cluster counts.

    The rows sorted stably by label, their running sum, and each cluster's sum as the
    difference of the running sum at its ends: deterministic on every device (unlike
    atomic ``index_add`` on CUDA). Host tensors use the compiled
    ``dcpe._C.segment_sums_cpu``, in one pass the sums that :func:`_segment_sums_torch`
    gives on the host, bit for bit; other devices :func:`_segment_sums_torch`.
    """
    ext = _host_ext(values)
    if ext is not None and values.dim() == 2:
        sums, counts = ext.segment_sums_cpu(values.contiguous().numpy(),
                                            labels.contiguous().numpy(), k,
                                            num_threads=host_threads())
        return torch.from_numpy(sums), torch.from_numpy(counts)
    return _segment_sums_torch(values, labels, k)


def _segment_sums_torch(values: torch.Tensor, labels: torch.Tensor, k: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_segment_sums` in PyTorch, on any device: a stable sort and a cumulative sum."""
    order = torch.argsort(labels, stable=True)
    cs = torch.cumsum(values[order].to(torch.float64), dim=0)
    cs = torch.cat([cs.new_zeros((1,) + tuple(cs.shape[1:])), cs])
    counts = torch.bincount(labels, minlength=k)
    ends = torch.cumsum(counts, dim=0)
    return cs[ends] - cs[ends - counts], counts


def _means(x: torch.Tensor, labels: torch.Tensor, k: int, previous: torch.Tensor
           ) -> torch.Tensor:
    """Cluster means; an empty cluster keeps its previous center."""
    sums, counts = _segment_sums(x, labels, k)
    means = (sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(x.dtype)
    return torch.where((counts > 0).unsqueeze(1), means, previous)


def _refill_empty(labels: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Give every empty cluster one token: the tokens with the largest ``score`` among
    those whose cluster keeps at least one other member. Returns the moved token ids
    (in the order of the clusters they now form)."""
    moved = []
    for _ in range(8):  # a few rounds settle the rare case of two picks from one cluster
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() == 0:
            break
        movable = counts[labels] > 1
        n_take = min(int(empty.numel()), int(movable.sum()))
        if n_take == 0:
            break
        s = torch.where(movable, score.to(torch.float64),
                        torch.full_like(score, -float("inf"), dtype=torch.float64))
        pick = torch.topk(s, n_take, sorted=True).indices
        labels[pick] = empty[:n_take]
        moved.append(pick)
    if moved:
        return torch.cat(moved)
    return labels.new_empty(0)


def _canonical(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber clusters by their smallest token index; return new labels and the
    permutation ``order`` such that new cluster ``i`` is old cluster ``order[i]``."""
    n = labels.numel()
    first = torch.full((k,), n, dtype=torch.int64, device=labels.device)
    first.scatter_reduce_(0, labels, torch.arange(n, device=labels.device), reduce="amin")
    order = torch.argsort(first, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(k, device=labels.device)
    return inverse[labels], order


def _seed_generator(seed: Any) -> torch.Generator:
    s = check_seed(seed)
    return torch.Generator(device="cpu").manual_seed(s)


def _init_indices(x: torch.Tensor, k: int, init: str, gen: torch.Generator,
                  n_local_trials: int | None) -> torch.Tensor:
    """Indices of the ``k`` tokens chosen as initial centers."""
    n = x.shape[0]
    if init == "random":
        return torch.randperm(n, generator=gen)[:k].to(x.device)
    # Greedy k-means++ (Arthur & Vassilvitskii 2007; greedy variant as in scikit-learn):
    # draw several candidates proportionally to D^2, keep the one that lowers the
    # potential most.
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    ext = _host_ext(x)
    if ext is not None:  # compiled, exact distances in double
        u = torch.rand((k - 1, trials), generator=gen, dtype=torch.float64)
        return torch.from_numpy(ext.kmeanspp_cpu(x.contiguous().numpy(), k, first, u.numpy(),
                                                 num_threads=host_threads()))
    idx = torch.empty(k, dtype=torch.int64, device=x.device)
    idx[0] = first
    # The rows shifted by their mean, in float64 where float32 matrix products may round
    # through TF32 or bfloat16.
    xw = (x.to(torch.float64) - x.mean(dim=0, dtype=torch.float64)).to(_product_dtype(x))
    x_sq = xw.square().sum(dim=1)
    closest = (xw - xw[first]).square().sum(dim=1)
    for c in range(1, k):
        u = torch.rand(trials, generator=gen, dtype=torch.float64).to(x.device)
        cum = torch.cumsum(closest.to(torch.float64), dim=0)
        cand = torch.searchsorted(cum, u * cum[-1], right=True).clamp_(max=n - 1)
        # (trials, N) squared distances to the candidates; the expansion of the shifted
        # rows is accurate enough for sampling weights (the host's are exact).
        d_cand = torch.addmm(x_sq[cand].unsqueeze(1), xw[cand], xw.T, alpha=-2.0)
        d_cand += x_sq.unsqueeze(0)
        new = torch.minimum(closest.unsqueeze(0), d_cand.clamp_(min=0))
        best = int(new.sum(dim=1).argmin())
        closest = new[best]
        idx[c] = cand[best]
    return idx


def _initial_centers(x: torch.Tensor, k: int, start: str | torch.Tensor,
                     gen: torch.Generator, n_local_trials: int | None) -> torch.Tensor:
    """A copy of the starting centers: ``start`` itself when it holds centers (from
    :func:`_check_init_or_centers`), else the rows its seeding method picks."""
    if isinstance(start, torch.Tensor):
        return start.clone()
    return x[_init_indices(x, k, start, gen, n_local_trials)].clone()


@_fit_threads
def kmeans_plusplus(
    x: Any,
    k: int,
    *,
    seed: int = 0,
    n_local_trials: int | None = None,
) -> tuple[Any, Any]:
    """Greedy k-means++ seeding, on its own.

    The seeding that :func:`kmeans` and :func:`balanced_kmeans` run for
    ``init="k-means++"``, with the same generator: ``kmeans(x, k, init=centers)`` with
    ``centers`` from ``kmeans_plusplus(x, k, seed=s)`` gives the result of
    ``kmeans(x, k, seed=s)`` (``n_init=1``, default ``n_local_trials``), and likewise for
    :func:`balanced_kmeans`. One seeding can so start both, as :func:`dcpe.report.compare`
    does.

    Parameters
    ----------
    x : array-like or torch.Tensor
        ``(N, d)`` data (the codebook), float or integer, finite.
    k : int
        Number of centers, ``1 <= k <= N``.
    seed : int
        Seed of the CPU ``torch.Generator`` the draws come from.
    n_local_trials : int, optional
        Candidates drawn per center, the one that lowers the potential most is kept
        (default ``2 + int(log(k))``, as in scikit-learn).

    Returns
    -------
    centers : numpy.ndarray or torch.Tensor
        ``(k, d)`` rows of ``x`` (in the compute dtype: float32, or float64 for float64
        input), in the order they were chosen.
    indices : numpy.ndarray or torch.Tensor
        ``(k,)`` int64: ``centers[i]`` is ``x[indices[i]]``.

    Notes
    -----
    Arthur & Vassilvitskii 2007, "k-means++: the advantages of careful seeding", with the
    greedy choice among several candidates of scikit-learn's ``kmeans_plusplus``; the
    distances are exact (coordinate differences, in double) on the host.

    Examples
    --------
    >>> import numpy as np
    >>> from dcpe.baselines import kmeans, kmeans_plusplus
    >>> x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    >>> centers, idx = kmeans_plusplus(x, 16, seed=0)
    >>> bool((kmeans(x, 16, init=centers).labels == kmeans(x, 16, seed=0).labels).all())
    True
    """
    xt, from_numpy = _prepare(x)
    k = check_int("k", k, 1, xt.shape[0])
    if n_local_trials is not None:
        n_local_trials = check_int("n_local_trials", n_local_trials, 1)
    idx = _init_indices(xt, k, "k-means++", _seed_generator(seed), n_local_trials)
    return _output(xt[idx], from_numpy), _output(idx.to(xt.device), from_numpy)


# --------------------------------------------------------------------------- k-means


def _nearest_after_moves(x: torch.Tensor, c: torch.Tensor, before: torch.Tensor,
                         answer: torch.Tensor) -> torch.Tensor | None:
    """:func:`_nearest` of ``x`` and the centers ``c`` from ``answer``, its answer for the
    centers ``before``, when few centers moved; None where it does not apply (not host data
    above 12 dimensions, ``DCPE_CPU_MOVES=0``) or would not save time.

    Above 12 dimensions the host's search gives the scan's answer: the first center of the
    smallest distance s, computed as the scan computes it. A center that did not move keeps
    its distances, none below s(answer) before, and those equal to it belong to larger
    indices. So where the answer did not move, or moved no farther from the point, the new
    answer is the first nearest of the answer and the moved centers: their first nearest
    from one search of the moved centers alone, then ``dcpe._C.nearest_among_cpu`` between
    the two (by the scan's distances, ties to the smaller index). Only the points whose
    answer moved away are searched again among all centers. The same answers as
    :func:`_nearest`, bit for bit; late in Lloyd's iterations few centers move (at
    65,536 x 256 and k = 4,096, under 5% after 8 steps).
    """
    ext = _host_ext(x)
    if ext is None or x.shape[1] < _PRODUCT_MIN_D or os.environ.get("DCPE_CPU_MOVES") == "0":
        return None
    moved = (c != before).any(dim=1)
    ids = torch.nonzero(moved).flatten()
    if ids.numel() == 0:
        return answer.clone()
    threads = host_threads()
    xs, cs = x.contiguous().numpy(), c.to(x.dtype).contiguous().numpy()
    rows = torch.nonzero(moved[answer]).flatten()  # the points whose answer moved
    if rows.numel():
        own = answer[rows].unsqueeze(1).numpy()
        xr = x[rows].contiguous().numpy()
        then = ext.nearest_among_cpu(xr, before.to(x.dtype).contiguous().numpy(), own,
                                     num_threads=threads)[1]
        now = ext.nearest_among_cpu(xr, cs, own, num_threads=threads)[1]
        rows = rows[torch.from_numpy(now > then)]
    if ids.numel() / c.shape[0] + rows.numel() / x.shape[0] > _MOVES_AT_MOST:
        return None
    near = ids[_nearest(x, c[ids])]
    out = torch.from_numpy(ext.nearest_among_cpu(
        xs, cs, torch.stack([answer, near], dim=1).numpy(), num_threads=threads)[0])
    if rows.numel():
        out[rows] = _nearest(x[rows], c)
    return out


def _lloyd(x: torch.Tensor, centers: torch.Tensor, k: int, n_iter: int, tol_abs: float
           ) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    labels: torch.Tensor | None = None
    history: list[float] = []
    answer = searched = None  # the last search's answer, and its centers
    it = 0
    while it < n_iter:
        it += 1
        new = None if answer is None else _nearest_after_moves(x, centers, searched, answer)
        if new is None:
            new = _nearest(x, centers)
        answer, searched = new.clone(), centers
        dist = _sq_dist_rows(x, centers, new)
        if labels is not None:
            # Keep the old label unless the new one is strictly closer when measured
            # exactly: every token's term never increases. Only the tokens whose nearest
            # center changed need their old distance (the others' is ``dist``).
            other = torch.nonzero(new != labels).flatten()
            if other.numel():
                old = _sq_dist_rows(x[other], centers, labels[other])
                keep = dist[other] >= old
                new[other] = torch.where(keep, labels[other], new[other])
                dist[other] = torch.where(keep, old, dist[other])
        moved = _refill_empty(new, dist, k)
        if moved.numel():
            centers = centers.clone()
            centers[new[moved]] = x[moved]
            dist[moved] = 0
        history.append(_total(dist))
        changed = labels is None or bool((new != labels).any())
        labels = new
        new_centers = _means(x, labels, k, centers)
        shift = _total((new_centers - centers).to(torch.float64).square())
        centers = new_centers
        if not changed or shift <= tol_abs:
            break
    assert labels is not None
    return labels, centers, it, history


@_fit_threads
def kmeans(
    x: Any,
    k: int,
    *,
    init: str | np.ndarray | torch.Tensor = "k-means++",
    n_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    n_init: int = 1,
    n_local_trials: int | None = None,
) -> ClusteringResult:
    """Lloyd's k-means with k-means++ or random initialisation.

    Parameters
    ----------
    x : array-like or torch.Tensor
        ``(N, d)`` data (the codebook), float or integer, finite.
    k : int
        Number of clusters, ``1 <= k <= N``.
    init : {"k-means++", "random"} or array-like of shape (k, d)
        ``"k-means++"``: greedy k-means++ seeding (``n_local_trials`` candidates per
        center, default ``2 + int(log(k))`` as in scikit-learn). ``"random"``: ``k``
        distinct tokens drawn uniformly. An array: the initial centers (for example from
        :func:`kmeans_plusplus`); ``n_init`` must then be 1, and ``seed`` is not used.
    n_iter : int
        Maximum number of assignment steps per run.
    tol : float
        Stop when the total squared movement of the centers is at most
        ``tol * mean(var(x, axis=0))`` (scikit-learn's rule), or when no label changes.
    seed : int
        Seed of the CPU ``torch.Generator`` used for initialisation.
    n_init : int
        Number of runs with consecutive draws of the same generator; the run with the
        lowest inertia is returned.
    n_local_trials : int, optional
        Candidates per center for greedy k-means++.

    Returns
    -------
    ClusteringResult
        ``labels`` (canonical), ``centers``, ``inertia``, ``n_iter``, ``history``
        (sum of squared distances after each assignment step, non-increasing).

    Notes
    -----
    A cluster that becomes empty is given the token farthest from its center (among
    tokens whose cluster keeps another member), which lowers the objective. Labels can
    have fewer than ``k`` distinct values only if ``x`` has fewer than ``k`` distinct
    rows.

    On host data above 12 dimensions, once few centers move in a step, the next step
    compares each token's last nearest center only with the centers that moved, and
    searches all centers again only for the tokens whose nearest center moved away from
    them: the same labels as a full search, bit for bit (``DCPE_CPU_MOVES=0`` searches
    every token at every step). Float64 data whose clusters' sums round gain less: their
    centers move by a rounding whenever a cluster before them changes.

    Examples
    --------
    >>> import numpy as np
    >>> from dcpe.baselines import kmeans
    >>> x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    >>> res = kmeans(x, 16, seed=0)
    >>> res.labels.shape, res.centers.shape
    ((500,), (16, 8))
    """
    xt, from_numpy = _prepare(x)
    n = xt.shape[0]
    k = check_int("k", k, 1, n)
    start = _check_init_or_centers(init, xt, k)
    n_iter = check_int("n_iter", n_iter, 1)
    tol = _check_tol(tol)
    n_init = check_int("n_init", n_init, 1)
    if isinstance(start, torch.Tensor) and n_init != 1:
        raise ValueError(f"n_init must be 1 when init is an array of centers (every run would "
                         f"start from them), got {n_init}")
    if n_local_trials is not None:
        n_local_trials = check_int("n_local_trials", n_local_trials, 1)
    gen = _seed_generator(seed)
    tol_abs = tol * float(xt.to(torch.float64).var(dim=0, unbiased=False).mean())

    best = None
    for _ in range(n_init):
        first = _initial_centers(xt, k, start, gen, n_local_trials)
        labels, centers, it, history = _lloyd(xt, first, k, n_iter, tol_abs)
        inertia = _total(_sq_dist_rows(xt, centers, labels))
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia, it, history)
    assert best is not None
    labels, centers, inertia, it, history = best
    labels, order = _canonical(labels, k)
    return ClusteringResult(_output(labels, from_numpy), _output(centers[order], from_numpy),
                            inertia, it, tuple(history))


# --------------------------------------------------------------------------- balanced


def _balanced_assign(x: torch.Tensor, centers: torch.Tensor, capacity: torch.Tensor,
                     n_candidates: int, prices: np.ndarray | None = None,
                     labels: torch.Tensor | None = None,
                     lists: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Optimal capacity-constrained assignment (``dcpe._C.balanced_assign_cpu``).

    Minimises the sum of squared distances subject to ``capacity[j]`` tokens in cluster
    ``j`` (``capacity`` sums to N), by a forward auction with epsilon-scaling (Bertsekas
    1988; Bertsekas & Castanon 1989): the cost is within a relative ``1e-6`` of the
    optimum.  Runs on the host (the problem is small next to the data transfer); labels
    are returned on ``x``'s device.  ``prices`` and ``labels`` from a previous call with
    nearby centers are a warm start (points whose center is still near-optimal keep it);
    the prices of this solution are returned. ``lists``, a dict passed from call to call
    (empty at first), carries the tokens' candidate lists to the next call, which then
    computes only the listed distances for most tokens instead of all ``N * k``.
    """
    from . import _C

    dt = np.float64 if x.dtype == torch.float64 else np.float32
    xs = x.detach().cpu().numpy().astype(dt, copy=False)
    cs = centers.detach().cpu().numpy().astype(dt, copy=False)
    cap = capacity.detach().cpu().numpy().astype(np.int64)
    pr = np.zeros(cap.shape[0]) if prices is None else np.array(prices, dtype=np.float64)
    warm = None if labels is None else labels.detach().cpu().numpy().astype(np.int64)
    out, _stats = _C.balanced_assign_cpu(xs, cs, cap, pr, n_candidates, 1e-6,
                                         num_threads=host_threads(), labels=warm, lists=lists)
    return torch.from_numpy(out).to(x.device), pr


@_fit_threads
def balanced_kmeans(
    x: Any,
    k: int,
    *,
    init: str | np.ndarray | torch.Tensor = "k-means++",
    n_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    n_candidates: int = 32,
) -> ClusteringResult:
    """k-means with equal cluster sizes (IAR's codebook clustering).

    Parameters
    ----------
    x : array-like or torch.Tensor
        ``(N, d)`` data.
    k : int
        Number of clusters, ``1 <= k <= N``.
    init : {"k-means++", "random"} or array-like of shape (k, d)
        Initial centers, as in :func:`kmeans` (an array: those centers; ``seed`` is then
        not used).
    n_iter : int
        Maximum number of assignment steps.
    tol : float
        Stop when the total squared movement of the centers is at most
        ``tol * mean(var(x, axis=0))``.
    seed : int
        Seed of the CPU ``torch.Generator`` used for initialisation.
    n_candidates : int
        Centers kept per token by the assignment (a token whose list runs out rescans
        all centers and keeps a longer list). It sets the speed, not the guarantee: every
        value gives an assignment within the relative ``1e-6`` of the optimum, but where
        near-optimal assignments differ by less, different values can return different
        ones (and the later steps then differ too).

    Returns
    -------
    ClusteringResult
        ``history`` (sum of squared distances after each accepted assignment) never
        increases.

    Notes
    -----
    Sizes: every cluster has ``N // k`` or ``N // k + 1`` tokens; exactly ``N % k``
    clusters have the larger size. The assignment step is optimal: it minimises the sum
    of squared distances to the current centers under the size constraint (a transport
    problem), solved by a forward auction with epsilon-scaling [Bertsekas 1988; Bertsekas
    & Castanon 1989] in the compiled extension, to within a relative ``1e-6``; a step
    whose centers moved less (mean squared move) than a third of the tokens' mean squared
    distance to them starts from the previous step's prices and assignment, its first
    epsilon set from the typical optimality violation of the tokens that must move, and a
    step whose centers moved more (typically the second, where the seeds give way to
    their clusters' means) starts from no prices, as the first. Between epsilon phases, a
    token that keeps its cluster holds its place at the bid it would place then, so a
    cluster's price rises as soon as one of its tokens is outbid. From 64 dimensions and 1,024
    clusters on, the tokens' candidate lists are ranked by float32 products first and only
    the distances that the products' error bound leaves undecided are computed: the same
    lists, so the same assignment (``DCPE_CPU_PRODUCTS=0`` computes every distance). Below
    those sizes, each step after the first also starts from the previous step's candidate
    lists, cut to ``n_candidates`` centers: their distances are computed again for the
    moved centers, the bound on the centers outside a list is widened by how far the
    centers moved (the sixteenth of the centers that moved farthest are compared with
    every token instead), and only the lists that ran out are made from all centers again;
    the final epsilon is set from a lower bound of the tokens' nearest-center distances.
    The lists differ from fresh ones, so where near-optimal assignments differ by less
    than the tolerance a step can return another one than fresh lists would; the
    guarantee is the same. The center step takes the cluster means. A new assignment is
    kept only if it lowers the objective, otherwise the iteration stops. The assignment
    runs on the host; CUDA input is copied there and labels come back on its device.
    """
    xt, from_numpy = _prepare(x)
    n = xt.shape[0]
    k = check_int("k", k, 1, n)
    start = _check_init_or_centers(init, xt, k)
    n_iter = check_int("n_iter", n_iter, 1)
    tol = _check_tol(tol)
    n_candidates = check_int("n_candidates", n_candidates, 1)
    gen = _seed_generator(seed)
    tol_abs = tol * float(xt.to(torch.float64).var(dim=0, unbiased=False).mean())

    capacity = torch.full((k,), n // k, dtype=torch.int64, device=xt.device)
    capacity[: n % k] += 1
    centers = _initial_centers(xt, k, start, gen, None)
    lists: dict = {}  # the candidate lists, carried from step to step
    labels, prices = _balanced_assign(xt, centers, capacity, n_candidates, lists=lists)
    history = [_total(_sq_dist_rows(xt, centers, labels))]
    it = 1
    while it < n_iter:
        new_centers = _means(xt, labels, k, centers)
        shift = _total((new_centers - centers).to(torch.float64).square())
        centers = new_centers
        current = _total(_sq_dist_rows(xt, centers, labels))
        if shift <= tol_abs:
            break
        # the previous prices and assignment are a start while the centers moved little
        # next to the tokens' distances (see _WARM_MOVE_BELOW)
        warm = shift * n < _WARM_MOVE_BELOW * current * k
        new, prices = _balanced_assign(xt, centers, capacity, n_candidates,
                                       prices if warm else None, labels if warm else None,
                                       lists)
        it += 1
        obj = _total(_sq_dist_rows(xt, centers, new))
        if not obj < current:
            break
        labels = new
        history.append(obj)
    centers = _means(xt, labels, k, centers)
    inertia = _total(_sq_dist_rows(xt, centers, labels))
    labels, order = _canonical(labels, k)
    return ClusteringResult(_output(labels, from_numpy), _output(centers[order], from_numpy),
                            inertia, it, tuple(history))


# --------------------------------------------------------------------------- centroid-free


def _mean_member_distances(x: torch.Tensor, labels: torch.Tensor, k: int,
                           counts: torch.Tensor, rows: slice) -> torch.Tensor:
    """``(len(rows), k)``: mean Euclidean distance of each token in ``rows`` to the
    current members of every cluster (``inf`` for empty clusters)."""
    order = torch.argsort(labels, stable=True)
    xs = x[order]
    ends = torch.cumsum(counts, dim=0)
    d = torch.cdist(x[rows], xs, compute_mode="donot_use_mm_for_euclid_dist")
    cs = torch.cumsum(d.to(torch.float64), dim=1)
    cs = torch.cat([cs.new_zeros((cs.shape[0], 1)), cs], dim=1)
    sums = cs[:, ends] - cs[:, ends - counts]
    return sums / counts.to(torch.float64)  # x / 0 -> inf for empty clusters


@_fit_threads
def centroid_free_kmeans(
    x: Any,
    k: int,
    *,
    init: str = "k-means++",
    n_iter: int = 100,
    seed: int = 0,
) -> ClusteringResult:
    """k-means without centroids (the paper's "k-means w/o centroid" ablation).

    Each step, every token moves to the cluster with the smallest mean Euclidean distance
    from it to the cluster's current members (the token itself counts as a member of its
    own cluster, at distance 0). All tokens move at once, from the same state.

    Parameters
    ----------
    x : array-like or torch.Tensor
        ``(N, d)`` data.
    k : int
        Number of clusters, ``1 <= k <= N``.
    init : {"k-means++", "random"}
        How the ``k`` seed tokens are chosen; the first assignment puts every token with
        its nearest seed.
    n_iter : int
        Maximum number of assignment steps; stops earlier when no token moves.
    seed : int
        Seed of the CPU ``torch.Generator`` used for initialisation.

    Returns
    -------
    ClusteringResult
        ``centers`` are the cluster means (for reference), ``inertia`` the k-means
        objective with respect to them, ``history`` the mean over tokens of the mean
        distance to their cluster's members, for the assignment each step starts from.

    Notes
    -----
    One step costs ``O(N^2 d)`` time (chunked, bounded memory). A token keeps its
    cluster on ties. A cluster that empties is given the token with the largest mean
    distance to its own cluster (among clusters with two or more members).
    """
    xt, from_numpy = _prepare(x)
    n = xt.shape[0]
    k = check_int("k", k, 1, n)
    init = _check_init(init)
    n_iter = check_int("n_iter", n_iter, 1)
    gen = _seed_generator(seed)

    seeds = _init_indices(xt, k, init, gen, None)
    labels = _nearest(xt, xt[seeds])
    labels[seeds] = torch.arange(k, device=xt.device)  # duplicates: each seed owns one
    history: list[float] = []
    step = _row_chunk(max(n, k))
    it = 0
    while it < n_iter:
        it += 1
        host_threads()  # PyTorch's pool follows the load, step by step
        counts = torch.bincount(labels, minlength=k)
        new = torch.empty_like(labels)
        own = torch.empty(n, dtype=torch.float64, device=xt.device)
        for i in range(0, n, step):
            rows = slice(i, min(n, i + step))
            mean_d = _mean_member_distances(xt, labels, k, counts, rows)
            cur = labels[rows]
            own_d = mean_d.gather(1, cur.unsqueeze(1)).squeeze(1)
            best_d, best = mean_d.min(dim=1)
            stay = own_d <= best_d
            new[rows] = torch.where(stay, cur, best)
            own[rows] = own_d
        history.append(_total(own) / n)
        _refill_empty(new, own, k)
        changed = bool((new != labels).any())
        labels = new
        if not changed:
            break
    centers = _means(xt, labels, k, xt[seeds])
    inertia = _total(_sq_dist_rows(xt, centers, labels))
    labels, order = _canonical(labels, k)
    return ClusteringResult(_output(labels, from_numpy), _output(centers[order], from_numpy),
                            inertia, it, tuple(history))
