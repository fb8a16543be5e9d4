"""Tests of dcpe.baselines: k-means, k-means++ seeding, balanced k-means, centroid-free
k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcpe import baselines
from dcpe.baselines import balanced_kmeans, centroid_free_kmeans, kmeans, kmeans_plusplus


def _blobs(n: int = 600, d: int = 8, centers: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)) * 3
    x = c[rng.integers(0, centers, n)] + rng.standard_normal((n, d))
    return x.astype(np.float32)


def _canonical(labels: np.ndarray) -> bool:
    _, first = np.unique(labels, return_index=True)
    return bool(np.all(np.diff(first) > 0)) and labels.min() == 0


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_history_never_increases(init):
    x = _blobs(seed=1)
    res = kmeans(x, 20, init=init, seed=3, tol=0.0)
    h = np.asarray(res.history)
    assert h.size == res.n_iter >= 2
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert res.inertia <= h[-1] * (1 + 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_plusplus_starts_both_baselines_as_their_own_seeding(dtype):
    x = _blobs(700, 6, seed=4).astype(dtype)
    centers, idx = kmeans_plusplus(x, 21, seed=9)
    assert centers.dtype == dtype and idx.dtype == np.int64 and centers.shape == (21, 6)
    np.testing.assert_array_equal(centers, x[idx])
    assert len(np.unique(idx)) == 21
    for fn in (kmeans, balanced_kmeans):
        own = fn(x, 21, seed=9, n_iter=8)
        given = fn(x, 21, init=centers, n_iter=8, seed=123)  # the seed is not used
        np.testing.assert_array_equal(given.labels, own.labels)
        assert given.inertia == own.inertia and given.history == own.history
    other, _ = kmeans_plusplus(x, 21, seed=10)
    assert not np.array_equal(other, centers)
    few, _ = kmeans_plusplus(x, 21, seed=9, n_local_trials=1)
    assert not np.array_equal(few, centers)
    t_centers, t_idx = kmeans_plusplus(torch.from_numpy(x), 21, seed=9)
    assert isinstance(t_centers, torch.Tensor) and isinstance(t_idx, torch.Tensor)
    np.testing.assert_array_equal(t_idx.numpy(), idx)


def test_init_centers_are_checked_before_any_work(monkeypatch):
    x = _blobs(200, 4)
    good = x[:5].copy()

    def no_work(*args, **kw):
        raise AssertionError("work started")

    monkeypatch.setattr(baselines, "_lloyd", no_work)
    monkeypatch.setattr(baselines, "_balanced_assign", no_work)
    for fn in (kmeans, balanced_kmeans):
        with pytest.raises(ValueError,
                           match=r"init must have shape \(k, d\) = \(5, 4\), got \(4, 4\)"):
            fn(x, 5, init=good[:4])
        with pytest.raises(ValueError, match=r"init must have shape .* got \(5, 3\)"):
            fn(x, 5, init=good[:, :3])
        with pytest.raises(ValueError, match=r"init must be a \(k, d\) = \(5, 4\) array of "
                                             r"initial centers, got shape \(4,\)$"):
            fn(x, 5, init=good[0])
        for idx in (np.arange(5), torch.arange(5)):
            with pytest.raises(ValueError, match=r"token indices\? pass their rows"):
                fn(x, 5, init=idx)
        with pytest.raises(TypeError, match=r"init=kmeans_plusplus\(x, k\)\[0\]"):
            fn(x, 5, init=kmeans_plusplus(x, 5))
        with pytest.raises(ValueError, match="init must be 2-D"):
            fn(x, 5, init=[[[1.0]]] * 5)
        bad = good.copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"init has 1 row\(s\) containing NaN"):
            fn(x, 5, init=bad)
        with pytest.raises(TypeError, match="init must be 'k-means\\+\\+', 'random' or a"):
            fn(x, 5, init=5)
        with pytest.raises(ValueError, match="init must be 'k-means"):
            fn(x, 5, init="kmeans++")
    with pytest.raises(ValueError, match="n_init must be 1 when init is an array"):
        kmeans(x, 5, init=good, n_init=2)
    with pytest.raises(TypeError, match="init must be 'k-means.* got ndarray"):
        centroid_free_kmeans(x, 5, init=good)  # seeds are tokens there


def test_init_centers_follow_the_data_dtype_and_are_not_mutated():
    x = _blobs(300, 5)
    start = x[::60].astype(np.float64)  # float64 centers for float32 data
    before = start.copy()
    res = kmeans(x, 5, init=start, n_iter=4)
    np.testing.assert_array_equal(start, before)
    assert res.centers.dtype == np.float32
    same = kmeans(x, 5, init=start.astype(np.float32), n_iter=4)
    np.testing.assert_array_equal(res.labels, same.labels)
    t = kmeans(torch.from_numpy(x), 5, init=torch.from_numpy(start), n_iter=4)
    np.testing.assert_array_equal(t.labels.numpy(), res.labels)


def test_kmeans_plusplus_rejects_bad_arguments():
    x = _blobs(50, 3)
    with pytest.raises(ValueError, match="k"):
        kmeans_plusplus(x, 51)
    with pytest.raises(ValueError, match="k"):
        kmeans_plusplus(x, 0)
    with pytest.raises(ValueError, match="n_local_trials"):
        kmeans_plusplus(x, 5, n_local_trials=0)
    with pytest.raises(ValueError, match="seed"):
        kmeans_plusplus(x, 5, seed=-1)
    with pytest.raises(ValueError, match="2-D"):
        kmeans_plusplus(x[0], 1)


def test_kmeans_inertia_matches_definition_and_centers_are_means():
    x = _blobs(seed=2)
    res = kmeans(x, 10, seed=0)
    labels, centers = res.labels, res.centers
    assert labels.dtype == np.int64 and labels.shape == (600,)
    assert centers.shape == (10, 8)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(10)])
    np.testing.assert_allclose(centers, means, rtol=1e-5, atol=1e-5)
    inertia = float(((x - means[labels]) ** 2).sum())
    assert res.inertia == pytest.approx(inertia, rel=1e-5)
    assert _canonical(labels)


def test_kmeans_objective_close_to_sklearn():
    from sklearn.cluster import KMeans

    ratios = []
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1000, 8)).astype(np.float32)
        ours = kmeans(x, 24, seed=seed, n_init=1)
        ref = KMeans(24, n_init=1, random_state=seed).fit(x)
        ratios.append(ours.inertia / ref.inertia_)
    assert abs(np.mean(ratios) - 1.0) < 0.03
    assert max(ratios) < 1.06


def test_kmeans_n_init_keeps_best():
    x = _blobs(seed=4)
    one = kmeans(x, 15, seed=0, n_init=1)
    three = kmeans(x, 15, seed=0, n_init=3)
    assert three.inertia <= one.inertia


def test_kmeans_deterministic_and_numpy_equals_torch():
    x = _blobs(seed=5)
    a = kmeans(x, 17, seed=11)
    b = kmeans(x, 17, seed=11)
    t = kmeans(torch.from_numpy(x), 17, seed=11)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert isinstance(t.labels, torch.Tensor) and t.labels.dtype == torch.int64
    np.testing.assert_array_equal(a.labels, t.labels.numpy())
    np.testing.assert_array_equal(a.centers, t.centers.numpy())
    assert a.history == t.history
    other = kmeans(x, 17, seed=12)
    assert other.history != a.history  # the seed matters


def test_kmeans_float64_and_k_edges():
    x = _blobs(n=50, seed=6).astype(np.float64)
    res = kmeans(x, 1)
    assert res.centers.dtype == np.float64
    np.testing.assert_array_equal(res.labels, np.zeros(50, dtype=np.int64))
    res = kmeans(x, 50)
    np.testing.assert_array_equal(res.labels, np.arange(50))
    assert res.inertia == pytest.approx(0.0, abs=1e-9)


def test_kmeans_duplicates_fill_empty_clusters():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 4)).astype(np.float32)
    x = np.repeat(base, 20, axis=0)
    res = kmeans(x, 5, init="random", seed=1)
    # 5 distinct points, 5 clusters: the optimum puts each distinct point alone.
    assert res.inertia == pytest.approx(0.0, abs=1e-6)
    assert len(np.unique(res.labels)) == 5


@pytest.mark.parametrize("n,k", [(600, 12), (601, 12), (500, 7), (64, 64), (10, 1)])
def test_balanced_sizes_exact(n, k):
    x = _blobs(n=n, seed=n)
    res = balanced_kmeans(x, k, seed=0)
    sizes = np.bincount(res.labels, minlength=k)
    assert sizes.size == k
    assert sizes.sum() == n
    assert set(np.unique(sizes)) <= {n // k, n // k + 1}
    assert int(np.sum(sizes == n // k + 1)) == n % k
    assert _canonical(res.labels)


def test_balanced_history_and_quality():
    x = _blobs(n=1200, centers=16, seed=7)
    res = balanced_kmeans(x, 16, seed=2)
    h = np.asarray(res.history)
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert res.inertia <= h[-1] * (1 + 1e-9)
    # Equal sizes cost something but the result must beat a random balanced split.
    perm = np.random.default_rng(0).permutation(1200) % 16
    means = np.stack([x[perm == c].mean(axis=0) for c in range(16)])
    random_inertia = float(((x - means[perm]) ** 2).sum())
    assert res.inertia < 0.5 * random_inertia


def test_balanced_deterministic_and_numpy_equals_torch():
    x = _blobs(n=800, seed=8)
    a = balanced_kmeans(x, 25, seed=4)
    t = balanced_kmeans(torch.from_numpy(x), 25, seed=4)
    np.testing.assert_array_equal(a.labels, t.labels.numpy())
    np.testing.assert_array_equal(balanced_kmeans(x, 25, seed=4).labels, a.labels)


def test_balanced_sample_codebook_runs():
    import dcpe

    x = dcpe.datasets.sample_codebook()[:4096]
    res = balanced_kmeans(x, 128, seed=0, n_iter=5)
    assert np.all(np.bincount(res.labels, minlength=128) == 32)


def _balanced_starts(monkeypatch, x: np.ndarray, k: int, **kw) -> list[tuple[bool, float]]:
    """For each assignment step of balanced_kmeans after the first: whether it was given
    the previous step's prices and labels (both or neither), and the centers' mean squared
    move over the tokens' mean squared distance to the moved centers (previous labels)."""
    calls: list[tuple[np.ndarray, bool, bool, np.ndarray]] = []
    assign = baselines._balanced_assign

    def record(xt, centers, capacity, n_candidates, prices=None, labels=None, lists=None):
        got = assign(xt, centers, capacity, n_candidates, prices, labels, lists)
        calls.append((centers.numpy().astype(np.float64), prices is not None,
                      labels is not None, got[0].numpy().copy()))
        return got

    monkeypatch.setattr(baselines, "_balanced_assign", record)
    balanced_kmeans(x, k, **kw)
    xd = x.astype(np.float64)
    starts = []
    for (before, _, _, assigned), (after, prices, labels, _) in zip(calls, calls[1:]):
        assert prices == labels
        move = float(((after - before) ** 2).sum(axis=1).mean())
        spread = float(((xd - after[assigned]) ** 2).sum(axis=1).mean())
        starts.append((prices, move / spread))
    return starts


