"""Progress bars (tqdm) that stay quiet unless a person is watching."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool | None = None,
) -> Any:
    """Wrap ``iterable`` in a tqdm progress bar written to standard error.

    Parameters
    ----------
    iterable : iterable, optional
        What to iterate over.
    total : int, optional
        Number of steps, when ``iterable`` has no length.
    desc : str, optional
        Label shown in front of the bar.
    unit : str
        Name of one step.
    disable : bool, optional
        ``True`` hides the bar. ``None`` (default) shows it only when standard error
        is a terminal.

    Returns
    -------
    tqdm.tqdm
        The bar; iterate over it or call ``update`` on it.
    """
    from tqdm import tqdm

    if disable is None:
        disable = not _stderr_is_tty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                file=sys.stderr, leave=False, dynamic_ncols=True)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
