"""Tests of the IAR export (``dcpe export iar`` and :mod:`dcpe.export`) and of
``dcpe cluster --method``."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line

import dcpe
from dcpe.cli import main
from dcpe.export import export_iar, iar_permutation
from dcpe.io import load_codebook
from dcpe.prior import CodebookPrior, codebook_sha256

N = 192


# The checkpoints here store LlamaGen's args (codebook_l2_norm=True), and some tests read
# their raw rows on purpose: that warning is tested in test_checkpoints.py.
pytestmark = pytest.mark.filterwarnings("ignore:.*codebook_l2_norm=True:UserWarning")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _one_error_line(err: str) -> str:
    return one_error_line(err, ignore=("usage:", " ", "dcpe: codebook:"))


def _state_dict(w: torch.Tensor, seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict([
        ("encoder.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g)),
        ("quantize.embedding.weight", w),
        ("quant_conv.bias", torch.randn(8, generator=g)),
        ("decoder.conv_out.weight", torch.randn(3, 4, 3, 3, generator=g)),
    ])
    sd._metadata = OrderedDict([("", {"version": 1}), ("quantize", {"version": 1})])
    return sd


def _llamagen_checkpoint(path: Path, ema: bool = True) -> dict:
    """A checkpoint as LlamaGen's vq_train.py writes it (model, ema, optimizer, args)."""
    w = torch.from_numpy(dcpe.datasets.sample_codebook()[:N] * 3.0)
    ckpt = {
        "model": _state_dict(w.clone(), 0),
        "optimizer": {"state": {0: {"step": torch.tensor(10.0),
                                    "exp_avg": torch.randn(N, 8)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]},
        "discriminator": OrderedDict([("conv.weight", torch.randn(2, 3))]),
        "steps": 1000,
        "args": argparse.Namespace(vq_model="VQ-16", codebook_size=N, codebook_embed_dim=8,
                                   codebook_l2_norm=True, results_dir="results"),
    }
    if ema:
        ckpt["ema"] = _state_dict(w.clone() + 0.01, 1)
    torch.save(ckpt, path)
    return ckpt


def _assert_same(a, b, where="") -> None:
    """Deep equality of checkpoint contents (tensors bit for bit)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    path = tmp_path / "vq_ds16_c2i.pt"
    _llamagen_checkpoint(path)
    return path


@pytest.fixture()
def prior_file(tmp_path, ckpt) -> Path:
    out = tmp_path / "prior.npz"
    assert main(["cluster", str(ckpt), "--normalize", "-k", "24", "-o", str(out)]) == 0
    return out


def _check_export(out: Path, ckpt: Path, prior: CodebookPrior, permuted: tuple[str, ...]):
    original = torch.load(ckpt, weights_only=False)
    mapping = torch.load(out / "mapping.pt", weights_only=True)
    assert mapping.dtype == torch.int64 and mapping.shape == (N,)
    assert torch.equal(torch.sort(mapping).values, torch.arange(N))
    reordered = torch.load(out / f"{ckpt.stem}-reordered{ckpt.suffix}", weights_only=False)
    for wrapper in ("model", "ema"):
        if wrapper not in original:
            continue
        old = original[wrapper]["quantize.embedding.weight"]
        new = reordered[wrapper]["quantize.embedding.weight"]
        if wrapper in permuted:
            assert torch.equal(new[mapping], old)  # reordered[mapping[i]] == original[i]
            reordered[wrapper]["quantize.embedding.weight"] = old  # for the comparison
        else:
            assert torch.equal(new, old)
    _assert_same(original, reordered)  # everything else untouched, Namespace included
    assert isinstance(reordered["args"], argparse.Namespace)
    info = json.loads((out / "clusters.json").read_text())
    sizes = prior.cluster_sizes.numpy()
    assert info["k"] == prior.num_clusters and info["num_tokens"] == N
    assert info["sizes"] == sizes.tolist()
    assert info["offsets"] == prior.offsets.tolist()
    assert info["method"] == prior.method
    assert info["codebook_sha256"] == prior.codebook_sha256
    labels = prior.token_to_cluster.numpy()
    offsets = np.array(info["offsets"])
    m = mapping.numpy()
    assert np.all(offsets[labels] <= m) and np.all(m < offsets[labels + 1])  # contiguous
    return info, m


def test_export_iar_cli(tmp_path, ckpt, prior_file, capsys):
    out = tmp_path / "iar"
    capsys.readouterr()
    assert main(["export", "iar", "--prior", str(prior_file), "--checkpoint", str(ckpt),
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "model.quantize.embedding.weight" in captured.out
    assert "ema.quantize.embedding.weight" in captured.out  # says both were permuted
    assert "model and ema" in captured.out
    assert _files(out) == ["clusters.json", "mapping.pt", "vq_ds16_c2i-reordered.pt"]
    prior = CodebookPrior.load(prior_file)
    info, mapping = _check_export(out, ckpt, prior, ("model", "ema"))
    assert info["normalize"] is True and info["equal_sizes"] is False
    assert info["permuted"] == ["model.quantize.embedding.weight",
                                "ema.quantize.embedding.weight"]
    # the reordered codebook's fingerprint, and a prior over the new ids that matches it
    x = load_codebook(out / "vq_ds16_c2i-reordered.pt", normalize=True)
    assert info["reordered_codebook_sha256"] == codebook_sha256(x)
    q = prior.permuted(codebook=x)
    tokens = torch.arange(N)
    assert torch.equal(q.to_clusters(torch.from_numpy(mapping)[tokens]),
                       prior.to_clusters(tokens))
    # unequal clusters: IAR's train_c2i.py would read them as blocks of --cluster-size ids
    warning = [ln for ln in captured.err.splitlines() if ln.startswith("dcpe: warning:")]
    sizes = prior.cluster_sizes
    assert len(warning) == 1, captured.err
    assert f"have {int(sizes.min())} to {int(sizes.max())} tokens" in warning[0]
    assert "--method balanced" in warning[0] and str(out / "clusters.json") in warning[0]
    assert "--cluster-size" not in captured.out


def test_nearest_neighbour_walk_rule():
    # one cluster on a line: 0 -> 1 (token 2) -> 3 (token 3) -> 10 (token 1) -> 11 (token 4)
    x = np.array([[0.0], [10.0], [1.0], [3.0], [11.0]])
    prior = CodebookPrior.from_labels(np.zeros(5, dtype=np.int64))
    np.testing.assert_array_equal(iar_permutation(prior, x), [0, 3, 1, 2, 4])
    # ties go to the smaller token id: tokens 1 and 2 are both 1 away from token 0
    x = np.array([[0.0], [1.0], [-1.0], [5.0]])
    np.testing.assert_array_equal(iar_permutation(prior.from_labels(np.zeros(4, np.int64)),
                                                  x), [0, 1, 2, 3])
    # two clusters: cluster 0 = {1, 3}, cluster 1 = {0, 2, 4}; walk in each from its first
    x = np.array([[0.0], [5.0], [9.0], [6.0], [1.0]])
    prior = CodebookPrior.from_labels(np.array([1, 0, 1, 0, 1]))
    np.testing.assert_array_equal(iar_permutation(prior, x), [2, 0, 4, 1, 3])


def test_walk_is_deterministic_on_the_sample(ckpt):
    x = load_codebook(ckpt, normalize=True)
    prior = CodebookPrior.from_codebook(x, 10)
    m = iar_permutation(prior, x)
    assert np.array_equal(m, iar_permutation(prior, x))
    order = np.empty(N, dtype=np.int64)
    order[m] = np.arange(N)
    offsets = prior.offsets.numpy()
    for c in range(prior.num_clusters):  # each walk starts at the cluster's first token
        members = prior.members(c).numpy()
        assert order[offsets[c]] == members[0]
        walk = order[offsets[c]:offsets[c + 1]]
        for j in range(1, walk.size):  # each step goes to the nearest unvisited member
            rest = walk[j:]
            d = np.square(x[rest] - x[walk[j - 1]]).sum(axis=1)
            assert walk[j] == rest[np.argmin(d)] or np.isclose(d.min(), d[0])


def test_balanced_export_is_iar_drop_in(tmp_path, ckpt, capsys):
    p = tmp_path / "prior_iar.npz"
    assert main(["cluster", str(ckpt), "--normalize", "--method", "balanced", "-k",
                 str(N // 16), "-o", str(p)]) == 0
    prior = CodebookPrior.load(p)
    assert prior.method == "balanced_kmeans"
    assert torch.all(prior.cluster_sizes == 16)
    out = tmp_path / "iar"
    assert main(["export", "iar", "--prior", str(p), "--checkpoint", str(ckpt),
                 "-o", str(out)]) == 0
    info, mapping = _check_export(out, ckpt, prior, ("model", "ema"))
    assert info["equal_sizes"] is True and info["cluster_size"] == 16
    assert info["method"] == "balanced_kmeans" and info["k"] == N // 16
    # IAR's rule: the cluster of new token id t is t // cluster_size
    labels = prior.token_to_cluster.numpy()
    np.testing.assert_array_equal(mapping // 16, labels)
    # the command gives the arguments of IAR's training that match the files
    captured = capsys.readouterr()
    assert (f"--vocab-size {N} --cluster-size 16 --mapping-path {out / 'mapping.pt'}"
            in captured.out)
    assert "warning" not in captured.err


@pytest.mark.parametrize("method, stored", [("dcpe", "dcpe"), ("kmeans", "kmeans"),
                                            ("balanced", "balanced_kmeans"),
                                            ("centroid-free", "centroid_free_kmeans")])
def test_cluster_method(tmp_path, ckpt, method, stored, capsys):
    out = tmp_path / "p.npz"
    assert main(["cluster", str(ckpt), "--normalize", "--method", method, "-k", "12",
                 "--seed", "3", "-o", str(out)]) == 0
    prior = CodebookPrior.load(out)
    assert prior.method == stored and prior.num_clusters == 12
    x = load_codebook(ckpt, normalize=True)
    if method == "dcpe":
        np.testing.assert_array_equal(prior.token_to_cluster.numpy(), dcpe.cluster(x, 12))
    else:
        from dcpe import baselines

        res = getattr(baselines, stored)(x, 12, seed=3)
        np.testing.assert_array_equal(prior.token_to_cluster.numpy(), res.labels)
        assert prior.meta["seed"] == 3 and prior.linkage is None


@pytest.mark.parametrize("flags", [["--max-cluster-size", "4"], ["--linkage", "single"],
                                   ["--metric", "cosine"], ["--backend", "cpu"]])
def test_cluster_method_rejects_dcpe_only_options(tmp_path, ckpt, flags, capsys):
    out = tmp_path / "p.npz"
    rc = main(["cluster", str(ckpt), "--method", "kmeans", "-k", "12", *flags,
               "-o", str(out)])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert flags[0] in line and "--method dcpe" in line
    assert not out.exists()


def test_cluster_method_unknown(tmp_path, capsys):
    rc = main(["cluster", "--sample", "--method", "spectral", "-k", "4",
               "-o", str(tmp_path / "p.npz")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "balanced" in err


def test_export_model_only(tmp_path):
    ckpt = tmp_path / "vq.pt"
    _llamagen_checkpoint(ckpt, ema=False)
    x = load_codebook(ckpt)
    prior = CodebookPrior.from_codebook(x, 20)  # Python API, raw codebook
    result = export_iar(prior, ckpt, tmp_path / "out")
    assert result["permuted"] == ["model.quantize.embedding.weight"]
    assert result["normalize"] is False
    _check_export(tmp_path / "out", ckpt, prior, ("model",))


def test_export_key_and_fingerprint_decide(tmp_path, ckpt):
    # a prior of the EMA codebook: the key chooses it; both tables are still permuted
    x = load_codebook(ckpt, key="ema.quantize.embedding.weight")
    prior = CodebookPrior.from_codebook(x, 20)
    with pytest.raises(ValueError, match="another codebook.*key="):
        export_iar(prior, ckpt, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    result = export_iar(prior, ckpt, tmp_path / "b", key="ema.quantize.embedding.weight")
    assert result["permuted"] == ["ema.quantize.embedding.weight",
                                  "model.quantize.embedding.weight"]


def test_export_other_formats(tmp_path):
    x = dcpe.datasets.sample_codebook()[:64]
    prior = CodebookPrior.from_codebook(x, 8)
    npz = tmp_path / "tok.npz"
    np.savez(npz, codebook=x, other=np.arange(5))
    export_iar(prior, npz, tmp_path / "o1")
    m = torch.load(tmp_path / "o1" / "mapping.pt").numpy()
    with np.load(tmp_path / "o1" / "tok-reordered.npz") as data:
        np.testing.assert_array_equal(data["codebook"][m], x)
        np.testing.assert_array_equal(data["other"], np.arange(5))
    npy = tmp_path / "cb.npy"
    np.save(npy, x)
    export_iar(prior, npy, tmp_path / "o2")
    np.testing.assert_array_equal(np.load(tmp_path / "o2" / "cb-reordered.npy")[m], x)
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    st = tmp_path / "tok.safetensors"
    save_file({"quantize.embedding.weight": torch.from_numpy(x), "b": torch.ones(2)}, str(st),
              metadata={"format": "pt"})
    export_iar(prior, st, tmp_path / "o3")
    back = load_file(str(tmp_path / "o3" / "tok-reordered.safetensors"))
    assert torch.equal(back["quantize.embedding.weight"][torch.from_numpy(m)],
                       torch.from_numpy(x))


# --------------------------------------------------------------------------- refusals


def _export(tmp_path, prior, ckpt, out=None, *extra):
    out = out or tmp_path / "out"
    return main(["export", "iar", "--prior", str(prior), "--checkpoint", str(ckpt),
                 "-o", str(out), *extra]), out


def test_export_refuses_another_codebook(tmp_path, ckpt, capsys):
    other = tmp_path / "other.npz"
    x = dcpe.datasets.sample_codebook()[:100]
    CodebookPrior.from_codebook(x, 10).save(other)
    rc, out = _export(tmp_path, other, ckpt)
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{N} rows" in line and "100 tokens" in line and "--key" in line
    assert not out.exists()


def test_export_refuses_a_prior_of_other_values(tmp_path, ckpt, capsys):
    x = load_codebook(ckpt) + 1.0  # same shape, other values
    p = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x, 10).save(p)
    rc, out = _export(tmp_path, p, ckpt)
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "another codebook" in line and "--key" in line
    assert not out.exists()


def test_export_missing_files_and_bad_output(tmp_path, ckpt, prior_file, capsys):
    rc, _ = _export(tmp_path, tmp_path / "none.npz", ckpt)
    assert rc == 1 and "not found" in _one_error_line(capsys.readouterr().err)
    rc, _ = _export(tmp_path, prior_file, tmp_path / "none.pt")
    assert rc == 1 and "not found" in _one_error_line(capsys.readouterr().err)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _ = _export(tmp_path, prior_file, ckpt, blocker)
    assert rc == 1 and "not a folder" in _one_error_line(capsys.readouterr().err)
    assert blocker.read_text() == "x"


def test_export_never_overwrites_an_input(tmp_path, ckpt, capsys):
    out = tmp_path / "iar"
    out.mkdir()
    prior = out / "mapping.pt"  # a prior file whose name is an output's
    x = load_codebook(ckpt, normalize=True)
    CodebookPrior.from_codebook(x, 10).save(prior)
    before = prior.read_bytes()
    rc, _ = _export(tmp_path, prior, ckpt, out)
    assert rc == 1
    assert "overwrite" in _one_error_line(capsys.readouterr().err)
    assert prior.read_bytes() == before and _files(out) == ["mapping.pt"]


def test_export_usage_errors(tmp_path, prior_file, ckpt, capsys):
    assert main(["export"]) == 2
    assert "FORMAT" in capsys.readouterr().err
    assert main(["export", "llamagen", "--prior", str(prior_file)]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["export", "iar", "--checkpoint", str(ckpt), "-o", str(tmp_path)]) == 2
    assert "--prior" in capsys.readouterr().err


def test_export_several_codebooks_needs_key(tmp_path, capsys):
    x = dcpe.datasets.sample_codebook()[:64]
    ckpt = tmp_path / "tokenflow.pt"
    torch.save({"model": {"quantize.embedding_vqkd.weight": torch.from_numpy(x),
                          "quantize.embedding_vqgan.weight": torch.from_numpy(x[::-1].copy())}},
               ckpt)
    p = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x, 8).save(p)
    rc, out = _export(tmp_path, p, ckpt)
    assert rc == 1
    assert "--key" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    rc, out = _export(tmp_path, p, ckpt, None, "--key", "quantize.embedding_vqkd.weight")
    assert rc == 0
    back = torch.load(out / "tokenflow-reordered.pt")["model"]
    assert torch.equal(back["quantize.embedding_vqgan.weight"], torch.from_numpy(x[::-1].copy()))


class _Callback:  # pickled by reference to a module that the loader will not find
    def __init__(self) -> None:
        self.best = torch.tensor(0.5)


def test_export_refuses_objects_it_cannot_write_back(tmp_path, capsys, monkeypatch):
    """A Lightning checkpoint holding an object of a class whose module is not installed:
    the codebook loads, but a reordered copy could not write the object back."""
    x = dcpe.datasets.sample_codebook()[:64]
    fake = type(sys)("lightning_extra_callbacks")
    fake._Callback = _Callback
    _Callback.__module__ = "lightning_extra_callbacks"
    _Callback.__qualname__ = "_Callback"
    monkeypatch.setitem(sys.modules, "lightning_extra_callbacks", fake)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"quantize.embedding.weight": torch.from_numpy(x)},
                "callbacks": {"ModelCheckpoint": _Callback()}, "epoch": 3}, ckpt)
    monkeypatch.delitem(sys.modules, "lightning_extra_callbacks")
    p = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x, 8).save(p)
    rc, out = _export(tmp_path, p, ckpt)
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "lightning_extra_callbacks" in line and "--trust-checkpoint" in line
    assert not out.exists()


def test_export_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    x = dcpe.datasets.sample_codebook()[:64]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    ckpt = tmp_path / "evil.pt"
    torch.save({"model": {"quantize.embedding.weight": torch.from_numpy(x)}, "x": Evil()},
               ckpt, pickle_module=pickle)
    p = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x, 8).save(p)
    rc, out = _export(tmp_path, p, ckpt)
    assert rc == 1
    _one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not out.exists()


def test_export_refuses_tied_codebook(tmp_path, capsys):
    x = torch.from_numpy(dcpe.datasets.sample_codebook()[:64])
    ckpt = tmp_path / "tied.pt"
    torch.save({"model": {"quantize.embedding.weight": x, "decoder.lookup": x}}, ckpt)
    p = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x.numpy(), 8).save(p)
    rc, out = _export(tmp_path, p, ckpt)
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "shares its storage" in line and "decoder.lookup" in line
    assert not out.exists()


def test_export_failure_while_writing_leaves_nothing(tmp_path, ckpt, prior_file, monkeypatch):
    import dcpe.export as ex

    def broken(obj, suffix, meta):
        def write(fh):
            fh.write(b"partial")
            raise OSError("disk full")
        return write

    monkeypatch.setattr(ex, "_writer", broken)
    out = tmp_path / "iar"
    with pytest.raises(OSError, match="disk full"):
        export_iar(prior_file, ckpt, out)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OSError, match="disk full"):
        export_iar(prior_file, ckpt, out)
    assert _files(out) == []


def test_export_python_errors(tmp_path, ckpt):
    with pytest.raises(TypeError, match="prior"):
        export_iar(np.zeros(3), ckpt, tmp_path / "o")
    prior = CodebookPrior.from_labels(np.arange(N) % 7)
    with pytest.raises(TypeError, match="checkpoint"):
        export_iar(prior, 3, tmp_path / "o")
    with pytest.raises(TypeError, match="trust"):
        export_iar(prior, ckpt, tmp_path / "o", trust="yes")
    small = CodebookPrior.from_labels(np.arange(10) % 3)
    with pytest.raises(ValueError, match="10 tokens"):
        export_iar(small, ckpt, tmp_path / "o")
    with pytest.raises(ValueError, match="rows"):
        iar_permutation(small, np.zeros((11, 2)))
    with pytest.raises(TypeError, match="CodebookPrior"):
        iar_permutation("prior.npz", np.zeros((11, 2)))
    assert not (tmp_path / "o").exists()


def test_export_without_fingerprint_checks_size(tmp_path, ckpt):
    prior = CodebookPrior.from_labels(np.arange(N) % 7)  # no codebook given
    result = export_iar(prior, ckpt, tmp_path / "o")
    assert result["normalize"] is False
    _check_export_no_sha = json.loads((tmp_path / "o" / "clusters.json").read_text())
    assert _check_export_no_sha["k"] == 7


def test_export_trusted_read_round_trips(tmp_path, ckpt):
    prior = CodebookPrior.from_codebook(load_codebook(ckpt, normalize=True), 12)
    result = export_iar(prior, ckpt, tmp_path / "o", trust=True)
    assert result["normalize"] is True
    _check_export(tmp_path / "o", ckpt, prior, ("model", "ema"))


def test_modules_reachable_from_the_package():
    assert dcpe.export.export_iar is export_iar
    assert callable(dcpe.sweep.sweep)
