"""Throughput of the matrix-free engine's kernels, per provider and token layout.

The time of the matrix-free rounds past 16 dimensions is mostly that of three kernels
(:mod:`dcpe_kernels.linear`): the exact averages of candidate pairs (``pair_average``),
the two centroid scans (``centroid_nn``, ``candidate_pairs``) and, at the hand-over, the
clusters' matrix (``cluster_matrix``).  This script times each of them alone, on
synthetic inputs shaped like the engine's, so that a layout or kernel choice rests on a
measurement rather than on the whole engine's time:

* ``pair_average`` per class ``AxB`` of pairs: clusters of ``A`` and ``B`` tokens
  alternate in the token array, and random pairs of an ``A``-cluster and a ``B``-cluster
  (in random order, as the scan emits them) cover about ``--token-pairs`` token pairs.  On
  the sample codebook at d = 256 with the pair store, nine tenths of the token pairs summed
  are in pairs of fewer than 17 token pairs (``benchmarks/linear_work.py``), so the default
  classes are mostly small.  Each class runs with the tokens as rows of an ``(N, d)`` array
  and as columns of a ``(d, N)`` array (the engine's layout past
  ``dcpe_kernels.linear._COLUMNS_MIN_DIM - 1`` dimensions); the averages must be the same
  bits in both layouts and for both providers;
* ``cluster_matrix``: the matrix of ``--matrix-clusters`` clusters of 2 tokens each;
* ``centroid_nn`` (mode 0) and ``candidate_pairs`` over ``--scan-clusters`` centroids,
  from coordinate differences and (layout ``gram``) from tiles of the centroids' Gram
  matrix, as the engine runs them from ``dcpe_kernels.linear.GRAM_MIN_DIM`` dimensions on
  (:mod:`dcpe_kernels.gram`; the float64 matrix products included); ``triton``'s scans from
  differences also with their former 64 x 64 tiles (layout ``64x64 tiles``,
  :data:`FORMER_SCAN_TILES`: the same results; the time of the current 8 x 512 tiles
  against them).

Providers (``PROVIDERS``): ``cuda`` (the CUDA extension's kernels, through
``dcpe.backends.cuda_backend.CudaOps``) and ``triton`` (``dcpe_kernels.TritonOps``; on a
CPU under ``TRITON_INTERPRET=1``, for tests at small sizes).  Timing as in
``bench_gpu.py``: one warm-up call, then the median of ``--repeats`` calls timed with CUDA
events.  Rates are per second of that median: token pairs (``pair_average``,
``cluster_matrix``) or centroid pairs (scans); only ratios mean anything off the GPU.

Usage: ``python benchmarks/bench_kernels.py --out DIR`` writes ``kernels-<name>.json`` and
``.md``, rewritten after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fmt_seconds, machine_info, markdown_table, write_results  # noqa: E402
from bench_gpu import provider_status, time_gpu  # noqa: E402

PROVIDERS = ["cuda", "triton"]
#: the tiles of triton's centroid scans before 8 x 512 (dcpe_kernels.centroid._launch_config),
#: timed beside the current ones (layout "64x64 tiles"): the same results, another speed
FORMER_SCAN_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "enable_fp_fusion": False}
LAYOUTS = ["columns", "rows"]
DEFAULT_CLASSES = ["1x1", "1x2", "2x2", "2x4", "4x4", "8x8", "32x32", "128x128"]
#: most pairs listed for one class (int32 ids and one average each)
MAX_PAIRS = 1 << 24


def parse_class(text: str) -> tuple[int, int]:
    """``"AxB"`` -> ``(A, B)``, both positive."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pair class is AxB, got {text!r}") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"cluster sizes must be positive, got {text!r}")
    return a, b


def kernel_ops(provider: str) -> Any:
    if provider == "cuda":
        from dcpe.backends.cuda_backend import CudaOps

        return CudaOps
    from dcpe_kernels import TritonOps

    return TritonOps


def as_layout(x: Any, layout: str) -> Any:
    """Rows: ``x`` itself (contiguous ``(N, d)``); columns: a view of a ``(d, N)`` copy."""
    return x if layout == "rows" else x.T.contiguous().T


