"""CPU benchmark: dcpe's ``cpu`` backend against SciPy, fastcluster, scikit-learn and the
paper's Algorithm 1, on the sample codebook (N = 16384, d = 8, k = 8192).

Every measurement runs in a fresh subprocess (``bench_cpu.py --worker PROVIDER N K ...``)
so that its peak resident memory (``ru_maxrss``) is its own; the memory after imports and
data loading, before any clustering, is recorded next to it. Times are wall-clock seconds
of the whole call from the raw ``(N, d)`` float32 array to labels (distances included).

Usage::

    python benchmarks/bench_cpu.py              # full run -> benchmarks/results/cpu.{json,md}
    python benchmarks/bench_cpu.py --quick      # small smoke test, results in a temp dir
    python benchmarks/bench_cpu.py --skip-slow  # dcpe, fastcluster and SciPy only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fit_power_law,
    fmt_seconds,
    machine_info,
    markdown_table,
    time_call,
    write_results,
)

#: provider -> what is timed (all start from the same float32 array)
PROVIDERS: dict[str, str] = {
    "dcpe-cpu": "dcpe.cluster(x, k, backend='cpu'): float32, distances included",
    "dcpe-cpu-f64": "dcpe.cluster(x, k, backend='cpu', dtype=float64)",
    "fastcluster": "fastcluster.linkage(x, 'average') + fcluster(maxclust)",
    "scipy": "pdist(x) + scipy linkage(..., 'average') + fcluster(maxclust)",
    "sklearn-agglomerative": "AgglomerativeClustering(n_clusters=k, linkage='average')",
    "sklearn-kmeans": "KMeans(n_clusters=k, n_init=1, max_iter=M), not hierarchical",
    "dcpe-kmeans": "dcpe.baselines.kmeans(x, k, n_iter=M): greedy k-means++ and Lloyd, "
                   "not hierarchical (the prior toolkit's baseline)",
    "torch-alg1": "dcpe backend 'torch': Algorithm 1 of the paper (dense matrix, argmin, "
                  "Lance-Williams merge, compaction), CPU, full tree",
    "reference": "dcpe backend 'reference': the literal O(N^3 d) definition, full tree",
    "dcpe-cpu-ward": "dcpe.cluster(x, k, linkage='ward', backend='cpu')",
    "fastcluster-ward": "fastcluster.linkage_vector(x, 'ward') + exact k-cut",
    "scipy-ward": "scipy linkage(x, 'ward') + exact k-cut",
    "dcpe-cpu-centroid": "dcpe.cluster(x, k, linkage='centroid', backend='cpu')",
    "fastcluster-centroid": "fastcluster.linkage_vector(x, 'centroid') + first N-k merges",
}
#: linkages on centroids, a second table: linkage -> providers, dcpe's first (the ratios
#: are against it)
CENTROID_LINKAGES = {"ward": ("dcpe-cpu-ward", "fastcluster-ward", "scipy-ward"),
                     "centroid": ("dcpe-cpu-centroid", "fastcluster-centroid")}
SLOW = ("sklearn-agglomerative", "sklearn-kmeans", "torch-alg1", "reference")
PEERS = ("fastcluster", "scipy", "sklearn-agglomerative", "sklearn-kmeans")


# --------------------------------------------------------------------------- worker side


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _load(n: int) -> np.ndarray:
    import dcpe

    sample = dcpe.datasets.sample_codebook()
    if n <= len(sample):
        return np.ascontiguousarray(sample[:n])
    return dcpe.datasets.make_sample_codebook(n=n)


def _first_merges(z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Labels after the first n - k merges of z (the exact k-cut, even among tied heights)."""
    parent = np.arange(2 * n - 1)
    for i, (a, b) in enumerate(z[: n - k, :2].astype(np.int64)):
        parent[a] = parent[b] = n + i
    roots = np.arange(n)
    while True:
        nxt = parent[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    return np.unique(roots, return_inverse=True)[1].ravel()


def _make_call(provider: str, x: np.ndarray, k: int, opts: dict[str, Any]):  # noqa: ANN202
    """Return (fn, extra): fn() -> (labels_for_check, info dict)."""
    n = len(x)
    if provider in ("dcpe-cpu", "dcpe-cpu-f64"):
        import dcpe

        kw = {"dtype": np.float64} if provider == "dcpe-cpu-f64" else {}
        return lambda: (dcpe.cluster(x, k, backend="cpu", **kw), {})
    if provider in ("dcpe-cpu-ward", "dcpe-cpu-centroid"):
        import dcpe

        method = provider.rsplit("-", 1)[1]
        return lambda: (dcpe.cluster(x, k, linkage=method, backend="cpu"), {})
    if provider in ("fastcluster-ward", "scipy-ward", "fastcluster-centroid"):
        method = provider.rsplit("-", 1)[1]
        if provider.startswith("fastcluster"):
            import fastcluster

            def build_tree() -> np.ndarray:
                return fastcluster.linkage_vector(x, method=method)
        else:
            from scipy.cluster.hierarchy import linkage as scipy_linkage

            def build_tree() -> np.ndarray:
                return scipy_linkage(x, method=method)
        # the first N - k merges in Z's (greedy) order: exact for non-monotone centroid too
        return lambda: (_first_merges(build_tree(), n, k), {})
    if provider in ("fastcluster", "scipy"):
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        if provider == "fastcluster":
            import fastcluster

            def build() -> np.ndarray:
                return fastcluster.linkage(x, method="average", metric="euclidean")
        else:
            def build() -> np.ndarray:
                return linkage(pdist(x), method="average")

        def run() -> tuple[np.ndarray, dict[str, Any]]:
            z = build()
            found = fcluster(z, k, "maxclust")
            # exact k-cut for the partition check (fcluster may give fewer among ties)
            return _first_merges(z, n, k), {"fcluster_clusters": int(found.max())}
        return run
    if provider == "sklearn-agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        return lambda: (AgglomerativeClustering(n_clusters=k, linkage="average")
                        .fit(x).labels_, {})
    if provider == "sklearn-kmeans":
        from sklearn.cluster import KMeans

        def run_km() -> tuple[np.ndarray, dict[str, Any]]:
            km = KMeans(n_clusters=k, n_init=1, max_iter=opts["kmeans_max_iter"],
                        random_state=0).fit(x)
            return km.labels_, {"n_iter": int(km.n_iter_),
                                "max_iter": opts["kmeans_max_iter"],
                                "inertia": round(float(km.inertia_), 4)}
        return run_km
    if provider == "dcpe-kmeans":
        from dcpe.baselines import kmeans

        def run_dkm() -> tuple[np.ndarray, dict[str, Any]]:
            res = kmeans(x, k, seed=0, n_iter=opts["kmeans_max_iter"])
            return res.labels, {"n_iter": int(res.n_iter), "max_iter": opts["kmeans_max_iter"],
                                "inertia": round(float(res.inertia), 4)}
        return run_dkm
    if provider == "torch-alg1":
        import torch

        import dcpe

        t = torch.from_numpy(x)
        return lambda: (dcpe.cluster(t, k, backend="torch").numpy(),
                        {"torch_threads": torch.get_num_threads()})
    if provider == "reference":
        import dcpe

        return lambda: (dcpe.cluster(x, k, backend="reference"), {})
    if provider == "baseline":
        import fastcluster  # noqa: F401
        import scipy.cluster.hierarchy  # noqa: F401
        import sklearn.cluster  # noqa: F401
        import torch  # noqa: F401

        import dcpe  # noqa: F401

        return lambda: (None, {})
    raise SystemExit(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


def worker(provider: str, n: int, k: int, repeats: int, labels_out: str | None,
           opts: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    x = _load(n)
    fn = _make_call(provider, x, k, opts)
    rss_before = _maxrss_bytes()
    setup_s = time.perf_counter() - t0
    result: dict[str, Any] = {}

    def call() -> None:
        result["labels"], result["info"] = fn()

    timing = time_call(call, repeats=repeats)
    out = {"provider": provider, "n": n, "d": int(x.shape[1]), "k": k, "repeats": repeats,
           **timing, "setup_s": setup_s, "rss_before_bytes": rss_before,
           "peak_rss_bytes": _maxrss_bytes(), "info": result.get("info", {})}
    labels = result.get("labels")
    if labels is not None:
        labels = np.asarray(labels)
        out["clusters"] = int(len(np.unique(labels)))
        if labels_out:
            np.save(labels_out, labels)
    return out


# --------------------------------------------------------------------------- parent side


def run_worker(provider: str, n: int, k: int, repeats: int, labels_dir: Path | None,
               opts: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", provider, str(n), str(k),
           "--repeats", str(repeats), "--kmeans-max-iter", str(opts["kmeans_max_iter"])]
    if labels_dir is not None:
        cmd += ["--labels-out", str(labels_dir / f"{provider}-{n}.npy")]
    print(f"  {provider:<22} N={n:<6} k={k:<6} x{repeats} ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f" timed out after {timeout:.0f} s")
        return {"provider": provider, "n": n, "k": k, "error": f"timeout {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(" failed: " + " | ".join(tail))
        return {"provider": provider, "n": n, "k": k, "error": " | ".join(tail)}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f" {fmt_seconds(res['median_s'])} (peak {res['peak_rss_bytes'] / 2**20:.0f} MiB, "
          f"{time.perf_counter() - t0:.0f} s with startup)")
    return res


def partition_check(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Identical partitions? Else how close: adjusted Rand index, share of equal clusters."""
    from sklearn.metrics import adjusted_rand_score

    def blocks(labels: np.ndarray) -> set[tuple[int, ...]]:
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        return {tuple(g) for g in np.split(order, cuts)}

    ba, bb = blocks(np.asarray(a)), blocks(np.asarray(b))
    return {"identical": ba == bb, "adjusted_rand": float(adjusted_rand_score(a, b)),
            "shared_clusters_fraction": len(ba & bb) / max(len(ba), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("PROVIDER", "N", "K"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--labels-out")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--skip-slow", action="store_true",
                    help=f"skip {', '.join(SLOW)} and the N=65536 run")
    ap.add_argument("--out", help="output directory (default results/, or a temp dir "
                                  "with --quick)")
    ap.add_argument("--kmeans-max-iter", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=900.0, help="per worker, seconds")
    args = ap.parse_args(argv)
    opts = {"kmeans_max_iter": args.kmeans_max_iter}

    if args.worker:
        provider, n, k = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(provider, n, k, args.repeats, args.labels_out, opts)))
        return 0

    if args.quick:
        n_main, k_main, n_big = 2048, 1024, 4096
        torch_ns, ref_ns, ref_budget = [128, 256, 384], [32, 64, 96], 5.0
    else:
        n_main, k_main, n_big = 16384, 8192, 65536
        torch_ns, ref_ns, ref_budget = [256, 512, 1024, 2048], [64, 128, 192, 256, 384, 512], 30.0
    out_dir = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="dcpe-bench-")) if args.quick else None)
    repeats = {"dcpe-cpu": 3, "dcpe-cpu-f64": 3, "fastcluster": 3, "scipy": 3,
               "sklearn-agglomerative": 1, "sklearn-kmeans": 1, "dcpe-kmeans": 1}
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    results: dict[str, Any] = {"main": {}, "centroid_linkages": {}, "scaling": {}, "big": None,
                               "baseline": None}

    with tempfile.TemporaryDirectory(prefix="dcpe-bench-labels-") as tmp:
        labels_dir = Path(tmp)
        print(f"N={n_main}, k={k_main} on the sample codebook")
        results["baseline"] = run_worker("baseline", n_main, k_main, 1, None, opts,
                                         args.timeout)
        for provider in ("dcpe-cpu", "dcpe-cpu-f64", "fastcluster", "scipy",
                         "sklearn-agglomerative", "sklearn-kmeans", "dcpe-kmeans"):
            if args.skip_slow and provider in SLOW:
                continue
            results["main"][provider] = run_worker(provider, n_main, k_main,
                                                   repeats[provider], labels_dir, opts,
                                                   args.timeout)

        # partitions at k (dcpe float32 / float64 against the float64 peers)
        checks = {}
        loaded = {p: np.load(labels_dir / f"{p}-{n_main}.npy") for p in results["main"]
                  if (labels_dir / f"{p}-{n_main}.npy").exists()}
        for mine in ("dcpe-cpu", "dcpe-cpu-f64"):
            for peer in ("fastcluster", "scipy", "sklearn-agglomerative"):
                if mine in loaded and peer in loaded:
                    checks[f"{mine} vs {peer}"] = partition_check(loaded[mine], loaded[peer])
        results["labels_check"] = checks

        print("Linkages on centroids")
        results["centroid_checks"] = {}
        for providers in CENTROID_LINKAGES.values():
            for provider in providers:
                results["centroid_linkages"][provider] = run_worker(
                    provider, n_main, k_main, 1, labels_dir, opts, args.timeout)
            got = {p: np.load(labels_dir / f"{p}-{n_main}.npy") for p in providers
                   if (labels_dir / f"{p}-{n_main}.npy").exists()}
            mine = providers[0]
            for peer in providers[1:]:
                if mine in got and peer in got:
                    results["centroid_checks"][f"{mine} vs {peer}"] = partition_check(
                        got[mine], got[peer])

    if not args.skip_slow:
        print("Scaling of the O(N^3) paths (full tree, k = N/2)")
        for provider, ns in (("torch-alg1", torch_ns), ("reference", ref_ns)):
            rows = []
            for n in ns:
                if rows:  # stop before a size predicted to exceed the budget
                    p_guess = 3.0 if len(rows) < 2 else fit_power_law(
                        [r["n"] for r in rows], [r["median_s"] for r in rows])[0]
                    predicted = rows[-1]["median_s"] * (n / rows[-1]["n"]) ** p_guess
                    if provider == "reference" and predicted > ref_budget:
                        break
                reps = 3 if (rows and rows[-1]["median_s"] < 1.0) or not rows else 1
                res = run_worker(provider, n, n // 2, reps, None, opts, args.timeout)
                if "error" in res:
                    break
                rows.append(res)
            entry: dict[str, Any] = {"runs": rows}
            if len(rows) >= 2:
                p, c = fit_power_law([r["n"] for r in rows], [r["median_s"] for r in rows])
                entry.update(exponent=p, coefficient=c, extrapolated_n=n_main,
                             extrapolated_s=c * n_main**p)
            results["scaling"][provider] = entry
        print(f"dcpe alone at N={n_big}")
        results["big"] = run_worker("dcpe-cpu", n_big, n_big // 2, 1, None, opts,
                                    args.timeout)

    payload = {
        "benchmark": "cpu",
        "machine": machine_info(),
        "env": {key: os.environ[key] for key in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS",
                                                 "MKL_NUM_THREADS") if key in os.environ},
        "providers": PROVIDERS,
        "settings": {"n": n_main, "k": k_main, "d": 8, "quick": args.quick,
                     "skip_slow": args.skip_slow, "kmeans_max_iter": args.kmeans_max_iter,
                     "repeats": repeats},
        "total_wall_s": time.perf_counter() - t_start,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        **results,
    }
    path_json, path_md = write_results("cpu", payload, render_markdown(payload), out_dir)
    print(f"wrote {path_json} and {path_md} ({fmt_seconds(payload['total_wall_s'])} in all)")
    return 0


# --------------------------------------------------------------------------- report


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def render_markdown(p: dict[str, Any]) -> str:
    s = p["settings"]
    m = p["machine"]
    lines = [f"# CPU benchmark: N = {s['n']}, d = {s['d']}, k = {s['k']}"
             + (" (quick)" if s["quick"] else ""), "",
             f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; "
             f"Python {m.get('python')}; " + ", ".join(
                 f"{k} {v}" for k, v in m.get("versions", {}).items() if v) + f"; {m['date']}."]
    load = p.get("load_average")
    if load:
        lines.append(f"1-minute load average {load['start'][0]:.2f} at the start, "
                     f"{load['end'][0]:.2f} at the end ({m.get('cores')} cores); other "
                     "processes on the machine add noise to the times.")
    if p["env"]:
        lines.append("Environment: " + ", ".join(f"`{k}={v}`" for k, v in p["env"].items())
                     + ".")
    base = p.get("baseline") or {}
    if "peak_rss_bytes" in base:
        lines.append(f"Interpreter + all imports + data: {_mib(base['peak_rss_bytes'])} MiB "
                     "resident (each run below is a fresh process; 'before' is its own "
                     "imports + data).")
    lines += ["", "Wall-clock time from the raw float32 array to labels; median of the runs. "
              "Peak = `ru_maxrss` of the process.", ""]
    main = p["main"]
    dcpe_t = (main.get("dcpe-cpu") or {}).get("median_s")
    dcpe_m = (main.get("dcpe-cpu") or {}).get("peak_rss_bytes")
    rows = []
    for name, r in main.items():
        if "error" in r:
            rows.append([name, "—", "—", "—", "—", "—", "—", r["error"]])
            continue
        ratio = f"{r['median_s'] / dcpe_t:,.1f}×" if dcpe_t and name != "dcpe-cpu" else ""
        mratio = (f"{r['peak_rss_bytes'] / dcpe_m:,.2f}×" if dcpe_m and name != "dcpe-cpu"
                  else "")
        note = ", ".join(f"{k}={v}" for k, v in r.get("info", {}).items())
        rows.append([name, r["repeats"], fmt_seconds(r["median_s"]),
                     _mib(r["peak_rss_bytes"]), _mib(r["rss_before_bytes"]), ratio, mratio,
                     note])
    lines.append(markdown_table(["provider", "runs", "time", "peak MiB", "before MiB",
                                 "time / dcpe-cpu", "peak / dcpe-cpu", "notes"], rows))

    def checks_table(checks: dict[str, Any]) -> str:
        return markdown_table(
            ["pair", "identical", "adjusted Rand", "identical clusters"],
            [[pair, c["identical"], f"{c['adjusted_rand']:.6f}",
              f"{100 * c['shared_clusters_fraction']:.3f} %"] for pair, c in checks.items()])

    if p.get("labels_check"):
        lines += ["", f"Partitions at k = {s['k']} (peers compute in float64):", "",
                  checks_table(p["labels_check"])]
    cl = p.get("centroid_linkages") or {}
    if cl:
        rows = []
        for linkage, providers in CENTROID_LINKAGES.items():
            mine = (cl.get(providers[0]) or {}).get("median_s")
            for name in providers:
                r = cl.get(name)
                if r is None:
                    continue
                if "error" in r:
                    rows.append([linkage, name, "—", "—", "—", r["error"]])
                    continue
                ratio = f"{r['median_s'] / mine:,.1f}×" if mine and name != providers[0] else ""
                rows.append([linkage, name, r["repeats"], fmt_seconds(r["median_s"]),
                             _mib(r["peak_rss_bytes"]), ratio])
        lines += ["", "Linkages on centroids, same data and k (dcpe: Ward by a nearest-"
                  "neighbour chain, centroid by the generic algorithm with cached minima; "
                  "both on float64 centroids without a matrix):", "",
                  markdown_table(["linkage", "provider", "runs", "time", "peak MiB",
                                  "time / dcpe"], rows)]
        if p.get("centroid_checks"):
            lines += ["", checks_table(p["centroid_checks"])]
    if p["scaling"]:
        lines += ["", "O(N^3) paths, full tree (k = N/2 is about 7/8 of its cost), "
                  f"fitted t = c·N^p and extrapolated to N = {s['n']}:", ""]
        rows = []
        for name, e in p["scaling"].items():
            pts = ", ".join(f"{r['n']}: {fmt_seconds(r['median_s'])}" for r in e["runs"])
            rows.append([name, pts, f"{e['exponent']:.2f}" if "exponent" in e else "—",
                         fmt_seconds(e.get("extrapolated_s")),
                         f"{e['extrapolated_s'] / dcpe_t:,.0f}×"
                         if dcpe_t and "extrapolated_s" in e else "—",
                         _mib(max(r["peak_rss_bytes"] for r in e["runs"]))
                         if e["runs"] else "—"])
        lines.append(markdown_table(["provider", "N: time", "exponent p",
                                     f"extrapolated N={s['n']}", "/ dcpe-cpu",
                                     "peak MiB (largest N)"], rows))
    big = p.get("big")
    if big:
        if "error" in big:
            lines += ["", f"dcpe-cpu at N = {big['n']}: {big['error']}"]
        else:
            lines += ["", f"dcpe-cpu at N = {big['n']}, k = {big['k']} (1 run): "
                      f"{fmt_seconds(big['median_s'])}, peak {_mib(big['peak_rss_bytes'])} MiB "
                      f"({_mib(big['rss_before_bytes'])} MiB before clustering)."]
    lines += ["", "Providers:", ""] + [f"- `{k}`: {v}" for k, v in p["providers"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
