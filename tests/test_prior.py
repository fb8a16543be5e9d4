"""Tests of dcpe.CodebookPrior."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

import dcpe
from dcpe.prior import CodebookPrior, codebook_sha256


@pytest.fixture(scope="module")
def codebook() -> np.ndarray:
    return dcpe.datasets.sample_codebook()[:400]


@pytest.fixture(scope="module")
def prior(codebook) -> CodebookPrior:
    return CodebookPrior.from_codebook(codebook, 40)


def _labels() -> np.ndarray:
    return np.array([2, 0, 0, 1, 2, 2, 3, 1, 0, 2], dtype=np.int64)


def test_from_labels_tables():
    p = CodebookPrior.from_labels(_labels(), method="custom", linkage=None, note="x")
    assert p.num_tokens == 10 and p.num_clusters == 4
    assert p.token_to_cluster.dtype == torch.int64
    assert p.cluster_sizes.tolist() == [3, 2, 4, 1]
    assert p.indptr.tolist() == [0, 3, 5, 9, 10]
    assert p.indices.tolist() == [1, 2, 8, 3, 7, 0, 4, 5, 9, 6]
    for c in range(4):
        assert p.members(c).tolist() == np.flatnonzero(_labels() == c).tolist()
    assert p.meta == {"note": "x"} and p.method == "custom"
    with pytest.raises(ValueError, match="c=.* is out of range"):
        p.members(4)


def test_from_labels_rejects_bad_labels():
    with pytest.raises(ValueError, match="1-D"):
        CodebookPrior.from_labels(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="every cluster id"):
        CodebookPrior.from_labels(np.array([0, 2, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        CodebookPrior.from_labels(np.array([0, -1]))
    with pytest.raises(TypeError, match="integers"):
        CodebookPrior.from_labels(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="rows"):
        CodebookPrior.from_labels(np.array([0, 1]), codebook=np.zeros((3, 2)))
    with pytest.raises(TypeError, match="JSON"):
        CodebookPrior.from_labels(np.array([0, 1]), thing=object())


def test_from_codebook_matches_cluster(codebook, prior):
    labels = dcpe.cluster(codebook, 40)
    np.testing.assert_array_equal(prior.token_to_cluster.numpy(), labels)
    assert prior.codebook_sha256 == codebook_sha256(codebook)
    assert prior.codebook_shape == (400, 8)
    assert prior.method == "dcpe" and prior.linkage == "average"


@pytest.mark.parametrize("method", ["kmeans", "balanced_kmeans"])
def test_from_codebook_baselines(codebook, method):
    p = CodebookPrior.from_codebook(codebook, 20, method=method)
    assert p.num_clusters == 20 and p.method == method and p.linkage is None
    if method == "balanced_kmeans":
        assert torch.all(p.cluster_sizes == 20)
    with pytest.raises(ValueError, match="method"):
        CodebookPrior.from_codebook(codebook, 20, method="spectral")


def test_sha256_definition(codebook):
    arr = np.ascontiguousarray(codebook, dtype="<f4")
    want = hashlib.sha256(b"float32:400x8;" + arr.tobytes()).hexdigest()
    assert codebook_sha256(codebook) == want
    assert codebook_sha256(torch.from_numpy(codebook)) == want
    assert codebook_sha256(codebook.astype(np.float64)) == want
    assert codebook_sha256(codebook.reshape(800, 4)) != want


def test_to_clusters_shapes_and_containers(prior):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, size=(3, 4, 5))
    table = prior.token_to_cluster.numpy()
    out = prior.to_clusters(tokens)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, table[tokens])
    t = torch.from_numpy(tokens.astype(np.int32))
    out_t = prior.to_clusters(t)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.int64
    np.testing.assert_array_equal(out_t.numpy(), table[tokens])
    assert prior.to_clusters(7) == table[7]
    assert prior.to_clusters(np.zeros(0, dtype=np.int64)).shape == (0,)


def test_to_clusters_rejects_out_of_range(prior):
    with pytest.raises(ValueError, match="400"):
        prior.to_clusters(np.array([0, 400]))
    with pytest.raises(ValueError, match="-1"):
        prior.to_clusters(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integers"):
        prior.to_clusters(np.array([1.0]))


def test_sample_tokens_in_cluster_and_uniform(prior):
    c = torch.arange(prior.num_clusters).repeat(50).reshape(50, -1)
    g = torch.Generator().manual_seed(0)
    tok = prior.sample_tokens(c, generator=g)
    assert tok.shape == c.shape and tok.dtype == torch.int64
    assert torch.equal(prior.to_clusters(tok), c)
    # Uniform within the largest cluster: every member appears, counts are balanced.
    big = int(prior.cluster_sizes.argmax())
    size = int(prior.cluster_sizes[big])
    draws = prior.sample_tokens(torch.full((size * 400,), big),
                                generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=prior.num_tokens)[prior.members(big)]
    assert int(counts.min()) > 0
    from scipy.stats import chisquare

    assert chisquare(counts.numpy()).pvalue > 1e-4


def test_sample_tokens_seeded_and_numpy(prior):
    c = np.arange(prior.num_clusters)
    a = prior.sample_tokens(c, generator=np.random.default_rng(5))
    b = prior.sample_tokens(c, generator=np.random.default_rng(5))
    assert isinstance(a, np.ndarray) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(prior.to_clusters(a), c)
    np.testing.assert_array_equal(prior.sample_tokens(c, generator=5), a)
    t1 = prior.sample_tokens(c, generator=torch.Generator().manual_seed(3))
    t2 = prior.sample_tokens(torch.from_numpy(c), generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(t1, t2.numpy())
    with pytest.raises(ValueError, match="cluster id"):
        prior.sample_tokens(np.array([prior.num_clusters]))
    with pytest.raises(TypeError, match="generator"):
        prior.sample_tokens(torch.tensor([0]), generator=np.random.default_rng(0))


def _reference_cluster_logits(p: CodebookPrior, logits: torch.Tensor, reduce: str):
    outs = []
    for c in range(p.num_clusters):
        sub = logits[..., p.members(c)]
        if reduce == "mean":
            outs.append(sub.mean(-1))
        elif reduce == "sum":
            outs.append(sub.sum(-1))
        else:
            outs.append(torch.logsumexp(sub, -1))
    return torch.stack(outs, dim=-1)


@pytest.mark.parametrize("reduce", ["mean", "sum", "logsumexp"])
def test_cluster_logits_match_reference_and_grad(prior, reduce):
    logits = torch.randn(2, 3, prior.num_tokens, dtype=torch.float64, requires_grad=True)
    out = prior.cluster_logits(logits, reduce=reduce)
    ref = _reference_cluster_logits(prior, logits, reduce)
    assert out.shape == (2, 3, prior.num_clusters)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.square().sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), logits)
    torch.testing.assert_close(g, g_ref)


def test_cluster_logits_logsumexp_is_cluster_mass(prior):
    logits = torch.randn(4, prior.num_tokens, dtype=torch.float64) * 20
    probs = torch.softmax(logits, -1)
    mass = torch.zeros(4, prior.num_clusters, dtype=torch.float64).index_add_(
        1, prior.token_to_cluster, probs)
    out = torch.softmax(prior.cluster_logits(logits, reduce="logsumexp"), -1)
    torch.testing.assert_close(out, mass)
    masked = logits.clone()
    masked[:, prior.members(0)] = -float("inf")
    assert torch.isneginf(prior.cluster_logits(masked, "logsumexp")[:, 0]).all()


def test_cluster_logits_checks(prior):
    with pytest.raises(ValueError, match=r"\(\.\.\., 400\)"):
        prior.cluster_logits(torch.zeros(2, 399))
    with pytest.raises(ValueError, match="reduce"):
        prior.cluster_logits(torch.zeros(2, 400), reduce="max")
    with pytest.raises(TypeError, match="floating"):
        prior.cluster_logits(torch.zeros(2, 400, dtype=torch.int64))
    out = prior.cluster_logits(np.zeros((2, 400), dtype=np.float32))
    assert isinstance(out, np.ndarray) and out.shape == (2, 40)


def test_cluster_loss_matches_cross_entropy(prior):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, prior.num_tokens, requires_grad=True)
    target = torch.randint(0, prior.num_tokens, (3, 7))
    target[0, 0] = -100
    loss = prior.cluster_loss(logits, target)
    cl = prior.cluster_logits(logits, reduce="mean")
    tc = prior.token_to_cluster[target.clamp(min=0)]
    keep = target != -100
    ref = torch.nn.functional.cross_entropy(cl[keep], tc[keep])
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0].abs().sum() == 0  # ignored position
    per = prior.cluster_loss(logits.detach(), target, reduction="none", reduce="sum")
    assert per.shape == (3, 7) and per[0, 0] == 0


def test_cluster_loss_checks(prior):
    logits = torch.zeros(2, 5, prior.num_tokens)
    with pytest.raises(ValueError, match="target_tokens must have shape"):
        prior.cluster_loss(logits, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="token id"):
        prior.cluster_loss(logits, torch.full((2, 5), prior.num_tokens))
    with pytest.raises(ValueError, match="reduction"):
        prior.cluster_loss(logits, torch.zeros(2, 5, dtype=torch.int64), reduction="avg")


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_save_load_roundtrip(tmp_path, codebook, prior, suffix):
    path = tmp_path / f"prior{suffix}"
    prior.save(path)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    loaded = CodebookPrior.load(path, codebook=codebook)
    assert torch.equal(loaded.token_to_cluster, prior.token_to_cluster)
    assert loaded.metadata() == prior.metadata()
    meta = loaded.metadata()
    assert meta["num_clusters"] == 40 and meta["method"] == "dcpe"
    assert meta["dcpe_version"] == dcpe.__version__
    assert meta["codebook_sha256"] == codebook_sha256(codebook)


def test_load_refuses_other_codebook(tmp_path, codebook, prior):
    path = tmp_path / "prior.npz"
    prior.save(path)
    other = codebook.copy()
    other[0, 0] += 1e-3
    with pytest.raises(ValueError, match="another codebook") as info:
        CodebookPrior.load(path, codebook=other)
    msg = str(info.value)
    assert codebook_sha256(codebook)[:12] in msg and codebook_sha256(other)[:12] in msg
    assert "(400, 8)" in msg


def test_load_errors(tmp_path, prior):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        CodebookPrior.load(tmp_path / "missing.npz")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        CodebookPrior.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="not a readable dcpe prior"):
        CodebookPrior.load(other)
    with pytest.raises(ValueError, match=".pt or .npz"):
        prior.save(tmp_path / "prior.json")


def test_save_failure_leaves_nothing(tmp_path, prior, monkeypatch):
    path = tmp_path / "prior.npz"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        prior.save(path)
    assert os.listdir(tmp_path) == []


def test_to_device_copy(prior):
    moved = prior.to("cpu")
    assert moved is not prior and moved.device.type == "cpu"
    assert torch.equal(moved.indices, prior.indices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_tables(prior):
    g = prior.to("cuda")
    c = torch.arange(prior.num_clusters, device="cuda")
    tok = g.sample_tokens(c)
    assert tok.device.type == "cuda"
    assert torch.equal(g.to_clusters(tok), c)
    logits = torch.randn(2, prior.num_tokens, device="cuda")
    assert prior.cluster_logits(logits).device.type == "cuda"


def test_numpy_labels_are_copied_and_torch_is_not_needed():
    labels = np.array([0, 1, 1, 2, 0])
    prior = CodebookPrior.from_labels(labels)
    assert prior._t is None  # NumPy tables until a tensor is asked for
    labels[:] = 0  # the caller's array changes afterwards
    np.testing.assert_array_equal(prior.to_clusters(np.arange(5)), [0, 1, 1, 2, 0])
    np.testing.assert_array_equal(prior.cluster_sizes.numpy(), [2, 2, 1])
    np.testing.assert_array_equal(prior.members(0).numpy(), [0, 4])
