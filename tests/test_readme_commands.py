"""Every command of README.md's ```bash blocks runs, as written, in one folder.

The blocks run in the README's order, in a temporary folder that holds the files the
README names, built here in the layouts of the projects that write them:

- ``vq_ds16_c2i.pt``: a LlamaGen VQ checkpoint as ``vq_train.py`` saves it (``"model"``,
  ``"ema"``, optimizer states, ``"steps"``, ``"args": argparse.Namespace``) with a
  16384 x 8 codebook;
- ``codes/``: codes as LlamaGen's ``extract_codes_c2i.py`` writes them,
  ``codes/imagenet256_codes/<i>.npy`` (int64, shape (1, 2, 256)) and
  ``codes/imagenet256_labels/<i>.npy`` (int64, shape (1,));
- ``imagenet_code_c2i_flip_ten_crop/`` and its twin ``..._105/``: the same with
  ``--ten-crop`` ((1, 10, 256) codes), named as LlamaGen's instructions name them.

- ``LlamaGen/``: a folder in LlamaGen's layout with stand-in models and sampling script
  (``llamagen_stub``), and ``c2i_B_clusters.pt``, a GPT checkpoint over 8192 cluster ids.

A command that prints a ``dcpe: warning:`` line fails the test too.

Each ``dcpe ...`` (or ``python -m dcpe ...``) command is split as a shell would split it
(quotes, ``#`` comments, ``\\`` line continuations, ``&&`` chains) and run through
:func:`dcpe.cli.main`; a command that does not exit with 0 fails the test. A leading
``PYTHONPATH=DIRS`` puts those folders first on ``sys.path`` for that command only. Commands of
other programs are not run: ``pip install ...`` (installing is not this test's job) and
``python -m pytest`` (the suite itself). Any other command in a bash block fails the test,
so that the README shows only commands this test checks.

The commands run as the README gives them, with its k; they take seconds each here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llamagen_stub import forget_llamagen_modules, write_llamagen

import dcpe
from dcpe.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
N, D = 16384, 8


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks of a markdown text, in order."""
    return re.findall(r"^```bash[ \t]*\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: continuation lines joined, comments
    dropped, ``&&`` chains split."""
    out: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
    return out


def _skipped(argv: list[str]) -> bool:
    if argv[:2] == ["pip", "install"]:
        return True
    return argv[:3] == ["python", "-m", "pytest"]


def _python_path(argv: list[str]) -> tuple[list[str], list[str]]:
    """A leading ``PYTHONPATH=DIRS`` assignment: its folders, and the command after it."""
    if argv and argv[0].startswith("PYTHONPATH="):
        return [d for d in argv[0].split("=", 1)[1].split(os.pathsep) if d], argv[1:]
    return [], argv


def _dcpe_args(argv: list[str]) -> list[str] | None:
    if argv[0] == "dcpe":
        return argv[1:]
    if argv[:3] == ["python", "-m", "dcpe"]:
        return argv[3:]
    return None


def _files(folder: Path) -> None:
    """The files the README's commands read, in the layouts of their projects."""
    rng = np.random.default_rng(0)
    # rows of norm 1.5: the README's --normalize changes them
    rows = rng.standard_normal((N, D)).astype(np.float32)
    codebook = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True) * 1.5)
    state = {"encoder.conv_in.weight": torch.randn(8, 3, 3, 3),
             "quant_conv.weight": torch.randn(D, 8, 1, 1),
             "quantize.embedding.weight": codebook,
             "quantize.codebook_used": torch.zeros(N, dtype=torch.int64),
             "post_quant_conv.weight": torch.randn(8, D, 1, 1),
             "decoder.conv_out.weight": torch.randn(3, 8, 3, 3)}
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=N, codebook_embed_dim=D,
                              codebook_l2_norm=True, ema=True, image_size=256,
                              results_dir="results_tokenizer_image")
    torch.save({"model": state, "ema": dict(state), "steps": 400000, "args": args,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}},
               folder / "vq_ds16_c2i.pt")
    codes = folder / "codes" / "imagenet256_codes"
    labels = folder / "codes" / "imagenet256_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    for i in range(4):
        np.save(codes / f"{i}.npy", rng.integers(0, N, (1, 2, 256)))
        np.save(labels / f"{i}.npy", rng.integers(0, 1000, (1,)))
    # LlamaGen's recommended extraction (--ten-crop, flips): ten crops and their flips,
    # and the 1.05 crops in the twin folder
    for root in ("imagenet_code_c2i_flip_ten_crop", "imagenet_code_c2i_flip_ten_crop_105"):
        for sub, shape in (("imagenet256_codes", (1, 10, 256)), ("imagenet256_labels", (1,))):
            (folder / root / sub).mkdir(parents=True)
            for i in range(2):
                np.save(folder / root / sub / f"{i}.npy", rng.integers(0, N, shape))
    # a clone of LlamaGen (stand-ins), and the GPT its train_c2i.py trained on cluster ids
    write_llamagen(folder / "LlamaGen")
    k = 8192
    torch.save({"model": {"tok_embeddings.weight": torch.zeros(k, 16),
                          "output.weight": torch.zeros(k, 16)}}, folder / "c2i_B_clusters.pt")


