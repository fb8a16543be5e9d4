"""Memory preflight: how much memory is available, and refusing what cannot fit."""

from __future__ import annotations

import os

from ._errors import InsufficientMemoryError

#: Environment variable that caps the host memory dcpe may plan to use (bytes).
MEMORY_LIMIT_ENV = "DCPE_MEMORY_LIMIT"


def available_host_memory() -> int:
    """Bytes of host memory available to a new allocation.

    ``MemAvailable`` from ``/proc/meminfo`` where it exists (Linux), else the physical
    memory size; capped by the ``DCPE_MEMORY_LIMIT`` environment variable when it is set.
    """
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 1 << 62
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        try:
            available = min(available, int(float(limit)))
        except ValueError as exc:
            raise ValueError(
                f"environment variable {MEMORY_LIMIT_ENV}={limit!r} is not a number of bytes"
            ) from exc
    return int(available)


def check_host_memory(needed: int, what: str) -> None:
    """Raise :class:`InsufficientMemoryError` if ``needed`` bytes do not fit."""
    available = available_host_memory()
    if needed > available:
        raise InsufficientMemoryError(needed, available, what)
