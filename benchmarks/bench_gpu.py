"""GPU benchmark: tensor on the GPU -> canonical labels on the GPU, k = N/2, d = 8.

Providers (``PROVIDERS``) are dcpe backends called through ``dcpe.cluster(x, k,
backend=...)``:

* ``cuda``   — CUDA C++ kernels, reciprocal-nearest-neighbour rounds;
* ``triton`` — Triton kernels, same engine;
* ``torch``  — the paper's Algorithm 1 in PyTorch (one merge per step, O(N^3)), the
  published baseline, timed at ``--torch-sizes`` (up to N = 16384 by default) in the same
  run.  Sizes up to ``--torch-early-max`` (4096) are timed first; larger ones after every
  dcpe row, so that a slow baseline cannot crowd out the main figures, and only when the
  cubic prediction from the previous size fits in ``--torch-budget`` seconds.  Sizes not
  measured are extrapolated with a power law ``t = c N^p`` fitted to the two largest
  measured sizes (at small N the per-merge overhead dominates and a fit through them
  would under-estimate the O(N^3) cost); extrapolated figures are marked as such.

Data: N <= 16384 uses the built-in sample codebook (``dcpe.datasets.sample_codebook()``,
16384 x 8, L2-normalised); larger N uses the same generator at the largest requested N
(``dcpe.datasets.make_sample_codebook(n=max(N))``) and every smaller size above 16384 is a
prefix of it, so "labels at N = 65536 on the prefix of the 131072 data" is checked against
the ``cpu`` backend at 65536.

Timing: one warm-up call (Triton compilation, allocator), then ``--repeats`` calls timed
with CUDA events (wall clock on CPU), median reported; fewer calls when a row's calls
exceed ``--budget`` seconds.  Torch rows after the first skip the warm-up (the kernels and
the allocator are warm by then, and a call takes seconds).  Peak memory: the peak of
``torch.cuda.max_memory_allocated`` during one call minus the memory held before it.  The
CUDA extension allocates no device memory of its own (all buffers are PyTorch tensors
handed to it as pointers), and Triton kernels allocate none, so this is the whole device
footprint apart from the CUDA context.

Isolation (``--isolate``, used by ``gpu_check.sh``): each dcpe provider runs all its sizes
in a child process of its own (this script with ``--worker``), so that a kernel fault that
poisons the CUDA context of one provider cannot take the other provider's figures with it;
the parent keeps the torch rows, the comparison with ``cpu`` and the summary, and records
a failed or timed-out child as an error row at the first size it did not finish.
``--time-limit`` bounds the whole run: children get the time that is left, and torch
sizes that would not fit are skipped.

Smoke test without a GPU::

    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --device cpu --sizes 256 --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fit_power_law,
    fmt_seconds,
    machine_info,
    markdown_table,
    write_results,
)

PROVIDERS = ["cuda", "triton", "torch"]
DEFAULT_SIZES = [4096, 16384, 65536, 131072]
DEFAULT_TORCH_SIZES = [1024, 2048, 4096, 8192, 16384]
D = 8


def make_data(sizes: list[int]) -> dict[int, np.ndarray]:
    """``{N: (N, 8) float32}``; see the module docstring for the data used."""
    import dcpe.datasets as ds

    out: dict[int, np.ndarray] = {}
    sample = ds.sample_codebook()
    big = [n for n in sizes if n > len(sample)]
    large = ds.make_sample_codebook(n=max(big), d=D) if big else None
    for n in sizes:
        out[n] = sample[:n] if n <= len(sample) else large[:n]
    return out


def cluster_fn(provider: str) -> Callable[[Any, int], Any]:
    """``f(x, k) -> labels`` through the public API ``dcpe.cluster``."""
    import dcpe

    def run(x: Any, k: int) -> Any:
        return dcpe.cluster(x, k, backend=provider)

    return run


def provider_status(provider: str, device: str) -> tuple[bool, str]:
    from dcpe import backends

    try:
        ok, why = backends.get(provider).available()
    except Exception as exc:  # import failure is a reason
        return False, f"{type(exc).__name__}: {exc}"
    if ok and device == "cpu" and provider == "cuda":
        return False, "needs a CUDA device"
    return ok, why


def time_gpu(fn: Callable[[], Any], repeats: int, device: str,
             budget_s: float = math.inf, warmup: bool = True) -> dict[str, Any]:
    """Median of ``repeats`` timed calls after one warm-up; peak memory of one call.

    Without ``warmup`` the first call is timed too (``warmup_s`` is then None)."""
    import torch

    cuda = device == "cuda"

    def once() -> tuple[float, Any]:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    t_warm, out = once() if warmup else (0.0, None)
    peak = None
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t_first, out = once()
        peak = torch.cuda.max_memory_allocated() - base
        times = [t_first]
    else:
        times = []
    while len(times) < repeats and sum(times) + t_warm < budget_s:
        t, out = once()
        times.append(t)
    if not times:
        times = [t_warm]
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": times,
            "warmup_s": t_warm if warmup else None, "peak_bytes": peak, "labels": out}


def diagnostics(providers: list[str], status: dict[str, tuple[bool, str]],
                data: dict[int, np.ndarray], n: int, device: str) -> dict[str, Any]:
    """Per RNN provider at ``N = n``, k = N/2: rounds of the labels path (early stop) and of
    the full dendrogram, and the wall time of one full ``linkage`` call (after warm-up)."""
    import torch

    from dcpe import backends

    out: dict[str, Any] = {}
    if not n or n not in data:
        return out
    x = torch.from_numpy(np.ascontiguousarray(data[n])).to(device)
    for provider in providers:
        if provider == "torch" or not status[provider][0]:
            continue
        mod = backends.get(provider)
        try:
            kw = {"method": "average", "metric": "euclidean", "max_cluster_size": None}
            part = mod._merges(x, n_clusters=n // 2, **kw)
            full = mod._merges(x, **kw)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mod.linkage(x, **kw)
            t_link = time.perf_counter() - t0
            out[provider] = {"rounds_labels_k_half": part.rounds, "rounds_full": full.rounds,
                             "merges_computed_k_half": part.m,
                             "linkage_seconds": round(t_link, 6)}
        except Exception as exc:
            out[provider] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def summarize(args: argparse.Namespace, device: str, sizes: list[int],
              status: dict[str, tuple[bool, str]], rows: list[dict[str, Any]],
              check: dict[str, Any], diag: dict[str, Any],
              done: bool) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON payload of what has been measured so far."""
    # torch baseline: power law through the two largest measured sizes
    tpts = sorted((r["n"], r["median_s"]) for r in rows
                  if r["provider"] == "torch" and "median_s" in r)
    fit = None
    if len(tpts) >= 2:
        pts = tpts[-2:]
        p, c = fit_power_law([n for n, _ in pts], [t for _, t in pts])
        fit = {"exponent": p, "coefficient": c, "points": pts}

    def torch_time(n: int) -> tuple[float | None, bool]:
        for m, t in tpts:
            if m == n:
                return t, False
        if fit is None:
            return None, False
        return fit["coefficient"] * n ** fit["exponent"], True

    table = []
    for r in rows:
        if r.get("n") is None or "median_s" not in r:
            table.append([r["provider"], r.get("n") or "—", "—", "—", "—", "—",
                          r.get("skipped") or r.get("error", "")])
            continue
        tt, extrap = torch_time(r["n"])
        ratio = "—"
        if tt is not None and r["provider"] != "torch":
            ratio = f"{tt / r['median_s']:.3g}x" + (" (vs extrapolated)" if extrap else "")
        peak = r["peak_bytes"]
        table.append([r["provider"], r["n"], fmt_seconds(r["median_s"]),
                      fmt_seconds(r["min_s"]), len(r["runs"]),
                      "—" if peak is None else f"{peak / 2**30:.2f} GiB", ratio])
    for n in sizes:
        tt, extrap = torch_time(n)
        if extrap and tt is not None:
            table.append(["torch (extrapolated)", n, fmt_seconds(tt), "—", "—", "—", "fit"])
    md = [f"# dcpe GPU benchmark ({device})", "",
          f"Tensor on the {device} to canonical labels on the {device}, d = {D}, k = N/2; "
          f"median of up to {args.repeats} timed calls after a warm-up "
          f"(fewer when they exceed {args.budget:g} s per row); torch (Algorithm 1): up "
          f"to {args.torch_repeats} calls, {args.torch_budget:g} s per row, no warm-up "
          f"after its first size.", "",
          markdown_table(["provider", "N", "median", "min", "runs", "peak memory",
                          "speed-up vs torch"], table), ""]
    if not done:
        md.append("**Incomplete: the run stopped before all rows were measured.**")
    if fit is not None:
        md.append(f"torch (Algorithm 1) fit for the sizes not measured: t = "
                  f"{fit['coefficient']:.3g} * N^{fit['exponent']:.2f} s from N = "
                  f"{[n for n, _ in fit['points']]}.")
    if check.get("n"):
        md.append(f"Labels vs cpu at N = {check['n']} (prefix of the largest data set): "
                  f"{ {k: v for k, v in check.items() if k != 'n'} }.")
    md.append("Peak memory: torch.cuda.max_memory_allocated during one call, minus memory "
              "held before; the CUDA extension allocates no device memory itself.")
    for provider, dg in diag.items():
        md.append(f"Engine at N = {args.diag_n} ({provider}): {dg}.")
    payload = {"machine": machine_info(), "device": device, "d": D, "sizes": sizes,
               "providers": status, "results": rows, "torch_fit": fit, "cpu_check": check,
               "engine": diag, "repeats": args.repeats, "budget_s": args.budget,
               "complete": done}
    return "\n".join(md), payload


