"""The ``dcpe`` command line: cluster a codebook, remap extracted codes, write a report,
export IAR's files, sweep k, and run LlamaGen's sampling scripts on cluster ids.

Exit codes: 0 success, 1 failure (reported as one ``dcpe: error: ...`` line on standard
error), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcpe._npyfiles import NpyReader

__all__ = ["main"]

_EPILOG = """\
examples:
  dcpe cluster --sample -k 8192 -o prior.npz
  dcpe cluster vq_ds16_c2i.pt --normalize -k 8192 -o prior.npz
  dcpe cluster vq_ds16_c2i.pt --normalize -k 512 --max-cluster-size 32 -o prior_iar.pt
  dcpe remap codes/ --prior prior.npz -o cluster_codes/
  dcpe report --prior prior.npz --sample -o report/
  dcpe report --prior prior.npz --codebook vq_ds16_c2i.pt --normalize -o report/
  dcpe sample --prior prior.npz autoregressive/sample/sample_c2i.py --gpt-ckpt c2i_B.pt ...
"""


#: ``dcpe cluster --method`` names and the prior's method names.
_METHODS = {"dcpe": "dcpe", "kmeans": "kmeans", "balanced": "balanced_kmeans",
            "centroid-free": "centroid_free_kmeans"}


class _UsageError(Exception):
    """A mistake in the command line that argparse cannot see."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that says where the help is, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = " ".join(message.split())
        print(f"dcpe: error: {text}; see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


def _memory_limit(text: str) -> str:
    from ._memory import parse_memory_limit

    try:
        parse_memory_limit(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _prepare_output_dir(path: str | Path, *, what: str, files: Sequence[str | Path]) -> Path:
    """Check the output folder of a command before any work; the one rule of every command.

    - a missing folder is created, with its parents, when the command writes its files;
    - an existing folder may hold only files that this command is about to write (the
      output of an earlier run, which is replaced); anything else in it stops the command,
      so that outputs of different runs never mix;
    - a path that exists and is not a folder is an error.

    Parameters
    ----------
    path : str or Path
        The folder (``-o DIR``).
    what : str
        What the folder is, for the message, e.g. ``"report folder"``.
    files : sequence of str or Path
        The files the command writes, relative to the folder.

    Returns
    -------
    Path
        The folder (not created yet).

    Raises
    ------
    ValueError
        The path is a file, or the folder holds something the command does not write.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} {out} exists and is not a folder; choose a folder path")
    if not out.is_dir():
        return out
    # Relative paths as normalised strings: a remap may write millions of files.
    expected = {os.path.normpath(f) for f in files}
    parents: set[str] = set()
    for folder in {os.path.dirname(f) for f in expected}:
        while folder and folder not in parents:
            parents.add(folder)
            folder = os.path.dirname(folder)
    foreign: list[str] = []
    complete = True
    for top, dirs, names in os.walk(out):  # foreign folders are not entered
        here = os.path.relpath(top, out)
        prefix = "" if here == os.curdir else here + os.sep
        entered = []
        for name in sorted(dirs):
            if prefix + name in parents:
                entered.append(name)
            else:
                foreign.append(prefix + name)
        dirs[:] = entered
        foreign.extend(prefix + n for n in sorted(names) if prefix + n not in expected)
        if len(foreign) > 100:
            complete = False
            break
    if foreign:
        foreign.sort()
        more = (f" and {len(foreign) - 1} more" if complete else " and more") \
            if len(foreign) > 1 else ""
        raise ValueError(f"{what} {out} already holds {foreign[0]}{more}, which this command "
                         f"does not write; choose a new or empty folder, or remove them")
    return out


def _build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .backends import BACKENDS, LINKAGES, METRICS

    parser = _Parser(
        prog="dcpe",
        description="Exact average-linkage clustering of VQ tokenizer codebooks (DCPE).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dcpe {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors (accepted anywhere on the "
                             "command line, e.g. after the command; before SCRIPT in 'dcpe "
                             "sample')")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def codebook_options(p: argparse.ArgumentParser, report: bool = False) -> None:
        recorded = "the key the prior records, else " if report else ""
        p.add_argument("--key", default=None,
                       help="dotted key of the codebook tensor inside the checkpoint, "
                            "'KEY[i]' for head i of a (heads, K, d) tensor, or of a part of "
                            "it such as 'ema', for the one codebook there (default: "
                            f"{recorded}the one codebook-like tensor of checkpoint['model'], "
                            "else 'ema', else 'state_dict')")
        p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="L2-normalise codebook rows, as LlamaGen does"
                            + (" (default: what the prior records)" if report else
                               " (default: no)"))
        p.add_argument("--trust-checkpoint", action="store_true",
                       help="read the checkpoint with full unpickling (torch.load with "
                            "weights_only=False), which imports and can run what the file "
                            "names: only for files you made yourself. Without it, dcpe "
                            "imports and calls nothing the file names")
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
    c.add_argument("--linkage", default="average", choices=LINKAGES, metavar="LINKAGE",
                   help=f"one of {', '.join(LINKAGES)} (default: average, DCPE)")
    c.add_argument("--metric", default="euclidean", choices=METRICS, metavar="METRIC",
                   help=f"token distance: {', '.join(METRICS)} (default: euclidean)")
    c.add_argument("--max-cluster-size", type=_positive_int, default=None, metavar="CAP",
                   help="size cap, the rule of the paper's IAR setting (CAP = N // k): a "
                        "cluster stops merging once it is LARGER than CAP, so two clusters "
                        "of up to CAP tokens each can still merge and a cluster can reach "
                        "2 x CAP tokens. Not a hard bound (see the README)")
    c.add_argument("--backend", default="auto", choices=BACKENDS, metavar="BACKEND",
                   help=f"one of {', '.join(BACKENDS)} (default: auto: cpu for files; an "
                        f"unavailable backend is an error, never a fallback)")
    c.add_argument("--memory-limit", default=None, metavar="SIZE", type=_memory_limit,
                   help="memory budget, e.g. 8GiB or 512MiB (default: the available "
                        "memory, or the GPU's with --backend cuda or triton); within it dcpe "
                        "picks the distance-matrix engine or the linear-memory one")
    c.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (one appears for runs longer than two seconds "
                        "when standard error is a terminal)")
    c.add_argument("--method", choices=tuple(_METHODS), default="dcpe",
                   help="dcpe (default): exact average linkage; kmeans, balanced (equal "
                        "sizes, IAR's clustering; -k N/128 is IAR's setting), centroid-free "
                        "(k-means w/o centroid): the baselines of the paper")
    c.add_argument("--seed", type=_seed, default=0,
                   help="seed of the k-means methods (default: 0)")
    c.add_argument("-o", "--output", required=True, help="prior file to write (.npz or .pt)")
    codebook_options(c)

    r = sub.add_parser(
        "remap", help="map extracted token codes (.npy) to cluster ids",
        description="Map token ids in .npy files to cluster ids; files keep their relative "
                    "names under OUTDIR.\n\n"
                    "LlamaGen's and IAR's layout (extract_codes_c2i.py) is kept: in "
                    "CODE_PATH/NAME_codes/*.npy\nthe token ids are remapped, and "
                    "CODE_PATH/NAME_labels/*.npy (class labels) are copied\nunchanged, "
                    "so OUTDIR is a complete --code-path for their dataset loaders. A folder "
                    "named\nNAME_codes is written to OUTDIR/NAME_codes with its sibling "
                    "NAME_labels copied next to it\n(unless it holds a *_codes or *_labels "
                    "folder: then it is a code path itself).\nCode files must be .npy "
                    "(another array file is an error); other files are skipped.\n"
                    "OUTDIR may be new, or hold only the files this command writes (they are "
                    "replaced).\n\n"
                    "Their ImageNet code loader reads options from the code path's name: "
                    "'flip' (take one\naugmentation of each (1, A, 256) array) and an end "
                    "in 'ten_crop' (also read the twin\nNAME_ten_crop_105). Name OUTDIR as "
                    "the input is named (imagenet_code_c2i_flip_ten_crop ->\n"
                    "cluster_code_c2i_flip_ten_crop): a name that loses them is warned about, "
                    "and the command\nthat remaps a twin is printed.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("codes", nargs="+", metavar="CODES",
                   help=".npy files or folders (searched recursively for *.npy; files in "
                        "*_labels folders are copied, not remapped)")
    r.add_argument("--prior", required=True, help="prior file (.npz or .pt)")
    r.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="output folder: created if missing; an existing one may hold only "
                        "files this command writes")
    r.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary (warnings still print)")

    p = sub.add_parser(
        "report", help="compare a prior with k-means (figure + coherence table)",
        description="Write cluster_sizes.png (cluster-size distribution, prior vs k-means), "
                    "coherence.md and coherence.json (prior vs k-means vs balanced k-means; "
                    "--baselines chooses). "
                    "The codebook is read as the prior records (--normalize, --key). The "
                    "statistics measure codebook geometry, not generation quality; the "
                    "paper's gains are measured downstream (FID, IS). Needs matplotlib.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="prior file (.npz or .pt)")
    p.add_argument("--codebook", default=None, help="codebook file the prior was made for")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the baselines (default: 0)")
    p.add_argument("--kmeans-iter", type=_positive_int, default=50,
                   help="maximum iterations of the baselines (default: 50)")
    p.add_argument("--baselines", type=_baselines, default=("kmeans", "balanced_kmeans"),
                   metavar="LIST",
                   help="baselines to run at the prior's k, comma-separated: kmeans, "
                        "balanced (default: kmeans,balanced), or none for the prior's "
                        "statistics alone. On large codebooks balanced k-means takes the "
                        "longest (65,536 x 256 at k = 4,096: most of the report)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    codebook_options(p, report=True)
    _add_export_parser(sub)
    _add_sweep_parser(sub, codebook_options)
    _add_sample_parser(sub)
    # the commands' parsers, so that an unknown option is reported with its command's help
    parser.commands = sub.choices  # type: ignore[attr-defined]
    return parser


def _add_sample_parser(sub: Any) -> None:
    s = sub.add_parser(
        "sample", help="run LlamaGen's sampling script on a GPT trained on cluster ids",
        description="Run one of LlamaGen's sampling scripts unedited "
                    "(autoregressive/sample/sample_c2i.py,\nsample_c2i_ddp.py, "
                    "sample_t2i.py, sample_t2i_ddp.py) on a GPT trained on the cluster ids\n"
                    "of 'dcpe remap': the GPT is built with the prior's k clusters as its "
                    "vocabulary, and\nevery id it generates is decoded as a random token of "
                    "its cluster. --codebook-size\nstays the tokenizer's. Everything after "
                    "SCRIPT is the script's; it runs as\n'python SCRIPT ARGS' would (with "
                    "LlamaGen's folder on PYTHONPATH). Before\ngeneration, the "
                    "tokenizer's codebook must be the prior's and the GPT checkpoint\nmust "
                    "predict k ids. Several GPUs: torchrun --nproc_per_node=8 -m dcpe sample "
                    "...",
        epilog="examples:\n"
               "  PYTHONPATH=LlamaGen dcpe sample --prior prior.npz "
               "LlamaGen/autoregressive/sample/sample_c2i.py \\\n"
               "      --vq-ckpt vq_ds16_c2i.pt --gpt-ckpt c2i_B_clusters.pt --gpt-model "
               "GPT-B --image-size 256\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--prior", required=True,
                   help="the prior file whose cluster ids the GPT was trained on (before "
                        "SCRIPT)")
    s.add_argument("script", metavar="SCRIPT", help="LlamaGen's sampling script (.py)")
    s.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="the script's arguments, as LlamaGen's README gives them")


def _split_script(argv: list[str]) -> tuple[list[str], list[str]]:
    """For ``dcpe sample``: the arguments up to its SCRIPT, and the script's own after it,
    which dcpe does not parse (``--debug`` or ``--help`` there are the script's)."""
    at = 0
    while at < len(argv) and argv[at].startswith("-"):  # dcpe's own options
        at += 1
    if at == len(argv) or argv[at] != "sample":
        return argv, []
    i = at + 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--prior":
            i += 2
        elif arg.startswith("-") and arg != "-":
            i += 1
        else:
            return argv[:i + 1], argv[i + 1:]
    return argv, []


def _k_list(text: str) -> list[int]:
    """``--k 512,1024,...``: a comma-separated list of positive integers."""
    values = []
    for part in text.split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive integers such as 512,1024,2048, "
                f"got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"every k must be a positive integer, got {v}")
        values.append(v)
    return values


def _add_export_parser(sub: Any) -> None:
    e = sub.add_parser(
        "export", help="write a prior in the files another project reads (IAR)",
        description="Write a prior in the files another project's training reads.")
    formats = e.add_subparsers(dest="format", metavar="FORMAT", parser_class=_Parser)
    formats.required = True
    e.commands = formats.choices  # type: ignore[attr-defined]  (filled below)
    i = formats.add_parser(
        "iar", help="IAR: mapping.pt, the reordered checkpoint, clusters.json",
        description="Write three files for IAR's training:\n"
                    "  DIR/mapping.pt    int64 permutation, mapping[old] = new "
                    "(IAR's --mapping-path)\n"
                    "  DIR/<CKPT stem>-reordered<suffix>\n"
                    "                    the checkpoint with its codebook rows permuted "
                    "(under both\n"
                    "                    'model' and 'ema' when both hold it); clusters "
                    "contiguous, in\n"
                    "                    cluster order, nearest-neighbour order inside a "
                    "cluster\n"
                    "  DIR/clusters.json sizes, offsets, method, k, codebook fingerprints",
        epilog="example:\n  dcpe cluster vq_ds16_c2i.pt --normalize --method balanced "
               "-k 128 -o prior_iar.npz\n  dcpe export iar --prior prior_iar.npz "
               "--checkpoint vq_ds16_c2i.pt -o iar/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--prior", required=True, help="prior file (.npz or .pt)")
    i.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="the tokenizer checkpoint the prior was made from")
    i.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    i.add_argument("--key", default=None,
                   help="dotted key of the codebook tensor inside the checkpoint, or of a "
                        "part of it such as 'ema' (default: the key the prior records, else "
                        "the rule of 'dcpe cluster')")
    i.add_argument("--trust-checkpoint", action="store_true",
                   help="read the checkpoint with full unpickling (torch.load with "
                        "weights_only=False), which imports and can run what the file "
                        "names: only for files you made yourself")


def _add_sweep_parser(sub: Any, codebook_options: Any) -> None:
    from dcpe.backends import BACKENDS, LINKAGES, METRICS

    w = sub.add_parser(
        "sweep", help="statistics of DCPE's clusters over a grid of k (choosing k)",
        description="Build one tree (average linkage unless --linkage), cut it at every k "
                    "of a grid\nand write sweep.png, sweep.md and sweep.json: the expected "
                    "distance from a\ntoken to a random member of its cluster (the decoding "
                    "step), the same weighted\nby token usage (--codes), the largest "
                    "cluster and the number of singletons.\nThese measure codebook "
                    "geometry, not generation quality.",
        epilog="examples:\n  dcpe sweep vq_ds16_c2i.pt --normalize -o sweep/\n"
               "  dcpe sweep vq_ds16_c2i.pt --normalize --k 1024,4096,8192 "
               "--codes codes/imagenet_code_c2i_flip_ten_crop/ --baseline kmeans -o sweep/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("codebook", nargs="?", metavar="CODEBOOK",
                   help="codebook file (.pt/.pth/.ckpt, .npy, .npz, .safetensors)")
    w.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    w.add_argument("-k", "--k", type=_k_list, default=None, dest="ks", metavar="K,K,...",
                   help="values of k (default: powers of two from 256 to N/2; from 2 when N < 512)")
    w.add_argument("--codes", default=None, metavar="DIR",
                   help="extracted codes (.npy token ids; LlamaGen's <name>_codes/ layout) "
                        "for the usage-weighted distance")
    w.add_argument("--baseline", choices=("kmeans",), default=None,
                   help="also run k-means at every k")
    w.add_argument("--linkage", default="average", choices=LINKAGES, metavar="LINKAGE",
                   help=f"one of {', '.join(LINKAGES)} (default: average, DCPE)")
    w.add_argument("--metric", default="euclidean", choices=METRICS, metavar="METRIC",
                   help=f"token distance of the tree: {', '.join(METRICS)} "
                        f"(default: euclidean)")
    w.add_argument("--backend", default="auto", choices=BACKENDS, metavar="BACKEND",
                   help=f"one of {', '.join(BACKENDS)} (default: auto)")
    w.add_argument("--seed", type=_seed, default=0, help="seed of k-means (default: 0)")
    w.add_argument("--kmeans-iter", type=_positive_int, default=50,
                   help="maximum iterations of k-means (default: 50)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    codebook_options(w)


# --------------------------------------------------------------------------- helpers


def _load_codebook(path: str | None, args: argparse.Namespace) -> tuple[Any, str]:
    """The codebook of a command (file or ``--sample``) and a short name for it."""
    x, label, _ = _read_codebook(path, args)
    return x, label


def _read_codebook(path: str | None, args: argparse.Namespace) -> tuple[Any, str, Any]:
    """Like :func:`_load_codebook`, plus the :class:`dcpe.io.CodebookSource` of a file
    (``None`` for ``--sample``). The name of a file's codebook says which tensor was used
    (key, shape, dtype, ``model`` or ``ema``, normalisation); errors name ``--key`` and
    ``--trust-checkpoint``."""
    from dcpe.io import _CLI, _load, _normalize_note

    key = getattr(args, "key", None)
    _check_stray_k(path, args)
    if getattr(args, "sample", False):
        if path is not None:
            raise _UsageError("give either a codebook file or --sample, not both")
        if key is not None:
            raise _UsageError("--key applies to a codebook file, not to --sample")
        return _sample_codebook(bool(args.normalize)), "sample codebook", None
    if path is None:
        raise _UsageError("no codebook: give a codebook file or --sample")
    x, source = _load(path, key, bool(getattr(args, "normalize", False)),
                      bool(getattr(args, "trust_checkpoint", False)), _CLI)
    note = _normalize_note(source, _CLI)
    if note is not None:
        print(f"dcpe: warning: {note}", file=sys.stderr)
    note = "; --key chooses another" if source.key is not None else ""
    return x, f"{source.describe()}{note}", source


def _check_stray_k(path: str | None, args: argparse.Namespace) -> None:
    """A CODEBOOK that is a number and no file is a value of k typed after another
    (``-k 256 512``): argparse reads it as the codebook. Name the mistake, not the file."""
    if path is None or not path.isdigit() or Path(path).exists():
        return
    if hasattr(args, "ks"):  # sweep
        given = ",".join(str(k) for k in [*(args.ks or []), int(path)])
        raise _UsageError(f"{path!r} is not a codebook file but a value of k after a space; "
                          f"separate the values with commas, as in --k {given}")
    k = getattr(args, "k", None)
    if k is not None:
        raise _UsageError(f"{path!r} is not a codebook file but a second value of -k; -k "
                          f"takes one number of clusters: run 'dcpe cluster' once per k, or "
                          f"compare them with 'dcpe sweep --k {k},{path}'")


#: ``dcpe report --baselines`` names (as ``dcpe cluster --method`` names them) and the
#: baselines of :func:`dcpe.report.compare`.
_BASELINE_NAMES = {name: _METHODS[name] for name in ("kmeans", "balanced")}


def _baselines(text: str) -> tuple[str, ...]:
    """``--baselines``: comma-separated ``kmeans``/``balanced`` (each once, in the order
    given), or ``none``."""
    names = [part.strip() for part in text.split(",")]
    if names == ["none"]:
        return ()
    if any(n not in _BASELINE_NAMES for n in names):
        raise argparse.ArgumentTypeError(
            f"expected kmeans, balanced or both, comma-separated (or none), got {text!r}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"each baseline once, got {text!r}")
    return tuple(_BASELINE_NAMES[n] for n in names)


def _seed(text: str) -> int:
    """``--seed``: what :func:`dcpe._validation.check_seed` accepts."""
    from dcpe._validation import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got "
                                         f"{text!r}") from None


def _preprocessing(args: argparse.Namespace, origin: Any) -> dict[str, Any]:
    """How the codebook was read, stored in the prior's ``meta`` so that ``report`` (and
    ``export``) can read it the same way: ``normalize`` (bool), ``codebook_key`` (the
    dotted key in the file, or None), ``codebook_file`` (its name, or None) and
    ``codebook_sample`` (whether it was the built-in sample)."""
    return {"normalize": bool(args.normalize),
            "codebook_key": origin.key if origin is not None else None,
            "codebook_file": Path(origin.path).name if origin is not None else None,
            "codebook_sample": origin is None}


def _for_backend(x: Any, backend: str) -> Any:
    """The codebook where ``backend`` runs: the GPU backends (``cuda``, ``triton``) take a
    tensor on the GPU (on the CPU when there is none: the Triton interpreter's, and
    otherwise the backend's own one-line error says what is missing)."""
    if backend not in ("cuda", "triton"):
        return x
    import numpy as np
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.cuda() if torch.cuda.is_available() else t


def _check_output_file(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output must end with {' or '.join(suffixes)}, got {path!r}; name "
                         f"it like prior{suffixes[0]}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {parent}; create it first")
    if out.is_dir():
        raise ValueError(f"output path is a directory: {path}; give a file name inside it, "
                         f"like {out / ('prior' + suffixes[0])}")
    return out


def _check_dcpe_only(args: argparse.Namespace) -> None:
    """Options of ``cluster`` that only ``--method dcpe`` uses must keep their defaults."""
    given = [flag for flag, value, default in (
        ("--linkage", args.linkage, "average"), ("--metric", args.metric, "euclidean"),
        ("--max-cluster-size", args.max_cluster_size, None),
        ("--backend", args.backend, "auto"),
        ("--memory-limit", args.memory_limit, None)) if value != default]
    if given:
        raise _UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                          f"--method dcpe only; drop {'them' if len(given) > 1 else 'it'} "
                          f"for --method {args.method}")


# --------------------------------------------------------------------------- commands


def _cmd_cluster(args: argparse.Namespace) -> int:
    import numpy as np

    from dcpe._validation import transposed_hint
    from dcpe.prior import CodebookPrior

    if args.codebook is None and not args.sample:
        args.sample = True  # no CODEBOOK: the built-in sample
    out = _check_output_file(args.output, (".npz", ".pt"))
    method = _METHODS[args.method]
    if method != "dcpe":
        _check_dcpe_only(args)
    x, source, origin = _read_codebook(args.codebook, args)
    n, d = x.shape
    if args.k > n:
        raise ValueError(f"-k must be at most the number of tokens ({n}), got {args.k}; "
                         f"choose -k from 1 to {n}{transposed_hint(n, d, args.k)}")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prior = CodebookPrior.from_codebook(_for_backend(x, args.backend), args.k,
                                            linkage=args.linkage,
                                            max_cluster_size=args.max_cluster_size,
                                            backend=args.backend, metric=args.metric,
                                            method=method, seed=args.seed,
                                            memory_limit=args.memory_limit,
                                            progress=None if not args.quiet else False)
    seconds = time.perf_counter() - t0
    for w in caught:
        print(f"dcpe: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    prior.meta.update(_preprocessing(args, origin))
    prior.save(out)
    sizes = prior._numpy("sizes")
    normalized = ", normalized" if args.normalize and origin is None else ""
    print(f"codebook: {source} (N={n}, d={d}{normalized})")
    if method == "dcpe":
        print(f"k={args.k} linkage={args.linkage} metric={args.metric} "
              f"max_cluster_size={args.max_cluster_size}")
    else:
        print(f"k={args.k} method={method} seed={args.seed}")
    print(f"clusters found: {prior.num_clusters}, largest cluster: {int(sizes.max())}, "
          f"singletons: {int(np.sum(sizes == 1))}, seconds: {seconds:.2f}")
    print(f"wrote {out}")
    return 0


#: Array files that are not ``.npy``: refused as code files (remap reads ``.npy`` only).
_ARRAY_SUFFIXES = (".pt", ".pth", ".ckpt", ".npz", ".safetensors", ".pkl")
_CODES_HINT = ("code files must be .npy arrays of token ids, as LlamaGen's "
               "extract_codes_c2i.py writes them; save them with numpy.save")


def _is_labels_dir(name: str) -> bool:
    return name.endswith("_labels")


def _holds_layout(folder: Path) -> bool:
    """Whether ``folder`` holds a ``*_codes`` or ``*_labels`` folder: it is then a code
    path (LlamaGen's ``--code-path``) whatever its own name, not a ``NAME_codes`` folder,
    whose files extract_codes_c2i.py writes side by side."""
    with os.scandir(folder) as entries:  # file types from the listing: no stat per file
        return any((e.name.endswith("_codes") or _is_labels_dir(e.name)) and e.is_dir()
                   for e in entries)


class _RemapPlan:
    """What ``remap`` reads and writes: ``codes`` (remapped) and ``labels`` (copied), each
    a list of (source file, path relative to OUTDIR), and ``skipped`` (files that are not
    .npy, left alone). The paths of ``codes`` and ``labels`` are strings, as
    ``str(Path(...))`` writes them: an ImageNet extraction has millions of files, and a
    ``Path`` takes three times the memory and time."""

    def __init__(self) -> None:
        self.codes: list[tuple[str, str]] = []
        self.labels: list[tuple[str, str]] = []
        self.skipped: list[Path] = []
        self.in_output: list[Path] = []  # .npy files under the output folder (not inputs)

    def outputs(self) -> list[str]:
        return [rel for _, rel in self.codes + self.labels]


def _suffix(name: str) -> str:
    """``Path(name).suffix``: from the last dot, unless the name starts or ends there."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _files_under(root: str) -> list[tuple[str, ...]]:
    """The files under ``root`` as paths relative to it (tuples of names), sorted as
    ``sorted(Path(root).rglob("*"))`` sorts them, and as it walks: links to files are
    files, links to folders are not entered. One listing per folder, no stat per file."""
    found: list[tuple[str, ...]] = []

    def visit(folder: str, rel: tuple[str, ...]) -> None:
        with os.scandir(folder) as entries:
            listed = list(entries)
        for entry in listed:
            if entry.is_dir():
                if not entry.is_symlink():
                    visit(entry.path, (*rel, entry.name))
            elif entry.is_file():
                found.append((*rel, entry.name))

    visit(root, ())
    found.sort()
    return found


def _walk(root: Path, base: Path, plan: _RemapPlan, out_root: Path, *,
          labels: bool = False) -> int:
    """Add the files under ``root`` to ``plan`` as ``base / relative path``; a file under a
    folder named ``*_labels`` (or all of them with ``labels``) is a label file. When the
    output folder ``out_root`` lies inside ``root``, the files under it (an earlier run's
    output) are not inputs. Returns the number of code files added."""
    added = 0
    nested = out_root != root.resolve() and out_root.is_relative_to(root.resolve())
    # str(root / a / b) as strings: Path('.') / a is a, not ./a
    root_s, base_s = ("" if p == Path() else str(p) for p in (root, base))
    for parts in _files_under(str(root)):
        src = os.path.join(root_s, *parts)
        suffix = _suffix(parts[-1]).lower()
        if nested and Path(src).resolve().is_relative_to(out_root):
            if suffix == ".npy":
                plan.in_output.append(Path(src))
            continue
        is_label = labels or any(_is_labels_dir(part) for part in parts[:-1])
        if suffix == ".npy":
            (plan.labels if is_label else plan.codes).append((src, os.path.join(base_s,
                                                                                *parts)))
            added += not is_label
        elif suffix in _ARRAY_SUFFIXES and not is_label:
            raise ValueError(f"{src}: {_CODES_HINT}")
        else:
            plan.skipped.append(Path(src))
    return added


def _collect_codes(inputs: Sequence[str], out_dir: Path) -> _RemapPlan:
    """The files of ``dcpe remap``, validated by name (contents are checked later).

    LlamaGen's layout (``extract_codes_c2i.py``): ``CODE_PATH/NAME_codes/*.npy`` token ids
    and ``CODE_PATH/NAME_labels/*.npy`` class labels. Code files are remapped; files in a
    folder named ``*_labels`` are copied unchanged, so that OUTDIR is a complete code path
    for LlamaGen's and IAR's dataset loaders:

    - a folder: its files keep their relative names under OUTDIR;
    - a folder named ``NAME_codes``: written to ``OUTDIR/NAME_codes``, and its sibling
      ``NAME_labels``, if there is one, is copied to ``OUTDIR/NAME_labels``; unless it holds
      a ``*_codes`` or ``*_labels`` folder itself: then it is a code path that happens to
      be named so (``imagenet_codes/imagenet256_codes/``), a folder as above;
    - a folder named ``NAME_labels``: copied to ``OUTDIR/NAME_labels``;
    - a ``.npy`` file: written to ``OUTDIR/<its name>``.
    """
    plan = _RemapPlan()
    out_root = out_dir.resolve()
    n_codes = 0
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            name = p.resolve().name
            seen_in_output = len(plan.in_output)
            if _is_labels_dir(name):
                _walk(p, Path(name), plan, out_root, labels=True)
                continue
            if name.endswith("_codes") and not _holds_layout(p):
                found = _walk(p, Path(name), plan, out_root)
                sibling = p.resolve().parent / (name[: -len("_codes")] + "_labels")
                if sibling.is_dir():
                    _walk(sibling, Path(sibling.name), plan, out_root, labels=True)
            else:
                found = _walk(p, Path(), plan, out_root)
            if not found and len(plan.in_output) > seen_in_output:
                raise ValueError(f"no .npy code files under folder {item} outside the output "
                                 f"folder {out_dir} (files under it, such as "
                                 f"{plan.in_output[seen_in_output]}, are taken for an earlier "
                                 f"run's output, not inputs); choose an output folder outside "
                                 f"{item}")
            if not found:
                raise ValueError(f"no .npy code files under folder {item}; {_CODES_HINT}")
            n_codes += found
        elif p.is_file():
            if p.suffix.lower() != ".npy":
                raise ValueError(f"{item}: {_CODES_HINT}")
            if _is_labels_dir(p.resolve().parent.name):
                raise ValueError(f"{item} is in a folder of class labels "
                                 f"({p.resolve().parent.name}); remap maps token codes: give "
                                 f"the *_codes folder, or the folder that holds both")
            plan.codes.append((str(p), p.name))
            n_codes += 1
        else:
            raise FileNotFoundError(f"codes file or folder not found: {item}; check the path")
    if not n_codes:
        raise ValueError("no code files: the inputs hold class labels only; give the "
                         "*_codes folder, or the folder that holds both")
    for what in ("codes", "labels"):  # the same file twice is fine, two files to one name not
        unique: dict[str, str] = {}
        for src, rel in getattr(plan, what):
            if rel in unique and os.path.realpath(unique[rel]) != os.path.realpath(src):
                raise ValueError(f"two inputs map to the same output name {rel}: "
                                 f"{unique[rel]} and {src}; remap them into separate folders")
            unique.setdefault(rel, src)
        setattr(plan, what, [(src, rel) for rel, src in unique.items()])
    clash = {rel for _, rel in plan.codes} & {rel for _, rel in plan.labels}
    if clash:
        raise ValueError(f"{sorted(clash)[0]} would be written as codes and as labels; "
                         f"remap them into separate folders")
    return plan


def _check_codes_file(src: str | Path, n: int, reader: NpyReader) -> None:
    """A code file must be an integer ``.npy`` array with ids in ``[0, n)``. ``reader``
    reads the files of up to 1 MiB that it can; larger ones are memory-mapped, and the
    rest go to :func:`numpy.load` for its errors."""
    import numpy as np

    try:
        arr = reader.read(src, max_bytes=1 << 20)
        if arr is None:  # a memory map only for large files: it costs more than a read
            mmap = "r" if os.stat(src).st_size > (1 << 20) else None
            arr = np.load(src, mmap_mode=mmap, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{src}: cannot read as a .npy file ({exc}); {_CODES_HINT}") from None
    if not isinstance(arr, np.ndarray):  # e.g. a zip archive (.npz, .pt) named .npy
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{src}: not a .npy array but an archive; {_CODES_HINT}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{src}: token ids must be integers, got dtype {arr.dtype}; "
                         f"{_CODES_HINT}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
        bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
        raise ValueError(f"{src}: contains token id {bad}, outside [0, {n - 1}] of the "
                         f"prior; was the prior made for this tokenizer?")


#: LlamaGen's ``dataset/imagenet.py`` (IAR's too) reads two options from the code path's
#: name: ``'flip' in feature_dir`` and the twin ``feature_dir.replace(_TEN_CROP, _TWIN)``.
_FLIP, _TEN_CROP, _TWIN = "flip", "ten_crop/", "ten_crop_105/"


def _loader_takes(shape: tuple[int, ...], flip: bool) -> bool:
    """Whether LlamaGen's ImageNet code loader reads one sequence from an array of
    ``shape`` with its ``flip`` option: with it, one augmentation ``a[:, i]`` of the
    ``(1, A, L)`` arrays extract_codes_c2i.py writes; without it, the array as it is."""
    augmented = len(shape) >= 3 and shape[1] > 1
    if flip:
        return len(shape) >= 3
    return not augmented


def _named_like(in_code_path: Path, out_code_path: Path, *, flip: bool,
                ten_crop: bool) -> Path:
    """An output code path named with the input's options: with ``flip``, the part of the
    input's name from ``flip`` on (``..._flip_ten_crop``), else ``_flip``; with
    ``ten_crop``, ``_ten_crop`` at the end unless the name ends so already."""
    if not out_code_path.name:  # "."
        out_code_path = out_code_path.absolute()
    name, in_name = out_code_path.name, in_code_path.absolute().name
    if flip:
        name += "_" + (in_name[in_name.index(_FLIP):] if _FLIP in in_name else _FLIP)
    if ten_crop and not name.endswith(_TEN_CROP[:-1]):
        name += "_" + _TEN_CROP[:-1]
    return out_code_path.with_name(name)


def _first_by_folder(files: list[tuple[str, str]]) -> dict[tuple[Path, Path], Path]:
    """The first source file of each (source folder, output folder) pair of ``files``, in
    one pass: the checks that depend on folders only run once a folder, not once a file."""
    first: dict[tuple[str, str], str] = {}
    for src, rel in files:
        first.setdefault((os.path.dirname(src), os.path.dirname(rel)), src)
    return {(Path(src_dir), Path(rel_dir)): Path(src)
            for (src_dir, rel_dir), src in first.items()}


def _loader_notes(code_folders: dict[tuple[Path, Path], Path], out_dir: Path,
                  prior: str) -> tuple[list[str], list[str], list[str]]:
    """What LlamaGen's and IAR's ImageNet code loader would make of OUTDIR, where it reads
    the input as extracted: ``(warnings, next commands, --code-path arguments)``.

    That loader (``CustomDataset`` in their ``dataset/imagenet.py``, given
    ``--code-path CODE_PATH``) reads ``CODE_PATH/NAME_codes`` and takes its options from
    that path's name, not from the files:

    - ``flip`` in it: each ``(1, A, L)`` array of extract_codes_c2i.py gives one of its A
      augmentations; without it the array is read whole, A·L tokens as one sequence;
    - ``ten_crop/`` in it: half the samples come from the twin with ``ten_crop_105/``
      instead (LlamaGen's second extraction, at a crop range of 1.05), when it exists.

    Only a name that reads the input right but the output wrong is warned about (a path
    that the loader cannot read as it stands is not meant for it); a twin of the input
    without a remapped twin of the output gets the command that writes it. Paths are
    compared as absolute paths.
    """
    import numpy as np

    def twin(feature_dir: str) -> str:  # the loader's twin of a NAME_codes path
        return (feature_dir + "/").replace(_TEN_CROP, _TWIN).rstrip("/")

    def code_path(feature_dir: str) -> str:  # the --code-path that reads a NAME_codes path
        return os.path.dirname(feature_dir) or "."

    found: list[str] = []
    commands: list[str] = []
    code_paths: list[str] = []  # of the outputs the loader reads, not counting twins
    written = {os.path.abspath(out_dir / rel_dir) for _, rel_dir in code_folders}
    for (src_dir, rel_dir), src in code_folders.items():
        if not rel_dir.name.endswith("_codes"):
            continue
        # what the loader tests (absolute paths), and what the messages show (as given)
        feat_in, feat_out = os.path.abspath(src_dir), os.path.abspath(out_dir / rel_dir)
        shown_in = os.path.normpath(src_dir)
        shown_out = os.path.normpath(out_dir / rel_dir)
        in_cp, out_cp = code_path(shown_in), code_path(shown_out)
        shape = tuple(np.load(src, mmap_mode="r", allow_pickle=False).shape)
        has_twin = (twin(feat_in) != feat_in and os.path.isdir(twin(feat_in))
                    and os.path.isdir(twin(feat_in[: -len("_codes")] + "_labels")))
        twin_in = code_path(twin(shown_in) if twin(shown_in) != shown_in else twin(feat_in))
        loses_flip = (_loader_takes(shape, _FLIP in feat_in)
                      and not _loader_takes(shape, _FLIP in feat_out))
        loses_twin = has_twin and twin(feat_out) == feat_out
        if _TWIN not in feat_out + "/" and re.fullmatch(r"imagenet\d+_codes", rel_dir.name):
            code_paths.append(out_cp)
        if loses_flip and _FLIP in feat_out:
            found.append(f"LlamaGen's and IAR's code loader takes one augmentation a[:, i] "
                         f"of each code array when '{_FLIP}' is in the code path, as it is "
                         f"in {out_cp} but not in {in_cp}, whose {shape} arrays hold one "
                         f"sequence each (it would train on one id of each); remap into a "
                         f"folder without '{_FLIP}' in its path")
        elif loses_flip or loses_twin:
            like = _named_like(Path(in_cp), Path(out_cp), flip=loses_flip,
                               ten_crop=loses_twin)
            what = []
            if loses_flip:
                what.append(f"'{_FLIP}' (to take one of the {shape[1]} augmentations of each "
                            f"{shape} array, not {shape[1] * shape[-1]} tokens as one "
                            f"sequence)")
            if loses_twin:
                what.append(f"an end in ten_crop (to read the twin {twin_in} for half the "
                            f"samples)")
            also = f", and the twin into {like}_105" if loses_twin else ""
            found.append(f"LlamaGen's and IAR's code loader reads its options from the code "
                         f"path's name, and {out_cp} lacks what {in_cp} has: "
                         f"{' and '.join(what)}; remap into {like} instead{also}")
        elif has_twin and twin(feat_out) not in written and not os.path.isdir(twin(feat_out)):
            out_twin = code_path(twin(shown_out) if twin(shown_out) != shown_out
                                 else twin(feat_out))
            commands.append(f"dcpe remap {twin_in} --prior {prior} -o {out_twin}")
    return found, commands, sorted(set(code_paths))


def _cmd_remap(args: argparse.Namespace) -> int:
    import numpy as np

    from dcpe._npyfiles import AtomicNpyWriter, NpyReader
    from dcpe._progress import progress
    from dcpe.prior import CodebookPrior

    out_dir = Path(args.output)
    plan = _collect_codes(args.codes, out_dir)
    # A file keeps its name (rel.name == src.name), so its folder decides, once a folder;
    # a link decides by its target, which may lie anywhere.
    code_folders = _first_by_folder(plan.codes)
    for (src_dir, rel_dir), src in {**code_folders, **_first_by_folder(plan.labels)}.items():
        if (out_dir / rel_dir).resolve() == src_dir.resolve():
            raise ValueError(f"output would overwrite its input: {src}; choose another "
                             f"output folder")
    for src, rel in plan.codes + plan.labels:
        if os.path.islink(src) and (out_dir / rel).resolve() == Path(src).resolve():
            raise ValueError(f"output would overwrite its input: {src}; choose another "
                             f"output folder")
    _prepare_output_dir(out_dir, what="output folder", files=plan.outputs())
    prior = CodebookPrior.load(args.prior)
    n = prior.num_tokens
    # Validate every input before writing anything.
    disable = True if args.quiet else None
    reader, writer = NpyReader(), AtomicNpyWriter()
    for src, _ in progress(plan.codes, desc="checking", unit="file", disable=disable):
        _check_codes_file(src, n, reader)
    notes, commands, code_paths = _loader_notes(code_folders, out_dir, args.prior)
    for note in notes:
        print(f"dcpe: warning: {note}", file=sys.stderr)
    k = prior.num_clusters
    made: set[str] = set()

    def destination(rel: str) -> str:
        dest = os.path.join(out_dir, rel)
        folder = os.path.dirname(dest)
        if folder not in made:
            os.makedirs(folder or os.curdir, exist_ok=True)
            made.add(folder)
        return dest

    # Many small files: each is renamed into place complete, and all reach the disk with
    # one sync at the end instead of one flush each (see AtomicNpyWriter). Cluster ids
    # keep the token ids' dtype when it holds them: one table per dtype. An id outside the
    # table, in a file changed since it was checked, is an error (a negative one would
    # count from the end of the table).
    token_to_cluster = prior._numpy("labels")  # the prior's own table, on the host
    tables: dict[np.dtype, np.ndarray] = {}
    for src, rel in progress(plan.codes, desc="remap", unit="file", disable=disable):
        codes = reader.read(src)
        if codes is None:
            codes = np.load(src, allow_pickle=False)
        try:
            if codes.dtype.kind not in "iu" or (codes.size and codes.dtype.kind == "i"
                                                and codes.min() < 0):
                raise IndexError
            table = tables.get(codes.dtype)
            if table is None:
                holds = np.iinfo(codes.dtype).max >= k - 1
                table = tables[codes.dtype] = token_to_cluster.astype(
                    codes.dtype if holds else np.int64)
            clusters = np.asarray(table[codes], order="C")  # C order, as to_clusters gives
        except IndexError:
            raise ValueError(f"{src}: changed while being remapped (it no longer holds "
                             f"token ids in [0, {n - 1}]); run the command again") from None
        writer.save(destination(rel), clusters)
    for src, rel in progress(plan.labels, desc="labels", unit="file", disable=disable):
        writer.copy(src, destination(rel))
    if hasattr(os, "sync"):
        os.sync()
    if not args.quiet:
        line = f"remapped {len(plan.codes)} code file(s) to cluster ids (k={k})"
        if plan.labels:
            line += f", copied {len(plan.labels)} label file(s) unchanged"
        print(f"{line} under {out_dir}")
        if plan.skipped:
            print(f"skipped {len(plan.skipped)} file(s) that are not .npy, such as "
                  f"{plan.skipped[0]}")
        for command in commands:
            print(f"its twin, which LlamaGen's code loader reads for half the samples: "
                  f"{command}")
        sizes = sorted({m.group(1) for _, rel_dir in code_folders
                        if (m := re.fullmatch(r"imagenet(\d+)_codes", rel_dir.name))})
        size = f" --image-size {sizes[0]}" if len(sizes) == 1 else ""
        for code_path in code_paths:
            print(f"LlamaGen's train_c2i.py: --code-path {code_path}{size} --vocab-size {k} "
                  f"(the cluster ids are its tokens)")
    return 0


def _sample_codebook(normalize: bool) -> Any:
    """The built-in sample codebook as float32, L2-normalised on request."""
    import numpy as np

    import dcpe

    x = dcpe.datasets.sample_codebook()
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32)


def _apply_recorded(prior: Any, args: argparse.Namespace) -> None:
    """``report``: ``--normalize``/``--key`` not given take the values the prior records
    (``dcpe cluster`` stores them in ``meta``; see :func:`_preprocessing`)."""
    meta = prior.meta
    args.recorded_normalize = args.normalize is None and isinstance(meta.get("normalize"),
                                                                     bool)
    if args.recorded_normalize:
        args.normalize = meta["normalize"]
    args.recorded_key = None
    if args.key is None and args.codebook is not None \
            and isinstance(meta.get("codebook_key"), str):
        args.recorded_key = meta["codebook_key"]


def _default_to_sample(prior: Any, args: argparse.Namespace) -> None:
    """Without a codebook, ``report`` uses the sample codebook if the prior was made from it.

    The prior's fingerprint (:func:`dcpe.prior.codebook_sha256`) decides, with the L2
    normalisation asked for or recorded in the prior, or else with and without it;
    anything else is a usage error that says which codebook the prior needs.
    """
    from dcpe.prior import codebook_sha256

    if prior.codebook_sha256 is not None:
        tries = (False, True) if args.normalize is None else (bool(args.normalize),)
        for normalize in tries:
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
    made_from = prior.meta.get("codebook_file")
    if isinstance(made_from, str):
        key = prior.meta.get("codebook_key")
        made_for += f", read from {made_from}" + (f" (key {key})" if key else "")
    flag = "" if isinstance(prior.meta.get("normalize"), bool) else \
        " (and --normalize if it was normalised)"
    raise _UsageError(f"no codebook: {args.prior} was made for {made_for}; give it with "
                      f"--codebook FILE{flag}, or --sample")


def _read_report_codebook(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """The codebook of ``report``: with the key the prior records when the file has it,
    else by the usual rule (another file layout)."""
    from dcpe.io import _MissingKeyError

    if args.recorded_key is not None:
        args.key = args.recorded_key
        try:
            x, label, origin = _read_codebook(args.codebook, args)
            return x, label, origin
        except _MissingKeyError:
            args.key = None
    return _read_codebook(args.codebook, args)


def _matching_options(prior: Any, args: argparse.Namespace, origin: Any) -> str | None:
    """The ``--key``/``--normalize`` options with which the codebook matches the prior's
    fingerprint, when other ones than those used do (``None`` otherwise)."""
    from dcpe.io import _CLI, _load
    from dcpe.prior import codebook_sha256

    if prior.codebook_sha256 is None:
        return None
    normalized = bool(args.normalize)
    keys = [None] if origin is None else [origin.key, *origin.alternatives]
    current = None if origin is None else origin.key
    for key in keys:
        for normalize in (normalized, not normalized):
            if (key, normalize) == (current, normalized):
                continue
            try:
                if origin is None:
                    x = _sample_codebook(normalize)
                else:
                    x, _ = _load(origin.path, key, normalize,
                                 bool(getattr(args, "trust_checkpoint", False)), _CLI)
            except ValueError:
                continue
            if codebook_sha256(x) == prior.codebook_sha256:
                flags = [] if key == current else [f"--key {key}"]
                if normalize != normalized:
                    flags.append("--normalize" if normalize else "--no-normalize")
                return " ".join(flags)
    return None


def _cmd_report(args: argparse.Namespace) -> int:
    from dcpe.prior import CodebookPrior
    from dcpe.report import compare, markdown_table, require_matplotlib, write_report

    require_matplotlib()  # before any work
    out_dir = _prepare_output_dir(args.output, what="report folder",
                                  files=("cluster_sizes.png", "coherence.md",
                                         "coherence.json"))
    if args.sample and args.codebook is not None:
        raise _UsageError("give either --codebook or --sample, not both")
    prior = CodebookPrior.load(args.prior)
    _apply_recorded(prior, args)
    if args.codebook is None and not args.sample:
        _default_to_sample(prior, args)
    x, label, origin = _read_report_codebook(args)
    if args.recorded_normalize and args.normalize:
        label += "; rows normalised as the prior records (--no-normalize skips it)"
    print(f"codebook: {label}")
    try:
        prior.check_codebook(x, source=args.prior)
    except ValueError as exc:
        options = _matching_options(prior, args, origin)
        if options is None:
            raise
        from dcpe.prior import _NORMALIZED_STEP, _OTHER_CODEBOOK_STEP

        what = str(exc).removesuffix(f"; {_OTHER_CODEBOOK_STEP}").removesuffix(
            f"; {_NORMALIZED_STEP}")  # the step named here is the command line's
        raise ValueError(f"{what}; it matches this codebook read with {options}: run the "
                         f"command again with {options}") from None
    result = compare(x, prior, methods=args.baselines, seed=args.seed,
                     n_iter=args.kmeans_iter, show_progress=False if args.quiet else None)
    paths = write_report(out_dir, x, prior, result=result)
    print(markdown_table(result), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dcpe.export import _export_iar
    from dcpe.prior import CodebookPrior

    key = args.key
    if key is None:  # the tensor the prior was made from, when it says
        recorded = CodebookPrior.load(args.prior).meta.get("preprocessing")
        if isinstance(recorded, dict) and isinstance(recorded.get("key"), str):
            key = recorded["key"]
    ckpt = Path(args.checkpoint)
    _prepare_output_dir(args.output, what="export folder",
                        files=("mapping.pt", f"{ckpt.stem}-reordered{ckpt.suffix}",
                               "clusters.json"))
    result = _export_iar(args.prior, args.checkpoint, args.output, key=key,
                         trust=args.trust_checkpoint, cli=True)
    print(f"dcpe: codebook: {result['source'].describe()}", file=sys.stderr)
    print(f"permuted: {', '.join(result['permuted'])}"
          + (" (model and ema)" if len(result["permuted"]) > 1 else ""))
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    sizes = result["sizes"]
    n, k = int(sizes.sum()), len(sizes)
    if int(sizes.min()) == int(sizes.max()):
        print(f"IAR's train_c2i.py: --vocab-size {n} --cluster-size {int(sizes[0])} "
              f"--mapping-path {result['paths']['mapping']} (the reordered checkpoint is "
              f"its --vq-ckpt)")
    else:
        print(f"dcpe: warning: the prior's {k} clusters have {int(sizes.min())} to "
              f"{int(sizes.max())} tokens, and IAR's train_c2i.py takes every "
              f"--cluster-size consecutive new ids as one cluster; for its script make "
              f"equal clusters ('dcpe cluster --method balanced -k {max(1, n // 128)}' for "
              f"its size 128), or read the clusters' offsets in "
              f"{result['paths']['clusters']}", file=sys.stderr)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dcpe import sweep as sw

    sw.require_matplotlib()  # before any work: the figure is one of the outputs
    out_dir = _prepare_output_dir(args.output, what="sweep folder",
                                  files=("sweep.png", "sweep.md", "sweep.json"))
    if args.codes is not None and not Path(args.codes).exists():
        raise FileNotFoundError(f"codes file or directory not found: {args.codes}; check "
                                f"the path")
    x, _ = _load_codebook(args.codebook, args)
    n = x.shape[0]
    try:
        ks = sw.default_ks(n) if args.ks is None else sw._check_ks(args.ks, n, x.shape[1])
    except ValueError as exc:
        raise ValueError(f"{exc}; choose --k values in [1, {n}]") from None
    show = False if args.quiet else None
    usage = None if args.codes is None else sw.read_usage(args.codes, n, show_progress=show)
    result = sw.sweep(x, ks, linkage=args.linkage, metric=args.metric, backend=args.backend,
                      usage=usage, baseline=args.baseline, seed=args.seed,
                      kmeans_iter=args.kmeans_iter, show_progress=show)
    paths = sw.write_sweep(out_dir, result)
    print(sw.markdown_table(result), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from dcpe.llamagen import check_script, run_script
    from dcpe.prior import CodebookPrior

    check_script(args.script)  # before the prior: the usual mistake is the path
    prior = CodebookPrior.load(args.prior)
    if os.environ.get("RANK", "0") == "0":  # one line under torchrun
        print(f"dcpe: sampling with {args.prior}: the GPT predicts its {prior.num_clusters} "
              f"clusters, each decoded as a random token of the cluster "
              f"({prior.num_tokens} tokens)", file=sys.stderr)
    return run_script(args.script, args.script_args, prior, prior_name=args.prior)


_COMMANDS = {"cluster": _cmd_cluster, "remap": _cmd_remap, "report": _cmd_report,
             "export": _cmd_export, "sweep": _cmd_sweep, "sample": _cmd_sample}


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Take ``--debug`` out of ``argv`` wherever it is (before a ``--`` separator), so that
    ``dcpe --debug cluster ...`` and ``dcpe cluster ... --debug`` both work."""
    rest: list[str] = []
    debug = False
    for i, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--debug":
            debug = True
        else:
            rest.append(arg)
    return rest, debug


def _command_parser(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command (and sub-command) that ``args`` names."""
    for name in (args.command, getattr(args, "format", None)):
        commands = getattr(parser, "commands", {})
        if name not in commands:
            break
        parser = commands[name]
    return parser


def _error_message(exc: BaseException, command: str | None = None) -> str:
    """One line for an exception: its message with whitespace folded, without a repeated
    ``dcpe:`` prefix; a backend that cannot run says which ones can.

    With ``command`` (the failing command, such as ``"cluster"``), a message that names no
    next step (no ``"; "`` clause, which dcpe's own messages end with) gets one by the
    kind of error: the path for a file error, the package for an import, ``--debug`` for
    a runtime error, the command's help otherwise."""
    from dcpe._errors import BackendUnavailableError

    if isinstance(exc, BackendUnavailableError) and exc.backend and exc.reason:
        choices = ", ".join([*exc.available, "auto"])
        if exc.backend == "auto":
            return f"{exc.reason}; rebuild dcpe with its C++ extension, or choose --backend " \
                   f"from: {choices}"
        return (f"--backend {exc.backend} cannot run here: {exc.reason}; choose one of: "
                f"{choices}")
    message = " ".join(str(exc).split())
    while message.startswith("dcpe: "):
        message = message[len("dcpe: "):]
    if isinstance(exc, FileNotFoundError) and exc.filename and not message:
        message = f"file not found: {exc.filename}"
    message = message or type(exc).__name__
    if command is None or "; " in message:
        return message
    if isinstance(exc, OSError):
        step = "check the path and its permissions"
    elif isinstance(exc, ImportError):
        step = "install the package it names"
    elif isinstance(exc, MemoryError):
        step = "free memory, or set --memory-limit where the command has it"
    elif isinstance(exc, RuntimeError):
        step = "run the command again with --debug for the traceback"
    else:
        step = f"see 'dcpe {command} --help'"
    return f"{message}; {step}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dcpe`` command line.

    Every failure is one ``dcpe: error: <what>; <next step>`` line on standard error and
    no traceback, unless ``--debug`` is given (anywhere on the command line).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure, 2 on a usage error, 130 when interrupted (Ctrl-C).
    """
    argv, script_args = _split_script(list(sys.argv[1:] if argv is None else argv))
    argv, debug = _split_debug(argv)
    parser = _build_parser()
    try:
        if script_args and not any(a == "--prior" or a.startswith("--prior=") for a in argv) \
                and any(a == "--prior" or a.startswith("--prior=") for a in script_args):
            parser.commands["sample"].error(  # type: ignore[attr-defined]
                "--prior goes before SCRIPT (the arguments after SCRIPT are the script's): "
                "dcpe sample --prior PRIOR SCRIPT ARGS")
        args, unknown = parser.parse_known_args(argv)
        if args.command == "sample":
            args.script_args = script_args
        if unknown:  # reported by the parser of the command they were given to
            _command_parser(parser, args).error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.debug = debug
    if args.command is None:
        print(f"dcpe: error: no command given; choose one of {', '.join(_COMMANDS)} "
              f"(see 'dcpe --help')", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("dcpe: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        if debug:
            raise
        print(f"dcpe: error: {_error_message(exc)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, MemoryError) as exc:
        # what a user can cause: bad files, arguments, missing packages, no GPU, no memory
        if debug:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "format", None))))
        print(f"dcpe: error: {_error_message(exc, command)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if debug:
            raise
        print(f"dcpe: error: unexpected {type(exc).__name__}: {_error_message(exc)}; run the "
              f"command again with --debug for the traceback, and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
