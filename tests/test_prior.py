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


@pytest.mark.parametrize("shape, step", [
    ((2, 400, 5), r"the tokens are dimension 1: move them last with "
                  r"token_logits\.movedim\(1, -1\)"),
    ((400, 2, 5), r"the tokens are dimension 0: move them last with "
                  r"token_logits\.movedim\(0, -1\)"),
    ((2, 5, 403), r"if the last 3 are logits of other ids .*token_logits\[\.\.\., :400\]"),
    ((2, 5, 399), r"give logits over the 400 tokens of the codebook"),
])
@pytest.mark.parametrize("call", ["cluster_loss", "cluster_logits"])
def test_logits_in_another_layout_name_it(prior, shape, step, call):
    """Logits in cross_entropy's (B, N, T) layout, or with extra ids past the codebook's,
    get an error that says how to pass them (the loss checks them before the targets)."""
    logits = torch.zeros(shape)
    args = (torch.zeros(2, 5, dtype=torch.int64),) if call == "cluster_loss" else ()
    with pytest.raises(ValueError, match=r"last dimension = number of tokens.*; " + step):
        getattr(prior, call)(logits, *args)


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


def test_load_names_the_normalised_rows(tmp_path, codebook):
    """A prior of the L2-normalised rows given the raw ones says so (and how to read them),
    for a codebook whose rows are not unit already."""
    from dcpe.io import _l2_normalized

    raw = codebook * np.linspace(0.5, 2.0, len(codebook), dtype=np.float32)[:, None]
    unit = _l2_normalized(raw)
    path = tmp_path / "prior.npz"
    CodebookPrior.from_labels(np.arange(len(raw)) % 40, codebook=unit).save(path)
    CodebookPrior.load(path, codebook=unit)  # the rows it was made from
    with pytest.raises(ValueError, match="L2-normalised, and these are raw") as info:
        CodebookPrior.load(path, codebook=raw)
    assert "normalize=True" in str(info.value)
    with pytest.raises(ValueError, match="another codebook"):
        CodebookPrior.load(path, codebook=raw + 1.0)


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