def test_balanced_kmeans_starts_warm_only_after_small_moves(monkeypatch):
    # The second step (the k-means++ seeds, tokens, replaced by their clusters' means)
    # moves the centers by about the tokens' distance to them and starts from no prices;
    # the later ones move less and less, and start from the previous prices and
    # assignment once the move is below a third of that distance.
    import dcpe

    x = dcpe.datasets.make_sample_codebook(2048, 8)
    for k in (16, 64, 512):
        starts = _balanced_starts(monkeypatch, x, k, seed=0, n_iter=6)
        assert len(starts) >= 3
        assert [warm for warm, _ in starts] == [r < 1 / 3 for _, r in starts], (k, starts)
        assert not starts[0][0] and starts[-1][0], (k, starts)
    # the centers of a run cut short, given as init, move little: every step starts warm
    early = balanced_kmeans(x, 64, seed=0, n_iter=4)
    starts = _balanced_starts(monkeypatch, x, 64, init=early.centers, n_iter=4, tol=0.0)
    assert starts and all(warm for warm, _ in starts), starts


def _optimal_balanced_cost(x: np.ndarray, c: np.ndarray, cap: np.ndarray) -> float:
    """The optimum of the capacity-constrained assignment by SciPy's Hungarian solver
    (every center expanded into cap[j] identical slots)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    slots = np.repeat(np.arange(len(c)), cap)
    cost = cdist(x, c, "sqeuclidean")[:, slots]
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


@pytest.mark.parametrize("seed", range(40))
def test_balanced_assignment_is_optimal(seed):
    # the auction's cost equals the Hungarian optimum up to its relative 1e-6 (float64)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    k = int(rng.integers(1, n + 1))
    d = int(rng.integers(1, 5))
    x = rng.standard_normal((n, d))
    c = rng.standard_normal((k, d))
    if seed % 4 == 0:  # ties: integer grids
        x, c = np.round(x * 2), np.round(c * 2)
    cap = np.full(k, n // k, dtype=np.int64)
    cap[: n % k] += 1
    labels, prices = baselines._balanced_assign(torch.from_numpy(x), torch.from_numpy(c),
                                                torch.from_numpy(cap), int(rng.integers(1, 6)))
    got = labels.numpy()
    np.testing.assert_array_equal(np.bincount(got, minlength=k), cap)
    cost = float(((x - c[got]) ** 2).sum())
    best = _optimal_balanced_cost(x, c, cap)
    assert best - 1e-9 <= cost <= best * (1 + 1e-6) + 1e-12
    assert prices.shape == (k,) and np.all(prices >= 0)
    # a second call started from these prices gives an optimal answer too
    again, _ = baselines._balanced_assign(torch.from_numpy(x), torch.from_numpy(c),
                                          torch.from_numpy(cap), 3, prices)
    assert float(((x - c[again.numpy()]) ** 2).sum()) <= best * (1 + 1e-6) + 1e-12
    # warm starts: these prices with this assignment, and no prices with a random one
    for warm_prices, warm_labels in ((prices, labels),
                                     (None, torch.from_numpy(rng.permutation(
                                         np.repeat(np.arange(k), cap))))):
        again, _ = baselines._balanced_assign(torch.from_numpy(x), torch.from_numpy(c),
                                              torch.from_numpy(cap), 3, warm_prices,
                                              warm_labels)
        np.testing.assert_array_equal(np.bincount(again.numpy(), minlength=k), cap)
        assert float(((x - c[again.numpy()]) ** 2).sum()) <= best * (1 + 1e-6) + 1e-12


def _check_two_warm_steps(x: np.ndarray, c: np.ndarray, cap: np.ndarray,
                          rng: np.random.Generator) -> None:
    """Two assignments with 2 candidates per token, the second from the first's prices and
    labels after the centers moved a little (as in balanced_kmeans); each must fill every
    center exactly, at the Hungarian optimum up to the relative 1e-5."""
    prices, labels = None, None
    x64 = x.astype(np.float64)
    for _step in range(2):
        labels, prices = baselines._balanced_assign(
            torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(cap), 2, prices, labels)
        got = labels.numpy()
        np.testing.assert_array_equal(np.bincount(got, minlength=len(c)), cap)
        c64 = c.astype(np.float64)
        cost = float(((x64 - c64[got]) ** 2).sum())
        best = _optimal_balanced_cost(x64, c64, cap)
        assert best - 1e-9 <= cost <= best * (1 + 1e-5)
        c = (c + rng.standard_normal(c.shape) * 0.02).astype(c.dtype)


@pytest.mark.parametrize("d", [4, 5, 8, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_balanced_assignment_optimal_with_many_centers(d, dtype):
    # k large next to the candidate lists: lists run out and are rebuilt (sampled
    # threshold, batched refresh); then the centers move a little and the next call starts
    # from the previous prices and assignment, as in balanced_kmeans
    rng = np.random.default_rng(d)
    n = 600
    x = rng.standard_normal((n, d)).astype(dtype)
    x[:200] *= 0.05  # a crowded region whose points must travel
    for k in (300, 150):
        c = x[rng.choice(n, k, replace=False)] + dtype(0.01)
        _check_two_warm_steps(x, c, np.full(k, n // k, dtype=np.int64), rng)


@pytest.mark.parametrize("d,order", [(5, "random"), (8, "random"), (8, "sample-rich")])
def test_balanced_assignment_optimal_with_sampled_list_thresholds(d, order):
    # k in the thousands: a list rebuilt from all centers takes its threshold from a sample
    # (every 16th center) of the values and keeps the centers that pass it (packed four at
    # a time), falling back to all centers when too few pass; short lists (2 candidates)
    # run out often, and the second call starts from moved centers, as in balanced_kmeans.
    # "sample-rich" puts the crowded region's centers at the sampled positions, so that
    # the sample's threshold is too high and the fallback runs.
    rng = np.random.default_rng(100 + d)
    n, k = 2198, 1099  # k % 4 == 3: the filter's scalar tail too
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:700] *= np.float32(0.05)  # a crowded region whose points must travel
    c = x[rng.choice(n, k, replace=False)] + np.float32(0.01)
    if order == "sample-rich":
        by_norm = c[np.argsort(np.linalg.norm(c, axis=1), kind="stable")]
        sampled = np.arange(0, k, 16)
        slots = np.concatenate([sampled, np.setdiff1d(np.arange(k), sampled)])
        c = np.empty_like(c)
        c[slots] = by_norm
    _check_two_warm_steps(x, c, np.full(k, 2, dtype=np.int64), rng)


def test_balanced_assignment_optimal_on_crowded_sample_codebook():
    # two tokens per cluster on the sample codebook: the optimum is checked on a slice
    # against the Hungarian solver, in float32 as balanced_kmeans runs it
    import dcpe

    x = dcpe.datasets.sample_codebook()[:400]
    c = x[::2].copy() + np.float32(1e-3)
    cap = np.full(200, 2, dtype=np.int64)
    labels, _ = baselines._balanced_assign(torch.from_numpy(x), torch.from_numpy(c),
                                           torch.from_numpy(cap), 4)
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    cost = float(((x64 - c64[labels.numpy()]) ** 2).sum())
    assert cost <= _optimal_balanced_cost(x64, c64, cap) * (1 + 1e-5)


def _carried_steps(x: np.ndarray, c: np.ndarray, cap: np.ndarray, rng: np.random.Generator,
                   far: int, n_candidates: int, move: float, steps: int = 4) -> int:
    """Assignments of successive steps, as balanced_kmeans makes them: each from the
    previous step's prices, labels and candidate lists (``lists``), after the centers moved
    by about ``move`` (``far`` of them, a lot). Each must fill every center exactly, at the
    Hungarian optimum up to the relative 1e-6 (1e-5 in float32). Returns how many lists
    the steps took from their previous step."""
    from dcpe import _C

    x64 = x.astype(np.float64)
    tol = 1e-6 if x.dtype == np.float64 else 1e-5
    prices, labels, lists, carried = np.zeros(len(c)), None, {}, 0
    for step in range(steps):
        labels, st = _C.balanced_assign_cpu(x, c, cap, prices, n_candidates, 1e-6,
                                            labels=labels, lists=lists)
        assert set(lists) == {"centers", "prices", "offsets", "ids", "bound", "nearest"}
        if step > 0:
            assert 0 <= st["carried"] <= len(x)
            carried += st["carried"]
        # the final eps stays within 1e-6 of the mean squared distance to the nearest
        # center (here a lower bound of it for the carried lists)
        nearest = ((x64[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(2).min(1)
        assert st["eps"] <= 1e-6 * nearest.mean() * (1 + 1e-9)
        np.testing.assert_array_equal(np.bincount(labels, minlength=len(c)), cap)
        c64 = c.astype(np.float64)
        cost = float(((x64 - c64[labels]) ** 2).sum())
        best = _optimal_balanced_cost(x64, c64, cap)
        assert best - 1e-9 <= cost <= best * (1 + tol) + 1e-12
        moved = c + move * rng.standard_normal(c.shape)
        jump = rng.choice(len(c), far, replace=False)
        moved[jump] = x[rng.choice(len(x), far, replace=False)]  # far moves
        c = moved.astype(c.dtype)
    return carried


@pytest.mark.parametrize("d", [2, 8, 24])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_balanced_assignment_optimal_from_carried_lists(d, dtype):
    # Each call starts from the lists of the previous step's call: their distances computed
    # again for the moved centers and their bounds widened by the moves; the centers that
    # moved farthest are checked against every token and join a list that they now belong
    # in; lists that ran out are made anew. Every step stays optimal.
    rng = np.random.default_rng(300 + d)
    n = 480
    x = rng.standard_normal((n, d)).astype(dtype)
    x[:160] *= dtype(0.05)  # a crowded region whose points must travel
    for k, far, n_candidates, move in ((240, 0, 2, 0.01), (240, 0, 4, 0.1), (120, 3, 4, 0.01),
                                       (160, 20, 32, 0.03)):
        c = x[rng.choice(n, k, replace=False)] + dtype(0.01)
        cap = np.full(k, n // k, dtype=np.int64)
        assert _carried_steps(x, c, cap, rng, far, n_candidates, move) > 0


def _assert_prices_certify(x: np.ndarray, c: np.ndarray, labels: np.ndarray,
                           prices: np.ndarray, eps: float) -> None:
    """eps-complementary slackness at the returned prices, the auction's certificate of
    optimality (the cost is then within n * eps of the optimum): every token's center is
    within eps of its best value -|x - c_j|^2 - p_j over all centers."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    dist = ((x64[:, None, :] - c64[None]) ** 2).sum(2)
    value = -dist - prices[None]
    own = value[np.arange(len(x)), labels]
    rounding = 1e-12 * (dist.max() + prices.max())
    assert np.all(own >= value.max(1) - eps - rounding)


