"""The small-file ``.npy`` reader and writer of ``dcpe remap`` (``dcpe._npyfiles``) against
their reference, :func:`numpy.load` and :func:`numpy.save`, and the walk of its input
folders against ``sorted(Path.rglob("*"))``."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dcpe._npyfiles import AtomicNpyWriter, NpyReader
from dcpe.cli import _files_under, _suffix


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16384, (1, 10, 256))
    return {
        "codes_i8": codes,
        "codes_u2": codes.astype(np.uint16),
        "codes_be": codes.astype(">i4"),
        "codes_fortran": np.asfortranarray(codes[0]),
        "strided": codes[0, ::3, ::2],  # neither C- nor Fortran-contiguous
        "label": np.array([7]),
        "scalar": np.array(5, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "floats": rng.standard_normal((3, 5)).astype(np.float32),
    }


def _npy_bytes(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    fp = io.BytesIO()
    if version is None:
        np.save(fp, arr)
    else:
        np.lib.format.write_array(fp, arr, version=version)
    return fp.getvalue()


@pytest.mark.parametrize("version", [None, (2, 0)])
def test_reader_gives_what_numpy_load_gives(tmp_path, version):
    reader = NpyReader()
    for name, arr in _arrays().items():
        path = tmp_path / f"{name}.npy"
        path.write_bytes(_npy_bytes(arr, version))
        for _ in range(2):  # the second read takes the parsed header from the cache
            got, want = reader.read(path), np.load(path)
            assert got is not None, name
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.flags.f_contiguous == want.flags.f_contiguous, name
            np.testing.assert_array_equal(got, want)


def test_reader_cache_is_keyed_by_the_whole_header(tmp_path):
    """Files of one dtype and different shapes, and of one shape and different data."""
    reader = NpyReader()
    for i, shape in enumerate([(1, 2, 256), (1, 10, 256), (1, 10, 256), (2560,), (1, 2, 256)]):
        arr = np.arange(np.prod(shape)).reshape(shape) * (i + 1)
        np.save(tmp_path / "a.npy", arr)
        np.testing.assert_array_equal(reader.read(tmp_path / "a.npy"), arr)
        assert reader.read(tmp_path / "a.npy").shape == shape


def test_reader_leaves_the_rest_to_numpy(tmp_path):
    """What the shortcut does not cover gives None, and numpy.load then raises or reads."""
    reader = NpyReader()
    arr = np.arange(1000)
    cases = {
        "short": _npy_bytes(arr)[:-8],
        "version3": _npy_bytes(arr, (3, 0)),
        "objects": b"",
        "not_npy": b"token ids\n1 2 3\n",
        "empty_file": b"",
        "magic_only": b"\x93NUMPY\x01",
    }
    fp = io.BytesIO()
    np.save(fp, np.array([1, None], dtype=object), allow_pickle=True)
    cases["objects"] = fp.getvalue()
    for name, data in cases.items():
        (tmp_path / f"{name}.npy").write_bytes(data)
        assert reader.read(tmp_path / f"{name}.npy") is None, name
    np.testing.assert_array_equal(np.load(tmp_path / "version3.npy"), arr)
    with zipfile.ZipFile(tmp_path / "archive.npy", "w") as zf:
        zf.writestr("data.pkl", b"x")
    assert reader.read(tmp_path / "archive.npy") is None
    np.save(tmp_path / "big.npy", arr)
    size = (tmp_path / "big.npy").stat().st_size
    assert reader.read(tmp_path / "big.npy", max_bytes=size - 1) is None
    np.testing.assert_array_equal(reader.read(tmp_path / "big.npy", max_bytes=size), arr)
    with pytest.raises(FileNotFoundError):
        reader.read(tmp_path / "missing.npy")


@pytest.mark.filterwarnings("ignore:Stored array in format 2.0")
def test_writer_writes_what_numpy_save_writes(tmp_path):
    writer = AtomicNpyWriter()
    for name, arr in _arrays().items():
        for _ in range(2):  # the second write takes the header from the cache
            writer.save(tmp_path / f"{name}.npy", arr)
            assert (tmp_path / f"{name}.npy").read_bytes() == _npy_bytes(arr), name
    c_order = np.ascontiguousarray(_arrays()["codes_fortran"])  # its shape and dtype in C
    writer.save(tmp_path / "codes_i8.npy", c_order)
    assert (tmp_path / "codes_i8.npy").read_bytes() == _npy_bytes(c_order)
    wide = np.zeros(3, dtype=[(f"field{i}", "<i2") for i in range(5000)])  # a 2.0 header
    writer.save(tmp_path / "wide.npy", wide)
    assert (tmp_path / "wide.npy").read_bytes() == _npy_bytes(wide)
    assert _npy_bytes(wide)[6] == 2
    (tmp_path / "wide.npy").unlink()
    src = tmp_path / "label.npy"
    writer.copy(src, tmp_path / "copied.npy")
    assert (tmp_path / "copied.npy").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{name}.npy" for name in _arrays()] + ["copied.npy"])  # no temporary file left
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "codes_i8.npy").stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(TypeError, match="objects"):
        writer.save(tmp_path / "objects.npy", np.array([1, None], dtype=object))


class _FailingOs:
    """``os`` for the writer's module, whose ``write`` writes a few bytes of its first call
    and then raises, as an interrupt or a full disk would."""

    def __init__(self, error: type[BaseException]) -> None:
        self.error, self.calls = error, 0

    def write(self, fd: int, data: bytes) -> int:
        self.calls += 1
        if self.calls > 1:
            raise self.error()
        return os.write(fd, bytes(data)[:7])

    def __getattr__(self, name: str):
        return getattr(os, name)


class _ShortWritesOs:
    """``os`` whose ``write`` writes at most 100 bytes a call, as it may."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, bytes(data)[:100])

    def __getattr__(self, name: str):
        return getattr(os, name)


