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

    def __init__(self, needed: int, available: int, what: str) -> None:
        self.needed = int(needed)
        self.available = int(available)
        super().__init__(
            f"{what} needs {self.needed:,} bytes ({_gib(self.needed)}) but only "
            f"{self.available:,} bytes ({_gib(self.available)}) are available"
        )


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (the message says why)."""