@pytest.mark.parametrize("seed", range(40))
def test_balanced_assignment_prices_certify_it(seed):
    # After every call, cold, warm (the previous prices and labels, the centers moved) and
    # from carried lists, the returned prices leave every token within the final eps of its
    # best center. Kept tokens hold their slots at the bids they would place (a center's
    # price rises to the next holder's bid when a bid evicts the lowest): a holder's bid
    # above what it would bid lets the price rise past it, and its eps-CS fail.
    from dcpe import _C

    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(60, 400))
    k = int(rng.integers(2, n // 2))
    d = int(rng.integers(1, 10))
    dtype = (np.float32, np.float64)[seed % 2]
    x = rng.standard_normal((n, d)).astype(dtype)
    x[: n // 3] *= dtype(0.05)  # a crowded region whose points must travel
    c = x[rng.choice(n, k, replace=False)] + dtype(0.01)
    cap = np.full(k, n // k, np.int64)
    cap[: n % k] += 1
    n_candidates = (2, 4, 32)[seed % 3]
    prices, labels, lists = np.zeros(k), None, {}
    for _step in range(4):
        labels, st = _C.balanced_assign_cpu(x, c, cap, prices, n_candidates, 1e-6,
                                            labels=labels, lists=lists)
        np.testing.assert_array_equal(np.bincount(labels, minlength=k), cap)
        assert np.all(prices >= 0)
        _assert_prices_certify(x, c, labels, prices, st["eps"])
        c = (c + rng.standard_normal(c.shape) * 0.03).astype(dtype)


def test_balanced_assignment_widens_carried_bounds_by_the_moves():
    # Four groups of three tokens at 0, 1, 100 and 101, each at its own center; lists of
    # two centers. Then the centers at 0 and 100 move to 0.3 and 0.1: the first group
    # still has its center as its list's best, but the center that came from 100 (outside
    # its list) is now nearer, and the optimum swaps the groups at 0 and at 100. Only a
    # bound widened by that move sends the first group to it (unwidened, the step ends at
    # 29,940.9 against the optimum's 29,405.1).
    from dcpe import _C

    x = np.concatenate([np.arange(3) * 1e-3 + o for o in (0.0, 1.0, 100.0, 101.0)])[:, None]
    c = np.array([[0.0], [1.0], [100.0], [101.0]])
    cap = np.full(4, 3, np.int64)
    prices, lists = np.zeros(4), {}
    labels, _ = _C.balanced_assign_cpu(x, c, cap, prices, 2, lists=lists)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
    moved = np.array([[0.3], [1.0], [0.1], [101.0]])
    got, st = _C.balanced_assign_cpu(x, moved, cap, prices, 2, labels=labels, lists=lists)
    assert st["carried"] > 0
    np.testing.assert_array_equal(got, np.repeat([2, 0, 1, 3], 3))
    cost = float(((x - moved[got]) ** 2).sum())
    assert cost <= _optimal_balanced_cost(x, moved, cap) * (1 + 1e-6)


def test_balanced_assignment_ignores_lists_its_prices_do_not_bound():
    # A list's bound holds for prices at least those it was made at: a call started from
    # lower prices (here none) makes every list anew, and fills the dict with its own.
    from dcpe import _C

    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 3))
    c = x[:50] + 0.01
    cap = np.full(50, 4, np.int64)
    prices, lists = np.zeros(50), {}
    _C.balanced_assign_cpu(x, c, cap, prices, 4, lists=lists)
    assert prices.max() > 0
    first = {key: v.copy() for key, v in lists.items()}
    labels, st = _C.balanced_assign_cpu(x, c + 0.001, cap, np.zeros(50), 4, lists=lists)
    assert st["carried"] == 0
    assert not np.array_equal(lists["centers"], first["centers"])
    cost = float(((x - (c + 0.001)[labels]) ** 2).sum())
    assert cost <= _optimal_balanced_cost(x, c + 0.001, cap) * (1 + 1e-6) + 1e-12
    # and the same prices again: the lists are taken
    _, st = _C.balanced_assign_cpu(x, c + 0.002, cap, lists["prices"].copy(), 4, lists=lists)
    assert st["carried"] > 0


def test_balanced_assignment_rejects_lists_of_another_problem():
    from dcpe import _C

    rng = np.random.default_rng(8)
    x = rng.standard_normal((40, 2))
    c = x[:10] + 0.01
    cap = np.full(10, 4, np.int64)
    lists: dict = {}
    _C.balanced_assign_cpu(x, c, cap, np.zeros(10), 2, lists=lists)
    with pytest.raises(ValueError, match="'lists' = list is invalid: expected None or a dict"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(10), lists=[])
    with pytest.raises(ValueError, match="does not fit these points"):
        _C.balanced_assign_cpu(x[:20], c, np.full(10, 2, np.int64), np.zeros(10),
                               lists=dict(lists))
    bad = dict(lists, ids=np.where(lists["ids"] == 0, 10, lists["ids"]).astype(np.int32))
    with pytest.raises(ValueError, match="not a previous call's"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(10), lists=bad)
    missing = {key: v for key, v in lists.items() if key != "bound"}
    with pytest.raises(ValueError, match="'lists' = bound .*missing"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(10), lists=missing)


def test_balanced_assignment_rejects_bad_arguments():
    from dcpe import _C

    x = np.zeros((4, 2), np.float32)
    c = np.zeros((2, 2), np.float32)
    cap = np.array([2, 2], np.int64)
    with pytest.raises(ValueError, match="sum\\(capacity\\)"):
        _C.balanced_assign_cpu(x, c, np.array([2, 1], np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="capacity"):
        _C.balanced_assign_cpu(x, c, np.array([4, 0], np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="centers.dtype"):
        _C.balanced_assign_cpu(x, c.astype(np.float64), cap, np.zeros(2))
    with pytest.raises(ValueError, match="prices"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(3))
    with pytest.raises(ValueError, match="1 <= k <= N"):
        _C.balanced_assign_cpu(x[:1], c, np.array([1, 0], np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="rel_eps"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), rel_eps=0.0)
    with pytest.raises(ValueError, match="start_rel_eps"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), start_rel_eps=-1.0)
    with pytest.raises(ValueError, match=r"labels\[2\]' = 2 is invalid: expected 0 <= label < k"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), labels=np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="capacity"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), labels=np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), labels=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="int64"):
        _C.balanced_assign_cpu(x, c, cap, np.zeros(2), labels=np.array([0.0, 1, 0, 1]))