def test_load_names_a_mapping_or_other_object_given_as_the_prior(tmp_path, capsys):
    """IAR's mapping.pt (one tensor, written by dcpe export iar) or another object saved
    with torch.save, given as the prior: a ValueError that says what the file holds, and
    on the command line one error line and no warning of torch's."""
    import warnings

    from conftest import one_error_line

    from dcpe.cli import main

    mapping = tmp_path / "mapping.pt"
    torch.save(torch.randperm(64), mapping)
    listed = tmp_path / "listed.pt"
    torch.save([1, 2], listed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"one tensor of shape \(64,\).*mapping.pt\?"):
            CodebookPrior.load(mapping)
        with pytest.raises(ValueError, match="it holds a list, not a prior's tables"):
            CodebookPrior.load(listed)
    codes = tmp_path / "codes"
    codes.mkdir()
    np.save(codes / "0.npy", np.arange(64))
    assert main(["remap", str(codes), "--prior", str(mapping), "-o", str(tmp_path / "o")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "mapping.pt: not a readable dcpe prior file" in line and "dcpe cluster" in line


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


# --------------------------------------------------------------------------- construction


def test_from_labels_accepts_a_baseline_result(codebook):
    from dcpe.baselines import kmeans

    res = kmeans(codebook, 20, seed=0, n_iter=5)
    p = CodebookPrior.from_labels(res, codebook=codebook)
    np.testing.assert_array_equal(p.token_to_cluster.numpy(), res.labels)
    assert p.method is None and p.linkage is None  # the result does not say its method
    assert p.codebook_sha256 == codebook_sha256(codebook)
    named = CodebookPrior.from_labels(res, method="kmeans")
    assert named.method == "kmeans" and named.linkage is None
    res_t = kmeans(torch.from_numpy(codebook), 20, seed=0, n_iter=5)
    assert torch.equal(CodebookPrior.from_labels(res_t).token_to_cluster, res_t.labels)
    assert CodebookPrior.from_labels(res.labels).method == "dcpe"  # plain labels: as before
    with pytest.raises(ValueError, match="rows"):
        CodebookPrior.from_labels(res, codebook=codebook[:10])
    with pytest.raises(TypeError, match="method"):
        CodebookPrior.from_labels(res, method=3)


@pytest.mark.parametrize("labels, error, match", [
    (np.array([0.0, 1.0]), TypeError, "integers"),
    (np.array([True, False]), TypeError, "integers"),
    ([[0, 1], [2]], TypeError, "integers"),
    (torch.tensor([0.5]), TypeError, "integers"),
    (np.array(3), ValueError, "1-D"),
    (np.zeros((2, 2), dtype=np.int64), ValueError, "1-D"),
    (np.zeros(0, dtype=np.int64), ValueError, "empty"),
    (np.array([0, -1]), ValueError, ">= 0"),
    (np.array([0, 3, 3]), ValueError, "2 id"),
])
def test_constructor_errors(labels, error, match):
    with pytest.raises(error, match=match):
        CodebookPrior(labels)


def test_constructor_size_cap_errors():
    with pytest.raises(ValueError, match="max_cluster_size"):
        CodebookPrior(np.array([0, 1]), max_cluster_size=0)
    with pytest.raises(TypeError, match="max_cluster_size"):
        CodebookPrior(np.array([0, 1]), max_cluster_size="3")


def test_constructor_documents_its_errors():
    doc = CodebookPrior.__doc__
    assert "Raises" in doc and "TypeError" in doc and "ValueError" in doc


def test_tensor_labels_are_copied():
    labels = torch.tensor([0, 1, 1, 0])
    p = CodebookPrior(labels)
    labels[:] = 0
    assert p.token_to_cluster.tolist() == [0, 1, 1, 0]


# --------------------------------------------------------------------------- scalars


def test_to_clusters_of_a_scalar_is_a_scalar():
    p = CodebookPrior.from_labels(np.array([1, 0, 1, 2]))
    out = p.to_clusters(3)
    assert type(out) is int and out == 2
    for value in (np.int32(3), np.int64(3), np.array(3), np.array(3, dtype=np.uint8)):
        out = p.to_clusters(value)
        assert type(out) is np.int64 and out == 2
    out = p.to_clusters(torch.tensor(3))
    assert isinstance(out, torch.Tensor) and out.shape == () and int(out) == 2
    assert p.to_clusters([3]).shape == (1,)  # a list is an array, not a scalar
    with pytest.raises(ValueError, match="4"):
        p.to_clusters(4)
    with pytest.raises(TypeError, match="integers"):
        p.to_clusters(True)
    with pytest.raises(TypeError, match="integers"):
        p.to_clusters(1.0)


# --------------------------------------------------------------------------- layout


def _unequal_labels(n: int = 120, k: int = 17, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(labels)
    return labels


def test_permutation_and_offsets():
    labels = _unequal_labels()
    p = CodebookPrior.from_labels(labels)
    perm = p.permutation
    assert perm.dtype == torch.int64 and perm.shape == (120,)
    assert torch.equal(torch.sort(perm).values, torch.arange(120))
    assert torch.equal(perm[p.indices], torch.arange(120))
    offsets = p.offsets
    assert offsets.shape == (p.num_clusters + 1,) and int(offsets[-1]) == 120
    sizes = np.bincount(labels)
    np.testing.assert_array_equal(offsets.numpy(), np.concatenate([[0], np.cumsum(sizes)]))
    for old in range(120):  # cluster c at offsets[c] .. offsets[c+1]-1, in cluster order
        c = labels[old]
        assert offsets[c] <= perm[old] < offsets[c + 1]
    for c in range(p.num_clusters):  # ascending token ids inside a cluster
        new = perm[p.members(c)]
        assert torch.equal(new, torch.arange(int(offsets[c]), int(offsets[c + 1])))
    assert not p.is_contiguous


def test_permuted_prior():
    labels = _unequal_labels()
    p = CodebookPrior.from_labels(labels, method="dcpe", max_cluster_size=30, note="x")
    q = p.permuted()
    assert q.is_contiguous and q.num_clusters == p.num_clusters
    assert torch.equal(q.cluster_sizes, p.cluster_sizes)
    assert torch.equal(q.permutation, torch.arange(120))
    tokens = torch.randint(0, 120, (5, 7))
    assert torch.equal(q.to_clusters(p.permutation[tokens]), p.to_clusters(tokens))
    assert q.method == "dcpe" and q.max_cluster_size == 30
    assert q.meta == {"note": "x", "permuted": True} and p.meta == {"note": "x"}
    assert q.codebook_sha256 is None
    x = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    reordered = x[p.indices.numpy()]
    q2 = p.permuted(codebook=reordered)
    assert q2.codebook_sha256 == codebook_sha256(reordered)
    with pytest.raises(ValueError, match="rows"):
        p.permuted(codebook=x[:5])


def _layouts():
    unequal = _unequal_labels()
    equal = np.random.default_rng(1).permutation(np.repeat(np.arange(12), 10))
    return {
        "unequal": CodebookPrior.from_labels(unequal),
        "unequal-contiguous": CodebookPrior.from_labels(np.sort(unequal)),
        "equal": CodebookPrior.from_labels(equal),
        "equal-contiguous": CodebookPrior.from_labels(np.sort(equal)),
        "torch-unequal-contiguous": CodebookPrior.from_labels(torch.from_numpy(np.sort(unequal))),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
@pytest.mark.parametrize("reduce", ["mean", "sum", "logsumexp"])
@pytest.mark.parametrize("shape", [(120,), (3, 120), (2, 5, 120), (0, 120)])
def test_segment_path_equals_scatter_path(layout, reduce, shape):
    p = _layouts()[layout]
    assert p.is_contiguous == layout.endswith("contiguous")
    torch.manual_seed(0)
    logits = (torch.randn(shape, dtype=torch.float64) * 5).requires_grad_()
    if logits.numel():
        with torch.no_grad():  # a cluster with every logit at -inf, one with +inf
            logits[..., p.members(0)] = -float("inf")
            logits[..., int(p.members(1)[0])] = float("inf") if reduce == "logsumexp" else 7.0
    seg = p.cluster_logits(logits, reduce, algorithm="segment")
    scat = p.cluster_logits(logits, reduce, algorithm="scatter")
    auto = p.cluster_logits(logits, reduce)
    assert seg.shape == shape[:-1] + (p.num_clusters,) and seg.dtype == torch.float64
    torch.testing.assert_close(seg, scat, equal_nan=True)
    torch.testing.assert_close(auto, scat, equal_nan=True)
    if logits.numel() and reduce != "logsumexp":
        ref = _reference_cluster_logits(p, logits, reduce)
        torch.testing.assert_close(seg, ref)
    finite = torch.isfinite(scat)
    (g_seg,) = torch.autograd.grad(seg[finite].square().sum(), logits, allow_unused=True)
    (g_scat,) = torch.autograd.grad(scat[finite].square().sum(), logits, allow_unused=True)
    if g_scat is not None:
        torch.testing.assert_close(g_seg, g_scat, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_segment_path_low_precision(dtype):
    p = CodebookPrior.from_labels(np.sort(_unequal_labels()))
    logits = torch.randn(4, 120).to(dtype)
    for reduce in ("mean", "sum", "logsumexp"):
        seg = p.cluster_logits(logits, reduce, algorithm="segment")
        assert seg.dtype == dtype
        ref = p.cluster_logits(logits.double(), reduce, algorithm="scatter")
        torch.testing.assert_close(seg.double(), ref, atol=0.1, rtol=0.02)


def test_cluster_loss_same_on_both_paths_and_after_permutation():
    labels = _unequal_labels()
    p = CodebookPrior.from_labels(labels)
    q = p.permuted()
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 120, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 120, (3, 6))
    target[0, 0] = -100
    a = p.cluster_loss(logits, target, algorithm="scatter")
    b = p.cluster_loss(logits, target, algorithm="segment")
    # the same model with its outputs and targets in the new token order
    order = p.indices  # new id j holds old id order[j]
    new_target = torch.where(target >= 0, p.permutation[target.clamp(min=0)], target)
    c = q.cluster_loss(logits[..., order], new_target)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    (ga,) = torch.autograd.grad(a, logits)
    (gc,) = torch.autograd.grad(c, logits)
    torch.testing.assert_close(ga, gc)


def test_cluster_logits_algorithm_checked(prior):
    with pytest.raises(ValueError, match="algorithm"):
        prior.cluster_logits(torch.zeros(2, 400), algorithm="fast")
    with pytest.raises(ValueError, match="algorithm"):
        prior.cluster_loss(torch.zeros(2, 400), torch.zeros(2, dtype=torch.int64),
                           algorithm="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_segment_path_cuda():
    p = CodebookPrior.from_labels(np.sort(_unequal_labels())).to("cuda")
    logits = torch.randn(4, 120, device="cuda", dtype=torch.float64)
    for reduce in ("mean", "sum", "logsumexp"):
        torch.testing.assert_close(p.cluster_logits(logits, reduce, algorithm="segment"),
                                   p.cluster_logits(logits, reduce, algorithm="scatter"))
