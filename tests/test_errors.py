"""Every bad input of the design's Errors section raises the documented error, before work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dcpe
from dcpe._errors import BackendUnavailableError

rng = np.random.default_rng(0)
X = rng.standard_normal((20, 3))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((0, 3)), "at least one row"),
        (np.zeros((4, 0)), "at least one row"),
    ],
)
def test_shape_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        dcpe.cluster(bad, 1)
    with pytest.raises(ValueError, match=match):
        dcpe.linkage(bad)


class _Quantizer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 3)


class _VQModel(torch.nn.Module):  # LlamaGen's layout: vq_model.quantize.embedding
    def __init__(self) -> None:
        super().__init__()
        self.quantize = _Quantizer()
        self.encoder = torch.nn.Linear(3, 3)


_WEIGHT = torch.nn.Embedding(20, 3).weight


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.nn.Embedding(20, 3), r"is a torch.nn.Embedding module, not its codebook; pass "
                                    r"its weight: \w+.weight"),
        (_VQModel(), r"is a _VQModel module, not a codebook; pass "
                     r"\w+.quantize.embedding.weight$"),
        (torch.nn.Sequential(), r"torch.nn.Sequential module, not a codebook; pass the \(N, d\)"),
        ({"quantize.embedding.weight": _WEIGHT.detach(), "step": 3},
         r"is a dict \(a checkpoint or state_dict\?\), not a codebook; pass the \(N, d\) "
         r"codebook tensor in it \(here \w+\['quantize.embedding.weight'\]\?\), or read a "
         r"checkpoint file with dcpe.io.load_codebook\(path\)"),
        ({"model": {"w": _WEIGHT}}, r"is a dict .* in it, or read a checkpoint file"),
        ([_WEIGHT[:10], _WEIGHT[10:]], r"is a list of 2 tensors, not one codebook; pass one "
                                       r"\(N, d\) tensor \(torch.cat\(\w+\) joins them\)"),
        (list(_WEIGHT), r"is a list of 20 tensors that require grad; pass one \(N, d\) tensor "
                        r"\(torch.stack\(\w+\).detach\(\)\)"),
    ],
)
def test_what_a_codebook_is_taken_from_is_refused_with_the_way_out(bad, match):
    # the quantizer module, the whole model, a state_dict or a list of tensors: NumPy reads
    # them as arrays of objects; each entry point says what to pass instead
    from dcpe.baselines import balanced_kmeans, kmeans

    for fn in (dcpe.cluster, kmeans, balanced_kmeans, dcpe.CodebookPrior.from_codebook):
        with pytest.raises(TypeError, match=match):
            fn(bad, 2)
    with pytest.raises(TypeError, match=match):
        dcpe.linkage(bad)


def test_a_list_of_row_tensors_is_still_a_codebook():
    from dcpe.baselines import kmeans

    rows = list(torch.from_numpy(X))
    np.testing.assert_array_equal(dcpe.cluster(rows, 3), dcpe.cluster(X, 3))
    np.testing.assert_array_equal(kmeans(rows, 3).labels, kmeans(X, 3).labels)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_counted(value):
    x = X.copy()
    x[3, 1] = value
    x[7, 0] = value
    with pytest.raises(ValueError, match=r"2 row\(s\) containing NaN or Inf \(first: row 3\)"):
        dcpe.cluster(x, 2)
    with pytest.raises(ValueError, match=r"2 row\(s\)"):
        dcpe.cluster(torch.from_numpy(x), 2)


@pytest.mark.parametrize("k", [0, -1, 21, 10**9])
def test_n_clusters_out_of_range(k):
    with pytest.raises(ValueError, match=rf"n_clusters={k} is out of range: must be \[1, 20\]"):
        dcpe.cluster(X, k)



def test_transposed_codebook_gets_a_hint():
    """k above N with at least k columns: the hint says the columns may be the tokens;
    with fewer columns than k, no hint."""
    wide = rng.standard_normal((8, 64))
    with pytest.raises(ValueError, match=r"must be \[1, 8\]; the codebook is 8 x 64: if its 64 "
                                         r"columns are the tokens, transpose it"):
        dcpe.cluster(wide, 20)
    with pytest.raises(ValueError) as info:
        dcpe.cluster(wide, 65)
    assert "transpose" not in str(info.value)
    assert dcpe.cluster(wide.T, 20).shape == (64,)


def test_parameter_input_needs_no_detach(recwarn):
    """A codebook straight from the model (an ``nn.Parameter``, requires_grad): the labels
    of its values, no autograd warning, and a result that requires no grad."""
    emb = torch.nn.Embedding(64, 4)
    labels = dcpe.cluster(emb.weight, 10)
    assert not labels.requires_grad and not [w for w in recwarn if "grad" in str(w.message)]
    assert torch.equal(labels, dcpe.cluster(emb.weight.detach().clone(), 10))
    assert emb.weight.requires_grad


@pytest.mark.parametrize("k", [2.0, "3", None, True])
def test_n_clusters_not_integer(k):
    with pytest.raises(TypeError, match="n_clusters must be an integer"):
        dcpe.cluster(X, k)


@pytest.mark.parametrize("cap", [0, -3])
def test_max_cluster_size_below_one(cap):
    with pytest.raises(ValueError, match=f"max_cluster_size={cap} is out of range"):
        dcpe.cluster(X, 2, max_cluster_size=cap)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"linkage": "ward2"}, "unknown linkage='ward2'"),
        ({"metric": "manhattan"}, "unknown metric='manhattan'"),
        ({"backend": "gpu"}, "unknown backend='gpu'"),
        ({"linkage": "centroid", "metric": "cosine"}, "metric='cosine' is not supported"),
        ({"linkage": "ward", "metric": "sqeuclidean"}, "metric='sqeuclidean' is not supported"),
        ({"dtype": "float16"}, "dtype='float16' is not supported"),
        ({"dtype": np.int32}, "is not supported"),
    ],
)
def test_unknown_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dcpe.cluster(X, 2, **kwargs)


def test_option_types():
    with pytest.raises(TypeError, match="linkage must be a string"):
        dcpe.cluster(X, 2, linkage=None)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.ones((3, 2), dtype=complex),
        np.array([[object(), 1.0]], dtype=object),
        np.ones((3, 2), dtype=bool),
        torch.ones((3, 2), dtype=torch.complex64),
        torch.ones((3, 2), dtype=torch.bool),
    ],
)
def test_non_numeric_dtype(bad):
    with pytest.raises(TypeError, match="real \\(float or integer\\)"):
        dcpe.cluster(bad, 1)


def test_ragged_array_like():
    with pytest.raises((TypeError, ValueError)):
        dcpe.cluster([[1.0, 2.0], [3.0]], 1)


def test_float32_overflow_refused():
    x = X * 1e20
    with pytest.raises(ValueError, match="pass dtype='float64'"):
        dcpe.cluster(x.astype(np.float32), 2)
    assert dcpe.cluster(x, 2).shape == (20,)  # float64 input computes in float64


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_float64_overflow_refused(metric):
    # squared distances (and the squared norms cosine scales rows by) past float64's range
    # had ended in an internal error of the engines; refused before any work instead
    x = X * 1e160
    with pytest.raises(ValueError, match="too large even for float64.*scale the codebook"):
        dcpe.cluster(x, 2, metric=metric)
    with pytest.raises(ValueError, match="too large even for float64"):
        dcpe.linkage(x, metric=metric)
    assert dcpe.cluster(x / 1e160 * 1e140, 2).shape == (20,)


def test_memory_preflight_refuses_before_allocating(monkeypatch):
    monkeypatch.setenv("DCPE_MEMORY_LIMIT", str(10_000))
    with pytest.raises(dcpe.InsufficientMemoryError, match=r"needs [\d,]+ bytes .* only 10,000"):
        dcpe.cluster(rng.standard_normal((500, 4)), 2)
    # also catchable as MemoryError and ValueError
    with pytest.raises(MemoryError):
        dcpe.linkage(rng.standard_normal((500, 4)))


def test_memory_preflight_huge_problem():
    # 3,000,000 x 1 needs ~18 TB of distances: single linkage (matrix engine only) is
    # refused with numbers, nothing allocated; average linkage would run in linear memory,
    # and is refused only when not even O(N d) fits the budget.
    x = np.zeros((3_000_000, 1), dtype=np.float32)
    with pytest.raises(dcpe.InsufficientMemoryError) as info:
        dcpe.cluster(x, 2, linkage="single")
    assert info.value.needed > info.value.available
    with pytest.raises(dcpe.InsufficientMemoryError, match="linear-memory engine") as info:
        dcpe.cluster(x, 2, memory_limit="16MiB")
    assert info.value.needed > info.value.available


def test_unavailable_backend_says_why():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(BackendUnavailableError, match="not available: .*Available backends") \
            as info:
        dcpe.cluster(X, 2, backend="cuda")
    assert dcpe.BackendUnavailableError is BackendUnavailableError  # exported
    err = info.value
    assert err.backend == "cuda" and "CUDA" in err.reason
    assert "cpu" in err.available and "cuda" not in err.available


@pytest.mark.parametrize("path", ["codebook.pt", Path("vq_ds16_c2i.pt")])
def test_file_name_points_to_load_codebook(path):
    for call in (lambda: dcpe.cluster(path, 2), lambda: dcpe.linkage(path),
                 lambda: dcpe.DCPE(n_clusters=2).fit(path)):
        with pytest.raises(TypeError, match=r"file name .*dcpe\.io\.load_codebook\("):
            call()


def test_cut_rejects_bad_z():
    Z = dcpe.linkage(X)
    with pytest.raises(ValueError, match=r"shape \(N - 1, 4\)"):
        dcpe.cut(Z[:, :3], 2)
    with pytest.raises(ValueError, match="out of range"):
        dcpe.cut(Z, 0)
    bad = Z.copy()
    bad[0, 0] = 1000
    with pytest.raises(ValueError, match="not a valid linkage matrix"):
        dcpe.cut(bad, 2)
    bad = Z.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dcpe.cut(bad, 2)
    # 4 points: row 1 merges 0 and 1 again, which row 0 already joined
    bad = np.array([[0, 1, 1.0, 2], [0, 1, 2.0, 2], [2, 3, 3.0, 2]])
    with pytest.raises(ValueError, match="merges a cluster with itself"):
        dcpe.cut(bad, 1)
    with pytest.raises(TypeError, match="Z cannot be read as a float64 array"):
        dcpe.cut([["a", "b", "c", "d"]], 1)
    with pytest.raises(TypeError, match="n_clusters must be an integer"):
        dcpe.cut(Z, 2.0)


def test_cut_documents_its_errors():
    doc = dcpe.cut.__doc__
    raises = " ".join(doc[doc.index("Raises\n    ------"):].split())
    for documented in ("TypeError", "ValueError", "(N - 1, 4)", "NaN", "[1, N]",
                       "not a valid linkage matrix"):
        assert documented in raises


def test_cosine_zero_vector():
    x = X.copy()
    x[4] = 0.0
    with pytest.raises(ValueError, match=r"zero vector: x has 1 zero row\(s\) \(first: row 4\)"):
        dcpe.cluster(x, 2, metric="cosine")
