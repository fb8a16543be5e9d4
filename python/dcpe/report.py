"""Cluster statistics and the comparison report (the paper's Fig. 4 and a coherence
table): DCPE against k-means and balanced k-means with the same number of clusters.

Statistics (:func:`coherence`), all distances Euclidean:

``mean_intra_pairwise_distance``
    Mean distance over all unordered pairs of distinct tokens that share a cluster
    (``None`` when every cluster is a singleton).
``expected_distance_to_random_member``
    Mean over tokens ``i`` of the expected distance from ``i`` to a token drawn
    uniformly from ``i``'s cluster (``i`` itself included): the error of decoding a
    correctly predicted cluster by a random member, as the paper's sampler does.
``inertia``
    Sum of squared distances of the tokens to their cluster means (k-means objective).
``largest_cluster``, ``smallest_cluster``, ``singletons``, ``num_clusters``,
``num_tokens``.

Sums of pairwise distances come from a compiled kernel (:func:`member_distance_sums`): every
token's distances to its cluster's members, from coordinate differences in float64, summed
in float64 in an order that does not depend on the thread count, without the clusters'
distance matrices.

What these statistics measure
-----------------------------
They are proxies of the codebook's geometry: how close the tokens that share a cluster
are. They do not measure generation quality. k-means minimises ``inertia`` directly, so
on some codebooks it scores better than DCPE on them. The paper's gains are measured
downstream, by training a generator on the clusters and scoring its images (FID, IS).

The figure needs matplotlib (``pip install matplotlib`` or ``pip install "dcpe[report]"``);
:func:`write_report` checks for it before computing anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write

__all__ = ["coherence", "compare", "markdown_table", "require_matplotlib", "write_report"]

_BASELINES = ("kmeans", "balanced_kmeans")

#: What the coherence statistics measure, said in every report.
PROXY_NOTE = (
    "These statistics measure the codebook's geometry (how close the tokens of a cluster "
    "are), not generation quality. k-means minimises inertia directly, so on some "
    "codebooks it scores better than DCPE on them; the paper's gains are measured "
    "downstream, by training a generator on the clusters (FID, IS).")

_INSTALL = 'pip install matplotlib (or pip install "dcpe[report]")'


def require_matplotlib() -> None:
    """Raise :class:`ImportError` with the install command unless matplotlib imports.

    :func:`write_report` (and ``dcpe report``) call it before any work.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"the report's figure needs matplotlib, which is not installed; "
                          f"install it with: {_INSTALL}") from None


def codebook_tensor(codebook: Any) -> torch.Tensor:
    """The codebook as a CPU tensor in its own dtype, checked to be (N, d) with N, d >= 1
    (NumPy input: of a real dtype)."""
    if isinstance(codebook, torch.Tensor):
        t = codebook.detach().cpu()
    else:
        a = np.asarray(codebook)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"codebook must hold real numbers, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"codebook must be 2-D (N, d) with N, d >= 1, "
                         f"got shape {tuple(t.shape)}")
    return t


def _as_codebook(codebook: Any) -> torch.Tensor:
    t = codebook_tensor(codebook).to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("codebook contains NaN or Inf")
    return t


def _as_labels(labels: Any, n: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"labels must hold integers, got dtype {t.dtype}")
    else:
        a = np.asarray(labels)
        if a.dtype.kind not in "iu":
            raise TypeError(f"labels must hold integers, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.to(torch.int64)
    if t.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the codebook, "
                         f"got {tuple(t.shape)}")
    if int(t.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(t.min())}")
    return t


def member_distance_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``(N,)`` float64: for every token, the sum of its distances to its cluster's members.

    ``x`` is a float64 CPU tensor, ``labels`` int64 ids in ``[0, k)``. The rows are sorted by
    cluster and handed to the compiled kernel (``dcpe._C.member_sums_cpu``), which computes
    each pair within a cluster once, from coordinate differences in double, and adds it to
    both tokens' sums. Memory: a sorted copy of ``x`` and at most 256 MiB of partial sums,
    not the clusters' distance matrices. Each sum's order is fixed, so the result does not
    depend on the number of threads.
    """
    from . import _C
    from ._threads import host_threads

    order = torch.argsort(labels, stable=True)
    sizes = torch.bincount(labels, minlength=k)
    offsets = torch.zeros(k + 1, dtype=torch.int64)
    torch.cumsum(sizes, dim=0, out=offsets[1:])
    xs = x[order].to(torch.float64).contiguous().numpy()
    sums = torch.from_numpy(_C.member_sums_cpu(xs, offsets.numpy(), num_threads=host_threads()))
    out = torch.empty_like(sums)
    out[order] = sums
    return out


def _pair_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per cluster, the sum of distances over unordered pairs of its members."""
    per_token = member_distance_sums(x, labels, k)
    return torch.bincount(labels, weights=per_token, minlength=k) / 2


