"""Tests of choosing k: :mod:`dcpe.sweep` and ``dcpe sweep``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line
from scipy.spatial.distance import cdist

import dcpe
from dcpe.cli import main
from dcpe.report import coherence
from dcpe.sweep import default_ks, read_usage, sweep, write_sweep

N = 160


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return dcpe.datasets.sample_codebook()[:N].copy()


def _one_error_line(err: str) -> str:
    return one_error_line(err, ignore=("usage:", " ", "dcpe: codebook:"))


def _per_token_expected_distance(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brute force: mean distance from each token to the members of its cluster."""
    d = cdist(x.astype(np.float64), x.astype(np.float64))
    same = labels[:, None] == labels[None, :]
    return (d * same).sum(axis=1) / same.sum(axis=1)


def _llamagen_codes(root: Path, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """``<code-path>/<name>_codes/*.npy`` and ``<name>_labels/*.npy`` as LlamaGen's
    extract_codes_c2i.py writes them; returns the token counts of the codes."""
    codes = root / "imagenet384_codes"
    labels = root / "imagenet384_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    counts = np.zeros(n_tokens, dtype=np.int64)
    for i in range(6):
        tok = rng.integers(0, n_tokens // 4, size=(1, 64))  # skewed usage: low ids only
        np.save(codes / f"{i}.npy", tok)
        np.save(labels / f"{i}.npy", np.array([900 + i]))  # class ids, not tokens
        counts += np.bincount(tok.ravel(), minlength=n_tokens)
    return counts


@pytest.fixture(scope="module")
def usage() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 5, N)


@pytest.fixture(scope="module")
def result(x, usage) -> dict:
    return sweep(x, [32, 2, 8], usage=usage, baseline="kmeans", seed=4, kmeans_iter=7)


def _check_rows(x, rows, usage, z=None, kmeans_args=None):
    """Every row against a brute-force computation from the labels it describes."""
    from dcpe.baselines import kmeans

    z = dcpe.linkage(x) if z is None else z
    for row in rows:
        if row["method"] == "dcpe":
            labels = dcpe.cut(z, row["k"])
            np.testing.assert_array_equal(labels, dcpe.cluster(x, row["k"]))  # one tree
        else:
            labels = kmeans(x, row["k"], **(kmeans_args or {})).labels
        per_token = _per_token_expected_distance(x, labels)
        assert row["num_clusters"] == row["k"]
        assert row["expected_distance_to_random_member"] == pytest.approx(per_token.mean())
        assert row["expected_distance_to_random_member"] == pytest.approx(
            coherence(x, labels)["expected_distance_to_random_member"])
        assert row["usage_weighted_expected_distance"] == pytest.approx(
            np.dot(usage, per_token) / usage.sum())
        sizes = np.bincount(labels)
        assert row["largest_cluster"] == sizes.max()
        assert row["singletons"] == int(np.sum(sizes == 1))


def test_sweep_matches_direct_computation(x, usage, result):
    assert result["ks"] == [2, 8, 32] and result["usage_total"] == int(usage.sum())
    assert [(r["k"], r["method"]) for r in result["rows"]] == [
        (2, "dcpe"), (2, "kmeans"), (8, "dcpe"), (8, "kmeans"), (32, "dcpe"), (32, "kmeans")]
    _check_rows(x, result["rows"], usage, kmeans_args={"seed": 4, "n_iter": 7})


def test_usage_weighting_follows_the_tokens(x):
    usage = np.zeros(N)
    usage[7] = 3
    row = sweep(x, [20], usage=usage)["rows"][0]
    labels = dcpe.cluster(x, 20)
    assert row["usage_weighted_expected_distance"] == pytest.approx(
        _per_token_expected_distance(x, labels)[7])
    assert sweep(x, [20])["rows"][0]["usage_weighted_expected_distance"] is None


def test_large_clusters_match_brute_force():
    # one cluster past the kernel's chunks and row tasks, next to small ones
    import dcpe.sweep as sw

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2500, 8))
    labels = np.where(np.arange(2500) < 2300, 0, 1 + np.arange(2500) % 7)
    got = sw._member_distance_sums(torch.from_numpy(x), labels)
    want = _per_token_expected_distance(x, labels) * np.bincount(labels)[labels]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_default_grid():
    assert default_ks(16384) == [256, 512, 1024, 2048, 4096, 8192]
    assert default_ks(1000) == [256]
    assert default_ks(300) == [2, 4, 8, 16, 32, 64, 128]
    assert default_ks(3) == [1]
    assert sweep(dcpe.datasets.sample_codebook()[:40], None)["ks"] == [2, 4, 8, 16]


