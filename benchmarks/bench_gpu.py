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

Past the dense matrix (``--scale``, after every row above): the dense engine keeps the
N x N matrix (N^2 * 4 bytes: 256 GiB at N = 262,144), so beyond N = 131,072, or when
``memory_limit`` is too small for it, ``engine="auto"`` runs the matrix-free rounds
(``dcpe_kernels.linear``).  Each spec ``NxD[@LIMIT]`` (default ``DEFAULT_SCALE``) is timed
for every available dcpe provider as ``dcpe.cluster(x, N // 2, backend=provider,
memory_limit=LIMIT)`` on ``dcpe.datasets.make_sample_codebook(n=N, d=D)`` (float32; one
array per D at the largest N of the specs, smaller N are prefixes), in the order given:
one timed call (CUDA events), preceded by a warm-up call only for rows predicted short
(N < 524,288 and D < 64 on a GPU); the other rows on a GPU follow, once per provider and
D in a process, a compile warm-up (``compile_warmup``: one matrix-free call on the row's
first 4,096 tokens, under a memory limit just past its preflight), so that the timed
call compiles and loads no kernel of its own.  A row records its time, its peak memory
(as above), the engine that ``dcpe_kernels.linear.choose_engine`` picks within
min(LIMIT, free device memory), and, for the matrix-free engine, what
``dcpe_kernels.linear.trace_rounds`` records of the timed call: its rounds, its time per
phase (CUDA events between the phases, read after each round's own synchronisation) and
its work (centroid-scan pairs, candidate pairs, token pairs summed); a round of at least
1 s is printed as it ends.  The ``cpu`` backend
is timed once per spec without ``@LIMIT`` whose D is in ``--scale-cpu-dims`` (default 8),
after the GPU rows, when its prediction (t ~ N^1.5 from the previous cpu row, or from the
cpu time at ``--check-n``) fits in the time left; its labels are compared, as partitions,
with the GPU providers' labels at the same N and D (``labels_equal_cpu``).  A GPU row is
skipped once less than a margin is left or when t ~ N^2 from the provider's previous row
at the same D (t ~ N^2 D from its previous row at another D) predicts that it would not
fit.  Under ``--isolate`` each provider's scale rows run in a second child process of its
own, after the torch rows, with its share of the time left as its ``--time-limit``; the
children share the generated data, and the labels the cpu rows need (``.npy``), through a
temporary directory that the parent removes at the end.  ``--scale`` with no value or
``--no-scale`` turns the section off.

Smoke test without a GPU::

    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --device cpu --sizes 256 --out /tmp/b \\
        --scale 200x3 200x3@160KiB --scale-cpu-dims 3
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import shutil
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
    same_partition,
    write_results,
)

PROVIDERS = ["cuda", "triton", "torch"]
DEFAULT_SIZES = [4096, 16384, 65536, 131072]
DEFAULT_TORCH_SIZES = [1024, 2048, 4096, 8192, 16384]
D = 8
#: ``--scale`` specs ``NxD[@LIMIT]``, run in this order (the small rows compile the kernels)
DEFAULT_SCALE = ["262144x8", "524288x8", "1048576x8", "262144x8@24GiB", "262144x8@16GiB",
                 "262144x256"]
#: dry-run specs: the dense and (by the limit) the matrix-free engine at a tiny N
DRY_RUN_SCALE = {"cpu": ["200x3", "200x3@160KiB"], "cuda": ["4096x8", "4096x8@16MiB"]}
DEFAULT_SCALE_CPU_DIMS = [8]
#: a scale row gets a warm-up call (on a GPU) only below these N and D
SCALE_WARMUP_BELOW_N = 524288
SCALE_WARMUP_BELOW_D = 64
#: ... the other rows on a GPU follow a compile warm-up once per provider and D in a process:
#: one call on the first COMPILE_WARMUP_N tokens of the row's data, matrix-free, under a
#: memory limit just past its preflight (compile_warmup), so that the timed call compiles
#: and loads no kernel of its own
COMPILE_WARMUP_N = 4096
#: seconds kept free at the end of the time limit by the scale rows
SCALE_MARGIN_S = 10.0
#: a matrix-free round at least this long is printed as it ends
SCALE_SLOW_ROUND_S = 1.0
#: phases of the matrix-free rounds, in table order (dcpe_kernels.linear.trace_rounds)
PHASES = ["scan", "candidates", "sums", "select", "update", "handover", "dense"]
#: exponents of the time predictions t ~ N^p from the previous row at the same d
GPU_SCALE_EXPONENT = 2.0
CPU_SCALE_EXPONENT = 1.5