def test_writer_finishes_short_writes(tmp_path, monkeypatch):
    import dcpe._npyfiles as npyfiles

    monkeypatch.setattr(npyfiles, "os", _ShortWritesOs())
    writer, arr = AtomicNpyWriter(), _arrays()["codes_i8"]
    writer.save(tmp_path / "0.npy", arr)
    writer.copy(tmp_path / "0.npy", tmp_path / "1.npy")
    assert (tmp_path / "0.npy").read_bytes() == _npy_bytes(arr)
    assert (tmp_path / "1.npy").read_bytes() == _npy_bytes(arr)


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_writer_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch, error):
    import dcpe._npyfiles as npyfiles

    dest = tmp_path / "0.npy"
    np.save(dest, np.arange(3))
    before = dest.read_bytes()
    writer = AtomicNpyWriter()
    monkeypatch.setattr(npyfiles, "os", _FailingOs(error))
    with pytest.raises(error):
        writer.save(dest, np.arange(2560).reshape(1, 10, 256))
    with pytest.raises(error):
        writer.copy(dest, tmp_path / "1.npy")
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["0.npy"]  # no temporary file
    monkeypatch.undo()
    writer.save(dest, np.arange(2560).reshape(1, 10, 256))  # the same names work afterwards
    np.testing.assert_array_equal(np.load(dest), np.arange(2560).reshape(1, 10, 256))


def test_walk_lists_the_files_rglob_lists(tmp_path):
    root = tmp_path / "in"
    for rel in ["a", "a.b", "b/c.npy", "b/.hidden.npy", "b/d/e.npy", "B/z.npy", "a_/x.npy",
                "b/d.npy", "c/x.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "linked.npy").symlink_to(root / "b" / "c.npy")  # a link to a file is a file
    (root / "linked_dir").symlink_to(root / "b", target_is_directory=True)  # not entered
    (root / "broken.npy").symlink_to(root / "missing.npy")  # not a file
    (root / "empty").mkdir()
    want = [tuple(p.relative_to(root).parts) for p in sorted(root.rglob("*")) if p.is_file()]
    assert _files_under(str(root)) == want
    assert ("linked.npy",) in want and not any(p[0] == "linked_dir" for p in want)


@pytest.mark.parametrize("name", ["a.npy", "a.NPY", "a.b.npy", ".npy", ".hidden.npy", "a.",
                                  "a", "..", "...npy", "a..npy"])
def test_suffix_is_path_suffix(name):
    assert _suffix(name) == Path(name).suffix