@pytest.mark.parametrize("ks, error, match", [
    ([0], ValueError, "k=0"),
    ([N + 1], ValueError, "at most the number of tokens"),
    ([], ValueError, "empty"),
    ("512", TypeError, "sequence"),
    ([2.5], TypeError, "integer"),
])
def test_sweep_checks_ks(x, ks, error, match):
    with pytest.raises(error, match=match):
        sweep(x, ks)


def test_sweep_checks_other_arguments(x):
    with pytest.raises(ValueError, match="baseline"):
        sweep(x, [4], baseline="balanced")
    with pytest.raises(ValueError, match="usage"):
        sweep(x, [4], usage=np.ones(N - 1))
    with pytest.raises(ValueError, match="usage"):
        sweep(x, [4], usage=-np.ones(N))
    with pytest.raises(ValueError, match="linkage"):
        sweep(x, [4], linkage="median")
    with pytest.raises(ValueError, match="2-D"):
        sweep(x[0], [1])
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sweep(bad, [4])


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**64, ValueError),
                                         (1.5, TypeError)])
def test_sweep_checks_the_seed_before_the_tree(x, monkeypatch, seed, error):
    """A seed out of the baseline's range stops the sweep before it builds the tree (the
    baseline would check it only after)."""
    def no_tree(*args, **kwargs):
        raise AssertionError("the tree was built")

    monkeypatch.setattr(dcpe, "linkage", no_tree)
    with pytest.raises(error, match="seed"):
        sweep(x, [4], baseline="kmeans", seed=seed)


def test_sweep_duplicates_and_order(x):
    assert sweep(x, [40, 5, 40])["ks"] == [5, 40]


# --------------------------------------------------------------------------- codes


def test_read_usage_llamagen_layout(tmp_path):
    counts = _llamagen_codes(tmp_path / "codes", 64, np.random.default_rng(0))
    # class labels (900..905) are outside the codebook: reading them would fail
    np.testing.assert_array_equal(read_usage(tmp_path / "codes", 64), counts)
    np.testing.assert_array_equal(read_usage(tmp_path / "codes" / "imagenet384_codes", 64),
                                  counts)
    one = tmp_path / "codes" / "imagenet384_codes" / "0.npy"
    np.testing.assert_array_equal(read_usage(one, 64),
                                  np.bincount(np.load(one).ravel(), minlength=64))


def test_read_usage_flat_directory_skips_labels_folders(tmp_path):
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "a.npy", np.array([[1, 2, 2]], dtype=np.uint16))
    (tmp_path / "c" / "sub_labels").mkdir()
    np.save(tmp_path / "c" / "sub_labels" / "a.npy", np.array([999]))
    np.testing.assert_array_equal(read_usage(tmp_path / "c", 4), [0, 1, 2, 0])


def test_read_usage_refuses_a_labels_folder(tmp_path, capsys):
    """LlamaGen's NAME_labels folder (or a file in it) given as the codes: ImageNet's class
    ids (0..999) lie within the codebook, so counting them would pass unnoticed; it is
    refused, in Python and as ``dcpe sweep --codes`` (one error line, nothing written)."""
    labels = tmp_path / "codes" / "imagenet256_labels"
    labels.mkdir(parents=True)
    for i in range(3):
        np.save(labels / f"{i}.npy", np.array([i]))
    for given in (labels, labels / "0.npy"):
        with pytest.raises(ValueError, match="folder of class labels.*give the \\*_codes"):
            read_usage(given, 64)
    cb = tmp_path / "cb.npy"
    np.save(cb, np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    out = tmp_path / "sw"
    rc = main(["sweep", str(cb), "-k", "8", "--codes", str(labels), "-o", str(out)])
    assert rc == 1
    assert "folder of class labels" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_read_usage_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_usage(tmp_path / "none", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npy"):
        read_usage(tmp_path / "empty", 8)
    pt = tmp_path / "codes.pt"
    torch.save(torch.zeros(3, dtype=torch.int64), pt)
    with pytest.raises(ValueError, match=".npy"):
        read_usage(pt, 8)
    np.save(tmp_path / "f.npy", np.zeros(3))
    with pytest.raises(ValueError, match="integers"):
        read_usage(tmp_path / "f.npy", 8)
    np.save(tmp_path / "big.npy", np.array([8]))
    with pytest.raises(ValueError, match="token id 8"):
        read_usage(tmp_path / "big.npy", 8)
    np.save(tmp_path / "none.npy", np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="no token ids"):
        read_usage(tmp_path / "none.npy", 8)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="cannot read"):
        read_usage(tmp_path / "bad.npy", 8)


# --------------------------------------------------------------------------- outputs


def test_write_sweep(tmp_path, result):
    paths = write_sweep(tmp_path / "s", result)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "sweep.json", "sweep.md", "sweep.png"]
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == result["rows"]
    md = paths["markdown"].read_text()
    assert "| 8 | kmeans |" in md and "not generation quality" in md


