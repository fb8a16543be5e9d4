"""benchmarks/bench_remap.py runs end to end on a small code path and writes complete
results (a row per provider, the same bytes written by both), and refuses malformed
options before any work."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from conftest import run_bench

pytest.importorskip("dcpe")


_bench = functools.partial(run_bench, "bench_remap.py")


def test_small_run_writes_complete_results(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = _bench("--images", "12", "--shape", "1x2x16", "--vocab", "64", "--k", "8",
                 "--repeat", "3", "--workdir", str(work), "--name", "rm",
                 "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "rm.json").read_text())
    assert payload["same_output"] is True
    rows = payload["rows"]
    assert [r["provider"] for r in rows] == ["dcpe-remap", "numpy-loop"]
    for r in rows:
        assert r["images"] == 12 and r["files"] == 24 and r["shape"] == [1, 2, 16]
        assert len(r["runs"]) == 3 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert all(run["wall_s"] > 0 for run in r["runs"])
    assert rows[-1]["ratio"] == 1.0
    md = (tmp_path / "rm.md").read_text()
    assert "| dcpe-remap |" in md and "Same bytes written: yes" in md
    assert payload["machine"]["versions"]["dcpe"]
    assert not list(work.iterdir())  # the code path and the outputs are removed


@pytest.mark.parametrize("argv", [["--shape", "1x0x256"], ["--shape", "ax2"],
                                  ["--images", "0"], ["--k", "65", "--vocab", "64"],
                                  ["--providers", "numpy-loop,nope"],
                                  ["--workdir", "missing-folder"]])
def test_malformed_options_are_refused(argv: list[str], tmp_path: Path) -> None:
    out = _bench(*argv, "--out", str(tmp_path / "res"))
    assert out.returncode == 2 and "error:" in out.stderr
    assert not (tmp_path / "res").exists()
