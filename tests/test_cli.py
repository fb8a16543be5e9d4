"""Tests of the ``dcpe`` command line (in-process through ``main`` and one subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dcpe
from dcpe.cli import main
from dcpe.io import load_codebook
from dcpe.prior import CodebookPrior


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dcpe: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    """A small LlamaGen-style VQ checkpoint (unnormalised codebook)."""
    x = torch.from_numpy(dcpe.datasets.sample_codebook()[:300] * 3.0)
    path = tmp_path / "vq.pt"
    torch.save({"model": {"quantize.embedding.weight": x,
                          "decoder.conv.weight": torch.zeros(3, 3, 3, 3)}}, path)
    return path


@pytest.fixture()
def prior_file(tmp_path, ckpt) -> Path:
    out = tmp_path / "prior.npz"
    assert main(["cluster", str(ckpt), "--normalize", "-k", "30", "-o", str(out)]) == 0
    return out


def test_cluster_checkpoint(tmp_path, ckpt, capsys):
    out = tmp_path / "p.pt"
    rc = main(["cluster", str(ckpt), "--normalize", "-k", "30", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "N=300" in text and "d=8" in text and "clusters found: 30" in text
    for field in ("largest cluster", "singletons", "seconds"):  # the printed summary
        assert field in text
    x = load_codebook(ckpt, normalize=True)
    prior = CodebookPrior.load(out, codebook=x)
    np.testing.assert_array_equal(prior.token_to_cluster.numpy(), dcpe.cluster(x, 30))
    assert prior.meta["normalize"] is True
    assert _files(tmp_path) == ["p.pt", "vq.pt"]


@pytest.mark.slow
def test_cluster_sample_readme_command(tmp_path, capsys):
    out = tmp_path / "prior.npz"
    assert main(["cluster", "--sample", "-k", "8192", "-o", str(out)]) == 0
    assert "N=16384" in capsys.readouterr().out
    prior = CodebookPrior.load(out, codebook=dcpe.datasets.sample_codebook())
    assert prior.num_clusters == 8192


@pytest.mark.parametrize("args,fragment", [
    (["missing.pt", "-k", "3"], "not found"),
    (["{ckpt}", "-k", "301"], "at most the number of tokens"),
    (["{ckpt}", "-k", "3", "--key", "nope"], "no key 'nope'"),
    (["{ckpt}", "-k", "3", "--linkage", "nope"], "nope"),
    (["{bad}", "-k", "3"], "cannot read"),
])
def test_cluster_user_errors(tmp_path, ckpt, capsys, args, fragment):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    args = [a.format(ckpt=ckpt, bad=bad) for a in args]
    out = tmp_path / "out" / "p.npz"
    out.parent.mkdir()
    rc = main(["cluster", *args, "-o", str(out)])
    assert rc == 1
    assert fragment in _one_error_line(capsys.readouterr().err)
    assert _files(out.parent) == []


def test_cluster_usage_errors(tmp_path, ckpt, capsys):
    out = str(tmp_path / "p.npz")
    assert main(["cluster", str(ckpt), "-k", "0", "-o", out]) == 2
    assert main(["cluster", str(ckpt), "-o", out]) == 2
    assert main(["cluster", str(ckpt), "--sample", "-k", "3", "-o", out]) == 2
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    capsys.readouterr()
    assert main(["cluster", str(ckpt), "-k", "3", "-o", str(tmp_path / "p.json")]) == 1
    assert ".npz or .pt" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "p.npz").exists()


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dcpe {dcpe.__version__}"
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "dcpe cluster --sample -k 8192 -o prior.npz" in text
    for command in ("cluster", "remap", "report"):
        assert main([command, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out


def _codes_tree(root: Path, n_tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "a.npy": rng.integers(0, n_tokens, (2, 16, 16)),
        "sub/b.npy": rng.integers(0, n_tokens, (256,)).astype(np.int32),
        "sub/deeper/c.npy": rng.integers(0, n_tokens, (1, 10, 256)).astype(np.uint16),
    }
    for rel, arr in arrays.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, arr)
    (root / "notes.txt").write_text("not codes")
    return arrays


def test_remap_directory_and_file(tmp_path, prior_file, capsys):
    codes = tmp_path / "codes"
    arrays = _codes_tree(codes, 300)
    single = tmp_path / "single.npy"
    np.save(single, np.array([[0, 299]]))
    out = tmp_path / "clusters"
    rc = main(["remap", str(codes), str(single), "--prior", str(prior_file), "-o", str(out)])
    assert rc == 0
    prior = CodebookPrior.load(prior_file)
    assert _files(out) == sorted([*arrays, "single.npy"])
    for rel, arr in arrays.items():
        got = np.load(out / rel)
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, prior.to_clusters(arr.astype(np.int64)))
    np.testing.assert_array_equal(np.load(out / "single.npy"),
                                  prior.to_clusters(np.array([[0, 299]])))
    assert "error" not in capsys.readouterr().err


def test_remap_validates_before_writing(tmp_path, prior_file, capsys):
    codes = tmp_path / "codes"
    _codes_tree(codes, 300)
    np.save(codes / "zz_bad.npy", np.array([1, 2, 300]))  # token 300 is out of range
    out = tmp_path / "clusters"
    rc = main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out), "--quiet"])
    assert rc == 1
    assert "300" in _one_error_line(capsys.readouterr().err)
    assert not out.exists() or _files(out) == []

    np.save(codes / "zz_bad.npy", np.array([0.5, 1.0]))
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    assert "integers" in _one_error_line(capsys.readouterr().err)

    (codes / "zz_bad.npy").write_bytes(b"garbage")
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    assert "zz_bad.npy" in _one_error_line(capsys.readouterr().err)

    rc = main(["remap", str(codes / "a.npy"), str(tmp_path / "nope.npy"),
               "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    assert "nope.npy" in _one_error_line(capsys.readouterr().err)

    rc = main(["remap", str(codes / "a.npy"), "--prior", str(tmp_path / "nope.npz"),
               "-o", str(out)])
    assert rc == 1
    assert "nope.npz" in _one_error_line(capsys.readouterr().err)
    assert not out.exists() or _files(out) == []


def test_report(tmp_path, ckpt, prior_file, capsys):
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(ckpt), "--normalize",
               "-o", str(out), "--kmeans-iter", "5", "-q"])
    assert rc == 0
    assert _files(out) == ["cluster_sizes.png", "coherence.json", "coherence.md"]
    data = json.loads((out / "coherence.json").read_text())
    assert set(data["methods"]) == {"dcpe", "kmeans", "balanced_kmeans"}
    assert data["num_clusters"] == 30
    assert "| dcpe |" in capsys.readouterr().out


def test_report_wrong_codebook(tmp_path, ckpt, prior_file, capsys):
    out = tmp_path / "rep"
    # without --normalize the codebook bytes differ from the ones the prior was made for
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(ckpt), "-o", str(out)])
    assert rc == 1
    assert "another codebook" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_report_without_codebook_needs_one(tmp_path, prior_file, capsys):
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior_file), "-o", str(out)])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no codebook" in line and "300 x 8" in line and "--codebook" in line
    assert not out.exists()


@pytest.mark.parametrize("normalize", [False, True])
def test_report_without_codebook_finds_the_sample(tmp_path, normalize, monkeypatch, capsys):
    import argparse

    from dcpe import cli

    x = dcpe.datasets.sample_codebook()
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    prior = CodebookPrior.from_labels(np.arange(len(x)) // 2, codebook=x)
    args = argparse.Namespace(prior="p.npz", sample=False, normalize=False)
    cli._default_to_sample(prior, args)
    assert args.sample and args.normalize == normalize
    assert "sample codebook" in capsys.readouterr().err
    # a different codebook of the same shape is not taken for the sample
    other = CodebookPrior.from_labels(np.arange(len(x)) // 2, codebook=x[::-1].copy())
    args = argparse.Namespace(prior="p.npz", sample=False, normalize=False)
    with pytest.raises(cli._UsageError, match="16384 x 8"):
        cli._default_to_sample(other, args)


def test_subprocess_console_entry(tmp_path, ckpt):
    env = dict(os.environ)
    run = [sys.executable, "-m", "dcpe.cli"]
    res = subprocess.run([*run, "cluster", str(tmp_path / "missing.pt"), "-k", "3",
                          "-o", str(tmp_path / "p.npz")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    _one_error_line(res.stderr)
    out = tmp_path / "p.npz"
    res = subprocess.run([*run, "cluster", str(ckpt), "-k", "10", "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert CodebookPrior.load(out).num_clusters == 10


def test_cluster_size_cap(tmp_path, ckpt, capsys):
    out = tmp_path / "capped.npz"
    assert main(["cluster", str(ckpt), "-k", "30", "--max-cluster-size", "10",
                 "-o", str(out)]) == 0
    prior = CodebookPrior.load(out)
    assert prior.max_cluster_size == 10
    capsys.readouterr()
    # a cap of 1 stops merging long before 3 clusters: one warning line, still a prior
    assert main(["cluster", str(ckpt), "-k", "3", "--max-cluster-size", "1",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    warning_lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(warning_lines) >= 1 and warning_lines[0].startswith("dcpe: warning: ")
    found = CodebookPrior.load(out).num_clusters
    assert found != 3 and f"clusters found: {found}" in captured.out