def test_cli_sweep(tmp_path, capsys):
    ckpt = tmp_path / "vq_ds16_c2i.pt"
    w = torch.from_numpy(dcpe.datasets.sample_codebook()[:N] * 2.0)
    torch.save({"model": {"quantize.embedding.weight": w}}, ckpt)
    counts = _llamagen_codes(tmp_path / "codes", N, np.random.default_rng(1))
    out = tmp_path / "sweep"
    rc = main(["sweep", str(ckpt), "--normalize", "--k", "4,16,64", "--codes",
               str(tmp_path / "codes"), "--baseline", "kmeans", "--seed", "2",
               "--kmeans-iter", "3", "-q", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| 64 | dcpe |" in text and "| 64 | kmeans |" in text
    data = json.loads((out / "sweep.json").read_text())
    assert data["ks"] == [4, 16, 64] and data["usage_total"] == int(counts.sum())
    x = dcpe.io.load_codebook(ckpt, normalize=True)
    assert [r["method"] for r in data["rows"]] == ["dcpe", "kmeans"] * 3
    _check_rows(x, [r for r in data["rows"] if r["method"] == "dcpe"], counts)
    assert (out / "sweep.png").exists() and (out / "sweep.md").exists()


def test_cli_sweep_sample_default_grid(tmp_path, monkeypatch, capsys):
    import dcpe.cli as cli

    small = dcpe.datasets.sample_codebook()[:600]
    monkeypatch.setattr(cli, "_sample_codebook", lambda normalize: small)
    assert main(["sweep", "--sample", "-q", "-o", str(tmp_path / "s")]) == 0
    data = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert data["ks"] == [256]


@pytest.mark.parametrize("args, code, match", [
    (["--k", "4,x"], 2, "comma-separated"),
    (["--k", "0"], 2, "positive"),
    (["--k", str(N + 1)], 1, "at most the number of tokens"),
    (["--baseline", "balanced"], 2, "invalid choice"),
    (["--linkage", "median"], 2, "invalid choice"),
])
def test_cli_sweep_rejects(tmp_path, x, args, code, match, capsys):
    cb = tmp_path / "cb.npy"
    np.save(cb, x)
    out = tmp_path / "s"
    assert main(["sweep", str(cb), "-o", str(out), *args]) == code
    assert match in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_cli_sweep_rejects_paths(tmp_path, x, capsys):
    cb = tmp_path / "cb.npy"
    np.save(cb, x)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sweep", str(cb), "-o", str(blocker)]) == 1
    assert "not a folder" in _one_error_line(capsys.readouterr().err)
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["sweep", str(cb), "-o", str(foreign)]) == 1
    assert "notes.txt" in _one_error_line(capsys.readouterr().err)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert main(["sweep", str(cb), "--codes", str(tmp_path / "nope"), "-o",
                 str(tmp_path / "s")]) == 1
    assert "not found" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "pt").mkdir()
    torch.save(torch.zeros(3, dtype=torch.int64), tmp_path / "pt" / "0.pt")
    assert main(["sweep", str(cb), "--codes", str(tmp_path / "pt"), "-o",
                 str(tmp_path / "s")]) == 1
    assert "no .npy" in _one_error_line(capsys.readouterr().err)
    assert main(["sweep", "-o", str(tmp_path / "s")]) == 2
    assert "--sample" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_cli_sweep_without_matplotlib(tmp_path, x, monkeypatch, capsys):
    import dcpe.sweep as sw

    cb = tmp_path / "cb.npy"
    np.save(cb, x)
    called = []
    monkeypatch.setattr(sw, "sweep", lambda *a, **k: called.append(1))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = tmp_path / "s"
    assert main(["sweep", str(cb), "-o", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "matplotlib" in line and "pip install matplotlib" in line
    assert not called and not out.exists()  # checked before any work
