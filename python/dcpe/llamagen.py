"""Run LlamaGen's sampling scripts on a GPT trained on cluster ids (``dcpe sample``).

A GPT trained on the output of ``dcpe remap`` predicts cluster ids: its vocabulary is the
prior's ``k`` clusters, while the tokenizer decodes token ids of its ``N``-row codebook.
LlamaGen's sampling scripts (``autoregressive/sample/sample_c2i.py``,
``sample_c2i_ddp.py``, ``sample_t2i.py``, ``sample_t2i_ddp.py``) build both models from
one ``--codebook-size`` and hand the GPT's output to ``vq_model.decode_code``.
:func:`run_script` runs such a script unedited, as ``python SCRIPT ARGS`` would, with two
changes made to the names it imports, as the paper samples:

* ``GPT_models``: every GPT is built with ``vocab_size=k`` where the script passes the
  tokenizer's ``N`` (or nothing);
* ``VQ_models``: every tokenizer it builds maps the ids given to its ``decode_code``
  through :meth:`CodebookPrior.sample_tokens` first (a uniformly random token of each
  cluster, drawn with torch's global generator on the ids' device, which the scripts seed).

and three checks, each a one-line error before generation starts:

* the tokenizer is built for the prior's ``N`` tokens (``--codebook-size``);
* its codebook, once its checkpoint is loaded, is the one the prior was made from (the
  prior's fingerprint, raw or L2-normalised; only the row count for a prior without one);
* the GPT checkpoint predicts ``k`` ids (its ``output.weight`` and ``tok_embeddings.weight``
  rows), not ``N`` tokens.

The script is read and checked before it runs: a ``.py`` file that parses, binds
``GPT_models`` and ``VQ_models`` at module level, builds models with ``GPT_models[...](...)``
and ``VQ_models[...](...)``, calls ``decode_code`` and ends in an ``if __name__ ==
"__main__":`` block (LlamaGen's vLLM script, ``autoregressive/serve/sample_c2i.py``, builds
its GPT otherwise and is refused). Its module level runs first, then the two names are
replaced in its namespace (the modules they come from are left as they are), then the
``__main__`` block runs. The script's folder is put first on ``sys.path`` and ``sys.argv``
is ``[SCRIPT, *ARGS]``, as ``python SCRIPT ARGS`` sets them; both, and ``__main__``, are
restored afterwards. One more difference: the script's ``torch.load`` may read an
``argparse.Namespace`` (torch 2.6 on loads weights only by default, and LlamaGen's
training scripts save their arguments as one in every checkpoint, so that its sampling
scripts would refuse their own checkpoints); any other object is refused as before, in one
line that names it and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import os
import pickle
import re
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ScriptError", "check_script", "run_script"]

#: the packages of LlamaGen's root folder that its scripts import
_LLAMAGEN_PACKAGES = ("autoregressive", "tokenizer", "language", "dataset", "utils")
_NAMES = ("GPT_models", "VQ_models")
_SCRIPTS = "autoregressive/sample/sample_c2i.py (or sample_c2i_ddp.py, sample_t2i.py)"


class ScriptError(RuntimeError):
    """The sampling script stopped with an exception of its own (chained as the cause)."""


class _Mismatch(ValueError):
    """What the script builds or loads does not fit the prior (raised inside the script)."""


@dataclass
class _Script:
    path: Path
    head: types.CodeType  # the module level before the __main__ block
    main: types.CodeType  # the __main__ block and what follows it


@dataclass
class _Calls:
    gpt: int = 0
    decoded: int = 0


def _is_main_guard(node: ast.stmt) -> bool:
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names bound by the module-level imports and assignments of ``body``."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and \
                isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def check_script(script: str | os.PathLike) -> _Script:
    """Read and check a sampling script before it runs (see the module's docs).

    Raises
    ------
    FileNotFoundError
        ``script`` does not exist.
    ValueError
        It is not a ``.py`` file, does not parse, or is not built as LlamaGen's sampling
        scripts are.
    """
    path = Path(script)
    if not path.exists():
        raise FileNotFoundError(f"sampling script not found: {script}; give the path of "
                                f"LlamaGen's {_SCRIPTS}")
    if path.is_dir() or path.suffix != ".py":
        raise ValueError(f"{script}: not a Python script (.py); give LlamaGen's {_SCRIPTS}")
    source = path.read_bytes()
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, SyntaxError) else ""
        raise ValueError(f"{script}: not valid Python{where}; give LlamaGen's sampling "
                         f"script unedited") from None
    guards = [i for i, node in enumerate(tree.body) if _is_main_guard(node)]
    missing = [name for name in _NAMES if name not in _bound_names(tree.body[:guards[0]])] \
        if guards else []
    decodes = any(isinstance(node, ast.Attribute) and node.attr == "decode_code"
                  for node in ast.walk(tree))
    built = {node.func.value.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
             and isinstance(node.func.value, ast.Name)}
    unbuilt = [name for name in _NAMES if name not in built]
    if not guards:
        what = "has no if __name__ == \"__main__\": block"
    elif missing:
        what = f"does not import {' or '.join(missing)} before its __main__ block"
    elif unbuilt:
        what = f"builds no model with {' or '.join(f'{u}[...](...)' for u in unbuilt)}"
    elif not decodes:
        what = "never calls decode_code"
    else:
        head = ast.Module(body=tree.body[:guards[0]], type_ignores=[])
        main = ast.Module(body=tree.body[guards[0]:], type_ignores=[])
        return _Script(path, compile(head, str(path), "exec", dont_inherit=True),
                       compile(main, str(path), "exec", dont_inherit=True))
    raise ValueError(f"{script}: not one of LlamaGen's sampling scripts: it {what}; dcpe "
                     f"sample runs scripts that build the GPT from GPT_models and the "
                     f"tokenizer from VQ_models and decode with decode_code, as {_SCRIPTS} do")


def _entry(state_dict: Any, suffix: str) -> tuple[str, Any] | None:
    """The key ending in ``suffix`` in a state dict and its tensor (2-D), if any."""
    if not hasattr(state_dict, "items"):
        return None
    for key, value in state_dict.items():
        if isinstance(key, str) and (key == suffix or key.endswith("." + suffix)) and \
                getattr(value, "ndim", 0) == 2:
            return key, value
    return None


def _check_codebook(weight: Any, prior: Any, prior_name: str) -> None:
    """The tokenizer's codebook must be the one the prior was made from."""
    import numpy as np

    from .export import _as_made

    rows = int(weight.shape[0])
    if rows != prior.num_tokens:
        raise _Mismatch(f"the tokenizer's codebook has {rows} rows, but {prior_name} was made "
                        f"for {prior.num_tokens} tokens; give the --vq-ckpt the prior was "
                        f"made from")
    raw = np.ascontiguousarray(weight.detach().float().cpu().numpy())
    if _as_made(prior, raw) is None:
        raise _Mismatch(f"the tokenizer's codebook (--vq-ckpt) is not the one {prior_name} was "
                        f"made from (it matches neither raw nor L2-normalised); give the "
                        f"tokenizer checkpoint the prior was made from, or its prior")


def _tokenizer_builder(build: Callable[..., Any], prior: Any, prior_name: str,
                       calls: _Calls) -> Callable[..., Any]:
    n, k = prior.num_tokens, prior.num_clusters

    def build_tokenizer(*args: Any, **kwargs: Any) -> Any:
        size = kwargs.get("codebook_size")
        if size is not None and size != n:
            raise _Mismatch(f"--codebook-size {size}: it is the tokenizer's codebook size, "
                            f"{n} for {prior_name}; keep it so (dcpe sample gives the GPT "
                            f"the prior's {k} clusters itself)")
        model = build(*args, **kwargs)
        load, decode = model.load_state_dict, model.decode_code

        def load_state_dict(state_dict: Any, *a: Any, **kw: Any) -> Any:
            # the checkpoint's codebook, before it is loaded (a wrong size is then named
            # as such); without one there, the codebook the model holds after loading
            found = _entry(state_dict, "quantize.embedding.weight")
            if found is not None:
                _check_codebook(found[1], prior, prior_name)
            result = load(state_dict, *a, **kw)
            held = getattr(getattr(getattr(model, "quantize", None), "embedding", None),
                           "weight", None)
            if found is None and getattr(held, "ndim", 0) == 2:
                _check_codebook(held, prior, prior_name)
            return result

        def decode_code(code: Any, *a: Any, **kw: Any) -> Any:
            calls.decoded += 1
            try:
                tokens = prior.sample_tokens(code)
            except (TypeError, ValueError) as exc:
                raise _Mismatch(f"decode_code was given {' '.join(str(exc).split())}; give the "
                                f"prior whose cluster ids the GPT was trained on") from exc
            return decode(tokens, *a, **kw)

        model.load_state_dict = load_state_dict
        model.decode_code = decode_code
        return model

    return build_tokenizer


def _gpt_builder(build: Callable[..., Any], prior: Any, prior_name: str,
                 calls: _Calls) -> Callable[..., Any]:
    n, k = prior.num_tokens, prior.num_clusters

    def build_gpt(*args: Any, **kwargs: Any) -> Any:
        vocab = kwargs.get("vocab_size", n)
        if vocab not in (n, k):
            raise _Mismatch(f"the GPT is built with vocab_size={vocab}, neither the "
                            f"tokenizer's {n} tokens nor the {k} clusters of {prior_name}; "
                            f"give --codebook-size {n}")
        kwargs["vocab_size"] = k
        model = build(*args, **kwargs)
        load = model.load_state_dict

        def load_state_dict(state_dict: Any, *a: Any, **kw: Any) -> Any:
            for suffix in ("output.weight", "tok_embeddings.weight"):
                found = _entry(state_dict, suffix)
                if found is None or found[1].shape[0] == k:
                    continue
                key, rows = found[0], int(found[1].shape[0])
                if rows == n:
                    raise _Mismatch(
                        f"the GPT checkpoint predicts the tokenizer's {n} tokens ({key} has "
                        f"{rows} rows), not the {k} clusters of {prior_name}: it was trained "
                        f"on token ids; give the GPT trained on dcpe remap's codes, or run "
                        f"the script without dcpe sample")
                raise _Mismatch(
                    f"the GPT checkpoint predicts {rows} ids ({key}), but {prior_name} has "
                    f"{k} clusters; give the prior whose cluster ids the GPT was trained on")
            return load(state_dict, *a, **kw)

        model.load_state_dict = load_state_dict
        calls.gpt += 1
        return model

    return build_gpt


def _patch(namespace: dict[str, Any], prior: Any, prior_name: str, calls: _Calls,
           script: str) -> None:
    for name, wrap in (("GPT_models", _gpt_builder), ("VQ_models", _tokenizer_builder)):
        builders = namespace.get(name)
        if not isinstance(builders, dict) or not all(callable(b) for b in builders.values()):
            what = "holds other things than" if isinstance(builders, dict) else \
                f"is a {type(builders).__name__}, not"
            raise _Mismatch(f"{script}: its {name} {what} LlamaGen's model builders; give "
                            f"LlamaGen's {_SCRIPTS}")
        namespace[name] = {key: wrap(b, prior, prior_name, calls)
                           for key, b in builders.items()}


@contextlib.contextmanager
def _saved_arguments_readable() -> Iterator[None]:
    """Let the script's ``torch.load`` read an ``argparse.Namespace``, and nothing more.

    LlamaGen's training scripts save their arguments as one in every checkpoint
    (``"args"``), and torch 2.6 on loads weights only by default, so its sampling scripts
    refuse their own checkpoints ("Unsupported global: GLOBAL argparse.Namespace"). A
    namespace is a plain holder of values: reading it runs nothing."""
    try:
        import torch

        allowed = torch.serialization.safe_globals
    except (ImportError, AttributeError):  # torch < 2.5: no weights-only default
        yield
        return
    with allowed([argparse.Namespace]):
        yield


def _script_error(exc: Exception, script: str) -> ScriptError:
    """The script's own failure as one line, with a next step where one is known."""
    message = " ".join(str(exc).split()) or "no message"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in message.lower():
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        what = f" ({found.group(1)})" if found else ""
        return ScriptError(f"{script} stopped: its torch.load refused an object of a checkpoint"
                           f"{what}, as torch loads weights only by default; if you trust the "
                           f"file, run again with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
    step = "; check the path and its permissions" if isinstance(exc, OSError) else ""
    return ScriptError(f"{script} stopped with {type(exc).__name__}: {message}{step}")


def _missing_root(exc: ModuleNotFoundError, script: str) -> ValueError | None:
    """A clearer error when the script cannot import LlamaGen's own packages."""
    top = (exc.name or "").split(".")[0]
    if top not in _LLAMAGEN_PACKAGES:
        return None
    return ValueError(f"{script}: cannot import {exc.name!r}, a package of LlamaGen's folder; "
                      f"put that folder on the path (PYTHONPATH=path/to/LlamaGen dcpe sample "
                      f"...)")


def run_script(script: str | os.PathLike, args: Sequence[str], prior: Any, *,
               prior_name: str = "the prior") -> int:
    """Run one of LlamaGen's sampling scripts on a GPT trained on ``prior``'s cluster ids.

    Parameters
    ----------
    script : str or os.PathLike
        The script, e.g. ``autoregressive/sample/sample_c2i.py``, unedited.
    args : sequence of str
        Its arguments, as LlamaGen's README gives them (``--codebook-size`` stays the
        tokenizer's).
    prior : CodebookPrior
        The prior whose cluster ids the GPT was trained on (``dcpe remap``'s).
    prior_name : str
        How errors name the prior (its file).

    Returns
    -------
    int
        The script's exit status: 0, or the code of a ``SystemExit`` it raised (its
        ``--help``, its usage errors).

    Raises
    ------
    FileNotFoundError, ValueError
        The script is not one of LlamaGen's sampling scripts (before it runs); it builds
        a tokenizer or loads a checkpoint that does not fit the prior (before generation);
        it cannot import LlamaGen's packages; or it ran to its end without building a GPT
        from ``GPT_models``.
    ScriptError
        The script stopped with another exception (chained as ``__cause__``).
    """
    checked = check_script(script)
    shown = os.fspath(script)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=str(checked.path), __builtins__=builtins,
                           __cached__=None, __loader__=None, __package__=None,
                           __spec__=None)
    calls = _Calls()
    saved_argv, saved_path = sys.argv, list(sys.path)
    saved_main = sys.modules.get("__main__")
    sys.argv = [str(checked.path), *args]
    sys.path.insert(0, os.path.dirname(os.path.realpath(checked.path)))
    sys.modules["__main__"] = module
    try:
        with _saved_arguments_readable():
            exec(checked.head, module.__dict__)
            _patch(module.__dict__, prior, prior_name, calls, shown)
            exec(checked.main, module.__dict__)
    except SystemExit as exc:  # its --help, its usage errors, sys.exit
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # sys.exit("message"), as Python reports it
        return 1
    except (_Mismatch, KeyboardInterrupt):
        raise
    except ModuleNotFoundError as exc:
        clearer = _missing_root(exc, shown)
        if clearer is None:
            raise  # another package: its name is the next step
        raise clearer from exc
    except Exception as exc:
        raise _script_error(exc, shown) from exc
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        if saved_main is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = saved_main
    if calls.gpt == 0:
        raise ValueError(f"{shown} ran to its end without building a GPT from GPT_models, "
                         f"so nothing was sampled on cluster ids; give LlamaGen's {_SCRIPTS}")
    return 0