def run_child(provider: str, args: argparse.Namespace, device: str, sizes: list[int],
              check_n: int, deadline: float, share: int, rows: list[dict[str, Any]],
              labels_at: dict[tuple[str, int], Any], diag: dict[str, Any]) -> None:
    """Run every size of ``provider`` in a child process (``--worker``) and collect its
    rows, its labels at ``check_n`` and its diagnostics; a child that fails or runs out of
    time becomes an error row at the first size it did not finish.  The child may use a
    ``1 / share`` part of the time left before ``deadline`` (less a margin), so that one
    that hangs leaves time to the children after it."""
    # under --out, so that what a child measured comes back even if the parent is killed
    wdir = (Path(args.out) if args.out else Path(tempfile.mkdtemp())) / f"worker-{provider}"
    wdir.mkdir(parents=True, exist_ok=True)
    for stale in wdir.iterdir():
        stale.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--providers", provider,
           "--sizes", *map(str, sizes), "--repeats", str(args.repeats), "--budget",
           str(args.budget), "--check-n", str(check_n), "--diag-n", str(args.diag_n),
           "--device", device, "--name", "worker", "--out", str(wdir)]
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    left = deadline - time.monotonic()
    timeout = None if math.isinf(left) else max(5.0, (left - 20.0) / max(1, share))
    failure = None
    try:
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            failure = f"worker process exited with {proc.returncode}: {tail}"
        sys.stderr.write(proc.stderr)
    except subprocess.TimeoutExpired:
        failure = f"worker process stopped after {timeout:.0f} s (--time-limit)"
    jpath = wdir / "worker.json"
    payload = json.loads(jpath.read_text()) if jpath.exists() else {}
    got = [r for r in payload.get("results", []) if r.get("provider") == provider]
    rows.extend(got)
    diag.update(payload.get("engine", {}))
    lab = wdir / f"labels-{provider}-{check_n}.npy"
    if check_n and lab.exists():
        labels_at[(provider, check_n)] = np.load(lab)
    if failure is not None:
        done = {r["n"] for r in got if "median_s" in r or "error" in r}
        missing = [n for n in sizes if n not in done]
        if missing:
            rows.append({"provider": provider, "n": missing[0], "error": failure})
        else:
            diag[provider] = {"error": failure}
        print(f"{provider:7s} {failure}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--providers", nargs="+", default=PROVIDERS, choices=PROVIDERS)
    ap.add_argument("--torch-sizes", type=int, nargs="+", default=DEFAULT_TORCH_SIZES,
                    help="N at which the torch baseline is timed (others are extrapolated)")
    ap.add_argument("--torch-budget", type=float, default=60.0,
                    help="seconds of torch-baseline calls per size; a size whose predicted "
                         "time exceeds it is not run (extrapolated instead)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-repeats", type=int, default=3,
                    help="timed calls of the torch baseline per size (at most)")
    ap.add_argument("--torch-early-max", type=int, default=4096,
                    help="torch sizes above this are timed after the dcpe rows")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of timed calls per (provider, N) row: fewer repeats beyond")
    ap.add_argument("--check-n", type=int, default=65536,
                    help="N at which labels are compared with the cpu backend (0: none)")
    ap.add_argument("--diag-n", type=int, default=16384,
                    help="N of the engine diagnostics (rounds, full linkage time; 0: none)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="cpu runs the Triton kernels under TRITON_INTERPRET=1 (smoke test)")
    ap.add_argument("--name", default="gpu-h200", help="result file stem")
    ap.add_argument("--out", default=None, help="output directory (default results/)")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes, 1 repeat: checks that everything runs")
    ap.add_argument("--isolate", action="store_true",
                    help="run each dcpe provider in a child process of its own")
    ap.add_argument("--time-limit", type=float, default=math.inf,
                    help="seconds for the whole run (children and torch sizes that do not "
                         "fit are cut short or skipped)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.time_limit

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        args.sizes = [min(n, 256) for n in args.sizes][:1] if device == "cpu" else [1024]
        args.torch_sizes = [64, 128, 16384]  # 128 after the dcpe rows; 16384 skipped
        args.torch_early_max = 64
        args.repeats = 1
        args.torch_repeats = 1
        args.check_n = args.sizes[0]
        args.diag_n = args.sizes[0]
    sizes = sorted(set(args.sizes))
    check_n = args.check_n if args.check_n and args.check_n <= max(sizes) else 0
    data = make_data(sorted(set(sizes) | ({check_n} if check_n else set())))
    torch_sizes = sorted(set(args.torch_sizes))

    status = {p: provider_status(p, device) for p in args.providers}
    print(f"device={device} sizes={sizes} providers={status}", flush=True)
    rows: list[dict[str, Any]] = []
    labels_at: dict[tuple[str, int], Any] = {}
    check: dict[str, Any] = {"n": check_n}
    diag: dict[str, Any] = {}

    def save(done: bool = False) -> tuple[Path, Path, str]:
        md, payload = summarize(args, device, sizes, status, rows, check, diag, done)
        return (*write_results(args.name, payload, md, args.out), md)

    # Work order: the small torch sizes, then every size for all dcpe providers, smallest
    # first, then the large torch sizes, so that a run cut short still holds the figures
    # measured first.  Results are rewritten after every row.
    work: list[tuple[str, int]] = []
    for provider in args.providers:
        if not status[provider][0]:
            rows.append({"provider": provider, "n": None, "skipped": status[provider][1]})
    run_torch = "torch" in args.providers and status["torch"][0] and not args.worker
    if run_torch:
        work += [("torch", n) for n in torch_sizes if n <= args.torch_early_max]
    dcpe_ok = [p for p in args.providers if p != "torch" and status[p][0]]
    if args.isolate and not args.worker:
        work += [(p, 0) for p in dcpe_ok]  # N = 0: all sizes in a child process
    else:
        work += [(p, n) for n in sizes for p in dcpe_ok]
    if run_torch:
        work += [("torch", n) for n in torch_sizes if n > args.torch_early_max]
    torch_last: tuple[int, float] | None = None  # (N, seconds) of the last torch row
    for idx, (provider, n) in enumerate(work):
        if n == 0:
            share = sum(1 for _, m in work[idx:] if m == 0)  # children still to run
            run_child(provider, args, device, sizes, check_n, deadline, share, rows,
                      labels_at, diag)
            save()
            continue
        if provider == "torch" and torch_last is not None:
            predicted = torch_last[1] * (n / torch_last[0]) ** 3
            left = deadline - time.monotonic()
            if predicted > min(args.torch_budget, left):
                limit = (f"--torch-budget {args.torch_budget:g} s"
                         if predicted > args.torch_budget else f"the {left:.0f} s left")
                rows.append({"provider": provider, "n": n,
                             "skipped": f"predicted {fmt_seconds(predicted)} > {limit}"})
                print(f"{provider:7s} N={n:7d} skipped (predicted {predicted:.0f} s)",
                      flush=True)
                save()
                continue
        fn = cluster_fn(provider)
        x_np = data[n] if n in data else make_data([n])[n]
        x = torch.from_numpy(np.ascontiguousarray(x_np)).to(device)
        k = n // 2
        budget = args.torch_budget if provider == "torch" else args.budget
        warmup = not (provider == "torch" and torch_last is not None)
        try:
            repeats = args.torch_repeats if provider == "torch" else args.repeats
            res = time_gpu(lambda x=x, k=k, fn=fn: fn(x, k), repeats, device, budget,
                           warmup=warmup)
        except Exception as exc:
            rows.append({"provider": provider, "n": n, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{provider:7s} N={n:7d} ERROR {exc}", flush=True)
            save()
            continue
        lab = res.pop("labels")
        if n == check_n and provider != "torch":
            labels_at[(provider, n)] = lab.cpu().numpy()
            if args.worker:
                np.save(Path(args.out) / f"labels-{provider}-{n}.npy", labels_at[(provider, n)])
        rows.append({"provider": provider, "n": n, "k": k, **res})
        print(f"{provider:7s} N={n:7d} median {fmt_seconds(res['median_s'])} "
              f"runs {len(res['runs'])} peak {res['peak_bytes']}", flush=True)
        del x, lab
        if device == "cuda":
            torch.cuda.empty_cache()
        if provider == "torch":
            torch_last = (n, res["min_s"])
        save()

    # agreement with the cpu backend at check_n (data prefix)
    if check_n and labels_at and not args.worker:
        try:
            t0 = time.perf_counter()
            ref = np.asarray(cluster_fn("cpu")(data[check_n], check_n // 2))
            check["cpu_seconds"] = time.perf_counter() - t0
            for (provider, _), lab in labels_at.items():
                check[provider] = {"identical": bool(np.array_equal(lab, ref)),
                                   "tokens_differing": int(np.count_nonzero(lab != ref))}
        except Exception as exc:
            check["error"] = f"{type(exc).__name__}: {exc}"
        save()

    if not (args.isolate and not args.worker):  # else the children ran them
        diag.update(diagnostics(args.providers, status, data, args.diag_n, device))
    jpath, mpath, md = save(done=True)
    if not args.worker:
        print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
