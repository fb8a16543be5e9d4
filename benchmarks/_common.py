"""Shared helpers for the benchmark scripts: machine/version info, timing, result files."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Machine, library versions and date, recorded with every result file."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname_hash": hex(abs(hash(platform.node())) % (1 << 32)),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name)
            for name in ("dcpe", "numpy", "scipy", "sklearn", "fastcluster", "torch", "triton")
        },
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        # the linear engine's scan above 16 dimensions on AMX tiles (DCPE_CPU_AMX=0: off)
        from dcpe import _C

        info["cpu_amx"] = bool(_C.cpu_amx())
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:
        pass
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        if out.returncode == 0:
            info["commit"] = out.stdout.strip()
            # sources that differ from that commit: the numbers are not the commit's
            changed = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "csrc",
                 "python", "dcpe_kernels", "setup.py", "CMakeLists.txt"],
                capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=5)
            if changed.returncode == 0 and changed.stdout.strip():
                info["commit"] += "+changes"
    except Exception:
        pass
    return info


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> dict[str, Any]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs (after ``warmup``), with median."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": times}


def fit_power_law(ns: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares fit of ``t = c * n**p`` in log space; returns ``(p, c)``."""
    xs = [math.log(n) for n in ns]
    ys = [math.log(max(t, 1e-9)) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")
    c = math.exp(my - p * mx)
    return p, c


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"NxD:K,..."`` -> ``[(N, D, K), ...]``; a malformed entry is a usage error
    (``argparse.ArgumentTypeError``)."""
    import argparse

    sizes = []
    for item in text.split(","):
        try:
            shape, k = item.split(":")
            n, d = shape.lower().split("x")
            n_, d_, k_ = int(n), int(d), int(k)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"size {item!r} is not NxD:K, e.g. 16384x8:8192") from None
        if not (n_ >= 1 and d_ >= 1 and 1 <= k_ <= n_):
            raise argparse.ArgumentTypeError(f"size {item!r} needs N, D >= 1 and 1 <= K <= N")
        sizes.append((n_, d_, k_))
    return sizes


def sizes_parser(doc: str, default_sizes: str, providers: dict[str, str],
                 name: str) -> Any:
    """The options of a benchmark over ``NxD:K`` sizes and providers: ``--sizes``,
    ``--providers``, ``--repeat``, ``--name`` and ``--out`` (an ``argparse`` parser; the
    caller may add more)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes(default_sizes),
                    help=f"NxD:K,... (default {default_sizes})")
    ap.add_argument("--providers", default=",".join(providers),
                    help=f"comma-separated, of {', '.join(providers)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (the median)")
    ap.add_argument("--name", default=name, help=f"results file name (default {name})")
    ap.add_argument("--out", help="output directory (default benchmarks/results/)")
    return ap


def chosen_providers(ap: Any, text: str, providers: dict[str, str]) -> list[str]:
    """The providers of ``--providers``, all known, at least one (else a usage error)."""
    chosen = [p for p in text.split(",") if p]
    if not chosen or any(p not in providers for p in chosen):
        ap.error(f"--providers takes {', '.join(providers)}; got {text!r}")
    return chosen


def missing(module: str, what: str) -> str | None:
    """None when ``module`` imports, else why a provider that needs it cannot run."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return f"{what} is not installed"
    return None


def fmt_seconds(t: float | None) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "—"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    if t < 120:
        return f"{t:.2f} s"
    if t < 7200:
        return f"{t / 60:.1f} min"
    return f"{t / 3600:.1f} h"


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label vectors describe the same partition (equal canonical relabelings:
    clusters numbered in the order of their first token)."""

    def canonical(lab: np.ndarray) -> np.ndarray:
        _, first, inverse = np.unique(np.asarray(lab).ravel(), return_index=True,
                                      return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse.ravel()]

    return len(a) == len(b) and bool(np.array_equal(canonical(a), canonical(b)))


DATA_KINDS = ("codebook", "gaussian", "grid")
DATA_TEXT = {
    "codebook": "the sample codebook's generator, float32",
    "gaussian": "isotropic standard normal points (seed 0), float32",
    "grid": "the first N points, in lexicographic order, of the smallest grid of L^d points "
            "(coordinates -(L-1)/2 to (L-1)/2 in steps of 1; 2^d points: the corners of a "
            "cube), float32",
}


def make_points(kind: str, n: int, d: int) -> np.ndarray:
    """``n`` points of dimension ``d``, float32: ``"codebook"``, the sample codebook's
    generator (its 16,384 x 8 case the sample codebook itself); ``"gaussian"``, isotropic
    standard normal points (seed 0), as the dead codes of a codebook initialised as
    ``torch.nn.Embedding`` is keep that initialisation. In many dimensions these have few
    reciprocal nearest neighbours, and a round-based engine merges few pairs a round;
    ``"grid"``, the first ``n`` points in lexicographic order of the smallest grid of ``L``
    levels a dimension with ``L^d >= n`` (coordinates ``-(L-1)/2`` to ``(L-1)/2`` in steps of
    1, exact in float32): a finite scalar quantizer's codebook, or with ``n = 2^d`` a
    lookup-free quantizer's (the corners of a cube). There every distance ties with many
    others."""
    from dcpe.datasets import make_sample_codebook, sample_codebook

    if kind == "gaussian":
        return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    if kind == "grid":
        levels = 2
        while levels ** d < n:
            levels += 1
        index = np.stack(np.unravel_index(np.arange(n), (levels,) * d), axis=1)
        return (index - (levels - 1) / 2).astype(np.float32)
    if kind != "codebook":
        raise ValueError(f"data kind {kind!r}: choose from {DATA_KINDS}")
    return sample_codebook() if (n, d) == (16384, 8) else make_sample_codebook(n, d)


def with_copies(x: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """``x`` with ``round(fraction * N)`` of its rows other than row 0, drawn at random
    (``seed``), replaced by copies of row 0: exact duplicates, which tie at distance 0."""
    x = np.array(x, copy=True)
    count = min(len(x) - 1, round(fraction * len(x)))
    if count > 0:
        rows = np.random.default_rng(seed).choice(np.arange(1, len(x)), count, replace=False)
        x[rows] = x[0]
    return x


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str,
                  out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` atomically into ``out_dir`` (default results/)."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    for path, text in ((jpath, json.dumps(payload, indent=2, default=str) + "\n"),
                       (mpath, markdown.rstrip() + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return jpath, mpath
