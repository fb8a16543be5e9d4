"""k-means baselines at codebook sizes: dcpe's against scikit-learn's, in one run.

``dcpe report``, ``dcpe sweep --baseline kmeans`` and ``dcpe cluster --method kmeans`` run
:func:`dcpe.baselines.kmeans`: greedy k-means++ seeding (``2 + log k`` candidates per
center, as scikit-learn), then Lloyd's iterations with exact nearest centers. This script
times the whole call on data from the sample codebook's generator
(``dcpe.datasets.make_sample_codebook``), next to scikit-learn's ``KMeans`` with the same
seeding rule and iteration cap, and reports the inertia of both (the sum of squared
distances to the centers), so that the times compare like with like.

Providers (``--providers``, comma-separated):

``dcpe-kmeans``     ``dcpe.baselines.kmeans(x, k, n_iter=M, seed=0)``
``sklearn-kmeans``  ``sklearn.cluster.KMeans(k, n_init=1, max_iter=M, random_state=0)``
``dcpe-balanced``   ``dcpe.baselines.balanced_kmeans(x, k, n_iter=M, seed=0)`` (equal sizes,
                    IAR's clustering; no peer here, so its inertia is higher and its time
                    is not a ratio)

Usage::

    python benchmarks/bench_kmeans.py                    # -> results/kmeans.{json,md}
    python benchmarks/bench_kmeans.py --sizes 16384x8:8192 --max-iter 10 --name kmeans-small

Sizes are ``NxD:K``. Every call runs once per provider (``--repeat R``: the median of R),
in this process, after one untimed call at the smallest size.
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
    "dcpe-kmeans": "dcpe.baselines.kmeans(x, k, n_iter=M, seed=0): greedy k-means++ and "
                   "Lloyd, exact nearest centers",
    "sklearn-kmeans": "sklearn.cluster.KMeans(n_clusters=k, n_init=1, max_iter=M, "
                      "random_state=0): greedy k-means++ and Lloyd (elkan or lloyd, its "
                      "default)",
    "dcpe-balanced": "dcpe.baselines.balanced_kmeans(x, k, n_iter=M, seed=0): k-means++, "
                     "then optimal equal-size assignments (auction) and means",
}
DEFAULT_SIZES = ("16384x8:8192,65536x8:4096,262144x8:16384,65536x16:4096,16384x256:1024,"
                 "65536x256:4096")


def run_provider(provider: str, x: np.ndarray, k: int, max_iter: int) -> dict[str, Any]:
    """One call of a provider: its labels' inertia and iterations (not timed here)."""
    if provider in ("dcpe-kmeans", "dcpe-balanced"):
        from dcpe.baselines import balanced_kmeans, kmeans

        fit = kmeans if provider == "dcpe-kmeans" else balanced_kmeans
        res = fit(x, k, n_iter=max_iter, seed=0)
        return {"inertia": float(res.inertia), "n_iter": int(res.n_iter)}
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=0).fit(x)
    return {"inertia": float(km.inertia_), "n_iter": int(km.n_iter_)}


def available(provider: str) -> str | None:
    """None when the provider can run here, else why not."""
    return missing("sklearn", "scikit-learn") if provider == "sklearn-kmeans" else None


def main(argv: list[str] | None = None) -> int:
    ap = sizes_parser(__doc__, DEFAULT_SIZES, PROVIDERS, "kmeans")
    ap.add_argument("--max-iter", type=int, default=10, help="Lloyd iterations at most")
    args = ap.parse_args(argv)
    providers = chosen_providers(ap, args.providers, PROVIDERS)
    if args.max_iter < 1 or args.repeat < 1:
        ap.error("--max-iter and --repeat must be at least 1")

    import dcpe

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    n0, d0, k0 = min(args.sizes)
    warm = dcpe.datasets.make_sample_codebook(n0, d0)
    for p in providers:
        if available(p) is None:
            run_provider(p, warm, k0, 1)
    rows: list[dict[str, Any]] = []
    for n, d, k in args.sizes:
        x = dcpe.datasets.make_sample_codebook(n, d)
        for p in providers:
            why = available(p)
            row: dict[str, Any] = {"n": n, "d": d, "k": k, "provider": p}
            if why is not None:
                row["error"] = why
            else:
                out: dict[str, Any] = {}
                row.update(time_call(
                    lambda p=p, x=x, k=k, out=out: out.update(run_provider(p, x, k,
                                                                           args.max_iter)),
                    repeats=args.repeat))
                row.update(out)
            rows.append(row)
            print(f"{n} x {d}, k = {k}, {p}: "
                  + (row["error"] if "error" in row else
                     f"{fmt_seconds(row['median_s'])}, inertia {row['inertia']:.6g}, "
                     f"{row['n_iter']} iterations"), flush=True)

    table = []
    for n, d, k in args.sizes:
        cells = {r["provider"]: r for r in rows if (r["n"], r["d"], r["k"]) == (n, d, k)}
        mine = cells.get("dcpe-kmeans")
        line: list[Any] = [f"{n:,} × {d}", f"{k:,}"]
        for p in providers:
            r = cells[p]
            if "error" in r:
                line.append(r["error"])
                continue
            text = f"{fmt_seconds(r['median_s'])}, inertia {r['inertia']:.6g}"
            if p == "sklearn-kmeans" and mine is not None and "error" not in mine:
                text += f" ({r['median_s'] / mine['median_s']:.1f}×)"
            line.append(text)
        table.append(line)
    info = machine_info()
    md = "\n".join([
        f"# k-means baselines ({started})",
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; dcpe "
        f"{dcpe.__version__} (commit {info.get('commit', '?')}); at most {args.max_iter} "
        f"Lloyd iterations; median of {args.repeat} run(s); data from "
        f"`make_sample_codebook(N, D)`. A ratio is scikit-learn's time over dcpe-kmeans'.",
        "",
        markdown_table(["N × d", "k", *providers], table),
        "",
        *[f"- `{p}`: {PROVIDERS[p]}" for p in providers],
    ])
    payload = {"machine": info, "started": started, "max_iter": args.max_iter,
               "repeat": args.repeat, "providers": {p: PROVIDERS[p] for p in providers},
               "rows": rows}
    jpath, mpath = write_results(args.name, payload, md, args.out)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
