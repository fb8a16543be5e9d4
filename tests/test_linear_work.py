"""benchmarks/linear_work.py: its k-d tree and brute-force kernels give the references'
results, and small runs write the matrix-free engine's work with labels equal to the cpu
backend's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from conftest import tie_free  # noqa: E402

from dcpe_kernels.centroid import (  # noqa: E402
    _reference_candidate_pairs,
    _reference_centroid_nn,
)
from dcpe_kernels.pair_average import (  # noqa: E402
    _reference_cluster_matrix,
    _reference_pair_average,
)

ROOT = Path(__file__).resolve().parents[1]


def _work():
    spec = importlib.util.spec_from_file_location("linear_work",
                                                  ROOT / "benchmarks" / "linear_work.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: the tool's kernels and the dimension each serves: the k-d tree's are the references'
#: bits, the brute-force ones (float64 matrix products) agree to float64 rounding
IMPLS = [("KDTreeOps", 3), ("BruteOps", 24)]


def _close(got: torch.Tensor, want: torch.Tensor, impl: str) -> None:
    if impl == "KDTreeOps":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl,d", IMPLS)
@pytest.mark.parametrize("mode", [0, 1])
def test_centroid_scan_matches_reference(impl: str, d: int, mode: int,
                                         rng: np.random.Generator) -> None:
    work = _work()
    ops = getattr(work, impl)
    assert work._ops(d).centroid_nn is ops.centroid_nn
    n = 150
    mu_t = torch.from_numpy(tie_free(rng, n, d).T.copy())
    s2 = torch.from_numpy(rng.uniform(0, 0.5, n))
    rows = torch.from_numpy(rng.permutation(n)[:90].astype(np.int32))
    out = [torch.full((n,), -1.0, dtype=torch.float64) for _ in range(2)]
    nn = [torch.full((n,), -1, dtype=torch.int64) for _ in range(2)]
    ops.centroid_nn(mu_t, s2, n, mode, 0.5, out[0], nn[0], rows, 90)
    _reference_centroid_nn(mu_t, s2, n, mode, 0.5, out[1], nn[1], rows, 90)
    assert torch.equal(nn[0], nn[1])
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl,d", IMPLS)
def test_candidates_and_averages_match_reference(impl: str, d: int,
                                                 rng: np.random.Generator) -> None:
    ops = getattr(_work(), impl)
    n = 120
    mu_t = torch.from_numpy(tie_free(rng, n, d).T.copy())
    s2 = torch.from_numpy(rng.uniform(0, 0.3, n))
    rad = torch.sqrt(s2) * 2
    tau = torch.empty(n, dtype=torch.float64)
    rows = torch.arange(n, dtype=torch.int32)
    _reference_centroid_nn(mu_t, s2, n, 0, 1.0, tau, torch.empty(n, dtype=torch.int64),
                           rows, n)
    needy = torch.from_numpy((rng.random(n) < 0.5).astype(np.int8))
    sub = torch.nonzero(needy).flatten().to(torch.int32)
    got = []
    for fn in (ops.candidate_pairs, _reference_candidate_pairs):
        pa, pb = (torch.zeros(4096, dtype=torch.int32) for _ in range(2))
        count = torch.zeros(1, dtype=torch.int64)
        fn(mu_t, s2, rad, tau, n, 1e-12, 1e-15, pa, pb, count, 4096, sub, len(sub), needy)
        c = int(count[0])
        got.append(sorted(zip(pa[:c].tolist(), pb[:c].tolist())))
    # no pair at the bound here; every searching cluster has its nearest neighbour among
    # them (a pair can serve two)
    assert got[0] == got[1] and 2 * len(got[0]) >= len(sub)
    assert {a for pair in got[0] for a in pair} >= set(sub.tolist())
    # the exact averages of those pairs, clusters of 1 to 6 tokens (float32: the distances
    # are rounded to float32 before the float64 sums; the brute force sums float64 ones)
    sizes = torch.from_numpy(rng.integers(1, 7, n))
    offsets = torch.cumsum(sizes, 0) - sizes
    x = torch.from_numpy(tie_free(rng, int(sizes.sum()), d).astype(
        np.float32 if impl == "KDTreeOps" else np.float64))
    pa = torch.tensor([a for a, _ in got[0]], dtype=torch.int32)
    pb = torch.tensor([b for _, b in got[0]], dtype=torch.int32)
    count = torch.tensor([len(pa)])
    vals = [torch.empty(len(pa), dtype=x.dtype) for _ in range(2)]
    ops.pair_average(x, offsets, sizes, pa, pb, count, len(pa), vals[0])
    _reference_pair_average(x, offsets, sizes, pa, pb, count, len(pa), vals[1])
    _close(vals[0], vals[1], impl)
    if impl == "BruteOps":  # the hand-over's matrix, from the same averages
        m = 12
        mats = [torch.zeros(m * 16, dtype=torch.float64) for _ in range(2)]
        nns = [torch.zeros(m, dtype=torch.int64) for _ in range(2)]
        nnds = [torch.zeros(m, dtype=torch.float64) for _ in range(2)]
        ops.cluster_matrix(x, offsets, sizes, m, mats[0], 16, nns[0], nnds[0])
        _reference_cluster_matrix(x, offsets, sizes, m, mats[1], 16, nns[1], nnds[1])
        _close(mats[0], mats[1], impl)
        assert torch.equal(nns[0], nns[1])


def test_small_run_writes_the_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "300", "700",
         "--d", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "linear-work.json").read_text())
    rows = payload["rows"]
    assert [r["n"] for r in rows] == [300, 700]
    for r in rows:
        n = r["n"]
        assert r["labels_equal_cpu"] is True
        # the first round scans every cluster, the later ones the searching clusters without
        # a threshold from their old neighbours, and the candidates of every searching one
        rows = r["per_round"]
        assert rows[0]["scan_rows"] == rows[0]["rows"] == n
        assert r["scan_pairs"] == sum(x["scan_rows"] * x["n"] for x in rows) >= n * n
        assert r["candidate_scan_pairs"] == sum(x["rows"] * x["n"] for x in rows[1:])
        assert r["scan_pairs"] - n * n < r["candidate_scan_pairs"]
        assert r["per_round"][0]["pairs"] == 0 < r["candidate_pairs"] <= r["token_pairs"]
        # the round that finds the early stop is scanned, not counted as a round of merges
        # (dense rounds after a hand-over would be counted, not traced)
        assert r["matrix_free_rounds"] == len(r["per_round"]) <= r["rounds"] + 1
    md = (tmp_path / "linear-work.md").read_text()
    assert "| 700 | 3 | off |" in md and "**NO**" not in md


def test_small_run_past_16_dimensions(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "400",
         "--d", "20", "--no-handover", "--own-data", "--pair-store", "both",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "linear-work-d20.json").read_text())
    off, on = payload["rows"]
    assert payload["handover"] is False
    assert payload["data"] == "`make_sample_codebook(n=N, d=20)` for each N"
    for row in (off, on):
        assert row["d"] == 20 and row["labels_equal_cpu"] is True
        # every round of merges is matrix-free (plus the one that finds the early stop)
        assert row["rounds"] <= row["matrix_free_rounds"] <= row["rounds"] + 1
        assert row["per_round"][0]["scan_rows"] == 400 and row["token_pairs"] > 0
    # the same merges; with the store, fewer token pairs summed (the rest reused)
    assert (off["pair_store"], on["pair_store"]) == (False, True)
    assert on["rounds"] == off["rounds"] and on["final_clusters"] == off["final_clusters"]
    assert off["reused_token_pairs"] == 0 < on["reused_token_pairs"]
    assert on["token_pairs"] < off["token_pairs"] and on["largest_store"] > 0
    assert 0 < on["store_sorted"] and on["largest_store"] <= on["store_entries"]
    assert off["store_entries"] == off["store_sorted"] == 0
    md = (tmp_path / "linear-work-d20.md").read_text()
    assert "| 400 | 20 | off |" in md and "| 400 | 20 | on |" in md


def test_bad_sizes_are_an_argument_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "1",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sizes must be >= 2" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_gram_scans_are_counted(tmp_path: Path) -> None:
    """From GRAM_MIN_DIM dimensions on the engine's scans come from the Gram matrix
    (--gram auto) and its first round lists and sums its candidates: one more N^2 of
    candidate scan and a token pair per pair listed, the same merges (--gram off: the scans
    from coordinate differences)."""
    rows = {}
    for gram in ("auto", "off"):
        out = tmp_path / gram
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "300",
             "--d", "64", "--no-handover", "--own-data", "--pair-store", "off", "--gram", gram,
             "--out", str(out)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (rows[gram],) = json.loads((out / "linear-work-d64.json").read_text())["rows"]
    on, off = rows["auto"], rows["off"]
    assert (on["gram_scans"], off["gram_scans"]) == (True, False)
    assert on["labels_equal_cpu"] is True and off["labels_equal_cpu"] is True
    assert on["rounds"] == off["rounds"] and on["final_clusters"] == off["final_clusters"]
    first_on, first_off = on["per_round"][0], off["per_round"][0]
    assert first_off["pairs"] == first_off["cand_rows"] == 0
    assert first_on["cand_rows"] == 300 and first_on["pairs"] == first_on["token_pairs"] > 0
    assert on["candidate_scan_pairs"] == off["candidate_scan_pairs"] + 300 * 300
    assert "| 300 | 64 | off | gram |" in (tmp_path / "auto" / "linear-work-d64.md").read_text()


def test_traffic_counts_the_engines_own_operations() -> None:
    """--traffic: operations outside the kernels and the bytes they write; views and
    allocations none, an in-place operation its output, a scatter its source, a call of
    the ops (a kernel) nothing."""
    work = _work()
    counter = work._Traffic()

    class Ops:
        @staticmethod
        def kernel(t):
            return (t * 2).sum()  # inside a kernel: not counted

    ops = counter.wrap(Ops)
    with counter.mode():
        x = torch.zeros(1000, dtype=torch.float64)  # 8,000 bytes
        assert (counter.ops, counter.written) == (1, 8000)
        x[10:20].view(2, 5)
        torch.empty(500, dtype=torch.int32)
        assert (counter.ops, counter.written) == (1, 8000)
        y = x + 1.0  # 8,000
        x.add_(y)  # 8,000
        x.scatter_(0, torch.tensor([3, 4]), torch.tensor([1.0, 2.0], dtype=torch.float64))
        ops.kernel(x)
    # zeros, add, add_ (8,000 bytes each) and the scatter (its source: 16 bytes); the
    # tensors made from lists are copies of host data, not operations
    assert counter.ops == 4
    assert counter.written == 3 * 8000 + 16


def test_traffic_run_has_the_same_work() -> None:
    """A run with --traffic counts the same work as one without, and some operations and
    bytes per round."""
    work = _work()
    from dcpe.datasets import make_sample_codebook

    data = make_sample_codebook(n=300, d=20).astype(np.float32)
    plain = work.measure(data, 150, False, handover=False)
    counted = work.measure(data, 150, False, handover=False, traffic=True)
    assert "torch_ops" not in plain
    for key in ("rounds", "scan_pairs", "candidate_scan_pairs", "candidate_pairs",
                "token_pairs", "final_clusters"):
        assert counted[key] == plain[key], key
    rounds = counted["matrix_free_rounds"]
    assert counted["torch_ops"] > 10 * rounds and counted["torch_bytes_written"] > 300 * rounds
    assert work._traffic_cells(plain) == ["—", "—"]
    assert work._traffic_cells(counted)[1].endswith(" MB")


def test_memory_run_counts_the_tensors_within_the_budget(tmp_path: Path) -> None:
    """--memory: each size under the preflight's count plus each size given, the tensors
    the engine makes counted (as asked for and as the caching allocator may count them),
    both within the budget: at the preflight alone, matrix-free to the cut; with 2 MiB
    more, the clusters' matrices take over after a few rounds.  The labels are the cpu
    backend's.  The allocator settings in the environment are those counted, and
    written down (here ``max_split_size_mb``)."""
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:21"}
    env.pop("PYTORCH_ALLOC_CONF", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "500",
         "--d", "20", "--own-data", "--memory", "0", "2MiB", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "linear-work-memory-d20.json").read_text())
    assert result["allocator_settings"] == "`PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:21`"
    rows = result["rows"]
    assert [(r["n"], r["extra"]) for r in rows] == [(500, 0), (500, 2 << 20)]
    for r in rows:
        assert r["budget"] == r["preflight"] + r["extra"]
        assert 0 < r["peak"] <= r["device_peak"] <= r["budget"]
        assert r["labels_equal_cpu"] is True and r["rounds"] > 0
    tight, roomy = rows
    assert tight["matrix_free_rounds"] >= tight["rounds"] > roomy["matrix_free_rounds"]
    md = (tmp_path / "linear-work-memory-d20.md").read_text()
    assert "| 500 | 20 | 0 B |" in md and "| 500 | 20 | 2 MiB |" in md
    assert "under `PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:21`" in md
    assert not (tmp_path / "linear-work-d20.json").exists()


def test_bad_memory_size_is_an_argument_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_work.py"), "--sizes", "300",
         "--memory", "lots", "--out", str(tmp_path)], capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2 and "argument --memory" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())
