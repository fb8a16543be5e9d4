"""Choosing k: cluster statistics of DCPE over a grid of k, from one dendrogram.

:func:`sweep` runs :func:`dcpe.linkage` once and cuts the tree at every ``k`` of the grid
with :func:`dcpe.cut` (a cut costs ``O(N)``), then measures each partition. For every
``k`` and method (``"dcpe"``, and ``"kmeans"`` at the same ``k`` when asked for):

``expected_distance_to_random_member``
    Mean over tokens ``i`` of the expected Euclidean distance from ``i`` to a token drawn
    uniformly from ``i``'s cluster (``i`` itself included). This is the error of the
    decoding step that draws a random member of a correctly predicted cluster.
``usage_weighted_expected_distance``
    The same mean, with token ``i`` weighted by how often it occurs in extracted codes
    (``usage``); ``None`` without usage. Rarely used tokens count little.
``largest_cluster``, ``singletons``, ``num_clusters``
    Size of the largest cluster, number of one-token clusters, number of clusters.

These numbers describe the geometry of the codebook's partition. They do not measure
generation quality (FID, IS), which needs a model trained with the prior; k-means can
score better on them than DCPE.

Distances are Euclidean on the codebook as given (after ``--normalize`` in the CLI),
whatever ``metric`` the tree was built with. Every token's distances to its cluster's members
are summed in float64 by the compiled kernel of :func:`dcpe.report.member_distance_sums`,
without the clusters' distance matrices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import check_int, check_path, check_seed, transposed_hint
from .io import atomic_write

__all__ = ["default_ks", "markdown_table", "read_usage", "require_matplotlib", "sweep",
           "write_sweep"]

_BASELINES = ("kmeans",)
#: the next step of an error about a code file
_CODES_STEP = "code files must be .npy arrays of integer token ids, saved with numpy.save"
_LOWEST_DEFAULT_K = 256


# --------------------------------------------------------------------------- inputs


def require_matplotlib() -> None:
    """Raise :class:`ImportError` with the install command unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the sweep figure needs matplotlib, which is not installed; "
                          "install it with: pip install matplotlib") from None


