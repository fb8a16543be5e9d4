"""Tests of the ``dcpe`` command line (in-process through ``main`` and one subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line

import dcpe
from dcpe.cli import main
from dcpe.io import load_codebook
from dcpe.prior import CodebookPrior


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


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
    (["{bad}", "-k", "3"], "cannot read"),
    # extracted codes given where the checkpoint goes: the remap command is named
    (["{codes}", "-k", "3"], "mapped to clusters with `dcpe remap`"),
    (["{vector}", "-k", "3"], "give the tokenizer's checkpoint or its (N, d) codebook"),
    (["{ckpt}", "-k", "3", "--key", "decoder.conv.weight"], "choose the codebook with --key"),
])
def test_cluster_user_errors(tmp_path, ckpt, capsys, args, fragment):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    codes, vector = tmp_path / "0.npy", tmp_path / "v.npy"
    np.save(codes, np.random.default_rng(0).integers(0, 300, (1, 10, 256)))
    np.save(vector, np.zeros(8, np.float32))
    args = [a.format(ckpt=ckpt, bad=bad, codes=codes, vector=vector) for a in args]
    out = tmp_path / "out" / "p.npz"
    out.parent.mkdir()
    rc = main(["cluster", *args, "-o", str(out)])
    assert rc == 1
    assert fragment in one_error_line(capsys.readouterr().err)
    assert _files(out.parent) == []


def test_cluster_usage_errors(tmp_path, ckpt, capsys):
    out = str(tmp_path / "p.npz")
    for argv, fragment in [
        (["cluster", str(ckpt), "-k", "0", "-o", out], "positive integer"),
        (["cluster", str(ckpt), "-o", out], "required"),
        (["cluster", str(ckpt), "--sample", "-k", "3", "-o", out], "not both"),
        (["cluster", str(ckpt), "-k", "3", "--linkage", "nope", "-o", out], "'ward'"),
        (["frobnicate"], "invalid choice"),
        ([], "no command given"),
    ]:
        assert main(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)  # no usage block, one line
        assert fragment in line, (argv, line)
        assert "--help" in line or "not both" in line, line
    assert main(["cluster", str(ckpt), "-k", "3", "-o", str(tmp_path / "p.json")]) == 1
    assert ".npz or .pt" in one_error_line(capsys.readouterr().err)
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
    assert "300" in one_error_line(capsys.readouterr().err)
    assert not out.exists() or _files(out) == []

    np.save(codes / "zz_bad.npy", np.array([0.5, 1.0]))
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    assert "integers" in one_error_line(capsys.readouterr().err)

    (codes / "zz_bad.npy").write_bytes(b"garbage")
    assert main(["remap", str(codes), "--prior", str(prior_file), "-o", str(out)]) == 1
    assert "zz_bad.npy" in one_error_line(capsys.readouterr().err)

    rc = main(["remap", str(codes / "a.npy"), str(tmp_path / "nope.npy"),
               "--prior", str(prior_file), "-o", str(out)])
    assert rc == 1
    assert "nope.npy" in one_error_line(capsys.readouterr().err)

    rc = main(["remap", str(codes / "a.npy"), "--prior", str(tmp_path / "nope.npz"),
               "-o", str(out)])
    assert rc == 1
    assert "nope.npz" in one_error_line(capsys.readouterr().err)
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


@pytest.mark.parametrize("given, names", [("kmeans", ["dcpe", "kmeans"]),
                                          ("balanced", ["dcpe", "balanced_kmeans"]),
                                          ("balanced,kmeans", ["dcpe", "balanced_kmeans",
                                                               "kmeans"]),
                                          ("none", ["dcpe"])])
def test_report_runs_the_baselines_asked_for(tmp_path, ckpt, prior_file, capsys, given,
                                             names):
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(ckpt), "--normalize",
               "-o", str(out), "--kmeans-iter", "3", "-q", "--baselines", given])
    assert rc == 0
    assert _files(out) == ["cluster_sizes.png", "coherence.json", "coherence.md"]
    assert list(json.loads((out / "coherence.json").read_text())["methods"]) == names


@pytest.mark.parametrize("given", ["kmean", "kmeans,kmeans", "none,kmeans", "", "dcpe"])
def test_report_refuses_unknown_baselines_before_any_work(tmp_path, ckpt, prior_file, capsys,
                                                          given):
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(ckpt), "--normalize",
               "-o", str(out), "--baselines", given])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--baselines" in line and "dcpe report --help" in line
    assert not out.exists()


def test_report_wrong_codebook(tmp_path, ckpt, prior_file, capsys):
    out = tmp_path / "rep"
    # the prior was made with --normalize: without it the codebook bytes differ, and the
    # error says which flag makes them match
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(ckpt),
               "--no-normalize", "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "rows L2-normalised, and these are raw" in line
    assert "run the command again with --normalize" in line and "load_codebook" not in line
    assert not out.exists()
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    rc = main(["report", "--prior", str(prior_file), "--codebook", str(other), "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "another codebook" in line and "run the command again" not in line
    assert not out.exists()


def test_report_without_codebook_needs_one(tmp_path, prior_file, capsys):
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior_file), "-o", str(out)])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
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
    args = argparse.Namespace(prior="p.npz", sample=False, normalize=None)
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
    missing = ["cluster", str(tmp_path / "missing.pt"), "-k", "3", "-o", str(tmp_path / "p.npz")]
    res = subprocess.run([sys.executable, "-m", "dcpe.cli", *missing],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    one_error_line(res.stderr)
    # python -m dcpe is the same command; --debug after the command shows the traceback
    run = [sys.executable, "-m", "dcpe"]
    res = subprocess.run([*run, *missing, "--debug"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "FileNotFoundError" in res.stderr
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


# --------------------------------------------------------------------------- every failure


def test_debug_anywhere_raises(tmp_path, ckpt, capsys):
    missing = ["cluster", str(tmp_path / "missing.pt"), "-k", "3", "-o", str(tmp_path / "p.npz")]
    assert main(missing) == 1
    one_error_line(capsys.readouterr().err)
    for argv in (["--debug", *missing], [*missing, "--debug"], [*missing[:2], "--debug",
                                                                 *missing[2:]]):
        with pytest.raises(FileNotFoundError):
            main(argv)
    # the option still appears in the help
    assert main(["--help"]) == 0
    assert "--debug" in capsys.readouterr().out


def test_python_dash_m_dcpe_module():
    import runpy

    # python/dcpe/__main__.py runs the command line and exits with its code
    with pytest.raises(SystemExit) as info:
        saved = sys.argv
        sys.argv = ["dcpe", "--version"]
        try:
            runpy.run_module("dcpe", run_name="__main__")
        finally:
            sys.argv = saved
    assert info.value.code == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_backend_without_gpu_is_one_line(tmp_path, ckpt, capsys, backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "p.npz"
    rc = main(["cluster", str(ckpt), "-k", "3", "--backend", backend, "-o", str(out)])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"--backend {backend} cannot run here" in line
    assert "choose one of: " in line and "cpu" in line and "auto" in line
    assert not out.exists()


def test_metric_backend_linkage_help_lists_choices(capsys):
    from dcpe.backends import BACKENDS, LINKAGES, METRICS

    assert main(["cluster", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(METRICS) in text
    assert ", ".join(BACKENDS) in text
    assert ", ".join(LINKAGES) in text
    # the size cap is said plainly: larger than the cap stops merging, up to twice the cap
    assert "LARGER than CAP" in text and "2 x CAP" in text and "Not a hard bound" in text


@pytest.mark.parametrize("option,value", [("--metric", "manhattan"), ("--backend", "gpu")])
def test_bad_choice_is_one_line(tmp_path, ckpt, capsys, option, value):
    rc = main(["cluster", str(ckpt), "-k", "3", option, value, "-o", str(tmp_path / "p.npz")])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert value in line and "choose from" in line and "dcpe cluster --help" in line


def test_unexpected_exception_is_one_line(tmp_path, capsys, monkeypatch):
    from dcpe import cli

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setitem(cli._COMMANDS, "cluster", broken)
    argv = ["cluster", "--sample", "-k", "3", "-o", str(tmp_path / "p.npz")]
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "unexpected KeyError" in line and "--debug" in line
    with pytest.raises(KeyError):
        main([*argv, "--debug"])


def test_runtime_error_from_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    from dcpe import cli

    def fails(args):
        raise RuntimeError("CUDA error: out of memory\n  more detail")

    monkeypatch.setitem(cli._COMMANDS, "cluster", fails)
    assert main(["cluster", "--sample", "-k", "3", "-o", str(tmp_path / "p.npz")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == ("dcpe: error: CUDA error: out of memory more detail; run the command "
                    "again with --debug for the traceback")


@pytest.mark.parametrize("exc,step", [
    (ValueError("plain"), "plain; see 'dcpe cluster --help'"),
    (TypeError("plain"), "plain; see 'dcpe cluster --help'"),
    (PermissionError(13, "Permission denied"), "; check the path and its permissions"),
    (ImportError("No module named 'x'"), "; install the package it names"),
    (MemoryError(), "MemoryError; free memory"),
    (ValueError("what; the step"), "what; the step"),
])
def test_an_error_without_a_next_step_gets_one(tmp_path, capsys, monkeypatch, exc, step):
    from dcpe import cli

    def fails(args):
        raise exc

    monkeypatch.setitem(cli._COMMANDS, "cluster", fails)
    assert main(["cluster", "--sample", "-k", "3", "-o", str(tmp_path / "p.npz")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert step in line, line
    assert line.count("; ") == 1, line


@pytest.mark.parametrize("argv,helps", [
    (["cluster", "--sample", "-k", "3", "-o", "p.npz", "--bogus"], "'dcpe cluster --help'"),
    (["sweep", "--sample", "--kk", "4", "-o", "sw"], "'dcpe sweep --help'"),
    (["remap", "codes", "--prior", "p.npz", "-o", "out", "--bogus", "1"],
     "'dcpe remap --help'"),
    (["export", "iar", "--prior", "p.npz", "--checkpoint", "c.pt", "-o", "out", "--bogus"],
     "'dcpe export iar --help'"),
    (["--bogus"], "'dcpe --help'"),
])
def test_unknown_option_names_its_commands_help(tmp_path, capsys, monkeypatch, argv, helps):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unrecognized arguments" in line and line.endswith(f"see {helps}"), line
    assert _files(tmp_path) == []


def test_sweep_takes_k_as_cluster_does(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--sample", "-k", "4096,8192", "-o", str(out), "-q"]) == 0
    ks = [row["k"] for row in json.loads((out / "sweep.json").read_text())["rows"]]
    assert sorted(set(ks)) == [4096, 8192]


def _mistake_files(root: Path) -> None:
    """Files for the usual mistakes (:func:`test_usual_mistakes_name_a_next_step`)."""
    torch.save({"model": {"quantize.embedding.weight": torch.randn(200, 8)}},
               root / "other.pt")
    np.save(root / "nan.npy", np.full((10, 4), np.nan, dtype=np.float32))
    np.save(root / "zero_row.npy", np.vstack([np.zeros((1, 4)), np.ones((9, 4))]))
    (root / "cut.pt").write_bytes(b"PK\x03\x04 a download cut short")
    (root / "folder").mkdir()
    np.savez(root / "not_a_prior.npz", a=np.zeros(3))
    for name, arr in [("codes/imagenet256_codes/0.npy", np.arange(10)),
                      ("codes/imagenet256_labels/0.npy", np.arange(3)),
                      ("far_ids/0.npy", np.array([0, 5000])),
                      ("float_ids/0.npy", np.array([0.5]))]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / name, arr)
    (root / "no_codes").mkdir()
    (root / "no_codes" / "notes.txt").write_text("notes")
    (root / "a_file").write_text("x")
    np.save(root / "wide.npy", np.random.default_rng(0).standard_normal((8, 64)))
    # a training checkpoint as LlamaGen writes it (argparse.Namespace: not weights-only)
    torch.save({"model": {"quantize.embedding.weight": torch.randn(200, 8)},
                "args": argparse.Namespace(codebook_size=200)}, root / "train.pt")


@pytest.mark.parametrize("argv", [
    "cluster missing.pt -k 3 -o p.npz",
    "cluster folder -k 3 -o p.npz",
    "cluster cut.pt -k 3 -o p.npz",
    "cluster {ckpt} -k 301 -o p.npz",
    "cluster {ckpt} -k 3 -o no_dir/p.npz",
    "cluster {ckpt} -k 3 -o p.txt",
    "cluster {ckpt} -k 3 -o folder",
    "cluster nan.npy -k 3 -o p.npz",
    "cluster zero_row.npy -k 3 --metric cosine -o p.npz",
    "cluster {ckpt} -k 3 --memory-limit 1KiB -o p.npz",
    "remap codes --prior missing.npz -o out",
    "remap codes --prior not_a_prior.npz -o out",
    "remap codes --prior {ckpt} -o out",
    "remap codes --prior train.pt -o out",
    "cluster {prior} -k 3 -o p.npz",
    "remap missing_codes --prior {prior} -o out",
    "remap far_ids --prior {prior} -o out",
    "remap float_ids --prior {prior} -o out",
    "remap no_codes --prior {prior} -o out",
    "remap codes --prior {prior} -o a_file",
    "report --prior {prior} --codebook other.pt -o out",
    "report --prior {prior} --sample -o out",
    "report --prior missing.npz --codebook {ckpt} -o out",
    "sweep {ckpt} --k 400 -o out",
    "sweep {ckpt} --codes missing_codes -o out",
    "sweep {ckpt} --codes no_codes -o out",
    "sweep {ckpt} --codes far_ids -o out",
    "sweep {ckpt} --codes float_ids -o out",
    "sweep nan.npy -o out",
    "export iar --prior {prior} --checkpoint missing.pt -o out",
    "export iar --prior missing.npz --checkpoint {ckpt} -o out",
    "export iar --prior {prior} --checkpoint {prior} -o out",
])
def test_usual_mistakes_name_a_next_step(tmp_path, ckpt, prior_file, capsys, monkeypatch,
                                         argv):
    """Each usual mistake is one line, ``dcpe: error: <what>; <next step>``, from the
    message itself (no fallback step added by the command line), and nothing is written."""
    _mistake_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    capsys.readouterr()
    args = argv.format(ckpt=ckpt, prior=prior_file).split()
    assert main([*args, *(["-q"] if args[0] != "export" else [])]) in (1, 2)
    line = one_error_line(capsys.readouterr().err)
    what, _, step = line.removeprefix("dcpe: error: ").partition("; ")
    assert what and step, line
    assert "--help'" not in step and "--debug" not in step, line
    assert _files(tmp_path) == before


@pytest.mark.parametrize("argv, says", [
    ("cluster {prior} -k 3 -o p.npz", "is a dcpe prior (a cluster table), not a codebook"),
    ("export iar --prior {prior} --checkpoint {prior} -o out", "is a dcpe prior"),
    ("remap codes --prior train.pt -o out", "pickled Python objects, which a prior never "
                                            "does: a tokenizer or training checkpoint?"),
    ("remap codes --prior {ckpt} -o out", "no 'token_to_cluster' table"),
    ("cluster wide.npy -k 20 -o p.npz", "the codebook is 8 x 64: if its 64 columns are the "
                                        "tokens, transpose it"),
    ("sweep wide.npy --k 20 -o out", "the codebook is 8 x 64"),
])
def test_files_mistaken_for_others(tmp_path, ckpt, prior_file, capsys, monkeypatch, argv,
                                      says):
    """A prior given where a codebook goes, or a checkpoint where a prior goes, is named
    as what it is (no unpickler's text, no terminal codes); a codebook stored as columns
    is named as possibly transposed."""
    _mistake_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(argv.format(ckpt=ckpt, prior=prior_file).split()) == 1
    line = one_error_line(capsys.readouterr().err)
    assert says in line and "\x1b" not in line and "Weights only" not in line, line


@pytest.mark.parametrize("argv, says", [
    ("sweep --sample -k 256 512 -o sw", "separate the values with commas, as in --k 256,512"),
    ("sweep --sample -k 256,300 512 -o sw", "as in --k 256,300,512"),
    ("sweep -k 256 512 -o sw", "as in --k 256,512"),
    ("cluster --sample -k 256 512 -o p.npz", "'512' is not a codebook file but a second "
                                             "value of -k"),
    ("cluster -k 256 512 -o p.npz", "compare them with 'dcpe sweep --k 256,512'"),
    ("cluster --sample --method kmeans -k 8 --seed -1 -o p.npz", "argument --seed: expected "
                                                                 "an integer from 0"),
    ("cluster --sample --method kmeans -k 8 --seed 18446744073709551616 -o p.npz",
     "argument --seed"),
    ("report --prior {prior} --sample --seed -1 -o rep", "argument --seed"),
    ("sweep --sample --baseline kmeans --seed -1 -o sw", "argument --seed"),
])
def test_usage_mistakes_before_any_work(tmp_path, prior_file, capsys, monkeypatch, argv,
                                        says):
    """Values of k typed with spaces (argparse takes the second for the codebook) and
    seeds out of the baselines' range stop the command line before it reads or runs
    anything: one line, exit code 2, nothing printed or written before it."""
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(argv.format(prior=prior_file).split()) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert says in line and out == "", line
    assert line.count("; ") == 1, line
    assert _files(tmp_path) == before


def test_a_number_that_is_a_file_is_a_codebook(tmp_path, capsys, monkeypatch):
    """A codebook file named like a number is read as one (the k hint is for paths that do
    not exist)."""
    monkeypatch.chdir(tmp_path)
    torch.save(torch.from_numpy(dcpe.datasets.make_sample_codebook(64, 4)), tmp_path / "512")
    assert main(["cluster", "512", "-k", "4", "-o", "p.npz", "-q"]) == 0
    assert (tmp_path / "p.npz").is_file()


def test_interrupt_exit_code(tmp_path, capsys, monkeypatch):
    from dcpe import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "cluster", interrupted)
    assert main(["cluster", "--sample", "-k", "3", "-o", str(tmp_path / "p.npz")]) == 130
    assert capsys.readouterr().err.strip() == "dcpe: interrupted"


# --------------------------------------------------------------------------- output folders


def test_prepare_output_dir_rule(tmp_path):
    from dcpe.cli import _prepare_output_dir

    files = ["a.json", "sub/b.npy"]
    missing = tmp_path / "new" / "deeper"
    assert _prepare_output_dir(missing, what="report folder", files=files) == missing
    assert not missing.exists()  # created when the command writes, not before

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    assert _prepare_output_dir(out, what="report folder", files=files) == out  # empty
    (out / "a.json").write_text("{}")
    (out / "sub" / "b.npy").write_bytes(b"x")
    assert _prepare_output_dir(out, what="report folder", files=files) == out  # earlier run

    (out / "sub" / "other.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"report folder .*out already holds "
                                         r"sub/other.npy, which this command does not write; "
                                         r"choose a new or empty folder"):
        _prepare_output_dir(out, what="report folder", files=files)
    (out / "sub" / "other.npy").unlink()
    (out / "stray").mkdir()
    (out / "stray" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"holds stray, which"):  # not entered
        _prepare_output_dir(out, what="report folder", files=files)
    (out / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"holds notes.txt and 1 more, which"):
        _prepare_output_dir(out, what="report folder", files=files)

    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        _prepare_output_dir(a_file, what="output folder", files=files)

    deep = tmp_path / "deep"  # an earlier run's files two folders down, named either way
    (deep / "x" / "y").mkdir(parents=True)
    (deep / "x" / "y" / "z.npy").write_bytes(b"x")
    (deep / "top.npy").write_bytes(b"x")
    nested = [Path("x") / "y" / "z.npy", "./top.npy"]
    assert _prepare_output_dir(deep, what="output folder", files=nested) == deep
    (deep / "x" / "y" / "w.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds x/y/w.npy, which"):
        _prepare_output_dir(deep, what="output folder", files=nested)

