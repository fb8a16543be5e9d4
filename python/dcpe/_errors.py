"""Exceptions raised by dcpe."""

from __future__ import annotations


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class InsufficientMemoryError(MemoryError, ValueError):
    """The problem cannot fit in the memory that is available; raised before any allocation.

    It is both a :class:`MemoryError` and a :class:`ValueError`, so either catches it.

    Attributes
    ----------
    needed, available : int
        Bytes the computation needs and bytes available.
    """

    def __init__(self, needed: int, available: int, what: str, hint: str = "") -> None:
        self.needed = int(needed)
        self.available = int(available)
        super().__init__(
            f"{what} needs {self.needed:,} bytes ({_gib(self.needed)}) but only "
            f"{self.available:,} bytes ({_gib(self.available)}) are available"
            + (f"; {hint}" if hint else "")
        )


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why.

    Raised by :func:`dcpe.cluster`, :func:`dcpe.linkage` and :class:`dcpe.DCPE` instead of
    falling back to another backend.

    Attributes
    ----------
    backend : str or None
        The backend that was asked for.
    reason : str or None
        Why it cannot run (e.g. no CUDA device).
    available : list of str
        The backends that can run here (``"auto"`` always can).
    """

    def __init__(self, message: str, *, backend: str | None = None,
                 reason: str | None = None, available: list[str] | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.reason = reason
        self.available = list(available) if available is not None else []
