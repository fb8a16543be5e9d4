"""Public API: containers, canonical labels, linkage/cut, the estimator, dtypes, size-cap
warnings, backend selection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import apply_merges, canonical, same_partition, scipy_linkage, tie_free, to_numpy

torch = pytest.importorskip("torch")


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return tie_free(rng, 97, 5)


# --------------------------------------------------------------------------- containers


def test_numpy_in_numpy_out(dcpe_mod, x: np.ndarray) -> None:
    for data in (x, x.astype(np.float32), np.asfortranarray(x), x[::-1]):
        labels = dcpe_mod.cluster(data, 7)
        assert isinstance(labels, np.ndarray)
        assert labels.dtype == np.int64 and labels.shape == (len(data),)


def test_array_like_in_numpy_out(dcpe_mod, x: np.ndarray) -> None:
    labels = dcpe_mod.cluster(x.tolist(), 7)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, dcpe_mod.cluster(x, 7))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_in_torch_out(dcpe_mod, x: np.ndarray, dtype: str) -> None:
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    for backend in ("auto", "cpu", "torch", "reference"):
        labels = dcpe_mod.cluster(t, 7, backend=backend)
        assert isinstance(labels, torch.Tensor), backend
        assert labels.dtype == torch.int64 and labels.device == t.device
        assert tuple(labels.shape) == (len(x),)
        np.testing.assert_array_equal(labels.numpy(), dcpe_mod.cluster(t.numpy(), 7))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_in_cuda_out(dcpe_mod, x: np.ndarray) -> None:
    t = torch.from_numpy(x).cuda()
    labels = dcpe_mod.cluster(t, 7)
    assert labels.device == t.device and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.cpu().numpy(), dcpe_mod.cluster(x, 7))


@pytest.mark.parametrize("gpu_kernels", [True, False])
def test_auto_backend_for_cuda_data(dcpe_mod, monkeypatch: pytest.MonkeyPatch,
                                    gpu_kernels: bool) -> None:
    """auto on CUDA data: the GPU engine for the linkages it has, else the exact host engine
    (never the O(N^3) torch path), whether or not GPU kernels exist here."""
    from dcpe import _api, backends
    from dcpe._validation import Data

    for name in ("cuda", "triton"):
        module = backends.get(name)
        monkeypatch.setattr(module, "available", lambda: (gpu_kernels, "stubbed"))
        monkeypatch.setattr(module, "accepts", lambda x: True)
    data = Data(original=None, kind="tensor", n=10, d=2, compute_dtype=np.dtype("float32"),
                device="cuda:0")
    for method in backends.LINKAGES:
        want = "cuda" if gpu_kernels and method in backends.GPU_LINKAGES else "cpu"
        assert _api._resolve_backend("auto", data, method) == want, method
    host = Data(original=None, kind="numpy", n=10, d=2, compute_dtype=np.dtype("float32"),
                device="cpu")
    assert _api._resolve_backend("auto", host, "average") == "cpu"


def test_gpu_engine_linkages_are_the_kernel_modes() -> None:
    pytest.importorskip("torch")
    from dcpe import backends
    from dcpe_kernels.rnn import METHOD_MODES

    assert set(backends.GPU_LINKAGES) == set(METHOD_MODES)
    assert set(backends.GPU_LINKAGES) <= set(backends.LINKAGES)


def test_labels_are_canonical(dcpe_mod, x: np.ndarray) -> None:
    n = len(x)
    for k in (1, 2, 10, 50, n - 1, n):
        labels = dcpe_mod.cluster(x, k)
        np.testing.assert_array_equal(labels, canonical(labels))
        assert set(labels.tolist()) == set(range(k))
        # numbered in order of each cluster's smallest token index
        firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(k)]
        assert firsts == sorted(firsts)


# --------------------------------------------------------------------------- linkage / cut


def test_linkage_is_a_scipy_linkage(dcpe_mod, x: np.ndarray) -> None:
    from scipy.cluster.hierarchy import dendrogram, fcluster, is_valid_linkage

    n = len(x)
    for linkage in ("average", "single", "complete", "weighted", "centroid", "ward"):
        z = dcpe_mod.linkage(x, linkage=linkage)
        assert isinstance(z, np.ndarray)
        assert z.shape == (n - 1, 4) and z.dtype == np.float64
        assert is_valid_linkage(z, throw=True)
        assert np.all(z[:, 0] < z[:, 1])
        assert len(dendrogram(z, no_plot=True)["leaves"]) == n
        if linkage != "centroid":
            for k in (1, 3, 20):
                assert same_partition(fcluster(z, k, "maxclust"), dcpe_mod.cluster(
                    x, k, linkage=linkage))
    # sizes are consistent with the ids
    z = dcpe_mod.linkage(x)
    sizes = np.concatenate([np.ones(n), z[:, 3]])
    np.testing.assert_array_equal(z[:, 3], sizes[z[:, 0].astype(int)] + sizes[z[:, 1].astype(int)])


def test_linkage_of_one_point(dcpe_mod) -> None:
    z = dcpe_mod.linkage(np.zeros((1, 3)))
    assert z.shape == (0, 4) and z.dtype == np.float64
    np.testing.assert_array_equal(dcpe_mod.cluster(np.zeros((1, 3)), 1), [0])


@pytest.mark.parametrize("linkage", ["average", "centroid", "single", "complete", "weighted",
                                     "ward"])
def test_cut_equals_cluster(dcpe_mod, rng: np.random.Generator, linkage: str) -> None:
    x = tie_free(rng, 150, 3)
    z = dcpe_mod.linkage(x, linkage=linkage)
    for k in (1, 2, 3, 10, 75, 149, 150):
        labels = dcpe_mod.cut(z, k)
        assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, dcpe_mod.cluster(x, k, linkage=linkage))
        np.testing.assert_array_equal(labels, apply_merges(z, len(x), len(x) - k))


def test_cut_of_scipy_linkage(dcpe_mod, x: np.ndarray) -> None:
    z = scipy_linkage(x)
    for k in (1, 4, 40, len(x)):
        np.testing.assert_array_equal(dcpe_mod.cut(z, k), apply_merges(z, len(x), len(x) - k))


# --------------------------------------------------------------------------- estimator


def test_estimator_attributes_match_sklearn(dcpe_mod, x: np.ndarray) -> None:
    from sklearn.cluster import AgglomerativeClustering

    n, k = len(x), 9
    est = dcpe_mod.DCPE(n_clusters=k).fit(x)
    assert est.n_clusters_ == k
    np.testing.assert_array_equal(est.labels_, dcpe_mod.cluster(x, k))
    ref = AgglomerativeClustering(n_clusters=k, linkage="average", compute_full_tree=True,
                                  compute_distances=True).fit(x)
    assert same_partition(est.labels_, ref.labels_)
    m = len(est.children_)
    assert m in (n - k, n - 1)
    assert est.children_.shape == (m, 2) and len(est.distances_) == m
    np.testing.assert_array_equal(np.sort(est.children_, axis=1),
                                  np.sort(ref.children_, axis=1)[:m])
    np.testing.assert_allclose(est.distances_, ref.distances_[:m], rtol=1e-6)


def test_estimator_sklearn_protocol(dcpe_mod, x: np.ndarray) -> None:
    from sklearn.base import clone

    est = dcpe_mod.DCPE(n_clusters=5, linkage="complete")
    params = est.get_params()
    assert params["n_clusters"] == 5 and params["linkage"] == "complete"
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert not hasattr(twin, "labels_")
    est.set_params(n_clusters=6, linkage="average")
    assert est.get_params()["n_clusters"] == 6
    labels = est.fit_predict(x)
    np.testing.assert_array_equal(labels, dcpe_mod.cluster(x, 6))
    np.testing.assert_array_equal(labels, est.labels_)
    np.testing.assert_array_equal(clone(est).fit(x).labels_, labels)


def _thresholds(heights: np.ndarray) -> list[float]:
    """Heights between two merges' (never at one, where float rounding decides) at several
    quantiles, and below and above them all."""
    h = np.unique(heights)
    mid = (h[:-1] + h[1:]) / 2
    picks = [mid[i] for i in np.linspace(0, len(mid) - 1, 7).astype(int)]
    return [0.0, *picks, float(h[-1]) * 2 + 1, float("inf")]


@pytest.mark.parametrize("linkage", ["average", "complete", "single", "ward"])
def test_estimator_distance_threshold_matches_sklearn(dcpe_mod, x: np.ndarray,
                                                      linkage: str) -> None:
    from sklearn.cluster import AgglomerativeClustering

    full = AgglomerativeClustering(n_clusters=None, distance_threshold=0.0,
                                   linkage=linkage).fit(x)
    for t in _thresholds(full.distances_):
        est = dcpe_mod.DCPE(n_clusters=None, distance_threshold=t, linkage=linkage,
                            dtype="float64").fit(x)
        if np.isfinite(t):  # scikit-learn takes finite thresholds only
            ref = AgglomerativeClustering(n_clusters=None, distance_threshold=t,
                                          linkage=linkage).fit(x)
            assert est.n_clusters_ == ref.n_clusters_, (linkage, t)
            assert same_partition(est.labels_, ref.labels_), (linkage, t)
        assert est.n_clusters_ == 1 + np.count_nonzero(est.distances_ >= t)
        assert len(est.children_) == len(x) - 1  # the whole tree, as scikit-learn's


def test_estimator_distance_threshold_centroid_and_cap(dcpe_mod, x: np.ndarray) -> None:
    """A non-monotone tree is cut by scikit-learn's count (its first merges in order, as
    dcpe.cut); the clusters that a size cap left unmerged stay apart."""
    z = dcpe_mod.linkage(x, linkage="centroid")
    assert (np.diff(z[:, 2]) < 0).any()  # the heights go down somewhere: non-monotone
    for t in _thresholds(z[:, 2]):
        est = dcpe_mod.DCPE(n_clusters=None, distance_threshold=t, linkage="centroid").fit(x)
        k = 1 + np.count_nonzero(z[:, 2] >= t)
        assert est.n_clusters_ == k
        np.testing.assert_array_equal(est.labels_, dcpe_mod.cut(z, k))
    n = len(x)
    for t in (0.0, 1.0, 1e9):
        est = dcpe_mod.DCPE(n_clusters=None, distance_threshold=t, max_cluster_size=4).fit(x)
        m = len(est.distances_)
        assert m < n - 1  # the cap stopped the tree
        k = n - m + np.count_nonzero(est.distances_ >= t)
        assert est.n_clusters_ == k
        np.testing.assert_array_equal(est.labels_,
                                      dcpe_mod.cluster(x, k, max_cluster_size=4))


@pytest.mark.parametrize("params, error, match", [
    ({"n_clusters": None}, ValueError, "exactly one of n_clusters and distance_threshold"),
    ({"n_clusters": 5, "distance_threshold": 1.0}, ValueError, "exactly one of"),
    ({"n_clusters": None, "distance_threshold": -0.5}, ValueError, "height >= 0"),
    ({"n_clusters": None, "distance_threshold": float("nan")}, ValueError, "height >= 0"),
    ({"n_clusters": None, "distance_threshold": "1"}, TypeError, "real number"),
    ({"n_clusters": None, "distance_threshold": True}, TypeError, "real number"),
])
def test_estimator_distance_threshold_checks(dcpe_mod, x: np.ndarray, monkeypatch,
                                             params, error, match) -> None:
    from dcpe import estimator

    def no_run(*args, **kwargs):
        raise AssertionError("clustered")

    monkeypatch.setattr(estimator, "_run", no_run)
    with pytest.raises(error, match=match):
        dcpe_mod.DCPE(**params).fit(x)


def test_estimator_accepts_torch(dcpe_mod, x: np.ndarray) -> None:
    est = dcpe_mod.DCPE(n_clusters=4).fit(torch.from_numpy(x))
    np.testing.assert_array_equal(to_numpy(est.labels_), dcpe_mod.cluster(x, 4))


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_computed_in_float32(dcpe_mod, x: np.ndarray, half: str) -> None:
    t = torch.from_numpy(x).to(getattr(torch, half))
    as32 = t.to(torch.float32)
    for backend in ("auto", "torch", "reference"):
        labels = dcpe_mod.cluster(t, 11, backend=backend)
        assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
        torch.testing.assert_close(labels, dcpe_mod.cluster(as32, 11, backend=backend))
    np.testing.assert_array_equal(dcpe_mod.linkage(t), dcpe_mod.linkage(as32))


def test_float64_input_computed_in_float64(dcpe_mod) -> None:
    # differences of 1e-9 vanish in float32 (all four points collapse) but not in float64
    x = 1.0 + np.array([[0.0], [1e-9], [3e-9], [7e-9]])
    z64 = dcpe_mod.linkage(x)
    assert np.all(z64[:, 2] > 0)
    np.testing.assert_allclose(np.sort(z64[:, 2]), np.sort(scipy_linkage(x)[:, 2]), rtol=1e-6)
    z32 = dcpe_mod.linkage(x, dtype=np.float32)
    np.testing.assert_array_equal(z32[:, 2], 0)
    np.testing.assert_array_equal(dcpe_mod.cluster(x, 2), [0, 0, 0, 1])
    np.testing.assert_array_equal(dcpe_mod.cluster(torch.from_numpy(x), 2).numpy(), [0, 0, 0, 1])


def test_dtype_override_to_float64(dcpe_mod) -> None:
    # squared differences of 1e-25 underflow in float32 but not in float64 (Euclidean: the
    # token distances are computed in the compute dtype; the closed forms of sqeuclidean
    # and cosine average linkage run on float64 cluster moments whatever the dtype)
    x = np.array([[0.0], [1e-25], [3e-25], [7e-25]], dtype=np.float32)
    z32 = dcpe_mod.linkage(x, engine="matrix")
    np.testing.assert_array_equal(z32[:, 2], 0)
    z64 = dcpe_mod.linkage(x, dtype=np.float64)
    assert np.all(z64[:, 2] > 0)
    np.testing.assert_array_equal(dcpe_mod.cluster(x, 2, dtype=np.float64), [0, 0, 0, 1])
    np.testing.assert_array_equal(
        dcpe_mod.cluster(torch.from_numpy(x), 2, dtype=torch.float64).numpy(), [0, 0, 0, 1])
    zsq = dcpe_mod.linkage(x, metric="sqeuclidean")
    assert np.all(zsq[:, 2] > 0)


# --------------------------------------------------------------------------- size cap


def test_size_cap_exhaustion_warns(dcpe_mod, rng: np.random.Generator) -> None:
    x = tie_free(rng, 64, 3)
    z = dcpe_mod.backends.get("cpu").linkage(x, method="average", metric="euclidean",
                                             max_cluster_size=4)
    found = len(x) - len(z)
    assert found > 2  # every merged cluster of size > 4 is frozen: no single cluster
    with pytest.warns(UserWarning):
        labels = dcpe_mod.cluster(x, 2, max_cluster_size=4)
    assert len(np.unique(labels)) == found
    np.testing.assert_array_equal(labels, apply_merges(z, len(x), len(z)))
    with pytest.warns(UserWarning):
        est = dcpe_mod.DCPE(n_clusters=2, max_cluster_size=4).fit(x)
    assert est.n_clusters_ == found
    np.testing.assert_array_equal(est.labels_, labels)
    # reachable k: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = dcpe_mod.cluster(x, found, max_cluster_size=4)
    assert len(np.unique(labels)) == found


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu", "auto"])
def test_backends_accepted(dcpe_mod, x: np.ndarray, backend: str) -> None:
    labels = to_numpy(dcpe_mod.cluster(x, 5, backend=backend))
    np.testing.assert_array_equal(labels, dcpe_mod.cluster(x, 5))
    z = dcpe_mod.linkage(x, backend=backend)
    assert z.shape == (len(x) - 1, 4)
    assert {"reference", "torch", "cpu"} <= set(dcpe_mod.available_backends())


def test_unknown_backend_lists_available(dcpe_mod, x: np.ndarray) -> None:
    with pytest.raises(ValueError) as info:
        dcpe_mod.cluster(x, 5, backend="no-such-backend")
    message = str(info.value)
    assert "no-such-backend" in message
    for name in dcpe_mod.available_backends():
        assert name in message


def test_unavailable_backend_says_why(dcpe_mod, x: np.ndarray) -> None:
    status = dcpe_mod.backends.status()
    missing = [name for name, (ok, _) in status.items() if not ok]
    if not missing:
        pytest.skip("every backend is available here")
    for name in missing:
        with pytest.raises((RuntimeError, ValueError)) as info:
            dcpe_mod.cluster(x, 5, backend=name)
        message = str(info.value)
        assert name in message and "available" in message
        assert "cpu" in message


def test_import_is_light() -> None:
    # `import dcpe` and clustering a NumPy array load neither scikit-learn nor torch;
    # dcpe.DCPE loads scikit-learn on first access.
    import subprocess
    import sys

    code = ("import sys, numpy as np, dcpe\n"
            "dcpe.cluster(np.random.default_rng(0).random((50, 3)), 5)\n"
            "assert 'sklearn' not in sys.modules and 'torch' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'torch'))[:5]\n"
            "assert 'DCPE' in dir(dcpe)\n"
            "dcpe.DCPE\n"
            "assert 'sklearn' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_cluster_and_remap_do_not_import_torch(tmp_path) -> None:
    # the quickstart path: a NumPy codebook -> .npz prior -> remapped token files, with the
    # prior's tables kept in NumPy (torch costs seconds to import)
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    np.save(tmp_path / "cb.npy", rng.standard_normal((60, 4)).astype(np.float32))
    (tmp_path / "codes").mkdir()
    np.save(tmp_path / "codes" / "a.npy", rng.integers(0, 60, size=(3, 5)))
    code = (f"import sys\n"
            f"from dcpe.cli import main\n"
            f"assert main(['cluster', r'{tmp_path / 'cb.npy'}', '-k', '7', '-o', "
            f"r'{tmp_path / 'p.npz'}']) == 0\n"
            f"assert main(['remap', r'{tmp_path / 'codes'}', '--prior', r'{tmp_path / 'p.npz'}', "
            f"'-o', r'{tmp_path / 'out'}', '-q']) == 0\n"
            f"assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    from dcpe.prior import CodebookPrior

    prior = CodebookPrior.load(tmp_path / "p.npz")
    codes = np.load(tmp_path / "codes" / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a.npy"),
                                  prior.token_to_cluster.numpy()[codes])


def test_package_namespace_is_the_public_api() -> None:
    import dcpe as dcpe_mod

    names = dir(dcpe_mod)
    for helper in ("Any", "annotations", "import_module", "_LAZY_MODULES", "_api",
                   "_validation"):
        assert helper not in names
    for public in dcpe_mod.__all__:
        assert public in names
        assert getattr(dcpe_mod, public) is not None
    # every listed name resolves, the lazy ones included
    for name in names:
        getattr(dcpe_mod, name)
    assert dcpe_mod.BackendUnavailableError is dcpe_mod._errors.BackendUnavailableError
    assert issubclass(dcpe_mod.BackendUnavailableError, RuntimeError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dcpe_mod.nope  # noqa: B018