def test_parsing():
    block = ('# a comment line\n'
             'pip install torch==2.13.0 ".[test]" && python -m pytest -q\n'
             'dcpe cluster a.pt -k 8 \\\n    --normalize -o p.npz   # or --sample\n'
             'dcpe report --prior "my prior.npz" -o r/\n')
    assert commands(block) == [
        ["pip", "install", "torch==2.13.0", ".[test]"], ["python", "-m", "pytest", "-q"],
        ["dcpe", "cluster", "a.pt", "-k", "8", "--normalize", "-o", "p.npz"],
        ["dcpe", "report", "--prior", "my prior.npz", "-o", "r/"]]
    text = "x\n```bash\ndcpe --help\n```\n```python\nimport dcpe\n```\n```bash\nls\n```\n"
    assert bash_blocks(text) == ["dcpe --help\n", "ls\n"]


def _run(blocks: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the commands of ``blocks`` in the current folder; the ones run, as text."""
    ran: list[str] = []
    for block in blocks:
        for argv in commands(block):
            if _skipped(argv):
                continue
            paths, command = _python_path(argv)
            args = _dcpe_args(command)
            assert args is not None, (
                f"README runs {shlex.join(argv)!r}, which this test does not know how to "
                f"check; show dcpe commands only, or teach the test")
            saved = list(sys.path)
            sys.path[:0] = [str(Path(d).resolve()) for d in paths]
            try:
                rc = main(args)
            finally:
                sys.path[:] = saved
                forget_llamagen_modules()
            captured = capsys.readouterr()
            assert rc == 0, (f"README command {shlex.join(argv)!r} exited with {rc}:\n"
                             f"{captured.err}{captured.out}")
            # the README's commands are examples to copy: none of them is warned about
            assert "dcpe: warning:" not in captured.err, (
                f"README command {shlex.join(argv)!r} warns:\n{captured.err}")
            ran.append(shlex.join(argv))
    return ran


def test_runner_fails_on_a_failing_or_unknown_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="exited with 1"):
        _run(["dcpe cluster missing.pt -k 3 -o p.npz\n"], capsys)
    with pytest.raises(AssertionError, match="does not know"):
        _run(["rm -rf build\n"], capsys)
    assert _run(["pip install dcpe && dcpe --version\n"], capsys) == ["dcpe --version"]


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```bash block"
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = _run(blocks, capsys)
    # the chain of the README's command-line section, at least, ran
    assert any(c.startswith("dcpe cluster vq_ds16_c2i.pt") for c in ran), ran
    assert any(c.startswith("dcpe report --prior prior.npz --codebook vq_ds16_c2i.pt")
               for c in ran), ran
    assert (tmp_path / "report" / "coherence.md").is_file()
    # the sampling command ran LlamaGen's script on cluster ids: tokens of their clusters
    assert any(c.startswith("PYTHONPATH=LlamaGen dcpe sample --prior prior.npz") for c in ran)
    samples = np.load(tmp_path / "samples.npz")
    prior = dcpe.CodebookPrior.load(tmp_path / "prior.npz")
    assert samples["ids"].max() < prior.num_clusters == 8192
    np.testing.assert_array_equal(prior.to_clusters(samples["tokens"]), samples["ids"])
