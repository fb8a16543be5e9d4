"""``dcpe remap`` on extracted codes in LlamaGen's layout (``extract_codes_c2i.py``):
``CODE_PATH/NAME_codes/<i>.npy`` token ids and ``CODE_PATH/NAME_labels/<i>.npy`` labels."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line

from dcpe.cli import main
from dcpe.prior import CodebookPrior

N_TOKENS, K = 64, 8


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture()
def prior_file(tmp_path) -> Path:
    labels = (np.arange(N_TOKENS) * 7919) % K  # every cluster used, not sorted
    path = tmp_path / "prior.npz"
    CodebookPrior.from_labels(labels).save(path)
    return path


def _llamagen_code_path(root: Path, name: str = "imagenet256", n: int = 3) -> Path:
    """What extract_codes_c2i.py writes: one (1, 2, 256) code array (flip augmentation)
    and one (1,) int64 label per image, numbered from 0."""
    rng = np.random.default_rng(0)
    codes, labels = root / f"{name}_codes", root / f"{name}_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        np.save(codes / f"{i}.npy", rng.integers(0, N_TOKENS, (1, 2, 256)))
        # class ids below N_TOKENS, so that remapping them by mistake would go unnoticed
        np.save(labels / f"{i}.npy", np.array([rng.integers(0, N_TOKENS)]))
    return root


def _check_layout(src: Path, out: Path, prior_file: Path, name: str = "imagenet256") -> None:
    prior = CodebookPrior.load(prior_file)
    codes, labels = out / f"{name}_codes", out / f"{name}_labels"
    # what the dataset loaders read: the sorted files of both folders, paired by position
    assert sorted(p.name for p in codes.iterdir()) == sorted(p.name for p in labels.iterdir())
    for f in sorted((src / f"{name}_codes").iterdir()):
        got = np.load(codes / f.name)
        original = np.load(f)
        assert got.shape == original.shape and got.dtype == original.dtype
        np.testing.assert_array_equal(got, prior.to_clusters(original))
    for f in sorted((src / f"{name}_labels").iterdir()):
        assert (labels / f.name).read_bytes() == f.read_bytes()  # copied, not remapped


def test_code_path_keeps_layout_and_copies_labels(tmp_path, prior_file, capsys):
    src = _llamagen_code_path(tmp_path / "codes")
    out = tmp_path / "cluster_codes"
    assert main(["remap", str(src), "--prior", str(prior_file), "-o", str(out)]) == 0
    assert _files(out) == [f"imagenet256_{kind}/{i}.npy" for kind in ("codes", "labels")
                           for i in range(3)]
    _check_layout(src, out, prior_file)
    text = capsys.readouterr().out
    assert "remapped 3 code file(s)" in text and "copied 3 label file(s) unchanged" in text


@pytest.mark.parametrize("code_path", ["imagenet_codes", "llamagen_codes"])
def test_code_path_named_like_a_codes_folder(tmp_path, prior_file, code_path):
    """A code path whose own name ends in ``_codes`` (it holds ``imagenet256_codes/`` and
    ``imagenet256_labels/``) is a code path, not a ``NAME_codes`` folder: OUTDIR is again
    a complete code path, not ``OUTDIR/<its name>/...``."""
    src = _llamagen_code_path(tmp_path / code_path)
    out = tmp_path / "cluster_codes"
    assert main(["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]) == 0
    assert _files(out) == [f"imagenet256_{kind}/{i}.npy" for kind in ("codes", "labels")
                           for i in range(3)]
    _check_layout(src, out, prior_file)


def test_codes_folder_brings_its_labels(tmp_path, prior_file):
    src = _llamagen_code_path(tmp_path / "codes")
    out = tmp_path / "cluster_codes"
    rc = main(["remap", str(src / "imagenet256_codes"), "--prior", str(prior_file),
               "-o", str(out), "-q"])
    assert rc == 0
    _check_layout(src, out, prior_file)
    # both folders given (as a shell glob gives them): the same result
    out2 = tmp_path / "cluster_codes2"
    rc = main(["remap", str(src / "imagenet256_codes"), str(src / "imagenet256_labels"),
               "--prior", str(prior_file), "-o", str(out2), "-q"])
    assert rc == 0
    _check_layout(src, out2, prior_file)


def test_codes_folder_without_labels(tmp_path, prior_file):
    src = _llamagen_code_path(tmp_path / "codes")
    for f in (src / "imagenet256_labels").iterdir():
        f.unlink()
    (src / "imagenet256_labels").rmdir()
    out = tmp_path / "out"
    assert main(["remap", str(src / "imagenet256_codes"), "--prior", str(prior_file),
                 "-o", str(out), "-q"]) == 0
    assert _files(out) == [f"imagenet256_codes/{i}.npy" for i in range(3)]


def test_rerun_replaces_and_foreign_files_stop(tmp_path, prior_file, capsys):
    src = _llamagen_code_path(tmp_path / "codes")
    out = tmp_path / "cluster_codes"
    argv = ["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]
    assert main(argv) == 0
    assert main(argv) == 0  # the same outputs again: replaced
    _check_layout(src, out, prior_file)
    (out / "imagenet256_codes" / "99.npy").write_bytes(b"from another run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "imagenet256_codes/99.npy" in line and "choose a new or empty folder" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_labels_only_is_refused(tmp_path, prior_file, capsys):
    src = _llamagen_code_path(tmp_path / "codes")
    out = tmp_path / "out"
    rc = main(["remap", str(src / "imagenet256_labels"), "--prior", str(prior_file),
               "-o", str(out)])
    assert rc == 1
    assert "class labels only" in one_error_line(capsys.readouterr().err)
    rc = main(["remap", str(src / "imagenet256_labels" / "0.npy"), "--prior",
               str(prior_file), "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "folder of class labels" in line and "_codes folder" in line
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".npz", ".safetensors"])
def test_code_files_must_be_npy(tmp_path, prior_file, capsys, suffix):
    src = _llamagen_code_path(tmp_path / "codes")
    bad = src / "imagenet256_codes" / f"3{suffix}"
    torch.save(torch.zeros(1, 2, 256, dtype=torch.int64), bad)
    out = tmp_path / "out"
    # as a file
    rc = main(["remap", str(bad), "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"3{suffix}" in line and "must be .npy" in line and "numpy.save" in line
    # inside a folder of codes
    rc = main(["remap", str(src), "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    assert "must be .npy" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_archive_named_npy_and_pickles_are_refused(tmp_path, prior_file, capsys):
    codes = tmp_path / "codes"
    codes.mkdir()
    torch.save(torch.zeros(4, dtype=torch.int64), codes / "a.npy")  # a zip archive
    out = tmp_path / "out"
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "a.npy" in line and "archive" in line
    np.save(codes / "a.npy", np.array([1, None], dtype=object), allow_pickle=True)
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "a.npy" in line and "cannot read as a .npy file" in line
    assert not out.exists()


def test_other_files_are_skipped_and_said(tmp_path, prior_file, capsys):
    src = _llamagen_code_path(tmp_path / "codes")
    (src / "README.txt").write_text("extracted with flip augmentation")
    out = tmp_path / "out"
    assert main(["remap", str(src), "--prior", str(prior_file), "-o", str(out)]) == 0
    assert "README.txt" not in " ".join(_files(out))
    assert "skipped 1 file(s) that are not .npy" in capsys.readouterr().out


def test_output_inside_input_and_in_place(tmp_path, prior_file, capsys):
    src = _llamagen_code_path(tmp_path / "codes")
    out = src / "clusters"
    argv = ["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]
    assert main(argv) == 0
    assert main(argv) == 0  # its own earlier output is not read as input
    _check_layout(src, out, prior_file)
    rc = main(["remap", str(src / "imagenet256_codes"), "--prior", str(prior_file), "-o",
               str(src)])
    assert rc == 1
    assert "would overwrite its input" in one_error_line(capsys.readouterr().err)


def test_output_in_an_input_code_folder_is_named(tmp_path, prior_file, capsys):
    """The output given as the code path's own NAME_codes folder: its files would count as
    an earlier run's output, which leaves no inputs; the message says why, not only that no
    code files were found. With a second code folder beside it, the output folder's own
    files (the other one's inputs) stop the command. Nothing is written either way."""
    src = _llamagen_code_path(tmp_path / "codes")
    before = _files(src)
    out = src / "imagenet256_codes"
    rc = main(["remap", str(src), "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "outside the output folder" in line and "choose an output folder outside" in line
    assert _files(src) == before
    _llamagen_code_path(src, name="imagenet512")
    before = _files(src)
    rc = main(["remap", str(src), "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    assert "which this command does not write" in one_error_line(capsys.readouterr().err)
    assert _files(src) == before


def test_two_inputs_to_one_name(tmp_path, prior_file, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        np.save(d / "0.npy", np.arange(4))
    rc = main(["remap", str(a / "0.npy"), str(b / "0.npy"), "--prior", str(prior_file),
               "-o", str(tmp_path / "out")])
    assert rc == 1
    assert "same output name 0.npy" in one_error_line(capsys.readouterr().err)
    (tmp_path / "a_link").symlink_to(a, target_is_directory=True)  # one file, two spellings
    rc = main(["remap", str(a / "0.npy"), str(tmp_path / "a_link" / "0.npy"), "--prior",
               str(prior_file), "-o", str(tmp_path / "out"), "-q"])
    assert rc == 0 and _files(tmp_path / "out") == ["0.npy"]


def test_dtype_kept_when_it_holds_the_cluster_ids(tmp_path, prior_file):
    codes = tmp_path / "codes"
    codes.mkdir()
    np.save(codes / "u8.npy", np.arange(N_TOKENS, dtype=np.uint8))
    np.save(codes / "i16.npy", np.arange(N_TOKENS, dtype=np.int16).reshape(8, 8))
    out = tmp_path / "out"
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out), "-q"]) == 0
    assert np.load(out / "u8.npy").dtype == np.uint8
    got = np.load(out / "i16.npy")
    assert got.dtype == np.int16 and got.shape == (8, 8)



def test_code_files_of_any_layout_are_written_as_numpy_saves_them(tmp_path, prior_file):
    """Each output file is byte for byte ``numpy.save`` of ``to_clusters`` (in the token
    ids' dtype when it holds the cluster ids), whatever the layout of the input: Fortran
    order, big-endian, 0-d, empty, a file over 1 MiB (memory-mapped when checked) and a
    version 3 header (read by numpy.load)."""
    rng = np.random.default_rng(3)
    codes = tmp_path / "codes"
    codes.mkdir()
    arrays = {
        "fortran": np.asfortranarray(rng.integers(0, N_TOKENS, (10, 256))),
        "big_endian": rng.integers(0, N_TOKENS, (1, 2, 256)).astype(">i4"),
        "scalar": np.array(N_TOKENS - 1, dtype=np.uint8),
        "empty": np.zeros((0, 256), dtype=np.int64),
        "large": rng.integers(0, N_TOKENS, (600, 256)),
        "bool_free_u1": np.arange(N_TOKENS, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        np.save(codes / f"{name}.npy", arr)
    with open(codes / "version3.npy", "wb") as fh:
        np.lib.format.write_array(fh, arrays["big_endian"], version=(3, 0))
    arrays["version3"] = arrays["big_endian"]
    assert (codes / "large.npy").stat().st_size > 1 << 20
    out = tmp_path / "out"
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out), "-q"]) == 0
    prior = CodebookPrior.load(prior_file)
    for name, arr in arrays.items():
        dtype = arr.dtype if np.iinfo(arr.dtype).max >= K - 1 else np.int64
        fp = io.BytesIO()
        np.save(fp, np.asarray(prior.to_clusters(arr)).astype(dtype, copy=False))
        assert (out / f"{name}.npy").read_bytes() == fp.getvalue(), name
    assert _files(out) == sorted(f"{name}.npy" for name in arrays)


@pytest.mark.parametrize("bad", [-1, N_TOKENS, 0.5])
def test_file_changed_after_its_check_is_an_error(tmp_path, prior_file, capsys, monkeypatch,
                                                  bad):
    """A code file that holds an id outside the prior (or no integers) when it is
    remapped, though not when it was checked (it changed in between), stops the command
    with one line; a negative id does not count from the end of the table."""
    import dcpe._npyfiles as npyfiles

    src = _llamagen_code_path(tmp_path / "codes")
    read = npyfiles.NpyReader.read

    def changed(self, path, *, max_bytes=None):
        arr = read(self, path, max_bytes=max_bytes)
        if max_bytes is None and Path(path).name == "1.npy":  # the remap pass, not the check
            arr = arr.astype(type(bad))
            arr[0, 0, 5] = bad
        return arr

    monkeypatch.setattr(npyfiles.NpyReader, "read", changed)
    out = tmp_path / "out"
    assert main(["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "1.npy" in line and "changed while being remapped" in line
    assert _files(out) == ["imagenet256_codes/0.npy"]  # no temporary file


def test_code_path_given_as_the_working_folder(tmp_path, prior_file, capsys, monkeypatch):
    """``dcpe remap .`` from inside the code path: the layout is kept, and files are named
    as a path names them (``imagenet256_codes/notes.txt``, not ``./imagenet256_codes/...``)."""
    src = _llamagen_code_path(tmp_path / "codes")
    (src / "imagenet256_codes" / "notes.txt").write_text("extraction log")
    monkeypatch.chdir(src)
    assert main(["remap", ".", "--prior", str(prior_file), "-o", "../out"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 file(s) that are not .npy, such as imagenet256_codes/notes.txt" in out
    (src / "imagenet256_codes" / "notes.txt").unlink()
    _check_layout(src, tmp_path / "out", prior_file)
    torch.save(torch.zeros(3, dtype=torch.int64), src / "imagenet256_codes" / "x.pt")
    assert main(["remap", ".", "--prior", str(prior_file), "-o", "../out2"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("dcpe: error: imagenet256_codes/x.pt: ")
    monkeypatch.chdir(src / "imagenet256_codes")  # a NAME_codes folder given as "."
    assert main(["remap", ".", "--prior", str(prior_file), "-o", "../../out3", "-q"]) == 1
    assert one_error_line(capsys.readouterr().err).startswith("dcpe: error: x.pt: ")
    (src / "imagenet256_codes" / "x.pt").unlink()
    assert main(["remap", ".", "--prior", str(prior_file), "-o", "../../out3", "-q"]) == 0
    _check_layout(src, tmp_path / "out3", prior_file)

# ----------------------------------------------------------- LlamaGen's and IAR's code loader


def _extracted(root: Path, shape: tuple[int, ...], name: str = "imagenet256") -> Path:
    """A code path as extract_codes_c2i.py writes it, with arrays of ``shape``."""
    rng = np.random.default_rng(1)
    (root / f"{name}_codes").mkdir(parents=True)
    (root / f"{name}_labels").mkdir()
    for i in range(2):
        np.save(root / f"{name}_codes" / f"{i}.npy", rng.integers(0, N_TOKENS, shape))
        np.save(root / f"{name}_labels" / f"{i}.npy", np.array([i]))
    return root


def _loader_sample(code_path: Path, twin: bool = False) -> tuple[np.ndarray, bool]:
    """Sample 0 as the ImageNet code loader of LlamaGen and IAR reads it from
    ``--code-path code_path`` (their ``dataset/imagenet.py``, restated), and whether it
    finds the twin folder: the options come from the path's name, not from the files.
    The row is what their ``train_c2i.py`` trains on, ``x.reshape(batch, -1)``."""
    feature_dir = f"{code_path}/imagenet256_codes"
    label_dir = f"{code_path}/imagenet256_labels"
    twin_features = feature_dir.replace("ten_crop/", "ten_crop_105/")
    twin_labels = label_dir.replace("ten_crop/", "ten_crop_105/")
    # (without 'ten_crop/' in the name the "twin" is the folder itself: no twin)
    found = (twin_features != feature_dir and Path(twin_features).exists()
             and Path(twin_labels).exists())
    if twin:
        assert found
        feature_dir = twin_features
    features = np.load(f"{feature_dir}/0.npy")
    if "flip" in feature_dir:
        features = features[:, 0]
    return features.reshape(1, -1), found


def test_output_named_for_the_code_loader(tmp_path, prior_file, capsys, monkeypatch):
    """LlamaGen's recommended extraction: ten crops and their flips in
    ``..._flip_ten_crop``, and the 1.05 crops in its twin ``..._flip_ten_crop_105``. An
    output named otherwise is written but warned about, with the names to use; under
    those names the loader reads one sequence a sample and finds the remapped twin, which
    the command to write it (printed) produces. The arguments of train_c2i.py are printed."""
    monkeypatch.chdir(tmp_path)
    src = _extracted(Path("data") / "imagenet_code_c2i_flip_ten_crop", (1, 10, 256))
    _extracted(Path("data") / "imagenet_code_c2i_flip_ten_crop_105", (1, 10, 256))
    assert _loader_sample(src.absolute())[0].shape == (1, 256)  # the input, as extracted
    assert _loader_sample(src.absolute(), twin=True)[0].shape == (1, 256)

    assert main(["remap", str(src), "--prior", str(prior_file), "-o", "cluster_codes"]) == 0
    out, err = capsys.readouterr()
    warning, = [line for line in err.splitlines() if line.strip()]
    assert warning.startswith("dcpe: warning: ") and "'flip'" in warning, err
    assert "data/imagenet_code_c2i_flip_ten_crop_105 for half the samples" in warning
    assert warning.endswith("remap into cluster_codes_flip_ten_crop instead, and the twin "
                            "into cluster_codes_flip_ten_crop_105")
    row, found = _loader_sample(tmp_path / "cluster_codes")
    assert row.shape == (1, 2560) and not found  # what the warning is about

    argv = ["remap", str(src), "--prior", str(prior_file), "-o", "cluster_codes_flip_ten_crop"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert ("LlamaGen's train_c2i.py: --code-path cluster_codes_flip_ten_crop --image-size 256 "
            f"--vocab-size {K}") in out
    command, = [line.split(": ", 1)[1] for line in out.splitlines() if "its twin" in line]
    assert command == ("dcpe remap data/imagenet_code_c2i_flip_ten_crop_105 --prior "
                       f"{prior_file} -o cluster_codes_flip_ten_crop_105")
    assert main(command.split()[1:]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and "its twin" not in out
    prior = CodebookPrior.load(prior_file)
    for twin in (False, True):
        row, found = _loader_sample(tmp_path / "cluster_codes_flip_ten_crop", twin=twin)
        original, _ = _loader_sample(src.absolute(), twin=twin)
        assert found and row.shape == (1, 256)
        np.testing.assert_array_equal(row, prior.to_clusters(original))
    # the input's folder holding both: one run writes both, and says nothing of a twin
    assert main(["remap", "data", "--prior", str(prior_file), "-o", "both"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and "its twin" not in out
    assert out.count("--code-path") == 1
    assert "--code-path both/imagenet_code_c2i_flip_ten_crop " in out
    assert _loader_sample(tmp_path / "both" / "imagenet_code_c2i_flip_ten_crop", twin=True)[1]


def test_output_name_and_codes_without_augmentations(tmp_path, prior_file, capsys,
                                                      monkeypatch):
    """Codes of one sequence an image, (1, 256): 'flip' in the output's path would make
    the loader take one token of each; a name the loader cannot read the input by (here
    'flip' on (1, 256) codes) is not meant for it, and nothing is said."""
    monkeypatch.chdir(tmp_path)
    plain = _extracted(Path("plain"), (1, 256))
    assert _loader_sample(plain.absolute())[0].shape == (1, 256)
    assert main(["remap", str(plain), "--prior", str(prior_file), "-o", "out_flip"]) == 0
    warning, = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert warning.startswith("dcpe: warning: ") and "without 'flip'" in warning
    assert _loader_sample(tmp_path / "out_flip")[0].shape == (1, 1)
    other = _extracted(Path("other_flip"), (1, 256))
    assert main(["remap", str(other), "--prior", str(prior_file), "-o", "out2", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_files_whole_when_interrupted_and_one_sync(tmp_path, prior_file, monkeypatch):
    """remap writes many small files: each is renamed into place whole, without a flush of
    its own, and one sync at the end puts them all on the disk. Interrupted at its third
    code file, it leaves the two before whole and nothing else (no temporary file)."""
    src = _llamagen_code_path(tmp_path / "codes", n=4)
    out = tmp_path / "out"
    synced, flushed = [], []
    monkeypatch.setattr(os, "sync", lambda: synced.append(1))
    monkeypatch.setattr(os, "fsync", flushed.append)
    argv = ["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]
    assert main(argv) == 0
    assert synced == [1] and flushed == []
    _check_layout(src, out, prior_file)

    shutil.rmtree(out)
    replace, renamed = os.replace, []

    def interrupted_replace(tmp, dest):  # the third file is written, not yet renamed
        if len(renamed) == 2:
            assert Path(tmp).is_file() and Path(tmp).name.startswith(".2.npy.")
            raise KeyboardInterrupt
        renamed.append(dest)
        replace(tmp, dest)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    assert main(argv) == 130
    assert _files(out) == ["imagenet256_codes/0.npy", "imagenet256_codes/1.npy"]
    prior = CodebookPrior.load(prior_file)
    for name in ("0.npy", "1.npy"):
        np.testing.assert_array_equal(np.load(out / "imagenet256_codes" / name),
                                      prior.to_clusters(np.load(src / "imagenet256_codes" / name)))


def test_linked_input_in_the_output_is_refused(tmp_path, prior_file, capsys):
    """A code file that is a link to a file the command would write (here its own earlier
    output) is refused, as the folder itself given as the output is."""
    src = _llamagen_code_path(tmp_path / "codes")
    out = tmp_path / "out"
    assert main(["remap", str(src), "--prior", str(prior_file), "-o", str(out), "-q"]) == 0
    links = tmp_path / "links" / "imagenet256_codes"
    links.mkdir(parents=True)
    (links / "0.npy").symlink_to(out / "imagenet256_codes" / "0.npy")
    before = (out / "imagenet256_codes" / "0.npy").read_bytes()
    rc = main(["remap", str(links), "--prior", str(prior_file), "-o", str(out), "-q"])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "would overwrite its input" in line and "links" in line
    assert (out / "imagenet256_codes" / "0.npy").read_bytes() == before