def default_ks(num_tokens: int) -> list[int]:
    """The default grid: powers of two from 256 up to ``N / 2``.

    Parameters
    ----------
    num_tokens : int
        Codebook size ``N``.

    Returns
    -------
    list of int
        ``[256, 512, ...]``, each at most ``N // 2``. A codebook with fewer than 512
        tokens gets the powers of two from 2 up to ``N // 2`` instead (``[1]`` for
        ``N < 4``).
    """
    n = check_int("num_tokens", num_tokens, 1)
    low = _LOWEST_DEFAULT_K if n // 2 >= _LOWEST_DEFAULT_K else 2
    ks = [1 << j for j in range(1, n.bit_length() + 1) if low <= (1 << j) <= n // 2]
    return ks or [1]


def _check_ks(ks: Iterable[Any], n: int, d: int = 0) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a sequence of integers, got {ks!r}")
    values = [check_int("k", k, 1) for k in ks]
    if not values:
        raise ValueError("ks must not be empty")
    too_big = [k for k in values if k > n]
    if too_big:
        raise ValueError(f"every k must be at most the number of tokens ({n}); "
                         f"got {too_big[0]}{transposed_hint(n, d, too_big[0])}")
    return sorted(set(values))


def _code_files(path: Path) -> list[Path]:
    """The ``.npy`` files of token ids under ``path`` (LlamaGen layout aware)."""
    if path.is_file():
        return [path]
    code_dirs = sorted(p for p in path.rglob("*_codes") if p.is_dir())
    roots = code_dirs if code_dirs else [path]
    files: list[Path] = []
    for root in roots:
        files.extend(f for f in sorted(root.rglob("*.npy"))
                     if f.is_file() and not any(part.endswith("_labels")
                                                for part in f.relative_to(path).parts[:-1]))
    return files


def read_usage(path: str | os.PathLike, num_tokens: int, *,
               show_progress: bool | None = False) -> np.ndarray:
    """Count how often every token occurs in extracted codes.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file of token ids, or a directory. In a directory laid out as LlamaGen's
        ``extract_codes_c2i.py`` writes it (``<name>_codes/*.npy`` next to
        ``<name>_labels/*.npy``), only the files under ``*_codes`` directories are read;
        otherwise every ``.npy`` file below it, except under ``*_labels`` directories. A
        ``*_labels`` directory, or a file in one, is refused.
    num_tokens : int
        Codebook size ``N``; every id must be in ``[0, N)``.
    show_progress : bool or None
        Progress bar over the files (``None``: only on a terminal).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 counts.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A file that is not ``.npy`` or cannot be read, a folder of class labels, no ``.npy``
        file, non-integer ids, an id outside ``[0, N)``, or no ids at all.
    """
    from ._progress import progress

    root = check_path("path", path)
    n = check_int("num_tokens", num_tokens, 1)
    if not root.exists():
        raise FileNotFoundError(f"codes file or directory not found: {root}; check the path")
    if root.is_file() and root.suffix.lower() != ".npy":
        raise ValueError(f"{root}: codes must be .npy files of token ids")
    folder = root.resolve() if root.is_dir() else root.resolve().parent
    if folder.name.endswith("_labels"):
        # class labels (ImageNet's 0..999) lie within any codebook: counted as token ids,
        # they would go unnoticed
        raise ValueError(f"{root} is in a folder of class labels ({folder.name}), not token "
                         f"ids; give the *_codes folder, or the folder that holds both")
    files = _code_files(root)
    if not files:
        raise ValueError(f"no .npy files of token ids under {root}; give the folder of "
                         f"extracted codes (such as imagenet256_codes/)")
    counts = np.zeros(n, dtype=np.int64)
    disable = None if show_progress is None else not show_progress
    for f in progress(files, desc="codes", unit="file", disable=disable):
        try:
            arr = np.load(f, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"{f}: cannot read as a .npy file ({exc}); {_CODES_STEP}") from None
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{f}: token ids must be integers, got dtype {arr.dtype}; "
                             f"{_CODES_STEP}")
        if arr.size == 0:
            continue
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{f}: contains token id {lo if lo < 0 else hi}, outside "
                             f"[0, {n - 1}] of the codebook; were these codes extracted "
                             f"with this codebook?")
        counts += np.bincount(arr.reshape(-1).astype(np.int64), minlength=n)
    if int(counts.sum()) == 0:
        raise ValueError(f"the codes under {root} hold no token ids; give the folder of "
                         f"extracted codes")
    return counts


# --------------------------------------------------------------------------- metrics