def pair_inputs(a: int, b: int, d: int, token_pairs: int, dtype: Any, device: str,
                seed: int) -> dict[str, Any]:
    """Tokens in clusters of ``a`` and ``b`` tokens alternately, and random pairs of an
    ``a``-cluster (even slot) and a ``b``-cluster (odd slot) covering about
    ``token_pairs`` token pairs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    m = max(1, min(MAX_PAIRS, token_pairs // (a * b)))
    # clusters of each size: about 2**18 tokens in all (the token array of 262,144 x d),
    # fewer when fewer pairs are listed
    half = max(2, min(m, (1 << 18) // (a + b)))
    sizes = torch.tensor([a, b], dtype=torch.int64).repeat(half)
    offsets = torch.cumsum(sizes, 0) - sizes
    ntok = int(sizes.sum())
    x = torch.randn(ntok, d, generator=g, dtype=torch.float64).to(dtype)
    pa = (2 * torch.randint(0, half, (m,), generator=g)).to(torch.int32)
    pb = (2 * torch.randint(0, half, (m,), generator=g) + 1).to(torch.int32)
    on = {"device": device}
    return {"x": x.to(**on), "offsets": offsets.to(**on), "sizes": sizes.to(**on),
            "pa": pa.to(**on), "pb": pb.to(**on), "pairs": m, "token_pairs": m * a * b,
            "count": torch.tensor([m], dtype=torch.int64, device=device)}


def reference_sample(inp: dict[str, Any], k: int) -> Any:
    """float64 averages of the first ``k`` pairs by the PyTorch reference (on the CPU)."""
    import torch

    from dcpe_kernels.pair_average import _reference_pair_average

    k = min(k, inp["pairs"])
    val = torch.empty(k, dtype=torch.float64)
    _reference_pair_average(inp["x"].cpu().double(), inp["offsets"].cpu(),
                            inp["sizes"].cpu(), inp["pa"][:k].cpu(), inp["pb"][:k].cpu(),
                            torch.tensor([k]), k, val)
    return val


def close_to(val: Any, ref: Any) -> bool:
    import torch

    tol = 1e-6 if val.dtype == torch.float32 else 1e-12
    got = val[: ref.numel()].cpu().double()
    return bool(torch.allclose(got, ref, rtol=tol, atol=tol))


def pair_rows(providers: list[str], args: argparse.Namespace, device: str,
              deadline: float, emit: Any) -> None:
    import torch

    dtype = getattr(torch, args.dtype)
    for cls in args.classes:
        a, b = cls
        inp = pair_inputs(a, b, args.d, args.token_pairs, dtype, device, seed=a * 1000 + b)
        ref = reference_sample(inp, args.check_pairs)
        first = None
        for provider in providers:
            ops = kernel_ops(provider)
            for layout in LAYOUTS:
                row = {"kernel": "pair_average", "class": f"{a}x{b}", "d": args.d,
                       "pairs": inp["pairs"], "work": inp["token_pairs"],
                       "provider": provider, "layout": layout}
                if time.monotonic() > deadline:
                    emit({**row, "skipped": "time limit"})
                    continue
                x = as_layout(inp["x"], layout)
                val = torch.empty(inp["pairs"], dtype=dtype, device=device)

                call = functools.partial(ops.pair_average, x, inp["offsets"], inp["sizes"],
                                         inp["pa"], inp["pb"], inp["count"], inp["pairs"], val)
                t = time_gpu(call, args.repeats, device)
                got = val.cpu()
                if first is None:
                    first = got
                emit({**row, "median_s": t["median_s"],
                      "same_bits": bool(torch.equal(got, first)),
                      "matches_reference": close_to(got, ref)})
                del x
        del inp


def matrix_rows(providers: list[str], args: argparse.Namespace, device: str,
                deadline: float, emit: Any) -> None:
    import torch

    n = args.matrix_clusters
    if n < 2:
        return
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(7)
    sizes = torch.full((n,), 2, dtype=torch.int64, device=device)
    offsets = torch.arange(0, 2 * n, 2, dtype=torch.int64, device=device)
    x0 = torch.randn(2 * n, args.d, generator=g, dtype=torch.float64).to(dtype).to(device)
    first = None
    for provider in providers:
        ops = kernel_ops(provider)
        for layout in LAYOUTS:
            row = {"kernel": "cluster_matrix", "class": f"{n} x 2 tokens", "d": args.d,
                   "pairs": n * (n - 1) // 2, "work": 4 * (n * (n - 1) // 2),
                   "provider": provider, "layout": layout}
            if time.monotonic() > deadline:
                emit({**row, "skipped": "time limit"})
                continue
            x = as_layout(x0, layout)
            out = torch.empty(n * n, dtype=dtype, device=device)
            nn = torch.empty(n, dtype=torch.int64, device=device)
            nnd = torch.empty(n, dtype=dtype, device=device)
            call = functools.partial(ops.cluster_matrix, x, offsets, sizes, n, out, n, nn, nnd)
            t = time_gpu(call, args.repeats, device)
            got = out.cpu()
            if first is None:
                first = got
            emit({**row, "median_s": t["median_s"], "same_bits": bool(torch.equal(got, first))})
            del x, out


@contextlib.contextmanager
def scan_tiles(cfg: dict[str, Any] | None, on_cpu: bool) -> Any:
    """Within the block, triton's centroid scans launch with ``cfg`` (None: their own);
    yields the tiles they launch with, ``"MxN"``."""
    import importlib

    centroid = importlib.import_module("dcpe_kernels.centroid")
    saved = centroid._launch_config
    if cfg is not None:
        centroid._launch_config = lambda on_cpu: dict(cfg)
    try:
        used = centroid._launch_config(on_cpu)
        yield f"{used['BLOCK_M']}x{used['BLOCK_N']}"
    finally:
        centroid._launch_config = saved


def scan_rows(providers: list[str], args: argparse.Namespace, device: str,
              deadline: float, emit: Any) -> None:
    import torch

    n = args.scan_clusters
    if n < 2:
        return
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(11)
    on = {"device": device}
    mu_t = torch.randn(args.d, n, generator=g, dtype=torch.float64).to(dtype).to(**on)
    s2 = (0.1 * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype).to(**on)
    rad = (0.5 * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype).to(**on)
    rows = torch.arange(n, dtype=torch.int32, device=device)
    needy = torch.ones(n, dtype=torch.int8, device=device)
    cap = 64 * n
    import dcpe_kernels.linear as linear

    mu64 = mu_t.T.to(torch.float64)
    plan = linear._GramPlan(mu64.mean(0), args.d, linear._GRAM_TILE_BYTES, False)
    ref_tau = None
    for provider in providers:
        ops = kernel_ops(provider)
        plan.by_columns = bool(getattr(ops, "gram_by_columns", False))
        base = {"d": args.d, "pairs": n * n, "work": n * n, "provider": provider,
                "layout": "—"}
        if time.monotonic() > deadline:
            for kernel in ("centroid_nn", "candidate_pairs"):
                emit({**base, "kernel": kernel, "class": f"{n} centroids",
                      "skipped": "time limit"})
            continue
        tau = torch.empty(n, dtype=dtype, device=device)
        nn = torch.empty(n, dtype=torch.int64, device=device)
        pa = torch.empty(cap, dtype=torch.int32, device=device)
        pb = torch.empty(cap, dtype=torch.int32, device=device)
        count = torch.zeros(1, dtype=torch.int64, device=device)
        # from coordinate differences (layout —), then from tiles of the Gram matrix, as the
        # engine runs them past GRAM_MIN_DIM dimensions (the float64 matrix products
        # included); triton's also with its former tiles
        variants = [("—", None, None), ("gram", plan, None)]
        if provider == "triton":
            variants.append(("64x64 tiles", None, FORMER_SCAN_TILES))
        for layout, gram, tiles in variants:
            row = {**base, "layout": layout, "class": f"{n} centroids"}
            scans = linear._Scans(ops, mu64, s2, gram)
            with scan_tiles(tiles, device == "cpu") as used:
                if provider == "triton":  # (the Gram scans have tiles of their own)
                    row["tiles"] = used if gram is None else "—"
                t = time_gpu(functools.partial(scans.bounds, tau, nn, rows, n), args.repeats,
                             device)
                extra = {}
                if gram is None:  # (the Gram scan's bounds are wider: other bits)
                    got = tau.cpu()
                    if ref_tau is None:
                        ref_tau = got
                    extra = {"same_bits": bool(torch.equal(got, ref_tau))}
                emit({**row, "kernel": "centroid_nn", "median_s": t["median_s"], **extra})
                scan = functools.partial(scans.candidates, rad, ref_tau.to(device), 1e-6, 0.0,
                                         pa, pb, count, cap, rows, n, needy)
                t = time_gpu(lambda scan=scan, count=count: (count.zero_(), scan()),
                             args.repeats, device)
                emit({**row, "kernel": "candidate_pairs", "median_s": t["median_s"],
                      "emitted": int(count.item())})


def report(rows: list[dict[str, Any]], args: argparse.Namespace, device: str,
           notes: list[str], machine: dict[str, Any]) -> str:
    best: dict[tuple, float] = {}
    for r in rows:
        if "median_s" in r and r["layout"] in ("columns", "—"):
            best[(r["kernel"], r["class"], r["provider"])] = r["median_s"]
    table = []
    for r in rows:
        t = r.get("median_s")
        rate = f"{r['work'] / t:.3g}" if t else "—"
        base = best.get((r["kernel"], r["class"], r["provider"]))
        vs = "—"
        if t and base and r["layout"] in ("rows", "gram"):
            vs = f"{base / t:.2f}x"
        elif t and base and r["layout"] == "64x64 tiles":
            vs = f"{t / base:.2f}x"  # the former tiles' time over the current tiles'
        same = {True: "yes", False: "**no**"}.get(r.get("same_bits"), "—")
        ref = {True: "yes", False: "**no**"}.get(r.get("matches_reference"), "—")
        table.append([r["kernel"], r["class"], r["d"], f"{r['pairs']:,}", f"{r['work']:.3g}",
                      r["provider"], r["layout"],
                      fmt_seconds(t) if t else r.get("skipped", "—"), rate, vs, same, ref])
    head = ["kernel", "class", "d", "pairs", "work", "provider", "layout", "median",
            "work / s", "vs columns / differences", "same bits", "= reference"]
    ver = machine.get("versions", {})
    where = machine.get("gpu") or machine.get("cpu")
    lines = [f"# dcpe kernel throughput ({device}, {args.dtype})", "",
             f"{where}; torch {ver.get('torch')}, triton {ver.get('triton')}, "
             f"commit {machine.get('commit')}, {machine.get('date')}.", "",
             markdown_table(head, table), "",
             "work: token pairs (pair_average, cluster_matrix) or centroid pairs (scans) per "
             "call; median of the timed calls after a warm-up; vs columns / differences: the "
             "columns layout's time over the rows layout's (above 1: rows faster), and the "
             "scans' time from coordinate differences (layout —) over their time from tiles "
             "of the Gram matrix (layout gram: float64 matrix products and the kernels that "
             "read them, dcpe_kernels.gram; above 1: gram faster), and for triton's scans "
             "from differences with their former 64 x 64 tiles (layout 64x64 tiles), those "
             "tiles' time over the current ones' (8 x 512 on a GPU; above 1: the current faster); "
             "same bits: the "
             "same results as the first provider and layout of the row's kernel and class; "
             "= reference: the first pairs' averages against the PyTorch reference in "
             "float64 (1e-6 relative in float32).  Candidate pairs: emitted "
             + ", ".join(str(r.get("emitted")) for r in rows
                         if r["kernel"] == "candidate_pairs" and "emitted" in r) + "."]
    lines += notes
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", nargs="+", default=PROVIDERS, choices=PROVIDERS)
    ap.add_argument("--classes", nargs="*", type=parse_class,
                    default=[parse_class(c) for c in DEFAULT_CLASSES], metavar="AxB")
    ap.add_argument("--d", type=int, default=256, help="dimensions (default 256)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--token-pairs", type=int, default=1 << 27,
                    help="token pairs per pair_average call (default 2**27)")
    ap.add_argument("--matrix-clusters", type=int, default=8192,
                    help="clusters of the cluster_matrix row (0: none)")
    ap.add_argument("--scan-clusters", type=int, default=65536,
                    help="centroids of the scan rows (0: none)")
    ap.add_argument("--check-pairs", type=int, default=64,
                    help="pairs per class checked against the reference")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=math.inf,
                    help="seconds after which the remaining rows are skipped")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--name", default="h200")
    ap.add_argument("--out", default=None, help="output directory (default results/)")
    args = ap.parse_args(argv)
    if args.d < 1 or args.token_pairs < 1 or args.repeats < 1:
        ap.error("--d, --token-pairs and --repeats must be positive")

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    deadline = time.monotonic() + args.time_limit
    providers, notes = [], []
    for p in args.providers:
        ok, why = provider_status(p, device)
        if ok:
            providers.append(p)
        else:
            notes.append(f"\n{p}: not run ({why}).")
    rows: list[dict[str, Any]] = []
    payload = {"machine": machine_info(), "device": device, "args": {
        k: v for k, v in vars(args).items()}, "rows": rows}

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print({k: v for k, v in row.items()}, flush=True)
        write_results(f"kernels-{args.name}", payload,
                      report(rows, args, device, notes, payload["machine"]), args.out)

    pair_rows(providers, args, device, deadline, emit)
    matrix_rows(providers, args, device, deadline, emit)
    scan_rows(providers, args, device, deadline, emit)
    write_results(f"kernels-{args.name}", payload,
                  report(rows, args, device, notes, payload["machine"]), args.out)
    bad = [r for r in rows if r.get("same_bits") is False or r.get("matches_reference") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
