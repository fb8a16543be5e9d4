"""Exact average linkage at scale: dcpe's linear-memory and matrix engines against
fastcluster and ParChain, time and peak memory, in one run.

Every provider but ``dcpe-cut`` computes the full dendrogram of the same data (the built-in sample
codebook's generator, ``dcpe.datasets.make_sample_codebook(n, d)``, float32, or float64
with ``--dtype float64``; its 16,384 x 8 case is the sample codebook itself; or
``--data gaussian``, below) in a child
process of its own, so that
each peak resident set size (``ru_maxrss`` of that child) is its own. Times are wall
clock of the clustering call alone (data generation and imports excluded; for ParChain
the "clustering" time it prints, which excludes reading its input file).

Providers
---------
``dcpe-auto``     ``dcpe.linkage(x)``: the engine dcpe picks (the matrix engine for small N)
``dcpe-linear``   ``dcpe.linkage(x, engine="linear")``: O(N d) memory plus a cache
``dcpe-matrix``   ``dcpe.linkage(x, engine="matrix")``: N(N-1)/2 float32 distances, where
                  they fit the memory (``--matrix-max-n``)
``fastcluster``   ``fastcluster.linkage_vector`` is not defined for average linkage, so
                  ``fastcluster.linkage(x, "average")`` on its float64 matrix, where it fits
                  (``--fastcluster-max-n``)
``parchain``      ParChain's ``avg`` method, with ``--parchain PATH`` to a built binary
``dcpe-cosine``   ``dcpe.linkage(x, metric="cosine")``: the engine dcpe picks for the
                  closed form (on cluster moments, or on the matrix); ``dcpe-cosine-linear``
                  and ``dcpe-cosine-matrix`` force one (``--cosine-sizes`` for all three)
``dcpe-cut``      ``dcpe.cluster(x, N // F, engine="linear")``: a flat cut's labels, which
                  need only the first N - N // F merges (the linear engine stops once they
                  are known); the others' time for the same labels is their full
                  dendrogram's. ``F`` is ``--cut-fraction`` (default 2: k = N/2)
``dcpe-cut-matrix``  the same labels by the matrix engine (``engine="matrix"``), which stops
                  once its merges are known too
``dcpe-cut-auto``    the same labels by the engine dcpe picks (``dcpe.cluster(x, N // F)``)

ParChain (Yu, Wang, Gu, Dhulipala, Shun, PVLDB 15) is never downloaded or built here. To
build it: clone its public repository ``yushangdi/ParChain-HAC`` with its ``parlaylib``
submodule (``external/parlaylib``, e.g. at commit ``552fd85``), then in ``hac/``::

    g++ -O3 -std=c++20 -mcx16 -march=native -pthread \\
        -I../external/parlaylib/include linkage.cpp -o linkage -ldl

and pass ``--parchain path/to/hac/linkage``. It is run as
``PARLAY_NUM_THREADS=<threads> linkage -method avg -cachesize 32 -d <d> -o out.txt in.pbbs``
on a ``pbbs_sequencePoint<d>d`` text file of the same points. Its ``main`` instantiates its
clusterer for d = 2 to 10 only (``run<d>(P)``, one branch per d; the algorithm itself takes
any d). For more dimensions add branches before building, e.g. for 16::

    }else if(dim == 16){
         run<16>(P);

The script asks the binary first, on four points of d dimensions: at a d that it was not
built for, the row says so instead of a time.

``--copies F`` replaces a fraction F of the rows (drawn at random, seed 0) by copies of the
first row: exact duplicates, at distance 0 from each other, for every provider.

``--data gaussian`` clusters isotropic standard normal points (seed 0) instead, as the dead
codes of a codebook initialised as ``torch.nn.Embedding`` is keep that initialisation: in
many dimensions they have few reciprocal nearest neighbours, so the engines' rounds merge
few pairs each. ``--data grid`` clusters the first N points (in lexicographic order) of the
smallest grid of ``L^d`` points with at least N (coordinates -(L-1)/2 to (L-1)/2 in steps of
1): a finite scalar quantizer's codebook, or with N = 2^d a lookup-free quantizer's (the
corners of a cube), where every distance ties with many others.

``--repeat R`` runs each provider's call R times in its process (ParChain: its binary R
times) and reports the median, with every run's time in the JSON. The first call of a
process also starts its threads (several milliseconds here), which a single run per cell
counts; below a few thousand tokens that is most of the time.

Results go to ``benchmarks/results/scale.{json,md}``. Ratios are against dcpe's linear
engine, within the run.

Examples
--------
    python benchmarks/bench_scale.py --parchain ~/ParChain-HAC/hac/linkage
    python benchmarks/bench_scale.py --sizes 16384x8,65536x8 --providers dcpe-linear,fastcluster
    python benchmarks/bench_scale.py --sizes 262144x8 --copies 0.05 --providers dcpe-cut \
        --name scale-copies
    python benchmarks/bench_scale.py --sizes 512x8,1024x8,2048x8,4096x8,8192x8 --repeat 7 \
        --providers dcpe-auto,dcpe-linear,dcpe-cut,parchain --parchain PATH --name scale-small
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_KINDS,
    DATA_TEXT,
    fmt_seconds,
    machine_info,
    make_points,
    markdown_table,
    with_copies,
    write_results,
)

PROVIDERS = ("dcpe-auto", "dcpe-linear", "dcpe-cut", "dcpe-matrix", "fastcluster", "parchain",
             "dcpe-cosine", "dcpe-cut-matrix", "dcpe-cut-auto", "dcpe-cosine-linear",
             "dcpe-cosine-matrix")
# dcpe-auto runs dcpe-linear's or dcpe-matrix's engine, and so on for the others left out
DEFAULT_PROVIDERS = ("dcpe-linear", "dcpe-cut", "dcpe-matrix", "fastcluster", "parchain",
                     "dcpe-cosine")
DEFAULT_SIZES = ("16384x8", "65536x8", "131072x8", "262144x8", "8192x256", "16384x256",
                 "65536x256")

_MATRIX_PROVIDERS = ("dcpe-matrix", "dcpe-cut-matrix", "dcpe-cosine-matrix")
_LINEAR_PROVIDERS = ("dcpe-linear", "dcpe-cut")

_CHILD = r"""
import json, resource, sys, time
import numpy as np
provider, n, d, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
repeat = int(sys.argv[5])
fraction = int(sys.argv[6])
copies = float(sys.argv[7])
sys.path.insert(0, sys.argv[8])
kind = sys.argv[9]
dtype = np.dtype(sys.argv[10])
limit = {"memory_limit": sys.argv[11]} if len(sys.argv) > 11 else {}
from _common import make_points, with_copies
x = np.ascontiguousarray(with_copies(make_points(kind, n, d), copies), dtype=dtype)


