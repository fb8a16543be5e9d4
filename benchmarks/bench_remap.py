"""``dcpe remap`` on extracted codes in LlamaGen's layout, against the loop a user writes.

LlamaGen's ``extract_codes_c2i.py`` writes one code file and one label file per image
(``CODE_PATH/imagenet256_codes/<i>.npy``, ``(1, A, 256)`` token ids, A = 10 with
``--ten-crop``, and ``CODE_PATH/imagenet256_labels/<i>.npy``). This script makes such a
code path with random ids, then times, in this process, each provider turning it into
cluster ids:

``dcpe-remap``  ``dcpe remap CODE_PATH --prior prior.npz -o OUT -q``: every file checked
                first, then each written whole (renamed into place) and one sync
``numpy-loop``  what one writes by hand: ``np.load``, ``prior.to_clusters``, ``np.save``
                for each code file, ``shutil.copyfile`` for each label file, then one
                sync (no check first, no rename)

Both write the same bytes (checked after the runs: ``same_output``). Each run writes a
new output folder, and none is removed until every run is done: removing many files
slows the creation of new ones for minutes on some file systems (ext4), which would favour
the provider that runs first. Providers alternate their order from one repeat to the
next. The user and system CPU seconds of each run are recorded with its wall time: most
of the system time is the file system creating files.

Usage::

    python benchmarks/bench_remap.py                     # -> results/remap.{json,md}
    python benchmarks/bench_remap.py --images 2000 --repeat 1 --name remap-small

``--workdir DIR`` puts the code path and the outputs under DIR (default: a temporary
folder), to time a given disk.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcpe.cli import _positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    chosen_providers,
    fmt_seconds,
    machine_info,
    markdown_table,
    write_results,
)

#: provider -> what is timed
PROVIDERS: dict[str, str] = {
    "dcpe-remap": "dcpe.cli.main(['remap', CODE_PATH, '--prior', PRIOR, '-o', OUT, '-q'])",
    "numpy-loop": "for each code file np.save(out, prior.to_clusters(np.load(f))); "
                  "shutil.copyfile for each label file; os.sync()",
}


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not AxBx...") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"shape {text!r} needs sizes >= 1")
    return shape


def make_code_path(root: Path, images: int, shape: tuple[int, ...], vocab: int) -> Path:
    """``root/imagenet_code_c2i_flip_ten_crop`` as extract_codes_c2i.py lays it out."""
    rng = np.random.default_rng(0)
    code_path = root / "imagenet_code_c2i_flip_ten_crop"
    codes, labels = code_path / "imagenet256_codes", code_path / "imagenet256_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    for i in range(images):
        np.save(codes / f"{i}.npy", rng.integers(0, vocab, shape))
        np.save(labels / f"{i}.npy", np.array([rng.integers(0, 1000)]))
    return code_path


def numpy_loop(code_path: Path, prior_file: Path, out: Path) -> None:
    """The hand-written loop (``numpy-loop``)."""
    from dcpe.prior import CodebookPrior

    prior = CodebookPrior.load(prior_file)
    for sub in ("imagenet256_codes", "imagenet256_labels"):
        (out / sub).mkdir(parents=True)
    for f in sorted((code_path / "imagenet256_codes").iterdir()):
        np.save(out / "imagenet256_codes" / f.name, prior.to_clusters(np.load(f)))
    for f in sorted((code_path / "imagenet256_labels").iterdir()):
        shutil.copyfile(f, out / "imagenet256_labels" / f.name)
    os.sync()


def run_provider(provider: str, code_path: Path, prior_file: Path, out: Path) -> None:
    if provider == "dcpe-remap":
        from dcpe.cli import main

        rc = main(["remap", str(code_path), "--prior", str(prior_file), "-o", str(out),
                   "-q"])
        if rc != 0:
            raise RuntimeError(f"dcpe remap exited with {rc}")
    else:
        numpy_loop(code_path, prior_file, out)


def timed(fn: Any) -> dict[str, float]:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": t1 - t0, "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime}


def same_files(a: Path, b: Path) -> bool:
    """Whether two output folders hold the same files with the same bytes."""
    names_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    names_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return names_a == names_b and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names_a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=_positive_int, default=20000,
                    help="images, each one code and one label file (default 20000)")
    ap.add_argument("--shape", type=_shape, default=(1, 10, 256),
                    help="shape of a code file (default 1x10x256: ten crops, as "
                         "extract_codes_c2i.py --ten-crop)")
    ap.add_argument("--vocab", type=_positive_int, default=16384,
                    help="codebook size (default 16384)")
    ap.add_argument("--k", type=_positive_int, default=8192,
                    help="clusters of the prior (default 8192)")
    ap.add_argument("--providers", default=",".join(PROVIDERS),
                    help=f"comma-separated, of {', '.join(PROVIDERS)}")
    ap.add_argument("--repeat", type=_positive_int, default=3,
                    help="runs per provider (the median; default 3)")
    ap.add_argument("--workdir", help="folder for the code path and the outputs "
                                      "(default: a temporary folder)")
    ap.add_argument("--name", default="remap", help="results file name (default remap)")
    ap.add_argument("--out", help="output directory (default benchmarks/results/)")
    args = ap.parse_args(argv)
    providers = chosen_providers(ap, args.providers, PROVIDERS)
    if args.k > args.vocab:
        ap.error(f"--k must be at most --vocab ({args.vocab}), got {args.k}")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        ap.error(f"--workdir {args.workdir} is not a folder; create it first")

    from dcpe.prior import CodebookPrior

    work = Path(tempfile.mkdtemp(prefix="dcpe-bench-remap-", dir=args.workdir))
    try:
        prior_file = work / "prior.npz"
        labels = np.random.default_rng(1).permutation(np.arange(args.vocab) % args.k)
        CodebookPrior.from_labels(labels).save(prior_file)
        code_path = make_code_path(work, args.images, args.shape, args.vocab)
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in providers}
        outputs: dict[str, Path] = {}
        for r in range(args.repeat):
            for provider in (providers if r % 2 == 0 else providers[::-1]):
                out = work / f"out_{provider}_{r}_code_c2i_flip_ten_crop"
                runs[provider].append(timed(
                    lambda p=provider, o=out: run_provider(p, code_path, prior_file, o)))
                outputs.setdefault(provider, out)
        first = outputs[providers[0]]
        same = all(same_files(first, outputs[p]) for p in providers[1:])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    base = statistics.median(r["wall_s"] for r in runs[providers[-1]])
    for provider in providers:
        walls = [r["wall_s"] for r in runs[provider]]
        rows.append({
            "provider": provider, "images": args.images, "files": 2 * args.images,
            "shape": list(args.shape), "median_s": statistics.median(walls),
            "min_s": min(walls), "max_s": max(walls), "runs": runs[provider],
            "user_s": statistics.median(r["user_s"] for r in runs[provider]),
            "sys_s": statistics.median(r["sys_s"] for r in runs[provider]),
            "ratio": statistics.median(walls) / base,
        })
    machine = machine_info()
    payload = {"benchmark": "remap", "machine": machine, "providers": PROVIDERS,
               "settings": {"images": args.images, "shape": list(args.shape),
                            "vocab": args.vocab, "k": args.k, "repeat": args.repeat},
               "same_output": same, "rows": rows}
    shape = " × ".join(str(v) for v in args.shape)
    lines = [
        "# dcpe remap on LlamaGen's layout of extracted codes",
        "",
        f"{machine['date']} · {machine['cpu']} · {machine['cores']} cores · "
        f"dcpe {machine['versions']['dcpe']} · numpy {machine['versions']['numpy']}",
        "",
        f"{args.images:,} images: a ({shape}) int64 code file and a (1,) label file each; "
        f"vocabulary {args.vocab:,}, k = {args.k:,}. Median of {args.repeat} run(s) each, "
        f"providers alternating; CPU seconds are the median run's user and system time. "
        f"Ratio: time / {providers[-1]}'s time. Same bytes written: "
        f"{'yes' if same else 'NO'}.",
        "",
        markdown_table(
            ["provider", "time", "range", "user CPU", "system CPU",
             f"× {providers[-1]}"],
            [[r["provider"], fmt_seconds(r["median_s"]),
              f"{fmt_seconds(r['min_s'])} to {fmt_seconds(r['max_s'])}",
              fmt_seconds(r["user_s"]), fmt_seconds(r["sys_s"]), f"{r['ratio']:.2f}×"]
             for r in rows]),
        "",
        *[f"- `{p}`: {PROVIDERS[p]}" for p in providers],
    ]
    jpath, mpath = write_results(args.name, payload, "\n".join(lines), args.out)
    print(f"wrote {jpath} and {mpath}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
