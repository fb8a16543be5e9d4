"""benchmarks/bench_scale.py runs end to end at a small size and writes complete results
(every provider row has a time or a reason), with a stand-in for a ParChain binary."""

from __future__ import annotations

import functools
import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_bench

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("dcpe")

# A stand-in for ParChain's `linkage`: writes a dendrogram of the right shape (ids, ids,
# height, size) and prints its timing line as ParChain does, the k-th run (counted in a
# file beside it, the script's probe of four points not counted) the k-th of `times`,
# cyclically. Like ParChain's published build it has no branch for d > 10: there it
# prints "dim not supported", writes nothing and exits 0.
_FAKE_PARCHAIN = """#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
if int(args[args.index("-d") + 1]) > 10:
    print("dim not supported", file=sys.stderr)
    sys.exit(0)
n = sum(1 for _ in open(args[-1])) - 1
count = Path(__file__).with_name("count")
k = int(count.read_text()) if count.exists() else 0
if n > 4:  # not the script's probe of four points
    count.write_text(str(k + 1))
out = args[args.index("-o") + 1]
with open(out, "w") as fh:
    for i in range(n - 1):
        fh.write(f"{{i}} {{i + 1}} {{float(i)}} 2\\n")
times = {times!r}
print("num workers: 1")
print("Parlay time: clustering: " + times[k % len(times)])
"""


def _fake_parchain(tmp_path: Path, times: tuple[str, ...] = ("0.0123",)) -> Path:
    fake = tmp_path / "linkage"
    fake.write_text(_FAKE_PARCHAIN.format(python=sys.executable, times=times))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


_bench = functools.partial(run_bench, "bench_scale.py")


def test_small_run_writes_complete_results(tmp_path: Path) -> None:
    fake = _fake_parchain(tmp_path)
    out = tmp_path / "res"
    proc = _bench("--sizes", "300x4,200x32", "--cosine-sizes", "300x4", "--parchain", str(fake),
                  "--threads", "1", "--out", str(out), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / "t.json").read_text())
    rows = {(r["provider"], r["n"], r["d"]): r for r in payload["rows"]}
    for key in [("dcpe-linear", 300, 4), ("dcpe-matrix", 300, 4), ("fastcluster", 300, 4),
                ("parchain", 300, 4), ("dcpe-cosine", 300, 4), ("dcpe-linear", 200, 32),
                ("dcpe-cut", 300, 4)]:
        if key[0] == "fastcluster" and "fastcluster" in rows.get(key, {}).get("error", ""):
            continue  # fastcluster not installed here: its row says so
        assert key in rows, sorted(rows)
        measured = rows[key].get("seconds")
        assert measured is not None or rows[key].get("error"), rows[key]
    parsed = rows[("parchain", 300, 4)]["seconds"]  # the stand-in's printed figure, parsed
    assert parsed == pytest.approx(0.0123)
    # a d that the build has no branch for: the row says so
    assert "does not take d = 32" in rows[("parchain", 200, 32)]["error"]
    # the exact engines agree on the dendrogram's heights
    a = rows[("dcpe-linear", 300, 4)]["heights_sum"]
    b = rows[("dcpe-matrix", 300, 4)]["heights_sum"]
    assert a == pytest.approx(b, rel=1e-5)
    assert rows[("dcpe-cut", 300, 4)]["clusters"] == 150  # labels at k = N/2
    assert rows[("dcpe-cut", 300, 4)]["heights_sum"] is None
    assert "| N × d |" in (out / "t.md").read_text()


