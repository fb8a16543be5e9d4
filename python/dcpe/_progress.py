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
    delay: float = 0.0,
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
    delay : float
        Seconds before the bar first appears (short runs show none).

    Returns
    -------
    tqdm.tqdm
        The bar; iterate over it or call ``update`` on it.
    """
    from tqdm import tqdm

    if disable is None:
        disable = not _stderr_is_tty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                file=sys.stderr, leave=False, dynamic_ncols=True, delay=delay)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def merge_progress(show: Any) -> tuple[Any, Any]:
    """A ``(callback, bar)`` pair for the merges of a clustering run, or ``(None, None)``.

    Parameters
    ----------
    show : bool, None or callable
        ``False``: no progress. ``True``: a bar on standard error. ``None``: a bar when
        standard error is a terminal. A callable is returned as the callback itself; it
        receives ``(merges_done, merges_total)``.

    Returns
    -------
    tuple
        The callback to hand to the engine and the bar to close afterwards (or ``None``).
        The bar appears only for runs longer than two seconds.
    """
    if show is False:
        return None, None
    if callable(show):
        return show, None
    if show is None and not _stderr_is_tty():
        return None, None
    bar = progress(total=1, desc="dcpe: merging", unit="merge", disable=False, delay=2.0)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar
