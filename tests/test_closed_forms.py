"""Closed forms of average linkage: ``sqeuclidean`` and ``cosine`` from cluster moments.

Two engines are checked: the moment engine of the ``torch`` backend
(``torch_backend.closed_form_linkage``, which ``linkage`` uses for these two cases) and
``reference.closed_form_linkage`` (moments recomputed from the members at every step).
Oracles: SciPy's ``linkage(pdist(x, metric), "average")`` and the literal Eq. 2 of the
``reference`` backend (also with a size cap, which SciPy does not have).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import cut_z, hierarchy_sets, tie_free, to_numpy

torch = pytest.importorskip("torch")

METRICS = ("sqeuclidean", "cosine")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(scope="module")
def engines(dcpe_mod):  # noqa: ANN201
    """The two closed-form engines and the literal reference."""
    backends = dcpe_mod.backends
    return backends.get("reference"), backends.get("torch")


def torch_z(torch_backend, x: np.ndarray, metric: str, max_cluster_size: int | None = None,
            device: str = "cpu") -> np.ndarray:
    z = torch_backend.closed_form_linkage(torch.from_numpy(x.copy()).to(device), metric=metric,
                                          max_cluster_size=max_cluster_size)
    assert isinstance(z, np.ndarray) and z.dtype == np.float64 and z.shape[1] == 4
    return z


def scipy_z(x: np.ndarray, metric: str) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    return linkage(pdist(np.asarray(x, dtype=np.float64), metric), "average")


def ks(n: int) -> list[int]:
    return sorted({1, min(2, n), max(1, n // 2), max(1, n - 1), n})


def assert_same_merges(z: np.ndarray, z_ref: np.ndarray, rtol: float, what: str = "") -> None:
    """Same merges in the same order (ids and sizes exactly), heights to ``rtol``."""
    assert z.shape == z_ref.shape, what
    np.testing.assert_array_equal(z[:, [0, 1, 3]], z_ref[:, [0, 1, 3]], err_msg=what)
    np.testing.assert_allclose(z[:, 2], z_ref[:, 2], rtol=rtol, atol=0, err_msg=what)


def assert_matches_scipy(z: np.ndarray, z_ref: np.ndarray, metric: str, what: str) -> None:
    n = len(z_ref) + 1
    assert z.shape == z_ref.shape, what
    assert hierarchy_sets(z, n) == hierarchy_sets(z_ref, n), what
    for k in ks(n):
        np.testing.assert_array_equal(cut_z(z, n, k), cut_z(z_ref, n, k),
                                      err_msg=f"{what}, k={k}")
    # SciPy evaluates 1 - cos per pair, which carries an absolute rounding error of a few
    # 1e-16: tiny cosine heights agree only to that, not to rtol
    atol = 1e-13 if metric == "cosine" else 0.0
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(z_ref[:, 2]), rtol=1e-9, atol=atol,
                               err_msg=what)


def case(seed: int, metric: str, n_max: int = 200, dtype: type = np.float64
         ) -> tuple[np.ndarray, int, int]:
    """Tie-free data: d = (1, 2, 8, 64)[seed % 4] (3 instead of 1 for cosine, where all
    distances in one dimension are 0 or 2), N in [2, 11] for every fifth seed and in
    [12, n_max] otherwise, at most 80 for d = 64 (runtime)."""
    rng = np.random.default_rng(seed)
    d = (3 if metric == "cosine" else 1, 2, 8, 64)[seed % 4]
    n = int(rng.integers(2, 12)) if seed % 5 == 0 else int(rng.integers(12, n_max + 1))
    if d == 64:
        n = min(n, 80)
    return tie_free(rng, n, d, dtype), n, d


# --------------------------------------------------------------------------- vs SciPy


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", range(8))
def test_match_scipy(engines, metric: str, seed: int) -> None:
    reference, torch_backend = engines
    x, n, d = case(seed, metric)
    z_ref = scipy_z(x, metric)
    z_torch = torch_z(torch_backend, x, metric)
    assert_matches_scipy(z_torch, z_ref, metric, f"torch, N={n}, d={d}")
    if n <= 120:  # the reference engine recomputes all moments and pairs every step
        z_cf = reference.closed_form_linkage(x, metric=metric)
        assert_matches_scipy(z_cf, z_ref, metric, f"reference, N={n}, d={d}")
        assert_same_merges(z_torch, z_cf, rtol=1e-9, what=f"torch vs reference, N={n}")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_input(dcpe_mod, engines, metric: str, device: str) -> None:
    """Float32 input is computed in float64 from its (exactly representable) values, so
    the result is SciPy's on the same values in float64, to the same tolerance."""
    reference, torch_backend = engines
    for seed in (11, 13):
        x, n, d = case(seed, metric, n_max=120, dtype=np.float32)
        z_ref = scipy_z(x.astype(np.float64), metric)
        z = torch_z(torch_backend, x, metric, device=device)
        assert_matches_scipy(z, z_ref, metric, f"torch float32, N={n}, d={d}")
        z_api = dcpe_mod.linkage(torch.from_numpy(x).to(device), metric=metric,
                                 backend="torch")
        np.testing.assert_array_equal(to_numpy(z_api), z)
        if device == "cpu":
            assert_matches_scipy(reference.closed_form_linkage(x, metric=metric), z_ref,
                                 metric, f"reference float32, N={n}, d={d}")


