"""Baselines under load: each timed idle and with one competing busy process, in one run.

A second process that keeps one core busy (``python -c "while True: pass"``) is started
for the loaded runs and stopped afterwards. Timed, on the sample codebook (16384 x 8):

- ``dcpe.baselines.kmeans(x, 8192)`` (greedy k-means++ and Lloyd, to convergence);
- ``dcpe.baselines.balanced_kmeans(x, 128, n_iter=20)`` (IAR's k = N / 128);
- ``dcpe.cluster(x, 8192)`` (the clustering engine, for comparison).

Mode ``fit`` is the library as shipped: the baselines use no more threads than the CPUs
that other processes leave free. Mode ``all-threads`` (``--also-all-threads``) disables
that, so every parallel loop uses all CPUs whatever the load; it shows what the fitting
is for. The goal is loaded / idle <= 2 for every baseline in mode ``fit``.

Idle and loaded runs alternate (``--repeats`` pairs, default 3); the best run of each
is the reported time, the ratio of the medians is recorded too. CPU seconds of the
process are recorded next to the wall-clock time: under load they stay flat when the
threads fit, and grow when threads wait and spin at barriers. Other processes on the
machine add noise: their runnable tasks are sampled during every run and recorded
(``background``), and ``--wait-quiet S`` waits up to S seconds for the machine to become
quiet before each pair.

Usage::

    python benchmarks/bench_load.py                      # -> benchmarks/results/load.{json,md}
    python benchmarks/bench_load.py --also-all-threads   # also the unfitted thread count
    python benchmarks/bench_load.py --quick              # small sizes, results in a temp dir
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_seconds, machine_info, markdown_table, write_results  # noqa: E402

LIMIT = 2.0  # loaded / idle


def _measure_busy() -> int | None:
    """Runnable tasks of other processes now (the library's own measurement, unpatched)."""
    return _BUSY()


_BUSY: Callable[[], int | None] = lambda: None  # noqa: E731 - set by main()


@contextmanager
def busy_competitor() -> Iterator[subprocess.Popen]:
    """One other process spinning on a core for the duration of the body."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach the CPU
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def all_threads(enabled: bool) -> Iterator[None]:
    """With ``enabled``, the baselines ignore other processes' load (all CPUs, always)."""
    from dcpe import _threads

    if not enabled:
        yield
        return
    saved = _threads.busy_cpus_elsewhere
    _threads.busy_cpus_elsewhere = lambda: 0
    try:
        yield
    finally:
        _threads.busy_cpus_elsewhere = saved


class LoadSampler:
    """Samples, every 0.25 s, the runnable tasks of other processes (competitor included)
    while the body runs."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            busy = _measure_busy()
            if busy is not None:
                self.samples.append(busy)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_quiet(seconds: float, allowed: int) -> float:
    """Wait up to ``seconds`` until other processes have at most ``allowed`` runnable tasks."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        busy = _measure_busy()
        if busy is None or busy <= allowed:
            break
        time.sleep(1.0)
    return time.perf_counter() - t0


def _once(fn: Callable[[], Any], samples: list[int]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    with LoadSampler() as sampler:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples.extend(sampler.samples)
    return seconds, cpu


def _summary(runs: list[tuple[float, float]], samples: list[int]) -> dict[str, Any]:
    times, cpu = [r[0] for r in runs], [r[1] for r in runs]
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": times,
            "cpu_best_s": min(cpu), "cpu_median_s": statistics.median(cpu), "cpu_runs": cpu,
            "background": {"mean": round(statistics.fmean(samples), 2) if samples else None,
                           "max": max(samples) if samples else None,
                           "samples": len(samples)}}


def paired(fn: Callable[[], Any], repeats: int, wait: float) -> dict[str, Any]:
    """Idle and loaded runs alternate (idle, loaded, idle, loaded, ...), so that a change of
    the background load in the middle of a measurement affects both alike."""
    times: dict[str, list[tuple[float, float]]] = {"idle": [], "loaded": []}
    samples: dict[str, list[int]] = {"idle": [], "loaded": []}
    waited = 0.0
    for _ in range(repeats):
        waited += wait_quiet(wait, 0)
        times["idle"].append(_once(fn, samples["idle"]))
        with busy_competitor():
            times["loaded"].append(_once(fn, samples["loaded"]))
    out = {phase: _summary(times[phase], samples[phase]) for phase in times}
    out["waited_for_quiet_s"] = round(waited, 1)
    return out


def cases(quick: bool) -> dict[str, tuple[str, Callable[[], Any]]]:
    import dcpe
    from dcpe.baselines import balanced_kmeans, kmeans

    x = dcpe.datasets.sample_codebook()
    if quick:
        x = x[:4096]
    n = len(x)
    k, kb = n // 2, n // 128
    return {
        "kmeans": (f"kmeans(x, {k})", lambda: kmeans(x, k)),
        "balanced_kmeans": (f"balanced_kmeans(x, {kb}, n_iter=20)",
                            lambda: balanced_kmeans(x, kb, n_iter=20)),
        "dcpe.cluster": (f"dcpe.cluster(x, {k})", lambda: dcpe.cluster(x, k)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4096 tokens, results in a temp dir")
    ap.add_argument("--repeats", type=int, default=3,
                    help="idle/loaded pairs per measurement, alternating (median)")
    ap.add_argument("--also-all-threads", action="store_true",
                    help="also time every case with all threads regardless of load")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="seconds to wait for a quiet machine before each run (default 60)")
    ap.add_argument("--out", default=None, help="output directory (default: results/)")
    args = ap.parse_args(argv)

    global _BUSY
    import dcpe
    from dcpe._threads import _allowed_cpus, busy_cpus_elsewhere, host_threads

    _BUSY = busy_cpus_elsewhere
    info = machine_info()
    info["allowed_cpus"] = _allowed_cpus()
    info["threads_when_quiet"] = host_threads()
    modes = ["fit", "all-threads"] if args.also_all_threads else ["fit"]
    todo = cases(args.quick)
    results: list[dict[str, Any]] = []
    for name, (call, fn) in todo.items():
        fn()  # warm-up: imports, first-touch allocations
        for mode in modes:
            row: dict[str, Any] = {"case": name, "call": call, "mode": mode}
            with all_threads(mode == "all-threads"):
                row.update(paired(fn, args.repeats, args.wait_quiet))
            row["ratio"] = row["loaded"]["best_s"] / row["idle"]["best_s"]
            row["ratio_of_medians"] = row["loaded"]["median_s"] / row["idle"]["median_s"]
            row["cpu_ratio"] = row["loaded"]["cpu_best_s"] / row["idle"]["cpu_best_s"]
            results.append(row)
            print(f"{name:16s} {mode:12s} idle {fmt_seconds(row['idle']['best_s']):>9s}  "
                  f"loaded {fmt_seconds(row['loaded']['best_s']):>9s}  "
                  f"ratio {row['ratio']:.2f}  cpu ratio {row['cpu_ratio']:.2f}", flush=True)

    payload = {"machine": info, "limit_ratio": LIMIT, "dcpe_file": dcpe.__file__,
               "competitor": "python -c 'while True: pass' (one busy process)",
               "results": results}
    rows = []
    for r in results:
        bg_i, bg_l = r["idle"]["background"], r["loaded"]["background"]
        baseline = r["case"] != "dcpe.cluster"
        verdict = ("yes" if r["ratio"] <= LIMIT else "no") if baseline and r["mode"] == "fit" \
            else ""
        if verdict and ((bg_i["mean"] or 0) >= 1 or (bg_l["mean"] or 0) >= 2):
            verdict += " (noisy)"
        rows.append([r["call"], r["mode"], fmt_seconds(r["idle"]["best_s"]),
                     fmt_seconds(r["loaded"]["best_s"]), f"{r['ratio']:.2f}",
                     f"{r['ratio_of_medians']:.2f}", verdict,
                     fmt_seconds(r["idle"]["cpu_best_s"]),
                     fmt_seconds(r["loaded"]["cpu_best_s"]), f"{r['cpu_ratio']:.2f}",
                     f"{bg_i['mean']} / {bg_i['max']}", f"{bg_l['mean']} / {bg_l['max']}"])
    v = info["versions"]
    md = "\n".join([
        f"# Baselines under load: sample codebook{' (first 4096 rows)' if args.quick else ''}",
        "",
        f"{info['cpu']}, {info['cores']} cores ({info['allowed_cpus']} usable); "
        f"Python {info['python']}; dcpe {v.get('dcpe')}, numpy {v.get('numpy')}, "
        f"torch {v.get('torch')}; {info['date']}.",
        "",
        "Each case is timed idle and with one competing busy process "
        "(`python -c 'while True: pass'`), in the same run, idle and loaded runs "
        f"alternating ({args.repeats} pair(s); times are the best run of each, the usual "
        "estimate on a shared machine, and the ratio of the medians is given too). "
        "`fit`: the library as shipped (no more threads than the CPUs other processes "
        "leave free); `all-threads`: every parallel loop on all CPUs whatever the load. "
        f"Goal: loaded / idle <= {LIMIT:g} for the baselines in mode `fit`.",
        "",
        "CPU = CPU seconds of the process (all its threads). On a machine shared with "
        "other work the wall-clock time follows the share of the CPUs the scheduler "
        "gives; CPU time that grows under load is time spent waiting at barriers and "
        "spinning, the oversubscription that the thread fitting removes.",
        "",
        "Background = runnable tasks of other processes during the run, mean / max of "
        "samples every 0.25 s (the competitor counts 1 in the loaded runs; anything above "
        "is other activity on the machine, which makes both times noisier). `(noisy)`: other "
        "processes kept a CPU busy on average during the idle runs, or another one besides "
        "the competitor during the loaded runs, so the ratio is not the one the goal is "
        "about.",
        "",
        markdown_table(["call", "mode", "idle", "loaded", "loaded / idle", "of medians",
                        f"<= {LIMIT:g}",
                        "CPU idle", "CPU loaded", "CPU loaded / idle",
                        "background idle", "background loaded"], rows),
    ])
    out = tempfile.mkdtemp(prefix="dcpe-bench-load-") if args.quick else args.out
    paths = write_results("load", payload, md, out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
