"""Guarded Triton import: ``HAS_TRITON`` is False (and ``triton``/``tl`` are None) without it."""

from __future__ import annotations

from typing import Any

triton: Any
tl: Any
try:  # pragma: no branch
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR = ""
except Exception as exc:  # ImportError, or a broken install
    triton = None
    tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["HAS_TRITON", "TRITON_IMPORT_ERROR", "tl", "triton"]
