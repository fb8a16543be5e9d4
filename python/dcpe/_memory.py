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


_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}


def parse_memory_limit(value: object) -> int | None:
    """Bytes meant by a ``memory_limit`` argument (``None`` stays ``None``).

    Parameters
    ----------
    value : None, int, float or str
        A number of bytes (a positive integer, or an integral float such as ``8e9``),
        or a string: a positive number followed by an optional unit, ``"8GiB"``,
        ``"512 MiB"``, ``"1.5G"``, ``"2GB"``. ``KiB``/``MiB``/``GiB``/``TiB`` and the
        single letters ``K``/``M``/``G``/``T`` are powers of 1024; ``KB``/``MB``/``GB``/``TB``
        powers of 1000. Case does not matter.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError, TypeError
        Anything else (zero, negative, NaN, a fractional number of bytes, an unknown unit,
        a bool).
    """
    import math
    import re

    if value is None:
        return None
    hint = "give bytes (e.g. 8589934592) or a string such as '8GiB' or '512MiB'"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        if hasattr(value, "__index__") and not isinstance(value, bool):
            value = int(value.__index__())  # NumPy integers
        else:
            raise TypeError(f"memory_limit must be bytes or a string like '8GiB', "
                            f"got {type(value).__name__} {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"memory_limit={value!r} is not a size: {hint}")
        number = float(match.group(1)) * _UNITS[unit]
    else:
        number = float(value)
    if not math.isfinite(number) or number < 1:
        raise ValueError(f"memory_limit={value!r} must be at least 1 byte: {hint}")
    if isinstance(value, float) and not number.is_integer():
        raise ValueError(f"memory_limit={value!r} is not a whole number of bytes: {hint}")
    return int(number)


def memory_budget(memory_limit: object = None) -> int:
    """Bytes a run may plan to use: ``memory_limit`` capped by the available host memory.

    Parameters
    ----------
    memory_limit : None, int, float or str
        As in :func:`parse_memory_limit`; ``None`` means the available host memory
        (``DCPE_MEMORY_LIMIT`` lowers it).

    Returns
    -------
    int
    """
    available = available_host_memory()
    limit = parse_memory_limit(memory_limit)
    return available if limit is None else min(limit, available)