def _brute_centroid_free_step(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    mean = np.stack([d[:, labels == c].mean(axis=1) for c in range(k)], axis=1)
    own = mean[np.arange(len(x)), labels]
    best = mean.argmin(axis=1)
    return np.where(own <= mean.min(axis=1), labels, best)


def test_centroid_free_fixed_point_matches_brute_force():
    x = _blobs(n=200, centers=5, seed=10).astype(np.float64)
    res = centroid_free_kmeans(x, 5, seed=0, n_iter=100)
    assert res.n_iter < 100  # converged
    # At convergence one more brute-force step changes nothing.
    np.testing.assert_array_equal(_brute_centroid_free_step(x, res.labels, 5), res.labels)
    assert _canonical(res.labels)
    assert len(res.history) == res.n_iter


def test_centroid_free_one_step_matches_brute_force():
    x = _blobs(n=150, centers=6, seed=11).astype(np.float64)
    start = kmeans(x, 6, seed=0, n_iter=1)  # nearest-seed assignment, like the init
    brute = _brute_centroid_free_step(x, start.labels, 6)
    xt = torch.from_numpy(x)
    lab = torch.from_numpy(start.labels)
    counts = torch.bincount(lab, minlength=6)
    mean = baselines._mean_member_distances(xt, lab, 6, counts, slice(0, 150)).numpy()
    own = mean[np.arange(150), start.labels]
    ours = np.where(own <= mean.min(axis=1), start.labels, mean.argmin(axis=1))
    np.testing.assert_array_equal(ours, brute)


def test_centroid_free_deterministic_and_torch():
    x = _blobs(n=300, seed=12)
    a = centroid_free_kmeans(x, 9, seed=1)
    t = centroid_free_kmeans(torch.from_numpy(x), 9, seed=1)
    np.testing.assert_array_equal(a.labels, t.labels.numpy())
    assert len(np.unique(a.labels)) == 9


@pytest.mark.parametrize("fn", [kmeans, balanced_kmeans, centroid_free_kmeans])
def test_bad_inputs(fn):
    x = _blobs(n=20)
    with pytest.raises(ValueError, match="k=.* is out of range"):
        fn(x, 0)
    with pytest.raises(ValueError, match="k=.* is out of range"):
        fn(x, 21)
    with pytest.raises(TypeError, match="k must be an integer"):
        fn(x, 2.5)
    with pytest.raises(ValueError, match="2-D"):
        fn(x[0], 2)
    with pytest.raises(ValueError, match="N >= 1"):
        fn(x[:0], 1)
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match="2 row"):
        fn(bad, 2)
    with pytest.raises(TypeError, match="real numbers"):
        fn(np.array([["a", "b"]]), 1)
    with pytest.raises(ValueError, match="init"):
        fn(x, 2, init="kmeans++")
    with pytest.raises(ValueError, match="seed"):
        fn(x, 2, seed=-1)
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 is out of range"):
        fn(x, 2, seed=2**64)  # not torch's "Overflow when unpacking long long"
    fn(x, 2, seed=2**64 - 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = _blobs(n=500, seed=13)
    cpu = kmeans(x, 12, seed=0)
    gpu = kmeans(torch.from_numpy(x).cuda(), 12, seed=0)
    assert gpu.labels.device.type == "cuda"
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-3)
    bal = balanced_kmeans(torch.from_numpy(x).cuda(), 10, seed=0)
    assert torch.all(torch.bincount(bal.labels) == 50)
    centers, idx = kmeans_plusplus(torch.from_numpy(x).cuda(), 12, seed=0)
    assert centers.device.type == "cuda" and idx.device.type == "cuda"
    assert torch.equal(centers, torch.from_numpy(x).cuda()[idx])
    again = kmeans(torch.from_numpy(x).cuda(), 12, init=centers)
    assert again.labels.device.type == "cuda"
    assert again.inertia == pytest.approx(gpu.inertia, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_kmeans_on_cuda_gives_the_cpu_labels(tf32, monkeypatch):
    # Lloyd's steps on CUDA tensors rank the centers by a matrix product and settle the
    # near-ties by the host's distances: from the same initial centers, the host's labels,
    # with TF32 switched on (as LlamaGen's training script does) or off
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    x = _blobs(n=2000, d=8, centers=30, seed=21)
    centers, _ = kmeans_plusplus(x, 30, seed=0)
    want = kmeans(x, 30, init=centers)
    got = kmeans(torch.from_numpy(x).cuda(), 30, init=torch.from_numpy(centers).cuda())
    np.testing.assert_array_equal(got.labels.cpu().numpy(), want.labels)
    assert got.n_iter == want.n_iter
    # the search alone, on near-ties at rounding level (float32 above 12 dimensions)
    xn, cn = _mirrored_pairs(np.random.default_rng(3), 16, 200, np.float32)
    got = baselines._nearest(torch.from_numpy(xn).cuda(), torch.from_numpy(cn).cuda())
    np.testing.assert_array_equal(got.cpu().numpy(), _first_nearest(xn, cn, None))


@pytest.mark.parametrize("d", [1, 4, 5, 8, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_center_matches_brute_force(d, dtype):
    # the compiled scan of Lloyd's assignment step: the first nearest center by exact
    # squared distances, across block boundaries (k > 256), with ties and a mask
    from dcpe import _C

    rng = np.random.default_rng(d)
    x = rng.integers(-3, 4, size=(700, d)).astype(dtype)  # integer grid: many ties
    c = rng.integers(-3, 4, size=(600, d)).astype(dtype)
    c[300:] = c[:300]  # duplicated centers: ties across blocks go to the smaller index
    mask = rng.random(600) < 0.7
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    dist = ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(_C.nearest_cpu(x, c), dist.argmin(axis=1))
    masked = np.where(mask[None, :], dist, np.inf)
    np.testing.assert_array_equal(_C.nearest_cpu(x, c, mask), masked.argmin(axis=1))
    # the host path of _nearest, and the matrix-product path of other devices (exact on
    # these small integers)
    for fn in (baselines._nearest, baselines._nearest_matmul):
        got = fn(torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(mask))
        np.testing.assert_array_equal(got.numpy(), masked.argmin(axis=1))


def _sequential_sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances in float64, the coordinates' terms added in order, each operation
    rounded on its own: the compiled search's arithmetic, bit for bit."""
    x, c = x.astype(np.float64), c.astype(np.float64)
    s = np.zeros((len(x), len(c)))
    for t in range(x.shape[1]):
        s += (x[:, None, t] - c[None, :, t]) ** 2
    return s


@pytest.mark.parametrize("d", [1, 2, 3, 8, 12, 13, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_center_on_real_valued_points(d, dtype):
    # the kd-tree over the centers (up to 12 dimensions, from 256 centers) and the scan
    # (fewer centers, or more dimensions) both give the first nearest center by the same
    # distances: clustered points, some centers repeated (ties across leaves), a mask
    from dcpe import _C

    rng = np.random.default_rng(100 + d)
    hubs = rng.standard_normal((12, d))
    x = (hubs[rng.integers(0, 12, 1500)] + 0.3 * rng.standard_normal((1500, d))).astype(dtype)
    for k in (100, 300, 1000):
        c = x[rng.choice(1500, k, replace=False)].copy()
        c[k // 2:k // 2 + 20] = c[:20]  # repeated centers: the smaller index wins
        dist = _sequential_sq_dist(x, c)
        np.testing.assert_array_equal(_C.nearest_cpu(x, c), dist.argmin(axis=1))
        mask = rng.random(k) < 0.6
        masked = np.where(mask[None, :], dist, np.inf)
        np.testing.assert_array_equal(_C.nearest_cpu(x, c, mask), masked.argmin(axis=1))
        # the thread count does not change the answer
        np.testing.assert_array_equal(_C.nearest_cpu(x, c, num_threads=1),
                                      _C.nearest_cpu(x, c, num_threads=3))


def _mirrored_pairs(rng: np.random.Generator, d: int, pairs: int, dtype: type) -> tuple:
    """Points each with two centers at the same distance in real arithmetic (the second
    the first mirrored through a hyperplane through the point), which rounding to ``dtype``
    separates by about one unit in the last place: below what a float32 (or float64)
    matrix product resolves. Far centers fill k past 128."""
    x = rng.standard_normal((pairs, d)) * 3
    a = x + 0.1 * rng.standard_normal((pairs, d))
    normal = rng.standard_normal((pairs, d))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    b = a - 2 * ((a - x) * normal).sum(1, keepdims=True) * normal
    far = 40 + rng.standard_normal((72, d))
    c = np.concatenate([a, b, far])[rng.permutation(2 * pairs + 72)]
    return x.astype(dtype), c.astype(dtype)


@pytest.mark.parametrize("d", [13, 16, 40, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_by_product_gives_the_scans_answer(d, dtype):
    # Above 12 dimensions from 128 centers on, _nearest ranks the centers by a matrix
    # product (float32 for float32 data) and computes only those within its error bound
    # of the best: the scan's answer (DCPE_CPU_PRODUCTS=0), to the last tie and rounding.
    from dcpe import _C

    assert baselines._PRODUCT_MIN_D <= 13 and baselines._PRODUCT_MIN_K <= 128
    rng = np.random.default_rng(d)
    hubs = rng.standard_normal((10, d))
    clustered = hubs[rng.integers(0, 10, 900)] + 0.2 * rng.standard_normal((900, d))
    near, pair_centers = _mirrored_pairs(rng, d, 150, dtype)
    cases = [
        (clustered, clustered[rng.choice(900, 300, replace=False)]),
        (1e3 + clustered, 1e3 + clustered[:200]),             # far from the origin
        (clustered, np.concatenate([clustered[:150]] * 2)),  # every center twice
        (near, pair_centers),                                # near-ties at rounding level
    ]
    for x, c in cases:
        x, c = x.astype(dtype), c.astype(dtype)
        scan = _C.nearest_cpu(x, c)
        got = baselines._nearest(torch.from_numpy(x), torch.from_numpy(c))
        np.testing.assert_array_equal(got.numpy(), scan)
        mask = rng.random(len(c)) < 0.6
        got = baselines._nearest(torch.from_numpy(x), torch.from_numpy(c),
                                 torch.from_numpy(mask))
        np.testing.assert_array_equal(got.numpy(), _C.nearest_cpu(x, c, mask))
    # the mirrored pairs do split the products: the float32 (or float64) ranking alone
    # picks the other center of a pair for some points
    work = torch.float32 if dtype == np.float32 else torch.float64
    xw, cw = torch.from_numpy(near).to(work), torch.from_numpy(pair_centers).to(work)
    ranked = (cw.square().sum(1) - 2 * xw @ cw.T).argmin(1).numpy()
    assert (ranked != _C.nearest_cpu(near, pair_centers)).any()


def test_nearest_by_product_keeps_float64_when_torch_rounds_float32_products_lower(
        monkeypatch):
    # set_float32_matmul_precision("medium") lets oneDNN multiply float32 in bfloat16:
    # the float32 bound would not hold, so the products are float64, with the same answer
    from dcpe import _C

    rng = np.random.default_rng(7)
    x, c = _mirrored_pairs(rng, 24, 100, np.float32)
    dtypes = []
    addmm = torch.addmm

    def spy(*args, **kwargs):
        dtypes.append(args[1].dtype)
        return addmm(*args, **kwargs)

    monkeypatch.setattr(baselines.torch, "addmm", spy)
    got = baselines._nearest(torch.from_numpy(x), torch.from_numpy(c))
    assert set(dtypes) == {torch.float32}
    np.testing.assert_array_equal(got.numpy(), _C.nearest_cpu(x, c))
    dtypes.clear()
    monkeypatch.setattr(baselines.torch, "get_float32_matmul_precision", lambda: "medium")
    assert not baselines._float32_products_exact()
    got = baselines._nearest(torch.from_numpy(x), torch.from_numpy(c))
    assert set(dtypes) == {torch.float64}
    np.testing.assert_array_equal(got.numpy(), _C.nearest_cpu(x, c))


def test_nearest_center_rejects_bad_arguments():
    from dcpe import _C

    x = np.zeros((4, 2), np.float32)
    c = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="centers.dtype"):
        _C.nearest_cpu(x, c.astype(np.float64))
    with pytest.raises(ValueError, match="centers.shape"):
        _C.nearest_cpu(x, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="at least one center"):
        _C.nearest_cpu(x, c[:0])
    with pytest.raises(ValueError, match="no usable center"):
        _C.nearest_cpu(x, c, np.zeros(3, bool))
    with pytest.raises(ValueError, match="mask"):
        _C.nearest_cpu(x, c, np.ones(2, bool))
    with pytest.raises(ValueError, match="x.dtype"):
        _C.nearest_cpu(x.astype(np.int64), c)
    # the refinement of the matrix products' ranking
    approx, slack = np.zeros((4, 3)), np.zeros(4)
    assert _C.nearest_refine_cpu(x, c, approx, slack).tolist() == [0, 0, 0, 0]
    # +inf marks a center to skip; a row with none left answers `first`
    approx[:, 0] = np.inf
    approx[3] = np.inf
    assert _C.nearest_refine_cpu(x, c, approx, slack, first=2).tolist() == [1, 1, 1, 2]
    approx = np.zeros((4, 3))
    with pytest.raises(ValueError, match="'approx'"):
        _C.nearest_refine_cpu(x, c, approx[:, :2], slack)
    with pytest.raises(ValueError, match="'approx'"):
        _C.nearest_refine_cpu(x, c, approx.astype(np.int64), slack)
    with pytest.raises(ValueError, match="approx.dtype"):
        _C.nearest_refine_cpu(x.astype(np.float64), c.astype(np.float64),
                              approx.astype(np.float32), slack)
    with pytest.raises(ValueError, match="'slack'"):
        _C.nearest_refine_cpu(x, c, approx, slack[:3])
    with pytest.raises(ValueError, match="'first'"):
        _C.nearest_refine_cpu(x, c, approx, slack, first=3)
    with pytest.raises(ValueError, match="centers.dtype"):
        _C.nearest_refine_cpu(x, c.astype(np.float64), approx, slack)


def _brute_kmeanspp(x: np.ndarray, k: int, first: int, u: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    idx = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for c in range(1, k):
        cum = np.cumsum(closest)
        cand = np.minimum(np.searchsorted(cum, u[c - 1] * cum[-1], side="right"), len(x) - 1)
        d_cand = ((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(-1)
        pots = np.minimum(closest[None, :], d_cand).sum(1)
        best = int(np.argmin(pots))
        idx.append(int(cand[best]))
        closest = np.minimum(closest, d_cand[best])
    return np.array(idx)


@pytest.mark.parametrize("d", [8, 24])
def test_kmeanspp_draws_that_land_on_a_cumulative_sum(d):
    # A draw whose target is a point's cumulative sum itself takes the next point of
    # positive weight (searchsorted, side="right"). Targets at the ends of the blocks of
    # 256 points whose running sums the seeding keeps (255, 511, 767), at the last point,
    # and at points inside runs of weight 0 (copies of a chosen center), on integer
    # coordinates (every sum exact): the seeds of the definition.
    from dcpe import _C

    rng = np.random.default_rng(d + 1)
    x = rng.integers(-4, 5, size=(1100, d)).astype(np.float32)
    x[600:700] = x[3]  # a run of copies of the first center
    first, k = 3, 40
    xs = x.astype(np.float64)
    closest = ((xs - xs[first]) ** 2).sum(1)
    idx, rows = [first], []
    for _ in range(1, k):
        cum = np.cumsum(closest)
        zero = np.flatnonzero(closest == 0)
        at = [255, 511, 767, len(x) - 1, int(zero[len(zero) // 2]), int(rng.integers(len(x)))]
        u = cum[at] / cum[-1]
        rows.append(u)
        cand = np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), len(x) - 1)
        d_cand = ((xs[None, :, :] - xs[cand][:, None, :]) ** 2).sum(-1)
        best = int(np.argmin(np.minimum(closest[None, :], d_cand).sum(1)))
        idx.append(int(cand[best]))
        closest = np.minimum(closest, d_cand[best])
    u = np.array(rows)
    np.testing.assert_array_equal(_C.kmeanspp_cpu(x, k, first, u), np.array(idx))
    np.testing.assert_array_equal(_C.kmeanspp_cpu(x, k, first, u), _brute_kmeanspp(x, k, first, u))


@pytest.mark.parametrize("d", [2, 8, 16, 24])
def test_kmeanspp_seeds_match_brute_force(d):
    # compiled greedy k-means++ == its definition, given the same uniforms (integer
    # coordinates: every sum is exact, so even tied potentials compare equal). Up to 16
    # dimensions the seeding skips the groups of points that the triangle inequality
    # keeps from a candidate; above, it scans every point.
    from dcpe import _C

    rng = np.random.default_rng(d)
    x = rng.integers(-20, 21, size=(700, d)).astype(np.float32)
    for k, trials in ((1, 3), (2, 1), (40, 3), (300, 5)):
        u = rng.random((k - 1, trials))
        got = _C.kmeanspp_cpu(x, k, 17, u)
        np.testing.assert_array_equal(got, _brute_kmeanspp(x, k, 17, u))
    # u = 0: the first row of positive weight, not row 0, which is the first center
    u0 = np.zeros((5, 2))
    np.testing.assert_array_equal(_C.kmeanspp_cpu(x, 6, 0, u0), _brute_kmeanspp(x, 6, 0, u0))
    # few distinct rows: the potential reaches 0 before k rows are chosen
    few = rng.integers(-2, 3, size=(700, d)).astype(np.float64)
    few[:, 2:] = 0
    u = rng.random((39, 3))
    np.testing.assert_array_equal(_C.kmeanspp_cpu(few, 40, 5, u), _brute_kmeanspp(few, 40, 5, u))
    # the thread count does not change the seeds (partial sums over fixed blocks)
    y = rng.standard_normal((1000, d))
    u = rng.random((99, 4))
    np.testing.assert_array_equal(_C.kmeanspp_cpu(y, 100, 3, u, num_threads=1),
                                  _C.kmeanspp_cpu(y, 100, 3, u, num_threads=3))


def _scan_seeds(monkeypatch, *args, **kwargs) -> np.ndarray:
    """``kmeanspp_cpu`` by the exhaustive scan at every dimension (DCPE_CPU_PRODUCTS=0)."""
    from dcpe import _C

    with monkeypatch.context() as m:
        m.setenv("DCPE_CPU_PRODUCTS", "0")
        return _C.kmeanspp_cpu(*args, **kwargs)


@pytest.mark.parametrize("d", [17, 40, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeanspp_products_give_the_scans_seeds(d, dtype, monkeypatch):
    # Above 16 dimensions the seeding approximates each candidate's distances by float32
    # products and computes those within its error bound of a point's D^2: the seeds of
    # the scan (DCPE_CPU_PRODUCTS=0), whatever the data's offset, copies or thread count.
    from dcpe import _C

    rng = np.random.default_rng(d)
    hubs = rng.standard_normal((8, d))
    x = hubs[rng.integers(0, 8, 800)] + 0.3 * rng.standard_normal((800, d))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for data in (x, 1e3 + x, unit, np.concatenate([x[:300]] * 3)):
        data = data.astype(dtype)
        for k, trials, threads in ((1, 3, 2), (60, 5, 1), (250, 7, 3)):
            u = rng.random((k - 1, trials))
            np.testing.assert_array_equal(_C.kmeanspp_cpu(data, k, 11, u, num_threads=threads),
                                          _scan_seeds(monkeypatch, data, k, 11, u,
                                                      num_threads=threads))


@pytest.mark.parametrize("half", ["1", "0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeanspp_products_in_half_precision_give_the_scans_seeds(half, dtype, monkeypatch):
    # Where the compiler targets F16C the seeding reads the points in half precision
    # (DCPE_CPU_HALF=0: float32), with each row's error measured, coordinates below 2^-14
    # of the largest row stored as 0. Rows whose coordinates span seven decades, rows a
    # millionth of the others, and near copies that differ far below half's resolution: the
    # seeds are the scan's either way.
    from dcpe import _C

    rng = np.random.default_rng(7)
    d = 24
    hubs = rng.standard_normal((5, d))
    x = hubs[rng.integers(0, 5, 400)] + 0.2 * rng.standard_normal((400, d))
    x[:100] *= 10.0 ** rng.uniform(-7, 0, size=(100, d))
    x[100:140] *= 1e-6
    x[200:300] = x[100:200] + 1e-6 * rng.standard_normal((100, d))
    # clusters a millionth of two far rows (about the mean): every coordinate of theirs is
    # stored as 0
    y = 1e-6 * (hubs[rng.integers(0, 5, 300)] + 0.2 * rng.standard_normal((300, d)))
    y[0], y[1] = 10.0, -10.0
    monkeypatch.setenv("DCPE_CPU_HALF", half)
    for data in (x.astype(dtype), y.astype(dtype)):
        for k, trials, threads in ((120, 6, 2), (300, 3, 1)):
            u = rng.random((k - 1, trials))
            np.testing.assert_array_equal(_C.kmeanspp_cpu(data, k, 5, u, num_threads=threads),
                                          _scan_seeds(monkeypatch, data, k, 5, u,
                                                      num_threads=threads))


@pytest.mark.parametrize("half", ["1", "0"])
@pytest.mark.parametrize("d", [24, 40])
def test_kmeanspp_products_draw_as_the_scan_on_cumulative_sums(d, half, monkeypatch):
    # The first draw aimed at each cumulative sum of D^2 to the first center, as a model
    # sums them (differences squared, added in order): a draw that lands exactly on a sum
    # takes the next point, so the first center's distances must round as the scan's, to
    # the last bit, for the draws to agree. (Computed one row at a time, they did not: 64
    # of 359 such draws differed at 24 dimensions.)
    from dcpe import _C

    rng = np.random.default_rng(d)
    x = rng.standard_normal((300, d)) * 3
    monkeypatch.setenv("DCPE_CPU_HALF", half)
    diff = x - x[0]
    model = np.zeros(len(x))
    for t in range(d):
        model = model + diff[:, t] * diff[:, t]
    cum = np.cumsum(model)
    for c in cum[1:-1]:
        u = np.array([[c / cum[-1]]])
        np.testing.assert_array_equal(_C.kmeanspp_cpu(x, 2, 0, u),
                                      _scan_seeds(monkeypatch, x, 2, 0, u))


@pytest.mark.parametrize("trials", [1, 2, 4, 8, 9, 10, 13])
def test_kmeanspp_product_groups_give_the_scans_seeds(trials, monkeypatch):
    # The products of a block of points with a draw's candidates come in groups of six,
    # three, two and one candidates against panels of eight points (the last panel and the
    # last block partly filled: 803 points); a draw's candidates that bring no point of a
    # block closer share one sum. The seeds are the scan's for every group count.
    from dcpe import _C

    rng = np.random.default_rng(trials)
    hubs = rng.standard_normal((6, 48))
    x = (hubs[rng.integers(0, 6, 803)] + 0.4 * rng.standard_normal((803, 48))).astype(np.float32)
    for k in (2, 90):
        u = rng.random((k - 1, trials))
        for threads in (1, 2):
            np.testing.assert_array_equal(_C.kmeanspp_cpu(x, k, 802, u, num_threads=threads),
                                          _scan_seeds(monkeypatch, x, k, 802, u,
                                                      num_threads=threads))


def test_kmeanspp_products_count_gains_below_float32_resolution(monkeypatch):
    # A point E that a candidate A brings closer by 1e-9 of its D^2 (far below what a
    # float32 product resolves) has D^2 lowered by the seeding, as the scan lowers it;
    # the next draw (u just past E's weight, E first) tells: it lands on E if E kept its
    # old D^2. Twenty such layouts, so that a bound too tight would miss one.
    from dcpe import _C

    rng = np.random.default_rng(5)
    d, delta = 40, 1e-9
    for _ in range(20):
        e = np.concatenate([[(1 + delta) / 2], rng.standard_normal(d - 1)])
        a = np.zeros(d)
        a[0] = 1.0
        filler = 3 + rng.standard_normal((150, d))
        x = np.stack([e, np.zeros(d), a, *filler])       # E, the first center O, A, others
        closest = (x ** 2).sum(1)                        # D^2 to O
        cum = np.cumsum(closest)
        u = np.empty((2, 1))
        u[0, 0] = (cum[1] + closest[2] / 2) / cum[-1]    # draws A
        closest = np.minimum(closest, ((x - a) ** 2).sum(1))
        assert closest[0] < (e ** 2).sum()               # A brings E closer
        u[1, 0] = (closest[0] + delta / 4) / closest.sum()
        got = _C.kmeanspp_cpu(x, 3, 1, u)
        assert got[1] == 2 and got[2] != 0
        np.testing.assert_array_equal(got, _scan_seeds(monkeypatch, x, 3, 1, u))


def test_kmeanspp_rejects_bad_arguments():
    from dcpe import _C

    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="'k'"):
        _C.kmeanspp_cpu(x, 6, 0, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="first"):
        _C.kmeanspp_cpu(x, 2, 5, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'u'"):
        _C.kmeanspp_cpu(x, 3, 0, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'u'"):
        _C.kmeanspp_cpu(x, 3, 0, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="x.dtype"):
        _C.kmeanspp_cpu(x.astype(np.int32), 2, 0, np.zeros((1, 2)))


# --------------------------------------------------------------------------- threads


@pytest.fixture()
def busy(monkeypatch):
    """Pretend that other processes keep ``value`` CPUs busy (None: unknown)."""
    from dcpe import _threads

    def set_busy(value):
        monkeypatch.setattr(_threads, "busy_cpus_elsewhere", lambda: value)

    return set_busy


def test_host_threads_leave_busy_cpus_alone(busy, monkeypatch):
    from dcpe import _threads

    monkeypatch.setattr(_threads, "_default_threads", lambda: 8)
    monkeypatch.setattr(_threads, "_allowed_cpus", lambda: 8)
    for value, expected in [(None, 8), (0, 8), (1, 7), (3, 5), (7, 1), (8, 1), (50, 1)]:
        busy(value)
        assert _threads.host_threads() == expected, value
    monkeypatch.setattr(_threads, "_allowed_cpus", lambda: 16)
    busy(1)
    assert _threads.host_threads() == 8  # never above the default


def test_busy_cpus_elsewhere_counts_other_processes_only(monkeypatch):
    from dcpe import _threads

    # every CPU of the machine is ours: runnable tasks minus this process's own threads
    monkeypatch.setattr(_threads, "_allowed_set", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(_threads, "_stat_cache", {})
    monkeypatch.setattr(_threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(_threads, "_procs_running", lambda: 5)
    monkeypatch.setattr(_threads, "_own_running", lambda: 3)  # e.g. spinning OpenMP workers
    assert _threads.busy_cpus_elsewhere() == 2
    monkeypatch.setattr(_threads, "_procs_running", lambda: None)
    assert _threads.busy_cpus_elsewhere() is None

    # 2 of 64 CPUs (taskset, a cpuset): the tasks on those CPUs, reused for a moment
    calls = []

    def runnable_on(cpus):
        calls.append(set(cpus))
        return 3

    monkeypatch.setattr(_threads, "_allowed_set", lambda: {5, 9})
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(_threads, "_runnable_on", runnable_on)
    monkeypatch.setattr(_threads, "_scan_cache", {})
    assert _threads.busy_cpus_elsewhere() == 3
    assert _threads.busy_cpus_elsewhere() == 3
    assert calls == [{5, 9}]


def test_busy_cpus_elsewhere_ignores_a_task_that_runs_for_a_moment(monkeypatch):
    from dcpe import _threads

    monkeypatch.setattr(_threads, "_allowed_set", lambda: {0, 1})
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_threads, "_own_running", lambda: 2)
    pauses_asked = []  # the pauses it asks for, recorded: nothing sleeps, no clock is read
    monkeypatch.setattr(_threads.time, "sleep", pauses_asked.append)

    def reads(*counts):  # /proc/stat's runnable tasks, one count per read
        it = iter(counts)
        monkeypatch.setattr(_threads, "_procs_running", lambda: next(it))
        monkeypatch.setattr(_threads, "_stat_cache", {})
        pauses_asked.clear()

    reads(2)  # nothing else runs: one read, no wait
    assert _threads.busy_cpus_elsewhere() == 0 and pauses_asked == []
    reads(3, 3, 2)  # a task runnable for a moment (gone at the second wait)
    assert _threads.busy_cpus_elsewhere() == 0
    assert len(pauses_asked) == 2
    reads(4, 3, 4, 3, 4)  # a task that lasts, another that comes and goes: the lowest count
    assert _threads.busy_cpus_elsewhere() == 1
    assert len(pauses_asked) == len(_threads._CONFIRM_WAITS) and sum(pauses_asked) >= 0.01
    # a count confirmed a moment ago is reused, not waited for again (a new count lower
    # than it is taken)
    pauses_asked.clear()
    monkeypatch.setattr(_threads, "_procs_running", lambda: 5)
    assert _threads.busy_cpus_elsewhere() == 1 and pauses_asked == []
    monkeypatch.setattr(_threads, "_procs_running", lambda: 2)
    assert _threads.busy_cpus_elsewhere() == 0
    reads(5, 5, 5, 5, 5)
    assert _threads.busy_cpus_elsewhere() == 3
    pauses_asked.clear()
    monkeypatch.setattr(_threads, "_procs_running", lambda: 3)
    assert _threads.busy_cpus_elsewhere() == 1 and pauses_asked == []
    # ... for half a second
    monkeypatch.setattr(_threads, "_procs_running", lambda: 5)
    when, value = _threads._stat_cache["busy"]
    _threads._stat_cache["busy"] = (when - 2 * _threads._SCAN_SECONDS, value)
    assert _threads.busy_cpus_elsewhere() == 3 and len(pauses_asked) == len(_threads._CONFIRM_WAITS)
    # a read that fails meanwhile changes nothing
    reads(3, None, 3, 3, 3)
    assert _threads.busy_cpus_elsewhere() == 1


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_runnable_on_sees_a_pinned_competitor():
    import subprocess
    import sys
    import time

    from dcpe import _threads

    cpu = min(_threads._allowed_set())
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        seen = 0
        while time.monotonic() < deadline and not seen:
            time.sleep(0.1)
            seen = _threads._runnable_on({cpu})
        assert seen >= 1
        assert _threads._runnable_on(set()) == 0
    finally:
        proc.kill()
        proc.wait()


def test_own_threads_and_machine_counts_are_read():
    import sys

    from dcpe import _threads

    assert _threads._allowed_cpus() >= 1
    assert _threads._own_running() >= 1  # this thread is running
    if sys.platform.startswith("linux"):
        assert _threads._procs_running() >= 1
        assert _threads.busy_cpus_elsewhere() >= 0


def test_limit_threads_lowers_and_restores_torch(busy, monkeypatch):
    from dcpe import _threads

    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "_allowed_cpus", lambda: max(2, before))
    busy(10**6)
    with _threads.limit_threads():
        assert torch.get_num_threads() == 1
        with _threads.limit_threads():  # nested: no-op
            assert torch.get_num_threads() == 1
        assert _threads.host_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), _threads.limit_threads():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("fn,k", [(kmeans, 30), (balanced_kmeans, 12),
                                  (centroid_free_kmeans, 12)])
def test_results_do_not_depend_on_threads(busy, fn, k, monkeypatch):
    from dcpe import _C

    x = _blobs(n=400, seed=5)
    busy(0)
    free = fn(x, k, seed=1)
    seen = []
    for name in ("nearest_cpu", "kmeanspp_cpu", "balanced_assign_cpu"):
        real = getattr(_C, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("num_threads"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(_C, name, spy)
    before = torch.get_num_threads()
    busy(10**6)  # every CPU taken: one thread
    loaded = fn(x, k, seed=1)
    assert torch.get_num_threads() == before
    assert seen and set(seen) == {1}
    np.testing.assert_array_equal(loaded.labels, free.labels)
    np.testing.assert_array_equal(loaded.centers, free.centers)
    assert loaded.n_iter == free.n_iter


def test_baselines_restore_torch_threads_on_error(busy):
    before = torch.get_num_threads()
    busy(10**6)
    with pytest.raises(ValueError):
        kmeans(_blobs(n=50), 51)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("fn", [kmeans, balanced_kmeans, centroid_free_kmeans])
def test_file_name_points_to_load_codebook(fn):
    with pytest.raises(TypeError, match=r"file name .*dcpe\.io\.load_codebook"):
        fn("vq_ds16_c2i.pt", 4)


def _auction(monkeypatch, products: bool, x, c, cap, prices, **kwargs) -> tuple:
    """``balanced_assign_cpu`` with the lists made from products or by the scan
    (``DCPE_CPU_PRODUCTS``): its labels, the prices it leaves and its counts."""
    from dcpe import _C

    prices = prices.copy()
    with monkeypatch.context() as m:
        m.setenv("DCPE_CPU_PRODUCTS", "1" if products else "0")
        labels, stats = _C.balanced_assign_cpu(x, c, cap, prices, **kwargs)
    return labels, prices, stats


def _listed_near_ties(rng: np.random.Generator, d: int, points: int, dtype: type) -> tuple:
    """Points each with two near centers and, just past them, two centers at the same
    distance in real arithmetic (the second the first mirrored through a hyperplane through
    the point), which rounding to ``dtype`` separates below what float32 products resolve:
    with lists of two centers, which of the two is the list's bound is a rounding-level
    decision."""
    x = rng.standard_normal((points, d)) * 3
    close = np.concatenate([x + 0.02 * rng.standard_normal((points, d)) for _ in range(2)])
    a = x + 0.1 * rng.standard_normal((points, d))
    normal = rng.standard_normal((points, d))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    b = a - 2 * ((a - x) * normal).sum(1, keepdims=True) * normal
    c = np.concatenate([close, a, b])[rng.permutation(4 * points)]
    return x.astype(dtype), c.astype(dtype)


@pytest.mark.parametrize(("d", "dtype"), [(64, np.float64), (67, np.float32), (256, np.float32)])
def test_balanced_assign_products_give_the_scans_auction(d, dtype, monkeypatch):
    # From 64 dimensions and 1,024 centers on, the auction's candidate lists are made from
    # float32 products, and only the centers their error bound cannot rule out get their
    # distance: the same lists, distances and bounds as the scan's, so the same labels,
    # prices and bid counts, cold and warm, whatever the offset, copies or thread count.
    from dcpe import _C

    min_d, min_k = _C.balanced_products_from
    assert d >= min_d
    k = min_k
    rng = np.random.default_rng(d)
    hubs = rng.standard_normal((16, d))
    x = hubs[rng.integers(0, 16, 2 * k)] + 0.3 * rng.standard_normal((2 * k, d))
    near, near_centers = _listed_near_ties(rng, d, k // 4, dtype)
    cases = [
        (x, x[rng.choice(2 * k, k, replace=False)]),
        (1e3 + x, 1e3 + x[:k]),                              # far from the origin
        (x, np.concatenate([x[: k // 2]] * 2)),              # every center twice
        (np.concatenate([near] * 4), near_centers),          # near-ties at a list's end
    ]
    for data, c in cases:
        data, c = data.astype(dtype), c.astype(dtype)
        n = len(data)
        cap = np.full(k, n // k, np.int64)
        refreshes = carried = 0
        for n_candidates, threads in ((2, 1), (32, 2), (300, 3)):
            kw = dict(n_candidates=n_candidates, num_threads=threads)
            want = _auction(monkeypatch, False, data, c, cap, np.zeros(k), **kw)
            got = _auction(monkeypatch, True, data, c, cap, np.zeros(k), **kw)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert got[2] == want[2]
            refreshes += want[2]["refreshes"]
            # warm: the next step's centers, from this step's prices and labels
            moved = (c + 0.01 * rng.standard_normal(c.shape)).astype(dtype)
            warm = dict(kw, labels=want[0])
            want_w = _auction(monkeypatch, False, data, moved, cap, want[1], **warm)
            got_w = _auction(monkeypatch, True, data, moved, cap, want[1], **warm)
            np.testing.assert_array_equal(got_w[0], want_w[0])
            np.testing.assert_array_equal(got_w[1], want_w[1])
            assert got_w[2] == want_w[2]
            # and given the lists of this step's call (balanced_kmeans' steps), which both
            # make anew at these sizes
            lists_scan, lists_products = {}, {}
            _auction(monkeypatch, False, data, c, cap, np.zeros(k), lists=lists_scan, **kw)
            _auction(monkeypatch, True, data, c, cap, np.zeros(k), lists=lists_products, **kw)
            warm = dict(warm, n_candidates=n_candidates)
            want_c = _auction(monkeypatch, False, data, moved, cap, want[1], lists=lists_scan,
                              **warm)
            got_c = _auction(monkeypatch, True, data, moved, cap, want[1],
                             lists=lists_products, **warm)
            np.testing.assert_array_equal(got_c[0], want_c[0])
            np.testing.assert_array_equal(got_c[1], want_c[1])
            assert got_c[2] == want_c[2]
            carried += want_c[2]["carried"]
        assert refreshes > 0  # lists did run out and were made again, from products too
        assert carried == 0  # where products make the lists, fresh ones cost little


@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e30, 1e100])
def test_float32_products_answer_as_the_scans_at_any_scale(scale, monkeypatch):
    # The products of the nearest-center search, the seeding and the auction's lists are
    # float32 for float64 data too. Scaled by a power of two, they rank any codebook that
    # float64 distances take (1e-100 and 1e100 squared are far outside float32's range):
    # the scans' answers, near-ties included.
    from dcpe import _C

    rng = np.random.default_rng(int(np.log10(scale)) + 200)
    x, c = _mirrored_pairs(rng, 16, 100, np.float64)
    x, c = x * scale, c * scale
    mask = rng.random(len(c)) < 0.7
    for m in (None, mask):
        tm = None if m is None else torch.from_numpy(m)
        got = baselines._nearest(torch.from_numpy(x), torch.from_numpy(c), tm)
        np.testing.assert_array_equal(got.numpy(), _C.nearest_cpu(x, c, m))
        # and the device path (here on host tensors; its distances are never fused)
        got = baselines._nearest_matmul(torch.from_numpy(x), torch.from_numpy(c), tm)
        np.testing.assert_array_equal(got.numpy(), _first_nearest(x, c, m))
    hubs = rng.standard_normal((8, 40))
    y = (hubs[rng.integers(0, 8, 600)] + 0.3 * rng.standard_normal((600, 40))) * scale
    u = rng.random((79, 5))
    np.testing.assert_array_equal(_C.kmeanspp_cpu(y, 80, 3, u),
                                  _scan_seeds(monkeypatch, y, 80, 3, u))
    d = _C.balanced_products_from[0]
    k = _C.balanced_products_from[1]
    near, near_centers = _listed_near_ties(rng, d, k // 4, np.float64)
    data, centers = np.concatenate([near] * 4) * scale, near_centers * scale
    cap = np.full(k, len(data) // k, np.int64)
    want = _auction(monkeypatch, False, data, centers, cap, np.zeros(k), n_candidates=2)
    got = _auction(monkeypatch, True, data, centers, cap, np.zeros(k), n_candidates=2)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


def _first_nearest(x: np.ndarray, c: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    dist = _sequential_sq_dist(x, c)
    return (dist if mask is None else np.where(mask[None, :], dist, np.inf)).argmin(axis=1)


@pytest.mark.parametrize("exact_float32", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 3, 8, 13, 40])
def test_nearest_on_the_device_gives_the_hosts_answer(d, dtype, exact_float32, monkeypatch):
    # CUDA tensors take _nearest_matmul: a matrix product ranks the centers (float64 when
    # torch may round float32 products through TF32 or bfloat16), and the rows with
    # several centers within the bound get their distances as the host computes them: the
    # first nearest center by sequential double distances, to the last tie and rounding.
    # Run here on host tensors, against a NumPy reference.
    monkeypatch.setattr(baselines, "_float32_products_exact",
                        lambda device_type="cpu": exact_float32)
    pairs = []
    seq = baselines._sequential_sq_dist

    def spy(a, b):
        pairs.append(len(a))
        return seq(a, b)

    monkeypatch.setattr(baselines, "_sequential_sq_dist", spy)
    rng = np.random.default_rng(d)
    x, c = _mirrored_pairs(rng, d, 150, dtype)
    hubs = rng.standard_normal((10, d))
    clustered = hubs[rng.integers(0, 10, 400)] + 0.2 * rng.standard_normal((400, d))
    cases = [
        (x, c),                                                       # near-ties
        (clustered, np.concatenate([clustered[:100]] * 2)),           # every center twice
        (1e3 + clustered, 1e3 + clustered[rng.choice(400, 150)]),     # far from the origin
    ]
    for px, pc in cases:
        px, pc = px.astype(dtype), pc.astype(dtype)
        mask = rng.random(len(pc)) < 0.7
        for m in (None, mask):
            got = baselines._nearest_matmul(torch.from_numpy(px), torch.from_numpy(pc),
                                            None if m is None else torch.from_numpy(m))
            np.testing.assert_array_equal(got.numpy(), _first_nearest(px, pc, m))
    assert sum(pairs) > 0  # the refinement ran


def test_kmeans_on_the_device_path_matches_the_host(monkeypatch):
    # the whole of Lloyd's steps with the device's nearest-center search (host tensors, no
    # extension): the host's labels, whether float32 products are trusted or not
    x = _blobs(n=800, d=16, centers=20, seed=3)
    centers, _ = kmeans_plusplus(x, 20, seed=0)
    want = kmeans(x, 20, init=centers)
    monkeypatch.setattr(baselines, "_host_ext", lambda t: None)
    for exact in (True, False):
        monkeypatch.setattr(baselines, "_float32_products_exact",
                            lambda device_type="cpu", e=exact: e)
        got = kmeans(x, 20, init=centers)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.n_iter == want.n_iter


def test_float32_products_exact_reads_the_tf32_switches():
    # in a fresh interpreter: the switches are process-wide, and mixing the legacy and new
    # ones puts torch in a state where reading the precision raises
    import subprocess
    import sys

    code = "\n".join([
        "import torch",
        "from dcpe import baselines as b",
        "assert b._float32_products_exact('cuda') and b._float32_products_exact('cpu')",
        "torch.backends.cuda.matmul.allow_tf32 = True",   # LlamaGen's training script
        "assert not b._float32_products_exact('cuda')",
        "torch.backends.cuda.matmul.allow_tf32 = False",
        "assert b._float32_products_exact('cuda')",
        "torch.set_float32_matmul_precision('high')",
        "assert not b._float32_products_exact('cuda')",
        "assert not b._float32_products_exact('cpu')",
        "torch.set_float32_matmul_precision('highest')",
        "assert b._float32_products_exact('cuda')",
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'",  # the new switch: mixed
        "assert not b._float32_products_exact('cuda')",
        "print('ok')",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("fn", [kmeans, balanced_kmeans, centroid_free_kmeans,
                                kmeans_plusplus])
def test_values_outside_the_dtypes_range_are_refused(fn):
    # squared distances that overflow or underflow in the data's dtype: a clear error that
    # names the way out, before any work
    x = _blobs(n=40, d=4)
    for data, match in [
        (x * 1e16, r"values up to .*, too large for float32 distances; pass float64 data "
                   r"\(x.astype\('float64'\) or x.double\(\)\)"),
        (x * 1e-12, r"values of at most .*, too small for float32 distances; pass float64"),
        (x.astype(np.float64) * 1e151, r"too large even for float64 distances; scale it "
                                       r"down"),
        (x.astype(np.float64) * 1e-131, r"too small even for float64 distances; scale it "
                                        r"up"),
        (torch.from_numpy(x) * 1e16, r"too large for float32 distances"),
    ]:
        with pytest.raises(ValueError, match=match):
            fn(data, 4)
    # the float64 data of the same values, and all-zero data, are taken
    fn(x.astype(np.float64) * 1e16, 4)
    fn(x.astype(np.float64) * 1e-12, 4)
    fn(np.zeros((40, 4), np.float32), 4)


def test_initial_centers_outside_the_dtypes_range_are_refused():
    x = _blobs(n=40, d=4)
    with pytest.raises(ValueError, match=r"init has values up to .*, too large for float32 "
                                         r"distances; pass float64 data \(x.astype"):
        kmeans(x, 4, init=np.full((4, 4), 1e20))
    kmeans(x.astype(np.float64), 4, init=np.full((4, 4), 1e20))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lloyds_objective_is_measured_as_the_search_measures(dtype):
    # Lloyd's step keeps a token's old center unless the search's new one is closer, and
    # its history sums the tokens' terms: both by the search's own distances (differences
    # in double, added in order), bit for bit, so no device's rounding decides a move
    rng = np.random.default_rng(4)
    x = (5 + rng.standard_normal((3000, 24))).astype(dtype)
    c = (5 + rng.standard_normal((40, 24))).astype(dtype)
    labels = rng.integers(0, 40, 3000)
    got = baselines._sq_dist_rows(torch.from_numpy(x), torch.from_numpy(c),
                                  torch.from_numpy(labels))
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), _sequential_sq_dist(x, c)[np.arange(3000),
                                                                          labels])


# --------------------------------------------------------------------------- moved centers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_among_candidates(dtype):
    # the nearest of each row's candidates (any order, repeats) by the scan's distances,
    # ties to the smaller index, and that distance: on an integer grid (exact distances,
    # many ties) against NumPy, on real values against the masked scan
    from dcpe import _C

    rng = np.random.default_rng(30)
    d = 17
    x = rng.integers(-2, 3, (400, d)).astype(dtype)
    c = rng.integers(-2, 3, (60, d)).astype(dtype)
    c[30:40] = c[:10]  # copies: ties between a small and a large index
    cand = rng.integers(0, 60, (400, 5))
    cand[::3, 1] = np.where(cand[::3, 0] < 10, cand[::3, 0] + 30, cand[::3, 1])
    dist = _sequential_sq_dist(x, c)
    got, got_d = _C.nearest_among_cpu(x, c, cand)
    rows = np.arange(400)[:, None]
    cd = dist[rows, cand]
    best = cd.min(axis=1)
    want = np.where(cd == best[:, None], cand, 60).min(axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_d, best)
    # real values: every row's candidates are the same shuffled subset, the scan's answer
    # over that subset is the masked search's
    x = (5 + rng.standard_normal((500, d))).astype(dtype)
    c = (5 + rng.standard_normal((90, d))).astype(dtype)
    subset = rng.choice(90, 25, replace=False)
    mask = np.zeros(90, bool)
    mask[subset] = True
    cand = np.stack([rng.permutation(subset) for _ in range(500)])
    got, _ = _C.nearest_among_cpu(x, c, cand, num_threads=2)
    np.testing.assert_array_equal(got, _C.nearest_cpu(x, c, mask))


@pytest.mark.parametrize("call, match", [
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.array([[0], [2], [1]])), r"cand\[1, 0\]' = 2"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.array([[0, -1]] * 3)), r"cand\[0, 1\]' = -1"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.zeros((3, 0), np.int64)), "'cand'"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.zeros((2, 1), np.int64)), "'cand'"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.zeros((3, 1), np.int32)), "'cand'"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2), np.float32),
                                      np.zeros((3, 1), np.int64)), "centers.dtype"),
    (lambda _C: _C.nearest_among_cpu(np.zeros((3, 2)), np.zeros((2, 2)),
                                      np.zeros((3, 1), np.int64), num_threads=-1),
     "num_threads"),
])
def test_nearest_among_rejects_bad_arguments(call, match):
    from dcpe import _C

    with pytest.raises(ValueError, match=match):
        call(_C)


def _moved_centers(rng: np.random.Generator, x: np.ndarray, before: np.ndarray
                   ) -> np.ndarray:
    """``before`` with some centers moved: toward a point, away from the data, onto a copy
    of another center (with a smaller or a larger index), by one unit in the last place,
    in one coordinate only."""
    c = before.copy()
    k = len(c)
    for j in rng.choice(k, max(1, k // 10), replace=False):
        kind = rng.integers(0, 5)
        if kind == 0:
            c[j] = (c[j] + x[rng.integers(0, len(x))]) / 2
        elif kind == 1:
            c[j] = c[j] + 3 * rng.standard_normal(c.shape[1])
        elif kind == 2:
            c[j] = before[rng.integers(0, k)]
        elif kind == 3:
            c[j] = np.nextafter(c[j], np.inf)
        else:
            c[j, rng.integers(0, c.shape[1])] += 0.5
    return c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, k", [(13, 40), (17, 300), (64, 130)])
def test_nearest_after_moves_is_the_full_search(d, k, dtype, monkeypatch):
    # the answer from the last answer and the moved centers is the full search's, to the
    # last tie: clustered points, copies of centers, centers moved by one ulp
    monkeypatch.setattr(baselines, "_MOVES_AT_MOST", 10.0)  # never fall back
    rng = np.random.default_rng(d + k)
    hubs = rng.standard_normal((20, d)) * 3
    x = (hubs[rng.integers(0, 20, 1200)] + rng.standard_normal((1200, d))).astype(dtype)
    before = x[rng.choice(1200, k, replace=False)].copy()
    before[k // 2:k // 2 + 5] = before[:5]
    xt = torch.from_numpy(x)
    answer = baselines._nearest(xt, torch.from_numpy(before))
    for _ in range(4):
        c = _moved_centers(rng, x, before).astype(dtype)
        got = baselines._nearest_after_moves(xt, torch.from_numpy(c), torch.from_numpy(before),
                                             answer)
        assert got is not None
        np.testing.assert_array_equal(got.numpy(), baselines._nearest(xt, torch.from_numpy(c)))
        before, answer = c, got
    # nothing moved: the same answer
    same = baselines._nearest_after_moves(xt, torch.from_numpy(before), torch.from_numpy(before),
                                          answer)
    np.testing.assert_array_equal(same.numpy(), answer.numpy())


def test_nearest_after_moves_applies_only_where_it_is_exact_and_cheaper(monkeypatch):
    rng = np.random.default_rng(3)
    before = torch.from_numpy(rng.standard_normal((50, 12)))
    x = torch.from_numpy(rng.standard_normal((300, 12)))
    answer = baselines._nearest(x, before)
    moved = before.clone()
    moved[0] += 1
    # up to 12 dimensions the kd-tree's distances may round otherwise than the scan's
    assert baselines._nearest_after_moves(x, moved, before, answer) is None
    x13, b13 = torch.cat([x, x[:, :1]], 1), torch.cat([before, before[:, :1]], 1)
    m13 = b13.clone()
    m13[0] += 1
    answer = baselines._nearest(x13, b13)
    assert baselines._nearest_after_moves(x13, m13, b13, answer) is not None
    monkeypatch.setenv("DCPE_CPU_MOVES", "0")
    assert baselines._nearest_after_moves(x13, m13, b13, answer) is None
    monkeypatch.delenv("DCPE_CPU_MOVES")
    assert baselines._nearest_after_moves(x13, b13 + 1, b13, answer) is None  # all moved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_after_moves_gives_the_full_searchs_result(dtype, monkeypatch):
    # whole runs, with the step from moved centers and without (DCPE_CPU_MOVES=0): the same
    # labels, centers and history, and the step from moved centers was taken. The float64
    # data hold float32 values: their clusters' sums are exact, so a cluster that keeps its
    # tokens keeps its center (other float64 sums round with the running sum of the
    # clusters before, and most centers move by a rounding at every step)
    rng = np.random.default_rng(8)
    hubs = rng.standard_normal((60, 24)) * 3
    x = (hubs[rng.integers(0, 60, 3000)] + rng.standard_normal((3000, 24)))
    x = x.astype(np.float32).astype(dtype)
    x[100:130] = x[0]  # copies
    taken = []
    after = baselines._nearest_after_moves

    def spy(*args):
        out = after(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(baselines, "_nearest_after_moves", spy)
    by_moves = kmeans(x, 60, seed=4, tol=0.0)
    assert sum(taken) >= 3
    monkeypatch.setenv("DCPE_CPU_MOVES", "0")
    searched = kmeans(x, 60, seed=4, tol=0.0)
    assert by_moves.n_iter == searched.n_iter and by_moves.history == searched.history
    np.testing.assert_array_equal(by_moves.labels, searched.labels)
    np.testing.assert_array_equal(by_moves.centers, searched.centers)