ScaleSpec = tuple[int, int, str | None]


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


def parse_scale_spec(text: str) -> ScaleSpec:
    """``"NxD"`` or ``"NxD@LIMIT"`` -> ``(N, D, LIMIT or None)``; LIMIT as ``memory_limit``
    takes it (bytes or a size such as ``24GiB``)."""
    match = re.fullmatch(r"\s*(\d+)x(\d+)(?:@(\S+))?\s*", text)
    if match is None or int(match[1]) < 2 or int(match[2]) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid scale spec {text!r}: expected NxD or NxD@LIMIT with N >= 2 and D >= 1, "
            f"e.g. 262144x8 or 262144x8@24GiB")
    limit = match[3]
    if limit is not None:
        from dcpe._memory import parse_memory_limit

        try:
            parse_memory_limit(limit)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"invalid scale spec {text!r}: {exc}") from None
    return int(match[1]), int(match[2]), limit


def spec_name(spec: ScaleSpec) -> str:
    n, d, limit = spec
    return f"{n}x{d}" + (f"@{limit}" if limit else "")


def spec_file(spec: ScaleSpec) -> str:
    """``spec_name`` with plain characters only (for file names)."""
    n, d, limit = spec
    return f"{n}x{d}" + (f"-{limit}" if limit else "")


class ScaleData:
    """Data of the scale rows: per D one ``make_sample_codebook(n=max N, d=D)`` array,
    generated once per process (smaller N are prefixes); with ``cache`` (a directory shared
    by the processes of one run) it is generated once per run."""

    def __init__(self, specs: list[ScaleSpec], cache: str | None = None) -> None:
        self.max_n: dict[int, int] = {}
        for n, d, _ in specs:
            self.max_n[d] = max(n, self.max_n.get(d, 0))
        self.cache = Path(cache) if cache else None
        self.arrays: dict[int, np.ndarray] = {}

    def get(self, n: int, d: int) -> np.ndarray:
        if d not in self.arrays:
            import dcpe.datasets as ds

            big = self.max_n[d]
            path = self.cache / f"codebook-{big}x{d}.npy" if self.cache else None
            if path is not None and path.exists():
                self.arrays[d] = np.load(path)
            else:
                self.arrays[d] = ds.make_sample_codebook(n=big, d=d).astype(np.float32)
                if path is not None:  # written whole, then renamed: never read half-written
                    tmp = path.with_name(f"{path.stem}.{id(self)}.tmp.npy")
                    np.save(tmp, self.arrays[d])
                    tmp.replace(path)
        return self.arrays[d][:n]


def cpu_label_keys(specs: list[ScaleSpec], cpu_dims: list[int]) -> set[tuple[int, int]]:
    """``(N, D)`` at which the ``cpu`` backend runs in the scale section."""
    return {(n, d) for n, d, limit in specs if limit is None and d in cpu_dims}


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