# --------------------------------------------------------------------------- vs Eq. 2


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", range(4))
def test_identity_against_literal_definition(engines, metric: str, seed: int) -> None:
    """The closed form and the mean over member pairs (Eq. 2) give the same merges."""
    reference, torch_backend = engines
    x, n, d = case(100 + seed, metric, n_max=80)
    for cap in (None, max(1, n // 3)):
        z_lit = reference.linkage(x, method="average", metric=metric, max_cluster_size=cap)
        what = f"N={n}, d={d}, cap={cap}"
        assert_same_merges(reference.closed_form_linkage(x, metric=metric,
                                                         max_cluster_size=cap),
                           z_lit, rtol=1e-9, what=f"reference, {what}")
        assert_same_merges(torch_z(torch_backend, x, metric, cap), z_lit, rtol=1e-9,
                           what=f"torch, {what}")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", range(4))
def test_size_cap_against_literal_definition(dcpe_mod, engines, metric: str,
                                             seed: int) -> None:
    """The freeze rule: merges, stop point and labels as the literal reference's."""
    reference, torch_backend = engines
    x, n, d = case(201 + seed, metric, n_max=110)
    rng = np.random.default_rng(seed)
    for cap in sorted({1, max(1, n // 4), int(rng.integers(1, n + 1))}):
        z_lit = reference.linkage(x, method="average", metric=metric, max_cluster_size=cap)
        z = torch_z(torch_backend, x, metric, cap)
        assert_same_merges(z, z_lit, rtol=1e-9, what=f"N={n}, d={d}, cap={cap}")
        m = len(z_lit)
        for k in sorted({1, max(1, n - m // 2)}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # cap exhausted before k
                labels = dcpe_mod.cluster(torch.from_numpy(x), k, metric=metric,
                                          max_cluster_size=cap, backend="torch")
            np.testing.assert_array_equal(to_numpy(labels), cut_z(z_lit, n, max(k, n - m)),
                                          err_msg=f"N={n}, cap={cap}, k={k}")


def test_cosine_zero_row_as_other_backends(engines) -> None:
    """Called directly (the public API rejects zero rows for cosine), a zero row stays at
    the origin, at cosine distance 1/2 from every unit row, as in the literal reference.
    The other rows lie in a narrow cone (all their distances below 1/2), so the two zero
    rows merge first and join the rest last, with no tie at 1/2 on the way."""
    reference, torch_backend = engines
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3)) * 0.3 + [5.0, 0.0, 0.0]
    x[[4, 17]] = 0.0
    z_lit = reference.linkage(x, method="average", metric="cosine")
    assert z_lit[0, 2] == 0 and z_lit[-2, 2] < 0.5 and z_lit[-1, 2] == 0.5
    assert_same_merges(torch_z(torch_backend, x, "cosine"), z_lit, rtol=1e-9)
    assert_same_merges(reference.closed_form_linkage(x, metric="cosine"), z_lit, rtol=1e-9)


# --------------------------------------------------------------------------- ties


def test_small_exact_case(engines) -> None:
    """Four points 0, 1, 2, 3 on a line: three pairs tied at 1, the smallest merges first."""
    reference, torch_backend = engines
    x = np.arange(4.0)[:, None]
    want = np.array([[0, 1, 1.0, 2], [2, 3, 1.0, 2], [4, 5, 4.5, 4]])
    np.testing.assert_array_equal(torch_z(torch_backend, x, "sqeuclidean"), want)
    np.testing.assert_array_equal(reference.closed_form_linkage(x, metric="sqeuclidean"), want)
    np.testing.assert_array_equal(scipy_z(x, "sqeuclidean"), want)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", range(3))
def test_tie_rule_on_duplicates(engines, metric: str, seed: int) -> None:
    """Rows drawn from a few distinct ones: every distance between duplicates is exactly 0
    in every engine (equal means, zero spread), so the first merges are all tied and must
    follow the tie rule: the lexicographically smallest pair of identities first."""
    reference, torch_backend = engines
    rng = np.random.default_rng(300 + seed)
    distinct = tie_free(rng, int(rng.integers(2, 7)), 3)
    x = distinct[rng.integers(0, len(distinct), size=int(rng.integers(20, 90)))]
    n, n_zero = len(x), len(x) - len(np.unique(x, axis=0))
    z_lit = reference.linkage(x, method="average", metric=metric)
    assert np.all(z_lit[:n_zero, 2] == 0) and np.all(z_lit[n_zero:, 2] > 0)
    for z in (torch_z(torch_backend, x, metric),
              reference.closed_form_linkage(x, metric=metric)):
        np.testing.assert_array_equal(z[:n_zero], z_lit[:n_zero])
        assert_same_merges(z, z_lit, rtol=1e-9, what=f"N={n}")
    z_run = [torch_z(torch_backend, x, metric) for _ in range(2)]
    np.testing.assert_array_equal(z_run[0], z_run[1])


# --------------------------------------------------------------------------- engine


def test_linear_memory(engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tensor of the moment engine grows with N^2: with one row per difference block,
    every tensor that a torch function or tensor method returns holds at most N * d
    elements (the input's size)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    _, torch_backend = engines

    class Largest(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.numel = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    n, d = 150, 2  # above 64 slots, so that compaction runs too
    x = tie_free(np.random.default_rng(9), n, d)
    z_default = torch_z(torch_backend, x, "sqeuclidean", max_cluster_size=25)
    with Largest() as mode:
        torch_z(torch_backend, x[:60], "sqeuclidean")
    assert mode.numel >= 60 * 60, "the check sees the default (60, 60, d) block"
    monkeypatch.setattr(torch_backend, "_BLOCK_ELEMENTS", 1)
    for metric, cap in (("cosine", None), ("sqeuclidean", 25)):
        with Largest() as mode:
            z = torch_z(torch_backend, x, metric, cap)
        assert mode.numel <= n * d, (metric, cap, mode.numel)
        assert z.shape[0] == (n - 1 if cap is None else z_default.shape[0])
    np.testing.assert_array_equal(z, z_default)  # the block size changes nothing


def test_torch_backend_uses_closed_form(dcpe_mod, engines) -> None:
    """``torch`` runs average sqeuclidean/cosine on the moment engine; other cases stay on
    Algorithm 1 (whose float32 heights are float32 values)."""
    _, torch_backend = engines
    x = tie_free(np.random.default_rng(21), 50, 4)
    for metric in METRICS:
        z = torch_backend.linkage(torch.from_numpy(x), method="average", metric=metric,
                                  max_cluster_size=None)
        np.testing.assert_array_equal(z, torch_z(torch_backend, x, metric))
        x32 = x.astype(np.float32)
        z_api = dcpe_mod.linkage(x32, metric=metric, backend="torch")
        np.testing.assert_array_equal(z_api, torch_z(torch_backend, x32, metric))
        assert not np.array_equal(z_api[:, 2], z_api[:, 2].astype(np.float32))
    z_alg1 = dcpe_mod.linkage(x.astype(np.float32), backend="torch")
    np.testing.assert_array_equal(z_alg1[:, 2], z_alg1[:, 2].astype(np.float32))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_inputs(engines, n: int) -> None:
    reference, torch_backend = engines
    x = tie_free(np.random.default_rng(n), n, 3)
    for metric in METRICS:
        z_lit = reference.linkage(x, method="average", metric=metric)
        assert z_lit.shape == (n - 1, 4)
        assert_same_merges(torch_z(torch_backend, x, metric), z_lit, rtol=1e-12)
        assert_same_merges(reference.closed_form_linkage(x, metric=metric), z_lit, rtol=1e-12)


def test_euclidean_has_no_closed_form(engines) -> None:
    reference, torch_backend = engines
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="no closed form"):
        reference.closed_form_linkage(x, metric="euclidean")
    with pytest.raises(ValueError, match="no closed form"):
        torch_backend.closed_form_linkage(torch.from_numpy(x), metric="euclidean")