def test_engine_providers_agree(tmp_path: Path) -> None:
    """The providers that force an engine or leave it to dcpe give the same results."""
    out = tmp_path / "res"
    proc = _bench("--sizes", "240x4,200x32", "--cosine-sizes", "200x32", "--threads", "1",
                  "--providers", "dcpe-cut,dcpe-cut-matrix,dcpe-cut-auto,dcpe-cosine,"
                  "dcpe-cosine-linear,dcpe-cosine-matrix", "--cut-fraction", "4",
                  "--out", str(out), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {(r["provider"], r["n"], r["d"]): r
            for r in json.loads((out / "t.json").read_text())["rows"]}
    for n, d in ((240, 4), (200, 32)):
        for provider in ("dcpe-cut", "dcpe-cut-matrix", "dcpe-cut-auto"):
            assert rows[(provider, n, d)]["clusters"] == n // 4
    assert ("dcpe-cosine", 240, 4) not in rows  # not among --cosine-sizes
    sums = [rows[(p, 200, 32)]["heights_sum"]
            for p in ("dcpe-cosine", "dcpe-cosine-linear", "dcpe-cosine-matrix")]
    assert sums[1] == pytest.approx(sums[0], rel=1e-5)
    assert sums[2] == pytest.approx(sums[0], rel=1e-5)


def test_bad_parchain_path_is_refused(tmp_path: Path) -> None:
    proc = _bench("--sizes", "50x2", "--parchain", str(tmp_path / "missing"),
                  "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "--parchain" in proc.stderr


def test_memory_limit_reaches_dcpe_and_the_results(tmp_path: Path) -> None:
    """--memory-limit is dcpe's memory_limit (a limit too small for the run is its row's
    error) and is written down with the results."""
    out = tmp_path / "res"
    proc = _bench("--sizes", "300x32", "--providers", "dcpe-cut,dcpe-linear",
                  "--linear-high-d-max-n", "300", "--memory-limit", "1KiB", "--threads", "1",
                  "--out", str(out), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / "t.json").read_text())
    assert payload["memory_limit"] == "1KiB"
    assert all("InsufficientMemoryError" in r["error"] or "needs" in r["error"]
               for r in payload["rows"]), payload["rows"]
    assert "memory_limit='1KiB'" in (out / "t.md").read_text()


def test_repeat_reports_the_median_of_every_run(tmp_path: Path) -> None:
    """--repeat R: each provider's call R times (ParChain's binary R times), their median
    reported, every run kept; dcpe-auto is dcpe.linkage's own choice of engine."""
    fake = _fake_parchain(tmp_path, times=("0.03", "0.01", "0.02"))
    out = tmp_path / "res"
    proc = _bench("--sizes", "300x4", "--providers", "dcpe-auto,dcpe-linear,parchain",
                  "--parchain", str(fake), "--repeat", "3", "--threads", "1",
                  "--out", str(out), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["provider"]: r for r in json.loads((out / "t.json").read_text())["rows"]}
    assert (tmp_path / "count").read_text() == "3"
    assert rows["parchain"]["runs"] == [0.03, 0.01, 0.02]
    assert rows["parchain"]["seconds"] == pytest.approx(0.02)
    for name in ("dcpe-auto", "dcpe-linear"):
        runs = rows[name]["runs"]
        assert len(runs) == 3 and all(t > 0 for t in runs)
        assert rows[name]["seconds"] == pytest.approx(sorted(runs)[1])
    assert rows["dcpe-auto"]["heights_sum"] == pytest.approx(rows["dcpe-linear"]["heights_sum"],
                                                             rel=1e-5)
    assert "the median of 3 runs per cell" in (out / "t.md").read_text()


@pytest.mark.parametrize("flag", ["--repeat", "--cut-fraction"])
def test_a_count_below_one_is_refused(tmp_path: Path, flag: str) -> None:
    proc = _bench("--sizes", "50x2", flag, "0", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert f"{flag} must be at least 1" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_cut_fraction_sets_the_flat_cuts_k(tmp_path: Path) -> None:
    """--cut-fraction F: dcpe-cut's labels at k = N // F, written down with the results."""
    out = tmp_path / "res"
    proc = _bench("--sizes", "300x4", "--providers", "dcpe-cut", "--cut-fraction", "16",
                  "--threads", "1", "--out", str(out), "--name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / "t.json").read_text())
    assert payload["cut_fraction"] == 16
    assert payload["rows"][0]["clusters"] == 300 // 16
    assert "labels at k = N/16" in (out / "t.md").read_text()


def _engines_run(out: Path, name: str, size: str, *args: str) -> tuple[dict, dict]:
    """dcpe-linear and dcpe-matrix at one size (one thread), results in out/name: the
    payload and its rows by provider, whose heights agree between the two engines."""
    proc = _bench("--sizes", size, "--providers", "dcpe-linear,dcpe-matrix", "--threads", "1",
                  *args, "--out", str(out), "--name", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / f"{name}.json").read_text())
    rows = {r["provider"]: r for r in payload["rows"]}
    assert rows["dcpe-matrix"]["heights_sum"] == pytest.approx(
        rows["dcpe-linear"]["heights_sum"], rel=1e-5)
    return payload, rows


def test_dtype_reaches_dcpe_and_the_results(tmp_path: Path) -> None:
    """--dtype float64: dcpe's providers get float64 points (each child says what it
    clustered), their heights agree between the engines and differ from float32's in the
    last bits, and the results say which type; another type is refused."""
    out = tmp_path / "res"
    sums = {}
    for dtype in ("float64", "float32"):
        payload, rows = _engines_run(out, dtype, "200x32", "--dtype", dtype)
        assert payload["dtype"] == dtype
        assert {r["dtype"] for r in rows.values()} == {dtype}
        sums[dtype] = rows["dcpe-linear"]["heights_sum"]
        widened = "widened to float64 for dcpe's providers" in (out / f"{dtype}.md").read_text()
        assert widened == (dtype == "float64")
    assert sums["float64"] != sums["float32"]
    assert sums["float64"] == pytest.approx(sums["float32"], rel=1e-5)
    proc = _bench("--sizes", "50x2", "--dtype", "float16", "--out", str(tmp_path / "no"),
                  timeout=120)
    assert proc.returncode == 2 and "--dtype" in proc.stderr
    assert not (tmp_path / "no").exists()


def test_gaussian_data(tmp_path: Path) -> None:
    """--data gaussian: every provider clusters the same isotropic Gaussian points (their
    heights agree, and differ from the codebook's), and the results say which data."""
    out = tmp_path / "res"
    sums = {}
    for data in ("gaussian", "codebook"):
        payload, rows = _engines_run(out, data, "200x64", "--data", data)
        assert payload["data"] == data
        sums[data] = rows["dcpe-linear"]["heights_sum"]
    assert "isotropic standard normal" in (out / "gaussian.md").read_text()
    # unit rows (codebook) against standard normal rows of norm about 8
    assert sums["gaussian"] > 4 * sums["codebook"]
    proc = _bench("--sizes", "200x4", "--data", "uniform", "--out", str(out))
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_grid_data(tmp_path: Path) -> None:
    """--data grid: the first N points of the smallest integer grid with at least N points,
    centred at 0 (N = 2^d: the corners of a cube); the results say which data."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _common import make_points
    finally:
        sys.path.pop(0)
    cube = make_points("grid", 64, 6)
    assert cube.dtype == np.float32 and cube.shape == (64, 6)
    assert len(np.unique(cube, axis=0)) == 64 and set(np.unique(cube)) == {-0.5, 0.5}
    grid = make_points("grid", 100, 3)  # 5 levels (4^3 = 64 < 100 <= 125)
    assert set(np.unique(grid)) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    np.testing.assert_array_equal(grid[:6, 2], [-2, -1, 0, 1, 2, -2])
    assert len(np.unique(grid, axis=0)) == 100 and (grid[:, 0] <= 1).all()
    out = tmp_path / "res"
    proc = _bench("--sizes", "64x6", "--providers", "dcpe-linear,dcpe-matrix", "--threads", "1",
                  "--data", "grid", "--out", str(out), "--name", "grid")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "grid.json").read_text())["data"] == "grid"
    assert "the corners of a cube" in (out / "grid.md").read_text()