def busy_time(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """Time the device spends in kernels and copies during one call of ``fn`` (the
    profiler's self time of every device event), beside the call's wall time outside the
    profiler: their difference is time the device waited for the host.  The three
    kernels that took longest are named.  On a CPU device the CPU operators are summed."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    wall = time_gpu(fn, 1, device)["median_s"]  # after a warm-up call
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us > 0:
            rows.append((us, ev.count, ev.key))
    rows.sort(reverse=True)
    busy = sum(us for us, _, _ in rows) / 1e6
    return {"wall_seconds": round(wall, 6), "busy_seconds": round(busy, 6),
            "waiting_seconds": round(max(wall - busy, 0.0), 6),
            "top": [f"{key[:60]} x{count}: {us / 1e3:.3f} ms" for us, count, key in rows[:3]]}


#: how the dense rounds are driven, as (``_ROUNDS_AHEAD``, ``_MERGE_AHEAD``) of
#: ``dcpe_kernels.rnn``: counts read before the merge, merge launched ahead of the counts
#: (rounds read one by one), and rounds chained on the device (the default)
ROUND_DRIVES = {"counts_first": (1, False), "merge_ahead": (1, True), "chained": (None, True)}


def rounds_ab(fn: Callable[[], Any], device: str, repeats: int = 5) -> dict[str, Any]:
    """Median seconds of ``fn`` (a flat cut) under each of :data:`ROUND_DRIVES`, alternating
    in one run, and the ratio of each to the default (chained rounds)."""
    from dcpe_kernels import rnn

    times: dict[str, list[float]] = {name: [] for name in ROUND_DRIVES}
    saved = rnn._ROUNDS_AHEAD, rnn._MERGE_AHEAD
    try:
        for _ in range(repeats):
            for name, (ahead, merge_ahead) in ROUND_DRIVES.items():
                rnn._ROUNDS_AHEAD = saved[0] if ahead is None else ahead
                rnn._MERGE_AHEAD = merge_ahead
                times[name].append(time_gpu(fn, 1, device, warmup=False)["median_s"])
    finally:
        rnn._ROUNDS_AHEAD, rnn._MERGE_AHEAD = saved
    med = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, Any] = {f"{name}_seconds": round(v, 6) for name, v in med.items()}
    out["rounds_ahead"] = saved[0]
    for name in ("counts_first", "merge_ahead"):
        out[f"{name}_over_chained"] = (round(med[name] / med["chained"], 3)
                                       if med["chained"] > 0 else None)
    return out


def diagnostics(providers: list[str], status: dict[str, tuple[bool, str]],
                data: dict[int, np.ndarray], n: int, device: str) -> dict[str, Any]:
    """Per RNN provider at ``N = n``, k = N/2: rounds of the labels path (early stop) and of
    the full dendrogram, the wall time of one full ``linkage`` call (after warm-up), and
    where the labels call's time goes on the device (:func:`busy_time`)."""
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
            continue
        cut = functools.partial(mod.labels, x, n // 2, **kw)
        for name, diag in (("labels_k_half", busy_time), ("rounds", rounds_ab)):
            try:
                out[provider][name] = diag(cut, device)
            except Exception as exc:  # a diagnostic's failure is reported, not raised
                out[provider][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


class RoundTrace:
    """Sink of ``dcpe_kernels.linear.trace_rounds``: the records of the last complete run
    (a warm-up call's are replaced by the timed call's); rounds of at least
    ``SCALE_SLOW_ROUND_S`` are printed as they end, under ``label``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.current: list[dict[str, Any]] = []
        self.last: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.current.append(record)
        if sum(record["ms"].values()) >= SCALE_SLOW_ROUND_S * 1e3 and not record.get("done"):
            print(f"{self.label} round {record['round']}: n {record['n']} rows "
                  f"{record['rows']} pairs {record.get('pairs', '-')} token pairs "
                  f"{record.get('token_pairs', '-')} ms {record['ms']}", flush=True)
        if record.get("done"):
            self.last, self.current = self.current, []

    def summary(self) -> dict[str, Any]:
        """``rounds``, ``phases_ms`` (summed over the rounds) and ``work`` of the last run;
        empty when no matrix-free run ended."""
        if not self.last:
            return {}
        ms: dict[str, float] = {}
        for rec in self.last:
            for name, value in rec["ms"].items():
                ms[name] = ms.get(name, 0.0) + value
        rounds = [r for r in self.last if not r.get("done")]
        work = {"scan_pairs": sum(r.get("scan_rows", r["rows"]) * r["n"] for r in rounds),
                "candidate_scan_pairs": sum((r["rows"] * (1 + r.get("relisted", 0))
                                             + r.get("rescanned", 0)) * r["n"]
                                            for r in rounds
                                            if r.get("pairs") is not None and r["round"] > 1),
                "candidate_pairs": sum(r.get("pairs", 0) for r in rounds),
                "token_pairs": sum(r.get("token_pairs", 0) for r in rounds),
                "reused_token_pairs": sum(r.get("reused", 0) for r in rounds),
                "relisted": sum(r.get("relisted", 0) for r in rounds),
                "batched_rounds": sum(bool(r.get("batches")) for r in rounds),
                "max_size": max((r.get("max_size", 0) for r in rounds), default=0),
                "matrix_free_rounds": len(rounds)}
        return {"rounds": self.last[-1]["rounds"],
                "phases_ms": {k: round(v, 1) for k, v in ms.items()}, "work": work}


def compile_warmup(n: int, d: int, itemsize: int, device: Any = None) -> tuple[int, int]:
    """``(N, memory_limit)`` of a scale row's compile warm-up: the first
    :data:`COMPILE_WARMUP_N` tokens (at most ``n``) at k = N/2 with the matrix-free engine,
    under the bytes its preflight counts on ``device`` (:func:`dcpe_kernels.linear.
    linear_required_bytes`) plus an eighth of its N^2 matrix (the rounds stay
    matrix-free while the clusters are more than half of N/2; a list past the room goes in
    batches), so that it takes the row's kernels: the layout, the pair store and the scans
    of its D."""
    from dcpe_kernels.linear import linear_required_bytes

    nw = min(n, COMPILE_WARMUP_N)
    return nw, linear_required_bytes(nw, d, itemsize, device) + nw * nw * itemsize // 8


def scale_gpu_rows(provider: str, specs: list[ScaleSpec], device: str, deadline: float,
                   data: ScaleData, keep: set[tuple[int, int]], rows: list[dict[str, Any]],
                   labels: dict[tuple[str, str], np.ndarray], save: Callable[[], Any],
                   labels_dir: Path | None = None) -> None:
    """The scale rows of one dcpe provider, in the order of ``specs`` (see the module
    docstring).  Labels at the ``(N, D)`` in ``keep`` are kept in ``labels`` (and saved
    under ``labels_dir``) for the comparison with the ``cpu`` backend."""
    import torch

    import dcpe
    from dcpe._memory import parse_memory_limit
    from dcpe_kernels.linear import choose_engine, linear_required_bytes, trace_rounds
    from dcpe_kernels.rnn import memory_available

    last: dict[int, tuple[int, int, float]] = {}  # d -> (N, d, seconds) of its last row
    latest: tuple[int, int, float] | None = None  # the same of the last row at any d
    compiled: set[int] = set()  # the d of the compile warm-ups done
    for spec in specs:
        n, d, limit = spec
        row: dict[str, Any] = {"provider": provider, "spec": spec_name(spec), "n": n, "d": d,
                               "memory_limit": limit}
        # rows predicted short; the interpreter (device cpu) compiles nothing
        warmup = device == "cuda" and n < SCALE_WARMUP_BELOW_N and d < SCALE_WARMUP_BELOW_D
        left = deadline - time.monotonic()
        predicted = None
        ref = last.get(d, latest)  # O(N^2 d) scans: t ~ N^2 at one d, ~ d across d
        if ref is not None:
            predicted = (ref[2] * (n / ref[0]) ** GPU_SCALE_EXPONENT * (d / ref[1])
                         * (1 + warmup))
        if left < SCALE_MARGIN_S or (predicted is not None
                                     and predicted > left - SCALE_MARGIN_S):
            row["skipped"] = "skipped: time limit"
            if predicted is not None:
                row["predicted_s"] = predicted
            rows.append(row)
            print(f"{provider:7s} {spec_name(spec):>16s} skipped ({left:.0f} s left)",
                  flush=True)
            save()
            continue
        limit_bytes = parse_memory_limit(limit)
        x = lab = None
        try:
            x = torch.from_numpy(np.ascontiguousarray(data.get(n, d))).to(device)
            budget = memory_available(x.device)
            if limit_bytes is not None:
                budget = min(budget, limit_bytes)
            row["engine"] = choose_engine(n, d, x.element_size(), method="average",
                                          budget=budget, backend=provider, device=x.device)
            if row["engine"] == "linear":  # what the preflight counts, beside the peak
                row["preflight_bytes"] = linear_required_bytes(n, d, x.element_size(),
                                                               x.device)
            if device == "cuda" and not warmup and d not in compiled:
                nw, lim_w = compile_warmup(n, d, x.element_size(), x.device)
                t0 = time.perf_counter()
                dcpe.cluster(x[:nw].contiguous(), nw // 2, backend=provider, engine="linear",
                             memory_limit=lim_w)
                torch.cuda.synchronize()
                row["compile_warmup"] = {"n": nw, "memory_limit": lim_w,
                                         "seconds": time.perf_counter() - t0}
                compiled.add(d)
            trace = RoundTrace(f"{provider:7s} {spec_name(spec):>16s}")
            with trace_rounds(trace):
                res = time_gpu(lambda x=x, k=n // 2, lim=limit: dcpe.cluster(
                    x, k, backend=provider, memory_limit=lim), 1, device, warmup=warmup)
            lab = res.pop("labels")
            row.update({"k": n // 2, "seconds": res["runs"][0], "warmup_s": res["warmup_s"],
                        "peak_bytes": res["peak_bytes"], **trace.summary()})
            last[d] = latest = (n, d, row["seconds"])
            if (n, d) in keep:
                labels[(provider, spec_name(spec))] = lab.cpu().numpy()
                if labels_dir is not None:  # int32: half the disk of int64
                    np.save(labels_dir / f"labels-{provider}-scale-{spec_file(spec)}.npy",
                            labels[(provider, spec_name(spec))].astype(np.int32))
            print(f"{provider:7s} {spec_name(spec):>16s} {fmt_seconds(row['seconds'])} "
                  f"engine {row['engine']} peak {row['peak_bytes']} "
                  f"rounds {row.get('rounds')} ms per phase {row.get('phases_ms')}", flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{provider:7s} {spec_name(spec):>16s} ERROR {exc}", flush=True)
        rows.append(row)
        del x, lab
        if device == "cuda":
            torch.cuda.empty_cache()
        save()


def scale_cpu_rows(specs: list[ScaleSpec], cpu_dims: list[int], deadline: float,
                   data: ScaleData, rows: list[dict[str, Any]],
                   labels: dict[tuple[str, str], np.ndarray], check: dict[str, Any],
                   save: Callable[[], Any]) -> None:
    """The ``cpu`` backend once per ``(N, D)`` of the specs without a limit (D in
    ``cpu_dims``), when its predicted time fits; marks ``labels_equal_cpu`` in the GPU rows
    whose labels were kept."""
    import dcpe

    last: tuple[int, int, float] | None = None  # (N, d, seconds) of the last cpu call
    if check.get("n") and check.get("cpu_seconds"):
        last = (check["n"], D, check["cpu_seconds"])
    for n, d in dict.fromkeys((n, d) for n, d, limit in specs
                              if limit is None and d in cpu_dims):
        row: dict[str, Any] = {"provider": "cpu", "spec": f"{n}x{d}", "n": n, "d": d,
                               "memory_limit": None}
        left = deadline - time.monotonic()
        predicted = None
        if last is not None:
            predicted = last[2] * (n / last[0]) ** CPU_SCALE_EXPONENT * (d / last[1])
        if left < SCALE_MARGIN_S or (predicted is not None
                                     and predicted > left - SCALE_MARGIN_S):
            row["skipped"] = "skipped: would not fit the time limit"
            if predicted is not None:
                row["predicted_s"] = predicted
            print(f"cpu     {n:>9d}x{d:<6d} skipped ({left:.0f} s left, predicted "
                  f"{fmt_seconds(predicted)})", flush=True)
            rows.append(row)
            save()
            continue
        try:
            x = data.get(n, d)
            t0 = time.perf_counter()
            ref = np.asarray(dcpe.cluster(x, n // 2, backend="cpu"))
            row.update({"k": n // 2, "seconds": time.perf_counter() - t0})
            last = (n, d, row["seconds"])
            for r in rows:
                key = (r["provider"], r.get("spec", ""))
                if r["n"] == n and r["d"] == d and key in labels:
                    r["labels_equal_cpu"] = same_partition(labels[key], ref)
            print(f"cpu     {n:>9d}x{d:<6d} {fmt_seconds(row['seconds'])}", flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"cpu     {n:>9d}x{d:<6d} ERROR {exc}", flush=True)
        rows.append(row)
        save()


def scale_table(specs: list[ScaleSpec], rows: list[dict[str, Any]]) -> list[str]:
    """Markdown of the scale section."""
    cpu = {(r["n"], r["d"]): r["seconds"] for r in rows
           if r["provider"] == "cpu" and "seconds" in r}
    table = []
    for r in rows:
        limit = r.get("memory_limit") or "—"
        if "seconds" not in r:
            table.append([r["provider"], r["n"], r["d"], limit, r.get("engine", "—"),
                          r.get("skipped") or r.get("error", ""), "—", "—", "—", "—"])
            continue
        peak = r.get("peak_bytes")
        ratio, equal = "—", "—"
        if r["provider"] != "cpu" and (r["n"], r["d"]) in cpu:
            ratio = f"{cpu[(r['n'], r['d'])] / r['seconds']:.3g}x"
        if "labels_equal_cpu" in r:
            equal = "yes" if r["labels_equal_cpu"] else "**NO**"
        table.append([r["provider"], r["n"], r["d"], limit, r.get("engine", "—"),
                      fmt_seconds(r["seconds"]),
                      "—" if peak is None else f"{peak / 2**30:.2f} GiB",
                      r.get("rounds", "—"), ratio, equal])
    ns = sorted({n for n, _, _ in specs})
    need = ", ".join((f"{n * n * 4 / 2**30:,.0f} GiB" if n * n * 4 >= 2**30 else
                      f"{n * n * 4 / 2**20:.2f} MiB") + f" at N = {n:,}" for n in ns)
    return ["## Past the dense matrix (k = N/2, one call)", "",
            markdown_table(["provider", "N", "d", "memory_limit", "engine", "time",
                            "peak memory", "rounds", "vs cpu", "labels = cpu"], table), "",
            f"The dense engine's N x N float32 matrix would need N^2 * 4 bytes here: {need}. "
            f"engine: what dcpe_kernels.linear.choose_engine picks within min(memory_limit, "
            f"free device memory) (matrix: dense rounds, linear: matrix-free rounds); vs cpu: "
            f"cpu backend time / provider time at the same N and d (cpu rows: one call, d in "
            f"--scale-cpu-dims, when the prediction fits the time left); labels = cpu: the "
            f"same partition as the cpu backend's labels. One timed call per row, after a "
            f"warm-up call only for N < {SCALE_WARMUP_BELOW_N:,} and d < "
            f"{SCALE_WARMUP_BELOW_D}; the other rows after a compile warm-up once per "
            f"provider and d (one call on the first {COMPILE_WARMUP_N:,} tokens, matrix-free, "
            f"compile_warmup in the JSON).", "", *phase_table(rows)]


def phase_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown of where the matrix-free rows' time went (``RoundTrace.summary``)."""
    traced = [r for r in rows if r.get("phases_ms")]
    if not traced:
        return []
    table = []
    for r in traced:
        ms, w = r["phases_ms"], r["work"]
        table.append([r["provider"], r["n"], r["d"], r.get("memory_limit") or "—",
                      *(f"{ms[p]:.0f}" if p in ms else "—" for p in PHASES),
                      f"{w['scan_pairs'] / r['n'] ** 2:.2f}",
                      f"{w['candidate_scan_pairs'] / r['n'] ** 2:.2f}",
                      w.get("relisted", "—"),
                      f"{w['candidate_pairs'] / r['n']:.1f}",
                      f"{w['token_pairs'] / r['n']:.0f}",
                      f"{w.get('reused_token_pairs', 0) / r['n']:.0f}", w["max_size"],
                      (f"{r['peak_bytes'] / r['preflight_bytes']:.2f}"
                       if r.get("peak_bytes") and r.get("preflight_bytes") else "—")])
    return ["### Where the matrix-free rounds' time goes (ms per phase, the timed call)", "",
            markdown_table(["provider", "N", "d", "memory_limit", *PHASES,
                            "centroid scan / N^2", "candidate scan / N^2", "relisted",
                            "candidates / N",
                            "token pairs / N", "reused / N", "largest cluster",
                            "peak / preflight"],
                           table),
            "", "Phases as dcpe_kernels.linear.trace_rounds defines them (on a GPU, CUDA "
            "events between the phases of the timed call; summed over its rounds): scan = "
            "centroid scan, candidates = candidate-pair scan, sums = exact averages over "
            "token pairs, select = nearest neighbours, the round's bookkeeping and the next "
            "round's moments and thresholds, up to its synchronisation, update = the new "
            "token order and radii, handover / dense = the clusters' matrix and the dense "
            "rounds after it.  Work summed over the "
            "matrix-free rounds: pairs of the centroid scan (clusters that scan x "
            "clusters) and of the candidate scan (clusters that search x clusters, again for "
            "a list past its room), lists of candidate pairs past their room (relisted: "
            "scanned again in a larger room; none of their pairs is summed), "
            "candidate pairs, token pairs summed exactly, token pairs whose average the "
            "pair store held (reused, from 32 dimensions on); the largest cluster; the peak "
            "memory over what the preflight counts (dcpe_kernels.linear."
            "linear_required_bytes), at most 1 when the preflight holds.", ""]


def summarize(args: argparse.Namespace, device: str, sizes: list[int],
              status: dict[str, tuple[bool, str]], rows: list[dict[str, Any]],
              check: dict[str, Any], diag: dict[str, Any], done: bool,
              scale_specs: list[ScaleSpec] | None = None,
              scale_rows: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
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
    if scale_specs:
        md += ["", *scale_table(scale_specs, scale_rows or [])]
    payload = {"machine": machine_info(), "device": device, "d": D, "sizes": sizes,
               "providers": status, "results": rows, "torch_fit": fit, "cpu_check": check,
               "engine": diag, "repeats": args.repeats, "budget_s": args.budget,
               "scale_specs": [spec_name(s) for s in scale_specs or []],
               "scale": scale_rows or [], "complete": done}
    return "\n".join(md), payload


def _worker_dir(args: argparse.Namespace, name: str) -> Path:
    """An empty directory for a child's files: under --out, so that what a child measured
    comes back even if the parent is killed."""
    wdir = (Path(args.out) if args.out else Path(tempfile.mkdtemp())) / name
    wdir.mkdir(parents=True, exist_ok=True)
    for stale in wdir.iterdir():
        stale.unlink()
    return wdir


def _child_timeout(deadline: float, share: int) -> float | None:
    left = deadline - time.monotonic()
    return None if math.isinf(left) else max(5.0, (left - 20.0) / max(1, share))


def _run_worker(cmd: list[str], device: str,
                timeout: float | None) -> tuple[dict[str, Any], str | None]:
    """Run a child (``cmd`` holds its ``--out`` directory); its ``worker.json`` payload and
    the reason it failed (None if it did not)."""
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    failure = None
    try:
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            failure = f"worker process exited with {proc.returncode}: {tail}"
        sys.stderr.write(proc.stderr)
    except subprocess.TimeoutExpired:
        failure = f"worker process stopped after {timeout:.0f} s (--time-limit)"
    jpath = Path(cmd[cmd.index("--out") + 1]) / "worker.json"
    try:
        payload = json.loads(jpath.read_text()) if jpath.exists() else {}
    except json.JSONDecodeError:  # cannot happen with write_results' rename; be safe
        payload = {}
    return payload, failure


def run_scale_child(provider: str, args: argparse.Namespace, device: str,
                    specs: list[ScaleSpec], cpu_dims: list[int], cache: str | None,
                    deadline: float, share: int, rows: list[dict[str, Any]],
                    labels: dict[tuple[str, str], np.ndarray]) -> None:
    """The scale rows of ``provider`` in a child process (``--worker``), with the time
    limit of its share of the time left, so that it skips the rows that would not fit
    rather than being stopped in one; a child that fails anyway keeps the rows it finished,
    the first row it did not finish becomes an error row and the rest are skipped."""
    wdir = _worker_dir(args, f"worker-{provider}-scale")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--providers", provider,
           "--sizes", "--check-n", "0", "--diag-n", "0", "--device", device,
           "--scale", *map(spec_name, specs), "--scale-cpu-dims", *map(str, cpu_dims)]
    timeout = _child_timeout(deadline, share)
    if timeout is not None:  # the child's clock starts a little later than ours
        cmd += ["--time-limit", f"{max(1.0, timeout - 5.0):.1f}"]
    if cache:
        cmd += ["--scale-cache", cache]
    cmd += ["--name", "worker", "--out", str(wdir)]
    payload, failure = _run_worker(cmd, device, timeout)
    got = [r for r in payload.get("scale", []) if r.get("provider") == provider]
    rows.extend(got)
    keep = cpu_label_keys(specs, cpu_dims)
    for spec in specs:
        lab = (Path(cache) if cache else wdir) / f"labels-{provider}-scale-{spec_file(spec)}.npy"
        if spec[:2] in keep and lab.exists():
            labels[(provider, spec_name(spec))] = np.load(lab)
    if failure is not None:
        done = {r["spec"] for r in got}
        missing = [spec_name(s) for s in specs if spec_name(s) not in done]
        for i, name in enumerate(missing):
            n, d, limit = parse_scale_spec(name)
            rows.append({"provider": provider, "spec": name, "n": n, "d": d,
                         "memory_limit": limit,
                         **({"error": failure} if i == 0 else
                            {"skipped": "skipped: the worker process ended early"})})
        print(f"{provider:7s} scale: {failure}", flush=True)


def run_child(provider: str, args: argparse.Namespace, device: str, sizes: list[int],
              check_n: int, deadline: float, share: int, rows: list[dict[str, Any]],
              labels_at: dict[tuple[str, int], Any], diag: dict[str, Any]) -> None:
    """Run every size of ``provider`` in a child process (``--worker``) and collect its
    rows, its labels at ``check_n`` and its diagnostics; a child that fails or runs out of
    time becomes an error row at the first size it did not finish.  The child may use a
    ``1 / share`` part of the time left before ``deadline`` (less a margin), so that one
    that hangs leaves time to the children after it."""
    wdir = _worker_dir(args, f"worker-{provider}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--providers", provider,
           "--sizes", *map(str, sizes), "--repeats", str(args.repeats), "--budget",
           str(args.budget), "--check-n", str(check_n), "--diag-n", str(args.diag_n),
           "--device", device, "--name", "worker", "--out", str(wdir), "--no-scale"]
    payload, failure = _run_worker(cmd, device, _child_timeout(deadline, share))
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


def scale_section(args: argparse.Namespace, device: str, providers: list[str],
                  specs: list[ScaleSpec], cpu_dims: list[int], deadline: float,
                  check: dict[str, Any], rows: list[dict[str, Any]],
                  save: Callable[[], Any]) -> None:
    """The scale rows of every available dcpe provider (in a child process each under
    ``--isolate``), then, in this process, those of the ``cpu`` backend."""
    labels: dict[tuple[str, str], np.ndarray] = {}
    keep = cpu_label_keys(specs, cpu_dims)
    cache = args.scale_cache
    own_cache = args.isolate and not args.worker and cache is None
    if own_cache:  # the children generate each data set once; not under --out (large)
        cache = tempfile.mkdtemp(prefix="dcpe-bench-scale-")
    data = ScaleData(specs, cache)
    try:
        for idx, provider in enumerate(providers):
            if args.isolate and not args.worker:
                run_scale_child(provider, args, device, specs, cpu_dims, cache, deadline,
                                len(providers) - idx, rows, labels)
                save()
            else:
                # a child saves the labels the cpu rows need where its parent reads them
                ldir = Path(cache or args.out) if args.worker and (cache or args.out) else None
                scale_gpu_rows(provider, specs, device, deadline, data, keep, rows, labels,
                               save, ldir)
        if not args.worker:
            scale_cpu_rows(specs, cpu_dims, deadline, data, rows, labels, check, save)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=DEFAULT_SIZES,
                    help="N of the dense-size rows (none: only the scale section)")
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
                    help="tiny sizes and scale specs, 1 repeat: checks that everything runs")
    ap.add_argument("--isolate", action="store_true",
                    help="run each dcpe provider in a child process of its own")
    ap.add_argument("--time-limit", type=float, default=math.inf,
                    help="seconds for the whole run (children and torch sizes that do not "
                         "fit are cut short or skipped)")
    ap.add_argument("--scale", type=parse_scale_spec, nargs="*", metavar="NxD[@LIMIT]",
                    help="past the dense matrix: k = N/2 on N x D data, memory_limit=LIMIT "
                         f"if given, one call per provider (default: {' '.join(DEFAULT_SCALE)}"
                         "; no value: none)")
    ap.add_argument("--no-scale", dest="scale", action="store_const", const=[],
                    help="no scale section")
    ap.add_argument("--scale-cpu-dims", type=int, nargs="*", default=None, metavar="D",
                    help="D at which the cpu backend is timed in the scale section "
                         f"(default: {' '.join(map(str, DEFAULT_SCALE_CPU_DIMS))})")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scale-cache", default=None, help=argparse.SUPPRESS)
    ap.set_defaults(scale=None)
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
        args.check_n = args.sizes[0] if args.sizes else 0
        args.diag_n = args.sizes[0] if args.sizes else 0
        if args.scale is None:
            args.scale = [parse_scale_spec(t) for t in DRY_RUN_SCALE[device]]
            if args.scale_cpu_dims is None:
                args.scale_cpu_dims = sorted({d for _, d, _ in args.scale})
    scale_specs: list[ScaleSpec] = (list(args.scale) if args.scale is not None
                                    else [parse_scale_spec(t) for t in DEFAULT_SCALE])
    cpu_dims = (args.scale_cpu_dims if args.scale_cpu_dims is not None
                else DEFAULT_SCALE_CPU_DIMS)
    sizes = sorted(set(args.sizes))
    check_n = args.check_n if sizes and args.check_n and args.check_n <= max(sizes) else 0
    data = make_data(sorted(set(sizes) | ({check_n} if check_n else set())))
    torch_sizes = sorted(set(args.torch_sizes))

    status = {p: provider_status(p, device) for p in args.providers}
    print(f"device={device} sizes={sizes} scale={[spec_name(s) for s in scale_specs]} "
          f"providers={status}", flush=True)
    rows: list[dict[str, Any]] = []
    labels_at: dict[tuple[str, int], Any] = {}
    check: dict[str, Any] = {"n": check_n}
    diag: dict[str, Any] = {}
    scale_rows: list[dict[str, Any]] = []

    def save(done: bool = False) -> tuple[Path, Path, str]:
        md, payload = summarize(args, device, sizes, status, rows, check, diag, done,
                                scale_specs, scale_rows)
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
        if sizes:  # N = 0: all sizes in a child process (none without dense sizes)
            work += [(p, 0) for p in dcpe_ok]
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
        save()

    # past the dense matrix: after everything above, GPU rows first, then the cpu backend
    if scale_specs:
        scale_section(args, device, dcpe_ok, scale_specs, cpu_dims, deadline, check,
                      scale_rows, save)
    jpath, mpath, md = save(done=True)
    if not args.worker:
        print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