def _member_distance_sums(x: Any, labels: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: for every token, the sum of its distances to its cluster's
    members (:func:`dcpe.report.member_distance_sums`)."""
    import torch

    from .report import member_distance_sums

    lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return member_distance_sums(x, lab, int(lab.max()) + 1).numpy()


def _partition_metrics(x: Any, labels: np.ndarray, usage: np.ndarray | None
                       ) -> dict[str, Any]:
    sizes = np.bincount(labels)
    per_token = _member_distance_sums(x, labels) / sizes[labels]
    weighted = None
    if usage is not None:
        weighted = float(np.dot(usage, per_token) / usage.sum())
    return {
        "num_clusters": int(np.count_nonzero(sizes)),
        "expected_distance_to_random_member": float(per_token.mean()),
        "usage_weighted_expected_distance": weighted,
        "largest_cluster": int(sizes.max()),
        "singletons": int(np.sum(sizes == 1)),
    }


def sweep(codebook: Any, ks: Sequence[int] | None = None, *, linkage: str = "average",
          metric: str = "euclidean", backend: str = "auto", usage: Any = None,
          baseline: str | None = None, seed: int = 0, kmeans_iter: int = 50,
          show_progress: bool | None = False) -> dict[str, Any]:
    """Cluster statistics over a grid of k, from one dendrogram.

    Parameters
    ----------
    codebook : array-like or torch.Tensor
        ``(N, d)`` codebook (normalise it first if the prior will be made from the
        normalised codebook). The tree of a CUDA tensor is built on its GPU; the
        statistics are computed on the host.
    ks : sequence of int, optional
        Values of k, each in ``[1, N]`` (sorted, duplicates dropped). Default:
        :func:`default_ks`, powers of two from 256 to ``N / 2``.
    linkage, metric, backend
        As in :func:`dcpe.linkage` (``"average"`` is DCPE). No size cap: a cap changes
        the merges, so a capped clustering is not a cut of one tree.
    usage : array-like, optional
        ``(N,)`` non-negative token counts (e.g. from :func:`read_usage`), for
        ``usage_weighted_expected_distance``.
    baseline : {"kmeans"} or None
        Also run :func:`dcpe.baselines.kmeans` at every k (``seed``, at most
        ``kmeans_iter`` iterations).
    seed, kmeans_iter : int
        Seed and iteration limit of the baseline.
    show_progress : bool or None
        Progress bar over the steps (``None``: only on a terminal).

    Returns
    -------
    dict
        ``num_tokens``, ``dim``, ``linkage``, ``metric``, ``ks``, ``baseline``,
        ``usage_total`` (number of counted token occurrences, or ``None``), ``seconds``
        (time of the linkage) and ``rows``: one dict per ``(k, method)`` with ``k``,
        ``method`` (``"dcpe"`` or ``"kmeans"``) and the statistics of the module
        docstring, ordered by k and then method.

    Raises
    ------
    TypeError, ValueError
        Bad codebook, ``ks``, ``usage``, ``baseline`` or clustering options.

    Examples
    --------
    >>> import dcpe
    >>> from dcpe.sweep import sweep
    >>> x = dcpe.datasets.sample_codebook()[:2048]
    >>> table = sweep(x, [64, 256, 1024])
    >>> [row["k"] for row in table["rows"]]
    [64, 256, 1024]
    """
    import time

    import torch

    import dcpe

    from ._progress import progress
    from ._validation import check_linkage_metric
    from .report import codebook_tensor

    x = codebook_tensor(codebook)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"codebook must hold real numbers, got dtype {x.dtype}")
    n = int(x.shape[0])
    ks = default_ks(n) if ks is None else _check_ks(ks, n, int(x.shape[-1]))
    check_linkage_metric(linkage, metric)
    if baseline is not None and baseline not in _BASELINES:
        raise ValueError(f"baseline must be None or one of {', '.join(_BASELINES)}; "
                         f"got {baseline!r}")
    seed = check_seed(seed)
    kmeans_iter = check_int("kmeans_iter", kmeans_iter, 1)
    counts = None
    if usage is not None:
        counts = np.asarray(usage)
        if counts.dtype.kind not in "iuf" or counts.shape != (n,):
            raise ValueError(f"usage must be ({n},) non-negative counts, got shape "
                             f"{counts.shape} and dtype {counts.dtype}")
        counts = counts.astype(np.float64)
        if not np.isfinite(counts).all() or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("usage must be finite non-negative counts with a positive sum")
    x64 = x.to(torch.float64)
    if not bool(torch.isfinite(x64).all()):
        raise ValueError("codebook contains NaN or Inf")

    disable = None if show_progress is None else not show_progress
    steps = 1 + len(ks) * (2 if baseline else 1)
    rows: list[dict[str, Any]] = []
    with progress(total=steps, desc="sweep", unit="step", disable=disable) as bar:
        t0 = time.perf_counter()
        on_gpu = isinstance(codebook, torch.Tensor) and codebook.is_cuda
        z = dcpe.linkage(codebook.detach() if on_gpu else x.numpy(), linkage=linkage,
                         metric=metric, backend=backend)
        z = z.cpu().numpy() if on_gpu else z
        seconds = time.perf_counter() - t0
        bar.update()
        for k in ks:
            labels = np.asarray(dcpe.cut(z, k))
            rows.append({"k": k, "method": "dcpe", **_partition_metrics(x64, labels, counts)})
            bar.update()
            if baseline == "kmeans":
                from . import baselines

                res = baselines.kmeans(x.to(torch.float32).numpy(), k, seed=seed,
                                       n_iter=kmeans_iter)
                rows.append({"k": k, "method": "kmeans",
                             **_partition_metrics(x64, np.asarray(res.labels), counts)})
                bar.update()
    return {
        "num_tokens": n,
        "dim": int(x.shape[1]),
        "linkage": linkage,
        "metric": metric,
        "ks": ks,
        "baseline": baseline,
        "usage_total": None if counts is None else int(counts.sum()),
        "seconds": seconds,
        "rows": rows,
    }


# --------------------------------------------------------------------------- outputs


def markdown_table(result: dict[str, Any]) -> str:
    """A :func:`sweep` result as markdown (title, notes and one table)."""
    from .report import format_cell

    cols = [("k", "k"), ("method", "method"),
            ("E[dist. to random member]", "expected_distance_to_random_member"),
            ("usage-weighted", "usage_weighted_expected_distance"),
            ("largest cluster", "largest_cluster"), ("singletons", "singletons")]
    usage = (f"weighted by {result['usage_total']} token occurrences from the codes"
             if result["usage_total"] is not None else "not computed (no codes given)")
    lines = [
        "# Choosing k\n",
        f"Codebook: {result['num_tokens']} tokens x {result['dim']} dims; one "
        f"{result['linkage']}-linkage tree ({result['metric']}), cut at every k.\n",
        "E[dist. to random member]: mean Euclidean distance from a token to a uniformly "
        "drawn member of its cluster (the decoding step). Usage-weighted: " + usage + ".\n",
        "These numbers measure the codebook's geometry, not generation quality.\n",
        "| " + " | ".join(c for c, _ in cols) + " |",
        "|---:|---|" + "---:|" * (len(cols) - 2),
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(format_cell(row[key]) for _, key in cols) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=120)
    ax_dist, ax_size = fig.subplots(1, 2)
    methods = list(dict.fromkeys(row["method"] for row in result["rows"]))
    for i, m in enumerate(methods):
        rows = [r for r in result["rows"] if r["method"] == m]
        ks = [r["k"] for r in rows]
        color = f"C{i}"
        ax_dist.plot(ks, [r["expected_distance_to_random_member"] for r in rows], "o-",
                     color=color, label=m)
        if result["usage_total"] is not None:
            ax_dist.plot(ks, [r["usage_weighted_expected_distance"] for r in rows], "s--",
                         color=color, label=f"{m}, usage-weighted")
        ax_size.plot(ks, [r["largest_cluster"] for r in rows], "o-", color=color,
                     label=f"{m}: largest cluster")
        ax_size.plot(ks, [r["singletons"] for r in rows], "^:", color=color,
                     label=f"{m}: singletons")
    ax_dist.set(xscale="log", xlabel="k (number of clusters)",
                ylabel="E[distance to a random member]",
                title="Decoding error of a correct cluster")
    ax_size.set_yscale("symlog", linthresh=1)  # log scale that also shows 0 singletons
    ax_size.set(xscale="log", xlabel="k (number of clusters)",
                ylabel="tokens / clusters", title="Largest cluster and singletons")
    ax_size.set_ylim(bottom=0)
    for ax in (ax_dist, ax_size):
        ax.set_xticks(result["ks"], [str(k) for k in result["ks"]])
        ax.minorticks_off()
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{result['num_tokens']} tokens: statistics over k "
                 f"(codebook geometry, not generation quality)")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")


def write_sweep(out_dir: str | os.PathLike, result: dict[str, Any]) -> dict[str, Path]:
    """Write a :func:`sweep` result: ``sweep.png``, ``sweep.md`` and ``sweep.json``.

    Each file is written atomically; ``out_dir`` is created if missing.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory.
    result : dict
        What :func:`sweep` returned.

    Returns
    -------
    dict
        ``{"figure": path, "markdown": path, "json": path}``.

    Raises
    ------
    ImportError
        matplotlib is not installed (checked before anything is written).
    ValueError
        ``out_dir`` exists and is not a directory.
    """
    out = check_path("out_dir", out_dir)
    require_matplotlib()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"figure": out / "sweep.png", "markdown": out / "sweep.md",
             "json": out / "sweep.json"}
    _plot(result, paths["figure"])
    with atomic_write(paths["markdown"], "w") as fh:
        fh.write(markdown_table(result))
    with atomic_write(paths["json"], "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    return paths
