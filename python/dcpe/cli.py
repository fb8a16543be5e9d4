"""The ``dcpe`` command line: cluster a codebook, remap extracted codes, write a report.

Exit codes: 0 success, 1 failure (reported as one ``dcpe: error: ...`` line on standard
error), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

_EPILOG = """\
examples:
  dcpe cluster --sample -k 8192 -o prior.npz
  dcpe cluster vq_ds16_c2i.pt --normalize -k 8192 -o prior.npz
  dcpe cluster vq_ds16_c2i.pt --normalize -k 512 --max-cluster-size 32 -o prior_iar.pt
  dcpe remap codes/ --prior prior.npz -o cluster_codes/
  dcpe report --prior prior.npz --sample -o report/
  dcpe report --prior prior.npz --codebook vq_ds16_c2i.pt --normalize -o report/
"""


class _UsageError(Exception):
    """A mistake in the command line that argparse cannot see."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"dcpe: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(
        prog="dcpe",
        description="Exact average-linkage clustering of VQ tokenizer codebooks (DCPE).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dcpe {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def codebook_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--key", default=None,
                       help="dotted key of the codebook tensor inside the checkpoint")
        p.add_argument("--normalize", action="store_true",
                       help="L2-normalise codebook rows (as LlamaGen does)")
        p.add_argument("--sample", action="store_true",
                       help="use the built-in synthetic sample codebook (16384 x 8)")

    c = sub.add_parser(
        "cluster", help="cluster a codebook into a prior file",
        description="Cluster a codebook with DCPE and write the prior (.npz or .pt).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("codebook", nargs="?", metavar="CODEBOOK",
                   help="codebook file (.pt/.pth/.ckpt, .npy, .npz, .safetensors); "
                        "omit for the sample codebook")
    c.add_argument("-k", "--n-clusters", type=_positive_int, required=True, dest="k",
                   help="number of clusters")
    c.add_argument("--linkage", default="average",
                   help="average (default, DCPE), centroid, single, complete, weighted, ward")
    c.add_argument("--metric", default="euclidean", help="token distance (default: euclidean)")
    c.add_argument("--max-cluster-size", type=_positive_int, default=None,
                   help="clusters larger than this stop merging (IAR setting: N // k)")
    c.add_argument("--backend", default="auto", help="clustering backend (default: auto)")
    c.add_argument("-o", "--output", required=True, help="prior file to write (.npz or .pt)")
    codebook_options(c)

    r = sub.add_parser(
        "remap", help="map extracted token codes (.npy) to cluster ids",
        description="Map token ids in .npy files to cluster ids; files keep their relative "
                    "names under OUTDIR.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("codes", nargs="+", metavar="CODES",
                   help=".npy files or directories (searched recursively for *.npy)")
    r.add_argument("--prior", required=True, help="prior file (.npz or .pt)")
    r.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "report", help="compare a prior with k-means (figure + coherence table)",
        description="Write cluster_sizes.png (cluster-size distribution, prior vs k-means), "
                    "coherence.md and coherence.json (prior vs k-means vs balanced k-means).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="prior file (.npz or .pt)")
    p.add_argument("--codebook", default=None, help="codebook file the prior was made for")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines (default: 0)")
    p.add_argument("--kmeans-iter", type=_positive_int, default=50,
                   help="maximum iterations of the baselines (default: 50)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    codebook_options(p)
    return parser


# --------------------------------------------------------------------------- helpers


def _load_codebook(path: str | None, args: argparse.Namespace) -> tuple[Any, str]:
    from dcpe.io import load_codebook

    if args.sample:
        if path is not None:
            raise _UsageError("give either a codebook file or --sample, not both")
        if args.key is not None:
            raise _UsageError("--key applies to a codebook file, not to --sample")
        return _sample_codebook(args.normalize), "sample codebook"
    if path is None:
        raise _UsageError("no codebook: give a codebook file or --sample")
    return load_codebook(path, key=args.key, normalize=args.normalize), path


def _check_output_file(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output must end with {' or '.join(suffixes)}, got {path!r}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {parent}")
    if out.is_dir():
        raise ValueError(f"output path is a directory: {path}")
    return out


# --------------------------------------------------------------------------- commands


def _cmd_cluster(args: argparse.Namespace) -> int:
    import numpy as np

    from dcpe.prior import CodebookPrior

    if args.codebook is None and not args.sample:
        args.sample = True  # no CODEBOOK: the built-in sample
    out = _check_output_file(args.output, (".npz", ".pt"))
    x, source = _load_codebook(args.codebook, args)
    n, d = x.shape
    if args.k > n:
        raise ValueError(f"-k must be at most the number of tokens ({n}), got {args.k}")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prior = CodebookPrior.from_codebook(x, args.k, linkage=args.linkage,
                                            max_cluster_size=args.max_cluster_size,
                                            backend=args.backend, metric=args.metric)
    seconds = time.perf_counter() - t0
    for w in caught:
        print(f"dcpe: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    prior.meta["normalize"] = bool(args.normalize)
    prior.save(out)
    sizes = prior._numpy("sizes")
    print(f"codebook: {source} (N={n}, d={d}{', normalized' if args.normalize else ''})")
    print(f"k={args.k} linkage={args.linkage} metric={args.metric} "
          f"max_cluster_size={args.max_cluster_size}")
    print(f"clusters found: {prior.num_clusters}, largest cluster: {int(sizes.max())}, "
          f"singletons: {int(np.sum(sizes == 1))}, seconds: {seconds:.2f}")
    print(f"wrote {out}")
    return 0


def _collect_codes(inputs: Sequence[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(source file, relative output name) for every input, validated. Files already
    under ``out_dir`` (an output directory inside an input directory) are skipped."""
    pairs: list[tuple[Path, Path]] = []
    out_root = out_dir.resolve()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.npy")
                           if f.is_file() and not f.resolve().is_relative_to(out_root))
            if not found:
                raise ValueError(f"no .npy files under directory {item}")
            pairs.extend((f, f.relative_to(p)) for f in found)
        elif p.is_file():
            pairs.append((p, Path(p.name)))
        else:
            raise FileNotFoundError(f"codes file or directory not found: {item}")
    seen: dict[Path, Path] = {}
    for src, rel in pairs:
        if rel in seen:
            raise ValueError(f"two inputs map to the same output name {rel}: "
                             f"{seen[rel]} and {src}")
        seen[rel] = src
    return pairs


def _cmd_remap(args: argparse.Namespace) -> int:
    import numpy as np

    from dcpe._progress import progress
    from dcpe.io import atomic_write
    from dcpe.prior import CodebookPrior

    prior = CodebookPrior.load(args.prior)
    out_dir = Path(args.output)
    pairs = _collect_codes(args.codes, out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out_dir}")
    n = prior.num_tokens
    # Validate every input before writing anything.
    disable = True if args.quiet else None
    for src, rel in progress(pairs, desc="checking", unit="file", disable=disable):
        if (out_dir / rel).resolve() == src.resolve():
            raise ValueError(f"output would overwrite its input: {src}")
        try:
            arr = np.load(src, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"{src}: cannot read as a .npy file ({exc})") from None
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{src}: token ids must be integers, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
            bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
            raise ValueError(f"{src}: contains token id {bad}, outside [0, {n - 1}] "
                             f"of the prior")
        del arr
    k = prior.num_clusters
    for src, rel in progress(pairs, desc="remap", unit="file", disable=disable):
        codes = np.load(src, allow_pickle=False)
        dtype = codes.dtype if np.iinfo(codes.dtype).max >= k - 1 else np.int64
        clusters = prior.to_clusters(codes).astype(dtype, copy=False)
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dest, "wb") as fh:
            np.save(fh, clusters)
    if not args.quiet:
        print(f"wrote {len(pairs)} file(s) of cluster ids (k={k}) under {out_dir}")
    return 0


def _sample_codebook(normalize: bool) -> Any:
    """The built-in sample codebook as float32, L2-normalised on request."""
    import numpy as np

    import dcpe

    x = dcpe.datasets.sample_codebook()
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32)


def _default_to_sample(prior: Any, args: argparse.Namespace) -> None:
    """Without a codebook, ``report`` uses the sample codebook if the prior was made from it.

    The prior's fingerprint (:func:`dcpe.prior.codebook_sha256`) decides, with or without
    the L2 normalisation recorded in the prior; anything else is a usage error that says
    which codebook the prior needs.
    """
    from dcpe.prior import codebook_sha256

    if prior.codebook_sha256 is not None:
        for normalize in ((True,) if args.normalize else (False, True)):
            if codebook_sha256(_sample_codebook(normalize)) == prior.codebook_sha256:
                args.sample, args.normalize = True, normalize
                print("codebook: the built-in sample codebook"
                      + (" (normalised)" if normalize else "")
                      + ", which the prior's fingerprint matches", file=sys.stderr)
                return
    made_for = (f"a {prior.codebook_shape[0]} x {prior.codebook_shape[1]} codebook "
                f"(sha256 {prior.codebook_sha256[:12]}...)"
                if prior.codebook_sha256 is not None and prior.codebook_shape
                else "a codebook it does not record")
    raise _UsageError(f"no codebook: {args.prior} was made for {made_for}; give it with "
                      "--codebook FILE (and --normalize if it was normalised), or --sample")


def _cmd_report(args: argparse.Namespace) -> int:
    from dcpe.prior import CodebookPrior
    from dcpe.report import compare, markdown_table, write_report

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out_dir}")
    if args.sample and args.codebook is not None:
        raise _UsageError("give either --codebook or --sample, not both")
    prior = CodebookPrior.load(args.prior)
    if args.codebook is None and not args.sample:
        _default_to_sample(prior, args)
    x, _ = _load_codebook(args.codebook, args)
    prior.check_codebook(x, source=args.prior)
    result = compare(x, prior, seed=args.seed, n_iter=args.kmeans_iter,
                     show_progress=False if args.quiet else None)
    paths = write_report(out_dir, x, prior, result=result)
    print(markdown_table(result), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


_COMMANDS = {"cluster": _cmd_cluster, "remap": _cmd_remap, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dcpe`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure, 2 on a usage error.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args)
    except _UsageError as exc:
        print(f"dcpe: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dcpe: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dcpe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
