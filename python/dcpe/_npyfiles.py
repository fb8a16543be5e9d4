"""Many small ``.npy`` files, read and written with few system calls (``dcpe remap``).

LlamaGen's ``extract_codes_c2i.py`` writes one code file and one label file per image:
2.5 million files for ImageNet's 1.28 million images. Per file, :func:`numpy.load` parses
the header again (``ast.literal_eval``) and reads in four calls, and
:func:`dcpe.io.atomic_write` draws a random name and sets the mode. Here a dataset's
files, which share a handful of headers, are read in one call each with the parsed header
taken from a cache, and written as ``header + data`` in one call to a temporary file that
is renamed into place.

Anything these shortcuts do not cover (another header version, an object dtype, a short
file, an archive named ``.npy``) is left to NumPy: :meth:`NpyReader.read` returns
``None`` and the caller uses :func:`numpy.load`, which raises NumPy's own error. What is
written is byte for byte what :func:`numpy.save` writes.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import warnings
from typing import Any

import numpy as np

_MAGIC = b"\x93NUMPY"
_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
           | getattr(os, "O_BINARY", 0))


class NpyReader:
    """Reads ``.npy`` files, caching each distinct header once parsed."""

    def __init__(self) -> None:
        # (major version, raw header) -> (dtype, shape, fortran order, data offset, count)
        self._headers: dict[tuple[int, bytes], tuple[np.dtype, tuple[int, ...], bool, int,
                                                     int]] = {}

    def read(self, path: str | os.PathLike, *, max_bytes: int | None = None
             ) -> np.ndarray | None:
        """The array in ``path`` (read-only, backed by the file's bytes), or ``None`` when
        the file is larger than ``max_bytes`` or is not a plain version 1 or 2 ``.npy``
        file of a dtype without objects and with all its data: read it with
        :func:`numpy.load` then. Errors opening or reading the file propagate."""
        with open(path, "rb", buffering=0) as fh:
            if max_bytes is not None and os.fstat(fh.fileno()).st_size > max_bytes:
                return None
            buf = fh.read()
        if buf[:6] != _MAGIC or len(buf) < 10:
            return None
        major = buf[6]
        if major == 1:
            start = 10
            length = int.from_bytes(buf[8:10], "little")
        elif major == 2 and len(buf) >= 12:
            start = 12
            length = int.from_bytes(buf[8:12], "little")
        else:
            return None
        key = (major, buf[start:start + length])
        header = self._headers.get(key)
        if header is None:
            header = self._parse(buf, major, start + length)
            if header is None:
                return None
            self._headers[key] = header
        dtype, shape, fortran, offset, count = header
        if len(buf) - offset < count * dtype.itemsize:
            return None
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
        if fortran:
            return arr.reshape(shape[::-1]).transpose()
        return arr.reshape(shape)

    @staticmethod
    def _parse(buf: bytes, major: int, offset: int
               ) -> tuple[np.dtype, tuple[int, ...], bool, int, int] | None:
        fp = io.BytesIO(buf)
        fp.seek(8)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        try:
            shape, fortran, dtype = read_header(fp)
        except ValueError:
            return None
        if dtype.hasobject or fp.tell() != offset:
            return None
        return dtype, tuple(shape), bool(fortran), offset, math.prod(shape)


def _save_header(arr: np.ndarray) -> bytes:
    """The bytes :func:`numpy.save` writes before ``arr``'s data: the version 1.0 header,
    which it writes whenever that fits; past it (a header over 64 KiB), the header of a
    save of ``arr`` itself."""
    fp = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(fp, np.lib.format.header_data_from_array_1_0(arr))
        return fp.getvalue()
    except ValueError:  # a header past 64 KiB: a version 2.0 or 3.0 header
        fp = io.BytesIO()
        with warnings.catch_warnings():  # "can only be read by NumPy >= 1.9"
            warnings.simplefilter("ignore", UserWarning)
            np.save(fp, arr)
        whole = fp.getvalue()
        return whole[:len(whole) - arr.nbytes]


class AtomicNpyWriter:
    """Writes files whole: each to a temporary file beside it, renamed into place.

    As :func:`dcpe.io.atomic_write` with ``sync=False``: readers see the old file or the
    complete new one, an exception removes the temporary file, and the caller syncs once
    at its end. The temporary names (``.<name>.<tag>.tmp``) carry a random tag drawn once
    per writer and are created exclusively, so they never replace another file. Files get
    the usual mode (0666 less the umask).
    """

    def __init__(self) -> None:
        self._tag = secrets.token_hex(6)
        self._headers: dict[tuple[str, tuple[int, ...], bool], bytes] = {}

    def save(self, path: str | os.PathLike, arr: np.ndarray) -> None:
        """Write ``arr`` as :func:`numpy.save` writes it: its header (taken from NumPy once
        per dtype, shape and order), then its data in C order, or in Fortran order for an
        array that is Fortran-contiguous only."""
        if arr.dtype.hasobject:
            raise TypeError("arrays of objects are not written here; use numpy.save")
        if not arr.flags.c_contiguous and not arr.flags.f_contiguous:
            arr = np.ascontiguousarray(arr)
        fortran = not arr.flags.c_contiguous
        key = (arr.dtype.str, arr.shape, fortran)
        header = self._headers.get(key)
        if header is None:
            header = self._headers[key] = _save_header(arr)
        data = (arr.T if fortran else arr).reshape(-1)  # C-contiguous either way: a view
        self._write(path, (header, data.view(np.uint8)))

    def copy(self, src: str | os.PathLike, path: str | os.PathLike) -> None:
        """Copy the file ``src`` to ``path`` byte for byte."""
        with open(src, "rb", buffering=0) as fh:
            data = fh.read()
        self._write(path, (data,))

    def _write(self, path: str | os.PathLike, parts: tuple[Any, ...]) -> None:
        folder, name = os.path.split(os.fspath(path))
        tmp = os.path.join(folder, f".{name}.{self._tag}.tmp")
        fd = os.open(tmp, _CREATE, 0o666)
        try:
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
