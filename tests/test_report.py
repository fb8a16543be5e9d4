"""Tests of dcpe.report: coherence statistics and the written report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

import dcpe
from dcpe import report
from dcpe.prior import CodebookPrior


def _brute(x: np.ndarray, labels: np.ndarray) -> dict:
    x = x.astype(np.float64)
    pair_total, n_pairs, expected = 0.0, 0, 0.0
    for c in np.unique(labels):
        m = x[labels == c]
        if len(m) > 1:
            pair_total += pdist(m).sum()
            n_pairs += len(m) * (len(m) - 1) // 2
        expected += cdist(m, m).mean(axis=1).sum()
    sizes = np.bincount(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(sizes.size)])
    return {
        "mean_intra_pairwise_distance": pair_total / n_pairs if n_pairs else None,
        "expected_distance_to_random_member": expected / len(x),
        "inertia": float(((x - means[labels]) ** 2).sum()),
        "largest_cluster": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "num_clusters": int(sizes.size),
    }


@pytest.mark.parametrize("k", [1, 7, 60, 300])
def test_coherence_matches_brute_force(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    labels = np.sort(rng.integers(0, k, 300)) if k > 1 else np.zeros(300, dtype=np.int64)
    labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    got = report.coherence(x, labels)
    want = _brute(x, labels)
    for key, value in want.items():
        if value is None or isinstance(value, int):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["num_tokens"] == 300


def test_coherence_of_a_large_cluster():
    # a cluster past the kernel's chunks and row tasks, and small ones beside it
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2200, 3))
    labels = np.concatenate([np.zeros(2100, dtype=np.int64), np.arange(1, 101) // 5 + 1])
    got = report.coherence(x, labels)
    want = _brute(x, labels)
    assert got["mean_intra_pairwise_distance"] == pytest.approx(
        want["mean_intra_pairwise_distance"], rel=1e-9)
    assert got["expected_distance_to_random_member"] == pytest.approx(
        want["expected_distance_to_random_member"], rel=1e-9)


def test_coherence_checks():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        report.coherence(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        report.coherence(x, np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        report.coherence(np.zeros(4), np.zeros(4, dtype=np.int64))


@pytest.fixture(scope="module")
def small():
    x = dcpe.datasets.sample_codebook()[:300]
    return x, CodebookPrior.from_codebook(x, 30)


def test_compare_and_write_report(tmp_path, small):
    x, prior = small
    result = report.compare(x, prior, n_iter=10)
    assert list(result["methods"]) == ["dcpe", "kmeans", "balanced_kmeans"]
    assert result["methods"]["balanced_kmeans"]["largest_cluster"] == 10
    assert result["methods"]["dcpe"] == report.coherence(x, prior.token_to_cluster)
    paths = report.write_report(tmp_path / "rep", x, prior, result=result)
    assert sorted(os.listdir(tmp_path / "rep")) == ["cluster_sizes.png", "coherence.json",
                                                    "coherence.md"]
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["methods"] == json.loads(json.dumps(result["methods"]))
    assert data["prior"]["codebook_sha256"] == prior.codebook_sha256
    md = paths["markdown"].read_text()
    for name in ("dcpe", "kmeans", "balanced_kmeans"):
        assert f"| {name} |" in md


@pytest.mark.parametrize("method", ["kmeans", "balanced_kmeans"])
def test_a_kmeans_prior_keeps_its_row_beside_the_baseline_of_its_method(tmp_path, small,
                                                                         method):
    """A prior made by a baseline's method is compared with that baseline under its own
    name; its statistics are its own, not the baseline's (which ran with other
    iterations), and the figure shows it whichever baselines run."""
    from dcpe import baselines

    x, _ = small
    made = getattr(baselines, method)(x.astype(np.float32), 30, seed=3, n_iter=40)
    prior = CodebookPrior.from_labels(made.labels, method=method, codebook=x)
    result = report.compare(x, prior, n_iter=2)
    own = f"{method} (prior)"
    assert list(result["methods"]) == [own, "kmeans", "balanced_kmeans"]
    np.testing.assert_array_equal(result["labels"][own], made.labels)
    assert result["methods"][own] == report.coherence(x, made.labels)
    for methods in ((), ("kmeans",), ("balanced_kmeans",)):
        out = tmp_path / f"rep{len(methods)}{methods[:1]}"
        paths = report.write_report(out, x, prior, methods=methods, n_iter=2)
        names = list(json.loads(paths["json"].read_text())["methods"])
        assert names == ([own] if method in methods else [method]) + list(methods)
        assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_seeds_both_baselines_once(small, monkeypatch):
    """One k-means++ seeding starts both baselines, and each result is the one its
    function gives on its own with the same seed."""
    from dcpe import baselines

    x, prior = small
    calls = []
    seeding = baselines.kmeans_plusplus

    def counted(*args, **kw):
        calls.append(kw.get("seed"))
        return seeding(*args, **kw)

    monkeypatch.setattr(baselines, "kmeans_plusplus", counted)
    result = report.compare(x, prior, n_iter=10, seed=5)
    assert calls == [5]
    x32 = x.astype(np.float32)
    for name in ("kmeans", "balanced_kmeans"):
        alone = getattr(baselines, name)(x32, prior.num_clusters, seed=5, n_iter=10)
        np.testing.assert_array_equal(result["labels"][name], alone.labels)
    report.compare(x, prior, methods=(), n_iter=10)
    assert calls == [5]  # no baseline, no seeding


def test_compare_refuses_other_codebook(small):
    x, prior = small
    with pytest.raises(ValueError, match="another codebook"):
        report.compare(x[::-1].copy(), prior)
    with pytest.raises(ValueError, match="methods"):
        report.compare(x, prior, methods=("spectral",))
    with pytest.raises(TypeError, match="CodebookPrior"):
        report.compare(x, "prior.npz")


@pytest.mark.parametrize("kwargs, error", [({"seed": -1}, ValueError),
                                            ({"seed": 2**64}, ValueError),
                                            ({"n_iter": 0}, ValueError),
                                            ({"seed": "0"}, TypeError)])
def test_compare_checks_the_baselines_arguments_first(small, monkeypatch, kwargs, error):
    """The baselines' seed and iterations are checked before the prior's statistics."""
    x, prior = small

    def no_work(*args, **kw):
        raise AssertionError("statistics computed")

    monkeypatch.setattr(report, "coherence", no_work)
    with pytest.raises(error, match=next(iter(kwargs))):
        report.compare(x, prior, **kwargs)


def test_report_says_what_the_statistics_measure(tmp_path, small):
    x, prior = small
    paths = report.write_report(tmp_path / "rep", x, prior, n_iter=5)
    md = paths["markdown"].read_text()
    assert report.PROXY_NOTE in md
    for phrase in ("geometry", "not generation quality", "k-means", "FID, IS"):
        assert phrase in report.PROXY_NOTE
    assert json.loads(paths["json"].read_text())["note"] == report.PROXY_NOTE


def test_missing_matplotlib_is_reported_before_any_work(tmp_path, small, monkeypatch):
    x, prior = small
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails

    def no_work(*args, **kwargs):
        raise AssertionError("computed before checking matplotlib")

    monkeypatch.setattr(report, "compare", no_work)
    with pytest.raises(ImportError, match=r"pip install matplotlib.*dcpe\[report\]"):
        report.write_report(tmp_path / "rep", x, prior)
    assert not (tmp_path / "rep").exists()


def test_cli_missing_matplotlib_one_line(tmp_path, monkeypatch, capsys):
    from dcpe.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # the prior does not even exist: matplotlib is checked first
    rc = main(["report", "--prior", str(tmp_path / "p.npz"), "--sample",
               "-o", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("dcpe: error: ") and "pip install matplotlib" in err
    assert not (tmp_path / "rep").exists()


def test_progress_names_each_baseline(small, capsys):
    x, prior = small
    report.compare(x, prior, n_iter=3, show_progress=True)
    err = capsys.readouterr().err
    assert "report: kmeans (k=30" in err and "report: balanced_kmeans (k=30" in err
    report.compare(x, prior, n_iter=3, show_progress=False)
    assert capsys.readouterr().err == ""


def test_progress_bar_keeps_ticking_during_a_step():
    refreshed = threading.Event()

    class Bar:
        disable = False

        def refresh(self):
            refreshed.set()

    with report._ticking(Bar(), interval=0.01):
        assert refreshed.wait(timeout=30)  # redrawn while the step is still running


# --------------------------------------------------------------------------- chained commands


def _checkpoint(tmp_path, model, ema=None):
    path = tmp_path / "vq.pt"
    ckpt = {"model": {"quantize.embedding.weight": torch.from_numpy(model),
                      "decoder.conv.weight": torch.zeros(3, 3, 3, 3)},
            "args": argparse.Namespace(vq_model="VQ-16", codebook_size=len(model))}
    if ema is not None:
        ckpt["ema"] = {"quantize.embedding.weight": torch.from_numpy(ema)}
    torch.save(ckpt, path)
    return path


def test_report_applies_the_priors_preprocessing(tmp_path, capsys):
    from dcpe.cli import main

    model = dcpe.datasets.sample_codebook()[:200] * 3.0
    ckpt = _checkpoint(tmp_path, model, ema=model[::-1].copy())
    prior = tmp_path / "p.npz"
    assert main(["cluster", str(ckpt), "-k", "20", "--normalize",
                 "--key", "ema.quantize.embedding.weight", "-o", str(prior)]) == 0
    meta = CodebookPrior.load(prior).meta
    assert meta["normalize"] is True and meta["codebook_key"] == "ema.quantize.embedding.weight"
    assert meta["codebook_file"] == "vq.pt" and meta["codebook_sample"] is False
    capsys.readouterr()
    # neither --normalize nor --key: report reads the codebook as the prior records
    out = tmp_path / "rep"
    assert main(["report", "--prior", str(prior), "--codebook", str(ckpt), "-o", str(out),
                 "--kmeans-iter", "3", "-q"]) == 0
    text = capsys.readouterr().out
    assert "ema.quantize.embedding.weight [200, 8]" in text and "as the prior records" in text
    assert sorted(os.listdir(out)) == ["cluster_sizes.png", "coherence.json", "coherence.md"]


def test_report_names_the_missing_flag(tmp_path, capsys):
    from dcpe.cli import main

    model = dcpe.datasets.sample_codebook()[:200] * 3.0
    ckpt = _checkpoint(tmp_path, model, ema=model[::-1].copy())
    # a prior made in Python records no preprocessing, only the codebook's fingerprint
    x = dcpe.io.load_codebook(ckpt, key="ema.quantize.embedding.weight", normalize=True)
    prior = tmp_path / "p.npz"
    CodebookPrior.from_codebook(x, 20).save(prior)
    out = tmp_path / "rep"
    rc = main(["report", "--prior", str(prior), "--codebook", str(ckpt), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "another codebook" in err
    assert err.endswith("run the command again with --key ema.quantize.embedding.weight "
                        "--normalize")
    assert not out.exists()
