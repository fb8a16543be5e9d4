"""Coherence statistics of DCPE partitions: dcpe's member distance sums against SciPy's.

``dcpe sweep`` and ``dcpe report`` measure every partition by, for each token, the sum of
its Euclidean distances to the members of its cluster (the expected distance to a random
member, and the mean pairwise distance within clusters, follow from it). This script cuts
the average-linkage tree of data from the sample codebook's generator
(``dcpe.datasets.make_sample_codebook``) at k clusters, then times that sum for every
token, computed by each provider, and reports how far the providers' sums are apart.
DCPE's clusters are unequal: a few large clusters hold most of the pairs.

Providers (``--providers``, comma-separated):

``dcpe``         ``dcpe.report.member_distance_sums(x, labels, k)`` (float64)
``scipy-cdist``  per cluster, ``scipy.spatial.distance.cdist(rows, members).sum(axis=1)``
                 over blocks of rows of at most 2**22 distances

Usage::

    python benchmarks/bench_coherence.py                  # -> results/coherence.{json,md}
    python benchmarks/bench_coherence.py --sizes 16384x8:256 --name coherence-small

Sizes are ``NxD:K``; the tree of an ``N x D`` codebook is built once (not timed). Every
call runs once per provider (``--repeat R``: the median of R), in this process, after one
untimed call at the smallest size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    chosen_providers,
    fmt_seconds,
    machine_info,
    markdown_table,
    missing,
    sizes_parser,
    time_call,
    write_results,
)

#: provider -> what is timed
PROVIDERS: dict[str, str] = {
    "dcpe": "dcpe.report.member_distance_sums(x, labels, k): every token's distances to "
            "its cluster's members, summed in float64",
    "scipy-cdist": "per cluster, scipy.spatial.distance.cdist(rows, members).sum(axis=1), "
                   "blocks of at most 2**22 distances",
}
DEFAULT_SIZES = ("16384x8:256,16384x8:8192,262144x8:256,262144x8:8192,262144x8:65536,"
                 "16384x256:256")
_BLOCK = 1 << 22  # distances per cdist call of the SciPy provider


def run_provider(provider: str, x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Every token's sum of distances to its cluster's members, by one provider."""
    if provider == "dcpe":
        import torch

        from dcpe.report import member_distance_sums

        return member_distance_sums(torch.from_numpy(x), torch.from_numpy(labels), k).numpy()
    from scipy.spatial.distance import cdist

    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])
    xs = x[order]
    sums = np.zeros(len(x))
    for s, e in zip(bounds[:-1], bounds[1:]):
        members = xs[s:e]
        step = max(1, _BLOCK // max(1, e - s))
        for r in range(s, e, step):
            sums[r:min(e, r + step)] = cdist(xs[r:min(e, r + step)], members).sum(axis=1)
    out = np.empty_like(sums)
    out[order] = sums
    return out


def available(provider: str) -> str | None:
    """None when the provider can run here, else why not."""
    return missing("scipy", "SciPy") if provider == "scipy-cdist" else None


def main(argv: list[str] | None = None) -> int:
    ap = sizes_parser(__doc__, DEFAULT_SIZES, PROVIDERS, "coherence")
    args = ap.parse_args(argv)
    providers = chosen_providers(ap, args.providers, PROVIDERS)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    import dcpe

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    trees: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def partition(n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        if (n, d) not in trees:
            x = dcpe.datasets.make_sample_codebook(n, d).astype(np.float64)
            trees[(n, d)] = (x, dcpe.linkage(x))
        x, z = trees[(n, d)]
        return x, np.asarray(dcpe.cut(z, k), dtype=np.int64)

    n0, d0, k0 = min(args.sizes)
    wx, wl = partition(n0, d0, k0)
    for p in providers:
        if available(p) is None:
            run_provider(p, wx, wl, k0)
    rows: list[dict[str, Any]] = []
    for n, d, k in args.sizes:
        x, labels = partition(n, d, k)
        sizes = np.bincount(labels)
        base: dict[str, Any] = {"n": n, "d": d, "k": k, "largest_cluster": int(sizes.max()),
                                "pairs": int((sizes.astype(np.int64) ** 2).sum())}
        sums: dict[str, np.ndarray] = {}
        for p in providers:
            why = available(p)
            row: dict[str, Any] = {**base, "provider": p}
            if why is not None:
                row["error"] = why
            else:
                out: dict[str, np.ndarray] = {}
                row.update(time_call(
                    lambda p=p, x=x, labels=labels, k=k, out=out: out.update(
                        s=run_provider(p, x, labels, k)), repeats=args.repeat))
                sums[p] = out["s"]
                row["expected_distance_to_random_member"] = float(
                    (out["s"] / sizes[labels]).mean())
            rows.append(row)
            print(f"{n} x {d}, k = {k}, {p}: "
                  + (row["error"] if "error" in row else fmt_seconds(row["median_s"])),
                  flush=True)
        if len(sums) > 1:  # how far apart the providers' sums are, relative
            ref = next(iter(sums.values()))
            gap = max(float(np.max(np.abs(s - ref) / np.maximum(np.abs(ref), 1e-300)))
                      for s in sums.values())
            for r in rows[-len(providers):]:
                r["max_relative_gap"] = gap

    table = []
    for n, d, k in args.sizes:
        cells = {r["provider"]: r for r in rows if (r["n"], r["d"], r["k"]) == (n, d, k)}
        first = next(iter(cells.values()))
        mine = cells.get("dcpe")
        line: list[Any] = [f"{n:,} × {d}", f"{k:,}", f"{first['largest_cluster']:,}",
                           f"{first['pairs']:.3g}"]
        for p in providers:
            r = cells[p]
            if "error" in r:
                line.append(r["error"])
                continue
            text = fmt_seconds(r["median_s"])
            if p != "dcpe" and mine is not None and "error" not in mine:
                text += f" ({r['median_s'] / mine['median_s']:.1f}×)"
            line.append(text)
        gap = first.get("max_relative_gap")
        line.append("—" if gap is None else f"{gap:.1e}")
        table.append(line)
    info = machine_info()
    md = "\n".join([
        f"# Coherence statistics: member distance sums ({started})",
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; dcpe "
        f"{dcpe.__version__} (commit {info.get('commit', '?')}); median of {args.repeat} "
        f"run(s); partitions: the average-linkage tree of `make_sample_codebook(N, D)` cut "
        f"at k. Pairs: ordered pairs within clusters (the sum of squared cluster sizes). A "
        f"ratio is the provider's time over dcpe's; the gap is the largest relative "
        f"difference between the providers' sums.",
        "",
        markdown_table(["N × d", "k", "largest cluster", "pairs", *providers, "gap"], table),
        "",
        *[f"- `{p}`: {PROVIDERS[p]}" for p in providers],
    ])
    payload = {"machine": info, "started": started, "repeat": args.repeat,
               "providers": {p: PROVIDERS[p] for p in providers}, "rows": rows}
    jpath, mpath = write_results(args.name, payload, md, args.out)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