def run():
    if provider == "fastcluster":
        import fastcluster
        return fastcluster.linkage(x.astype(np.float64), method="average",
                                   metric="euclidean"), {}
    import dcpe
    if provider.startswith("dcpe-cut"):
        engine = {"dcpe-cut": "linear", "dcpe-cut-matrix": "matrix",
                  "dcpe-cut-auto": "auto"}[provider]
        labels = dcpe.cluster(x, max(1, n // fraction), engine=engine, **limit)
        return None, {"clusters": int(labels.max()) + 1}
    kw = {"dcpe-auto": {}, "dcpe-linear": {"engine": "linear"},
          "dcpe-matrix": {"engine": "matrix"}, "dcpe-cosine": {"metric": "cosine"},
          "dcpe-cosine-linear": {"metric": "cosine", "engine": "linear"},
          "dcpe-cosine-matrix": {"metric": "cosine", "engine": "matrix"}}[provider]
    return dcpe.linkage(x, **kw, **limit), {}


runs = []
for _ in range(repeat):
    t0 = time.perf_counter()
    z, extra = run()
    runs.append(time.perf_counter() - t0)
seconds = float(np.median(runs))
print(json.dumps({"seconds": seconds, "runs": runs, "dtype": str(x.dtype),
                  "heights_sum": None if z is None else float(np.sum(z[:, 2])),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  **extra}))
"""


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        n, _, d = item.strip().lower().partition("x")
        out.append((int(n), int(d)))
    return out


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """Wait for ``proc``; return (exit status, its peak RSS in bytes), killing it on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return -9, usage.ru_maxrss * 1024
        time.sleep(0.05)


def run_python(provider: str, n: int, d: int, threads: int, timeout: float,
               memory_limit: str | None = None, repeat: int = 1,
               cut_fraction: int = 2, copies: float = 0.0,
               data: str = "codebook", dtype: str = "float32") -> dict[str, Any]:
    env = dict(os.environ, DCPE_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    limit = [] if memory_limit is None else [memory_limit]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, provider, str(n), str(d),
                                 str(threads), str(repeat), str(cut_fraction), str(copies),
                                 str(Path(__file__).resolve().parent), data, dtype, *limit],
                                stdout=out, stderr=err, env=env)
        code, rss = _wait(proc, timeout)
        out.seek(0)
        err.seek(0)
        text, etext = out.read(), err.read()
    if code != 0:
        why = "timed out" if code == -9 else (etext.strip().splitlines() or ["failed"])[-1]
        return {"error": why[:300], "peak_rss": rss}
    row = json.loads(text.strip().splitlines()[-1])
    row["peak_rss"] = rss
    return row


@functools.cache
def parchain_takes(binary: str, d: int) -> bool:
    """Whether this ParChain build clusters four points of ``d`` dimensions: at a d it has
    no branch for, its ``linkage`` prints "dim not supported", writes nothing and exits 0."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "points.pbbs", Path(tmp) / "dendrogram.txt"
        rows = [" ".join(str((i * 7 + j * 3) % 5) for j in range(d)) for i in range(4)]
        src.write_text(f"pbbs_sequencePoint{d}d\n" + "\n".join(rows) + "\n")
        try:
            proc = subprocess.run([binary, "-method", "avg", "-cachesize", "32", "-d",
                                   str(d), "-o", str(dst), str(src)], capture_output=True,
                                  env=dict(os.environ, PARLAY_NUM_THREADS="1"), timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and dst.exists()


def run_parchain(binary: str, n: int, d: int, threads: int, timeout: float,
                 repeat: int = 1, copies: float = 0.0,
                 data: str = "codebook") -> dict[str, Any]:
    if not parchain_takes(binary, d):
        return {"error": f"this ParChain build does not take d = {d}: it clustered no four "
                         "points of that d (see the module docstring)"}
    import numpy as np

    x = with_copies(make_points(data, n, d), copies)
    runs, peak = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "points.pbbs", Path(tmp) / "dendrogram.txt"
        with open(src, "w") as fh:
            fh.write(f"pbbs_sequencePoint{d}d\n")
            np.savetxt(fh, x.astype(np.float64), fmt="%.9g")
        env = dict(os.environ, PARLAY_NUM_THREADS=str(threads))
        for _ in range(repeat):
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.Popen([binary, "-method", "avg", "-cachesize", "32", "-d",
                                         str(d), "-o", str(dst), str(src)], stdout=out,
                                        stderr=subprocess.STDOUT, env=env)
                code, rss = _wait(proc, timeout)
                out.seek(0)
                text = out.read()
            peak = max(peak, rss)
            if code != 0:
                return {"error": "timed out" if code == -9 else text.strip()[-300:],
                        "peak_rss": peak}
            for line in text.splitlines():
                if "clustering:" in line:  # "Parlay time: clustering: 12.3456"
                    runs.append(float(line.rsplit(":", 1)[1]))
        if not dst.exists():
            return {"error": "wrote no dendrogram: " + text.strip()[-300:], "peak_rss": peak}
        heights = np.loadtxt(dst, usecols=2, ndmin=1)
    seconds = float(np.median(runs)) if runs else None
    return {"seconds": seconds, "runs": runs, "heights_sum": float(heights.sum()),
            "peak_rss": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                   help="comma-separated NxD list (default: %(default)s)")
    p.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS),
                   help=f"comma-separated subset of {', '.join(PROVIDERS)}")
    p.add_argument("--parchain", default=None, metavar="PATH",
                   help="a built ParChain 'linkage' binary (see the module docstring)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--matrix-max-n", type=int, default=65536,
                   help="largest N for dcpe's matrix engine (default: %(default)s)")
    p.add_argument("--fastcluster-max-n", type=int, default=65536,
                   help="largest N for fastcluster's float64 matrix (default: %(default)s)")
    p.add_argument("--linear-high-d-max-n", type=int, default=65536,
                   help="largest N for dcpe's linear engine above 16 dimensions, where its "
                        "scans of the centroids cost the most (default: %(default)s)")
    p.add_argument("--cosine-sizes", default="262144x8",
                   help="sizes for the dcpe-cosine providers (default: %(default)s)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="memory_limit of dcpe's providers, such as 1GiB (default: none, the "
                        "available memory); the linear engine's cache follows it, so a "
                        "small one keeps its rounds from handing over to the matrix")
    p.add_argument("--cut-fraction", type=int, default=2, metavar="F",
                   help="dcpe-cut's labels at k = N // F (default: %(default)s)")
    p.add_argument("--copies", type=float, default=0.0, metavar="F",
                   help="replace a fraction F of the rows by copies of the first row "
                        "(default: %(default)s)")
    p.add_argument("--data", choices=DATA_KINDS, default="codebook",
                   help="the points: the sample codebook's generator, isotropic Gaussian "
                        "points, or points of a grid (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="the points' type as dcpe's providers get them, and so the "
                        "precision they cluster in (fastcluster always takes float64, "
                        "ParChain text; default: %(default)s)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each provider's call per cell, reported by their median "
                        "(default: %(default)s)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds per provider and size before it is stopped")
    p.add_argument("--name", default="scale", help="results file name (default: scale)")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)

    providers = [s.strip() for s in args.providers.split(",") if s.strip()]
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown:
        p.error(f"unknown providers {unknown}; choose from {', '.join(PROVIDERS)}")
    if "parchain" in providers and args.parchain is None:
        providers.remove("parchain")
    if args.parchain is not None and not os.access(args.parchain, os.X_OK):
        p.error(f"--parchain {args.parchain!r} is not an executable file")
    if args.cut_fraction < 1:
        p.error(f"--cut-fraction must be at least 1, not {args.cut_fraction}")
    if not 0.0 <= args.copies < 1.0:
        p.error(f"--copies must be at least 0 and below 1, not {args.copies}")
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, not {args.repeat}")
    sizes = _parse_sizes(args.sizes)
    cosine_sizes = set(_parse_sizes(args.cosine_sizes))

    rows: list[dict[str, Any]] = []
    for n, d in sizes:
        for provider in providers:
            if provider in _MATRIX_PROVIDERS and n > args.matrix_max_n:
                continue
            if (provider in _LINEAR_PROVIDERS and d > 16
                    and n > args.linear_high_d_max_n):
                continue
            if provider == "fastcluster" and n > args.fastcluster_max_n:
                continue
            if provider.startswith("dcpe-cosine") and (n, d) not in cosine_sizes:
                continue
            print(f"{provider} {n}x{d} ...", file=sys.stderr, flush=True)
            if provider == "parchain":
                row = run_parchain(args.parchain, n, d, args.threads, args.timeout,
                                   args.repeat, args.copies, args.data)
            else:
                row = run_python(provider, n, d, args.threads, args.timeout,
                                 args.memory_limit, args.repeat, args.cut_fraction,
                                 args.copies, args.data, args.dtype)
            row.update(provider=provider, n=n, d=d)
            print(f"  {row}", file=sys.stderr, flush=True)
            rows.append(row)

    def seconds_of(provider: str, n: int, d: int) -> float | None:
        for r in rows:
            if (r["provider"], r["n"], r["d"]) == (provider, n, d) and r.get("seconds"):
                return r["seconds"]
        return None

    table = []
    for r in rows:
        base = seconds_of("dcpe-linear", r["n"], r["d"])
        ratio = (f"{r['seconds'] / base:.2f}×" if base and r.get("seconds")
                 and not r["provider"].startswith("dcpe-cosine") else "")
        r["ratio_to_dcpe_linear"] = (r["seconds"] / base
                                     if base and r.get("seconds") else None)
        table.append([f"{r['n']:,} × {r['d']}", r["provider"],
                      fmt_seconds(r.get("seconds")) if "error" not in r else r["error"],
                      ratio, f"{r.get('peak_rss', 0) / 2**20:,.0f} MiB"])
    info = machine_info()
    md = "\n".join([
        "# Exact average linkage at scale (full dendrogram; dcpe-cut: labels at "
        f"k = N/{args.cut_fraction})",
        "",
        f"{info['date']} · {info['cpu']} · {info['cores']} cores · threads {args.threads} · "
        + ({True: "AMX scan · ", False: "no AMX scan · "}.get(info.get("cpu_amx"), ""))
        + f"dcpe {info['versions'].get('dcpe')} · fastcluster "
        f"{info['versions'].get('fastcluster')}",
        "",
        f"Data: {DATA_TEXT[args.data]}"
        + (f", a fraction {args.copies:g} of its rows replaced by copies of the first row"
           if args.copies else "")
        + (", widened to float64 for dcpe's providers" if args.dtype == "float64" else "")
        + ". Time: the clustering call alone, "
        + ("one run per cell" if args.repeat == 1 else
           f"the median of {args.repeat} runs per cell, in one process (ParChain: "
           f"{args.repeat} runs of its binary), the first included")
        + "; peak RSS: the provider's own process. "
        "Ratio: time / dcpe-linear's time at the same size, in this run (dcpe's `auto` "
        "picks the matrix engine up to 2,048 tokens at d <= 8, 11,585 at 13 <= d <= 16, "
        "16,384 at other d <= 64, 24,576 at 65 <= d <= 128 and at any N above, while it "
        "fits)."
        + (f" dcpe's providers ran under `memory_limit={args.memory_limit!r}`, which bounds "
           "the linear engine's cache, and so when it hands over to the matrix of the "
           "clusters left." if args.memory_limit else ""),
        "",
        markdown_table(["N × d", "provider", "time", "× dcpe-linear", "peak RSS"], table),
    ])
    payload = {"machine": info, "threads": args.threads, "rows": rows,
               "memory_limit": args.memory_limit, "cut_fraction": args.cut_fraction,
               "copies": args.copies, "data": args.data, "dtype": args.dtype,
               "parchain": args.parchain is not None}
    jpath, mpath = write_results(args.name, payload, md, args.out)
    print(md)
    print(f"wrote {jpath} and {mpath}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
