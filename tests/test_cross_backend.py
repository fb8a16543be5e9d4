"""reference == torch == cpu: labels and linkage matrices on the same inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import cut_z, hierarchy_sets, integer_grid, tie_free, to_numpy

torch = pytest.importorskip("torch")

HOST = ("reference", "cpu")
ALL = ("reference", "torch", "cpu")
METHOD_METRICS = [
    ("average", "euclidean"),
    ("average", "sqeuclidean"),
    ("average", "cosine"),
    ("centroid", "euclidean"),
    ("ward", "euclidean"),
    ("single", "euclidean"),
    ("complete", "euclidean"),
    ("weighted", "euclidean"),
    ("complete", "cosine"),
    ("weighted", "sqeuclidean"),
]


def backend_z(dcpe_mod, name: str, x: np.ndarray, method: str = "average",
              metric: str = "euclidean", max_cluster_size: int | None = None) -> np.ndarray:
    """Linkage matrix straight from backend ``name`` (x already in its compute dtype)."""
    data = torch.from_numpy(x.copy()) if name == "torch" else x
    z = dcpe_mod.backends.get(name).linkage(data, method=method, metric=metric,
                                            max_cluster_size=max_cluster_size)
    assert isinstance(z, np.ndarray) and z.dtype == np.float64 and z.ndim == 2
    assert z.shape[1] == 4 and z.shape[0] <= x.shape[0] - 1
    return z


def cluster(dcpe_mod, name: str, x: np.ndarray, k: int, **kw) -> np.ndarray:
    data = torch.from_numpy(x.copy()) if name == "torch" else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # size-cap exhaustion
        return to_numpy(dcpe_mod.cluster(data, k, backend=name, **kw))


def assert_same_z(z: np.ndarray, z_ref: np.ndarray, rtol: float = 1e-6,
                  what: str = "") -> None:
    assert z.shape == z_ref.shape, what
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]], err_msg=what)
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=rtol, atol=1e-12, err_msg=what)


def random_case(seed: int, n_max: int = 200, metric: str = "euclidean"
                ) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, n_max + 1)) if seed % 4 else int(rng.integers(2, 12))
    # in one dimension all cosine distances are 0 or 2: nothing but ties
    d = int(rng.choice([2, 3, 8, 32] if metric == "cosine" else [1, 2, 3, 8, 32]))
    return tie_free(rng, n, d), n


@pytest.mark.parametrize("method,metric", METHOD_METRICS)
@pytest.mark.parametrize("seed", range(8))
def test_linkage_matrices_agree(dcpe_mod, method: str, metric: str, seed: int) -> None:
    x, n = random_case(seed, n_max=120, metric=metric)
    zs = {name: backend_z(dcpe_mod, name, x, method, metric) for name in ALL}
    for name in ("torch", "cpu"):
        assert_same_z(zs[name], zs["reference"], what=f"{name} vs reference, N={n}")


@pytest.mark.parametrize("method,metric", METHOD_METRICS[:8])
@pytest.mark.parametrize("seed", range(6))
def test_labels_agree(dcpe_mod, method: str, metric: str, seed: int) -> None:
    x, n = random_case(1000 + seed, n_max=150, metric=metric)
    z_ref = backend_z(dcpe_mod, "reference", x, method, metric)
    ks = sorted({1, min(2, n), max(1, n // 3), max(1, n - 1), n})
    for k in ks:
        expected = cut_z(z_ref, n, k)
        for name in ("torch", "cpu"):
            np.testing.assert_array_equal(
                cluster(dcpe_mod, name, x, k, linkage=method, metric=metric), expected,
                err_msg=f"{name}, N={n}, k={k}")
    k = ks[len(ks) // 2]
    np.testing.assert_array_equal(
        cluster(dcpe_mod, "reference", x, k, linkage=method, metric=metric), cut_z(z_ref, n, k))


@pytest.mark.parametrize("method", ["average", "centroid", "single", "complete", "weighted",
                                    "ward"])
@pytest.mark.parametrize("seed", range(8))
def test_size_cap_agrees(dcpe_mod, method: str, seed: int) -> None:
    x, n = random_case(2000 + seed, n_max=120)
    rng = np.random.default_rng(seed)
    for cap in sorted({1, int(rng.integers(1, max(2, n // 2) + 1)), max(1, n // 4)}):
        zs = {name: backend_z(dcpe_mod, name, x, method, max_cluster_size=cap)
              for name in ALL}
        for name in ("torch", "cpu"):
            assert_same_z(zs[name], zs["reference"], what=f"{name}, N={n}, cap={cap}")
        m = len(zs["reference"])
        for k in sorted({n, max(1, n - m), max(1, n - m // 2), 1}):
            expected = cut_z(zs["reference"], n, max(k, n - m))
            for name in ("torch", "cpu"):
                labels = cluster(dcpe_mod, name, x, k, linkage=method, max_cluster_size=cap)
                np.testing.assert_array_equal(labels, expected, err_msg=f"{name}, k={k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_backend_roots_are_correctly_rounded(dtype) -> None:
    """The torch backend's square roots are IEEE's (NumPy's), in place, on the integers and
    on random values: PyTorch's CPU ``sqrt`` is one ulp off for some of them on some x86
    CPUs (MKL's vector math), which made its heights differ from the reference's."""
    from dcpe.backends.torch_backend import _sqrt_

    rng = np.random.default_rng(0)
    a = np.concatenate([np.arange(1, 5000), rng.uniform(0, 100, 50_000)]).astype(dtype)
    t = torch.from_numpy(a.copy())
    out = _sqrt_(t)
    assert out.data_ptr() == t.data_ptr()
    np.testing.assert_array_equal(out.numpy(), np.sqrt(a))
    strided = torch.from_numpy(a.copy())[::2]  # not contiguous: PyTorch's own, still in place
    assert _sqrt_(strided).data_ptr() == strided.data_ptr()


@pytest.mark.parametrize("other", ["torch"])
@pytest.mark.parametrize("method,metric", [("single", "euclidean"), ("complete", "euclidean"),
                                           ("single", "sqeuclidean"),
                                           ("complete", "sqeuclidean"),
                                           ("weighted", "sqeuclidean")])
@pytest.mark.parametrize("seed", range(6))
def test_tie_rule_agrees_on_integer_grids(dcpe_mod, method: str, metric: str, seed: int,
                                          other: str) -> None:
    """Exactly tied distances that every backend computes bit-identically (min/max, or
    dyadic averages of integer squared distances): the backends that merge one pair at a
    time must then give the very same merges, in the same order (the round-based cpu
    engine applies the rule per nearest-neighbour choice; see dcpe.backends)."""
    rng = np.random.default_rng(3000 + seed)
    n, d = int(rng.integers(5, 90)), int(rng.choice([1, 2, 3]))
    x = integer_grid(rng, n, d, side=int(rng.integers(2, 5)))
    z_ref = backend_z(dcpe_mod, "reference", x, method, metric)
    np.testing.assert_array_equal(backend_z(dcpe_mod, other, x, method, metric), z_ref)


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
@pytest.mark.parametrize("method", ["average", "single", "centroid"])
def test_ties_same_values_any_order(dcpe_mod, backend: str, method: str) -> None:
    """On an integer grid (many ties) every backend's cuts have exactly k clusters; for
    single linkage the sorted heights (minimum-spanning-tree edge lengths) do not depend
    on how ties are broken and must equal the reference's."""
    rng = np.random.default_rng(77)
    x = integer_grid(rng, 80, 2, side=4)
    z = backend_z(dcpe_mod, backend, x, method)
    assert z.shape == (79, 4)
    if method == "single":
        z_ref = backend_z(dcpe_mod, "reference", x, method)
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(z_ref[:, 2]))
    for k in (1, 5, 17, 40, 79, 80):
        assert len(np.unique(cluster(dcpe_mod, backend, x, k, linkage=method))) == k


@pytest.mark.parametrize("seed", range(6))
def test_float32_agrees(dcpe_mod, seed: int) -> None:
    """float32 compute: same hierarchy, heights equal to float32 accuracy."""
    x64, n = random_case(4000 + seed, n_max=100)
    x = x64.astype(np.float32)
    zs = {name: backend_z(dcpe_mod, name, x) for name in ALL}
    for name in ("torch", "cpu"):
        assert hierarchy_sets(zs[name], n) == hierarchy_sets(zs["reference"], n)
        np.testing.assert_allclose(zs[name][:, 2], zs["reference"][:, 2], rtol=1e-5)