def coherence(codebook: Any, labels: Any) -> dict[str, Any]:
    """Coherence statistics of a partition of a codebook.

    Parameters
    ----------
    codebook : array-like or torch.Tensor
        ``(N, d)`` codebook.
    labels : array-like or torch.Tensor
        ``(N,)`` integer cluster ids (``>= 0``; unused ids are ignored).

    Returns
    -------
    dict
        ``num_tokens``, ``num_clusters`` (non-empty clusters), ``largest_cluster``,
        ``smallest_cluster``, ``singletons``, ``mean_intra_pairwise_distance``,
        ``expected_distance_to_random_member``, ``inertia`` (see the module docstring);
        plain Python numbers.
    """
    x = _as_codebook(codebook)
    n = x.shape[0]
    lab = _as_labels(labels, n)
    k = int(lab.max()) + 1
    sizes = torch.bincount(lab, minlength=k)
    used = sizes > 0
    pair_sums = _pair_sums(x, lab, k)
    n_pairs = int((sizes * (sizes - 1) // 2).sum())
    nonempty = sizes[used].to(torch.float64)
    expected = float((2 * pair_sums[used] / nonempty).sum()) / n
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64).index_add_(0, lab, x)
    means = sums / sizes.clamp(min=1).unsqueeze(1)
    inertia = float((x - means[lab]).square().sum())
    return {
        "num_tokens": int(n),
        "num_clusters": int(used.sum()),
        "largest_cluster": int(sizes.max()),
        "smallest_cluster": int(nonempty.min()),
        "singletons": int((sizes == 1).sum()),
        "mean_intra_pairwise_distance": (float(pair_sums.sum()) / n_pairs) if n_pairs else None,
        "expected_distance_to_random_member": expected,
        "inertia": inertia,
    }


def compare(codebook: Any, prior: Any, *, methods: Sequence[str] = _BASELINES,
            seed: int = 0, n_iter: int = 50, show_progress: bool | None = False
            ) -> dict[str, Any]:
    """Compare a prior with centroid baselines that use the same number of clusters.

    Parameters
    ----------
    codebook : array-like or torch.Tensor
        ``(N, d)`` codebook the prior was made for (checked against the prior's stored
        fingerprint, when it has one).
    prior : CodebookPrior
        The prior (usually DCPE).
    methods : sequence of {"kmeans", "balanced_kmeans"}
        Baselines to run (at most ``n_iter`` iterations), from one greedy k-means++
        seeding with ``seed`` (:func:`dcpe.baselines.kmeans_plusplus`), computed once:
        each result is the one its function gives with ``seed``.
    seed : int
        Seed of the baselines.
    n_iter : int
        Maximum iterations of the baselines.
    show_progress : bool or None
        Progress bar on standard error over the prior and each baseline, naming the one
        running and its elapsed time (``None``: only on a terminal).

    Returns
    -------
    dict
        ``num_tokens``, ``dim``, ``num_clusters``, ``prior`` (its metadata),
        ``methods``: ``{name: coherence dict}`` with the prior under its own method name
        (``"dcpe"`` for DCPE; ``"kmeans (prior)"`` for a k-means prior compared with the
        ``"kmeans"`` baseline, and likewise for the others) first, and ``labels``:
        ``{name: (N,) int64 ndarray}``, in the same order.
    """
    from . import baselines
    from ._progress import progress
    from ._validation import check_int, check_seed
    from .prior import CodebookPrior

    if not isinstance(prior, CodebookPrior):
        raise TypeError(f"prior must be a CodebookPrior, got {type(prior).__name__}")
    for m in methods:
        if m not in _BASELINES:
            raise ValueError(f"methods may contain {', '.join(_BASELINES)}; got {m!r}")
    seed = check_seed(seed)  # before any work, as the baselines would check them after it
    n_iter = check_int("n_iter", n_iter, 1)
    x = _as_codebook(codebook)
    prior.check_codebook(x.to(torch.float32))
    k = prior.num_clusters
    x32 = x.to(torch.float32).numpy()
    name = prior.method or "prior"
    if name in methods:  # a k-means prior beside the baseline of its method: both rows
        name = f"{name} (prior)"
    labels = {name: prior.token_to_cluster.cpu().numpy()}
    stats = {}
    bar = progress(total=1 + len(methods), desc=f"report: {name} statistics", unit="method",
                   disable=None if show_progress is None else not show_progress)
    with bar, _ticking(bar):
        stats[name] = coherence(x, labels[name])
        bar.update()
        start = None
        for m in methods:
            if start is None:
                bar.set_description_str(f"report: k-means++ seeding (k={k})")
                start, _ = baselines.kmeans_plusplus(x32, k, seed=seed)
            bar.set_description_str(f"report: {m} (k={k}, at most {n_iter} iterations)")
            res = getattr(baselines, m)(x32, k, init=start, n_iter=n_iter)
            labels[m] = res.labels
            stats[m] = coherence(x, res.labels)
            bar.update()
    return {
        "num_tokens": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "num_clusters": int(k),
        "prior": prior.metadata(),
        "methods": stats,
        "labels": labels,
    }


@contextlib.contextmanager
def _ticking(bar: Any, interval: float = 0.5) -> Iterator[None]:
    """Redraw ``bar`` every ``interval`` seconds, so that its elapsed time keeps moving
    while one long step (a k-means baseline) runs."""
    if getattr(bar, "disable", True):
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=tick, name="dcpe-report-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def format_cell(v: Any) -> str:
    """A table cell: ``-`` for None, floats to four decimals (also used by ``dcpe.sweep``)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(result: dict[str, Any]) -> str:
    """The coherence table of a :func:`compare` result as markdown, followed by
    :data:`PROXY_NOTE` (what the statistics measure)."""
    cols = [("clusters", "num_clusters"), ("largest", "largest_cluster"),
            ("singletons", "singletons"),
            ("mean intra-cluster pairwise dist.", "mean_intra_pairwise_distance"),
            ("E[dist. to random member]", "expected_distance_to_random_member"),
            ("inertia", "inertia")]
    lines = [
        "# Codebook prior report\n",
        f"Codebook: {result['num_tokens']} tokens x {result['dim']} dims; "
        f"k = {result['num_clusters']}.\n",
        "| method | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, s in result["methods"].items():
        lines.append(f"| {name} | " + " | ".join(format_cell(s[key]) for _, key in cols) + " |")
    lines += ["", PROXY_NOTE]
    return "\n".join(lines) + "\n"


def _plot_sizes(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    ax_hist, ax_rank = fig.subplots(1, 2)
    # the prior (first) and the baselines but balanced k-means, whose sizes are all equal
    prior_name, *others = result["labels"]
    names = [prior_name] + [n for n in others if n != "balanced_kmeans"]
    all_sizes = {n: np.bincount(result["labels"][n]) for n in names}
    top = max(int(s.max()) for s in all_sizes.values())
    bins = np.unique(np.round(np.logspace(0, math.log10(top + 1), 30)).astype(int))
    if bins.size < 2:
        bins = np.array([1, 2])
    for n, s in all_sizes.items():
        s = s[s > 0]
        ax_hist.hist(s, bins=bins, histtype="step", linewidth=1.5, label=n)
        ax_rank.plot(np.arange(1, s.size + 1), np.sort(s)[::-1], label=n)
    ax_hist.set(xscale="log", yscale="log", xlabel="cluster size (tokens)",
                ylabel="number of clusters", title="Cluster-size distribution")
    ax_rank.set(xscale="log", yscale="log", xlabel="cluster rank",
                ylabel="cluster size (tokens)", title="Clusters by size")
    for ax in (ax_hist, ax_rank):
        ax.legend()
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"{result['num_tokens']} tokens into k = {result['num_clusters']} clusters")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")


def write_report(out_dir: str | os.PathLike, codebook: Any, prior: Any, *,
                 result: dict[str, Any] | None = None, methods: Sequence[str] = _BASELINES,
                 seed: int = 0, n_iter: int = 50,
                 show_progress: bool | None = False) -> dict[str, Path]:
    """Write the comparison report into ``out_dir`` (created if missing).

    Files (each written atomically): ``cluster_sizes.png`` (Fig. 4: cluster-size
    distribution of the prior vs k-means with the same k), ``coherence.md`` (the table
    and :data:`PROXY_NOTE`: what the statistics measure) and ``coherence.json`` (the
    :func:`compare` result without the labels, plus ``"note"``: the same text).
    matplotlib is checked first (:func:`require_matplotlib`), before any work.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory.
    codebook, prior
        As in :func:`compare`.
    result : dict, optional
        A :func:`compare` result to reuse instead of computing one.
    methods, seed, n_iter, show_progress
        Passed to :func:`compare`.

    Returns
    -------
    dict
        ``{"figure": path, "markdown": path, "json": path}``.

    Raises
    ------
    ImportError
        matplotlib is not installed (the message gives the install command).
    ValueError
        ``out_dir`` exists and is not a directory, or as :func:`compare`.
    """
    from ._validation import check_path

    out = check_path("out_dir", out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out}")
    require_matplotlib()
    if result is None:
        result = compare(codebook, prior, methods=methods, seed=seed, n_iter=n_iter,
                         show_progress=show_progress)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"figure": out / "cluster_sizes.png", "markdown": out / "coherence.md",
             "json": out / "coherence.json"}
    _plot_sizes(result, paths["figure"])
    with atomic_write(paths["markdown"], "w") as fh:
        fh.write(markdown_table(result))
    public = {key: value for key, value in result.items() if key != "labels"}
    public["note"] = PROXY_NOTE
    with atomic_write(paths["json"], "w") as fh:
        json.dump(public, fh, indent=2)
        fh.write("\n")
    return paths
