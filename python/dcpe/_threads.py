"""How many threads the baselines' host kernels use, so that they hold up on a busy machine.

The k-means++ seeding, the Lloyd assignment scan and the auction of balanced k-means run
short OpenMP parallel loops one after another; the seeding alone meets at a barrier twice
per center. When another process keeps a core busy, one of these threads is regularly
descheduled and every barrier waits for it, so ``T`` threads on ``T`` cores with one
competitor can be many times slower than one thread. :func:`host_threads` therefore asks
for no more threads than there are CPUs not busy with other processes, measured when a
kernel starts; inside :func:`limit_threads` PyTorch's own (OpenMP) thread pool follows
the same count, and its setting is restored afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["busy_cpus_elsewhere", "host_threads", "limit_threads"]


def _allowed_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _procs_running() -> int | None:
    """Runnable tasks on the whole machine (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _own_running() -> int:
    """Threads of this process that are runnable now (including idle-spinning OpenMP
    workers, which must not be counted as competition)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:  # the thread exited meanwhile
            continue
        end = stat.rfind(")")
        if end >= 0 and stat[end + 2:end + 3] == "R":
            count += 1
    return max(1, count)


def _allowed_set() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def _runnable_on(cpus: set[int]) -> int | None:
    """Runnable tasks of other processes whose current (or last) CPU is one of ``cpus``
    (Linux: field 39 of ``/proc/<pid>/task/<tid>/stat``), or None."""
    me = os.getpid()
    count = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return None
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:  # exited, or not ours to read
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            try:
                if fields[0] == b"R" and int(fields[36]) in cpus:
                    count += 1
            except (IndexError, ValueError):
                continue
    return count


_SCAN_SECONDS = 0.5  # a scan of every task is reused this long
_scan_cache: dict[frozenset[int], tuple[float, int | None]] = {}
_CONFIRM_WAITS = (0.001, 0.002, 0.004, 0.008)  # seconds between the reads of a competitor
_stat_cache: dict[str, tuple[float, int]] = {}


def _busy_by_stat() -> int | None:
    """All runnable tasks (``/proc/stat``) less this process's own, now; None if unknown."""
    running = _procs_running()
    if running is None:
        return None
    return max(0, running - _own_running())


def busy_cpus_elsewhere() -> int | None:
    """Runnable tasks of other processes on this process's CPUs, now (Linux).

    When this process may use every CPU of the machine: all runnable tasks
    (``/proc/stat``) minus this process's own runnable threads. A count above 0 must last:
    it is read again over 15 ms and the lowest count is taken (then reused for half a
    second), because a task that runs for a few milliseconds (one was seen for about 3 ms
    right after a codebook was prepared, in a third of the runs) would otherwise halve
    the threads of a call that runs for minutes. When its CPUs are a subset (``taskset``,
    a container's cpuset): the runnable tasks of other processes on those CPUs, from a scan
    of ``/proc`` that is reused for half a second. It can exceed the number of CPUs.
    ``None`` where the kernel does not say (then nothing is assumed).
    """
    allowed = _allowed_set()
    total = os.cpu_count() or 0
    if allowed is not None and 0 < len(allowed) < total:
        key = frozenset(allowed)
        now = time.monotonic()
        hit = _scan_cache.get(key)
        if hit is None or now - hit[0] > _SCAN_SECONDS:
            hit = (now, _runnable_on(allowed))
            _scan_cache.clear()
            _scan_cache[key] = hit
        return hit[1]
    busy = _busy_by_stat()
    if not busy:
        return busy
    hit = _stat_cache.get("busy")
    if hit is not None and time.monotonic() - hit[0] <= _SCAN_SECONDS:
        return min(busy, hit[1])
    for wait in _CONFIRM_WAITS:
        time.sleep(wait)
        again = _busy_by_stat()
        busy = busy if again is None else min(busy, again)
        if busy == 0:
            break
    _stat_cache["busy"] = (time.monotonic(), busy)
    return busy


def _default_threads() -> int:
    """The compiled kernels' OpenMP default (``OMP_NUM_THREADS``, ``torch.set_num_threads``
    or the number of CPUs); PyTorch's thread count when the extension is not built."""
    try:
        from . import _C

        return max(1, int(_C.max_threads()))
    except ImportError:  # pragma: no cover - the Python half used alone
        import torch

        return max(1, torch.get_num_threads())


_local = threading.local()


def host_threads() -> int:
    """Threads for one call of a host kernel, measured now: the default thread count (as
    it was when the enclosing :func:`limit_threads` began), but no more than the CPUs that
    other processes leave free, and at least 1. Inside :func:`limit_threads`, PyTorch's
    thread pool is set to the same count."""
    scope = getattr(_local, "scope", None)
    ceiling = scope["omp"] if scope is not None else _default_threads()
    busy = busy_cpus_elsewhere()
    threads = ceiling if busy is None else max(1, min(ceiling, _allowed_cpus() - busy))
    if scope is not None:
        _set_torch_threads(scope, min(threads, scope["torch"]))
    return threads


def _set_torch_threads(scope: dict[str, int], n: int) -> None:
    if n != scope["now"]:
        import torch

        torch.set_num_threads(n)
        scope["now"] = n


@contextmanager
def limit_threads() -> Iterator[None]:
    """Hold the baselines to the CPUs that other processes leave free for the body.

    On entry, the current thread counts (OpenMP's and PyTorch's) are taken as ceilings and
    PyTorch's pool is fitted to the free CPUs; every :func:`host_threads` call in the body
    measures again. On exit PyTorch's thread count is restored. Nested uses are no-ops.
    """
    if getattr(_local, "scope", None) is not None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    _local.scope = {"omp": _default_threads(), "torch": before, "now": before}
    try:
        host_threads()
        yield
    finally:
        scope = _local.scope
        _local.scope = None
        if scope["now"] != before:
            torch.set_num_threads(before)
