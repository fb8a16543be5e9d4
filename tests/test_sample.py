"""``dcpe sample`` / ``dcpe.llamagen.run_script``: LlamaGen's sampling scripts, unedited, on a
GPT trained on cluster ids, in a folder in LlamaGen's layout (``llamagen_stub``).
"""

from __future__ import annotations

import argparse
import fractions
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import one_error_line  # noqa: E402
from llamagen_stub import (  # noqa: E402
    SAMPLE_C2I,
    SCRIPT,
    forget_llamagen_modules,
    write_file,
    write_llamagen,
)

import dcpe  # noqa: E402
from dcpe.cli import main  # noqa: E402
from dcpe.llamagen import ScriptError, check_script, run_script  # noqa: E402

N, D, K = 64, 8, 16


@pytest.fixture
def llamagen(tmp_path, monkeypatch):
    """A folder in LlamaGen's layout with checkpoints and a normalised prior; the tests run
    from it with it on the path, as LlamaGen's README runs its scripts."""
    root = tmp_path / "LlamaGen"
    write_llamagen(root)
    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((N, D)).astype(np.float32)
    torch.save({"model": {"quantize.embedding.weight": torch.from_numpy(codebook)}},
               root / "vq_ds16_c2i.pt")
    normalized = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    prior = dcpe.CodebookPrior.from_codebook(normalized, K)
    prior.meta["normalize"] = True
    prior.save(root / "prior.npz")
    gpt = {"tok_embeddings.weight": torch.zeros(K, 16), "output.weight": torch.zeros(K, 16),
           "cls_embedding.weight": torch.zeros(1001, 16)}
    torch.save({"model": gpt}, root / "c2i_B_clusters.pt")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    forget_llamagen_modules()
    yield root
    forget_llamagen_modules()


ARGS = ["--vq-ckpt", "vq_ds16_c2i.pt", "--gpt-ckpt", "c2i_B_clusters.pt", "--gpt-model",
        "GPT-B", "--image-size", "256", "--codebook-size", str(N)]


def _sample(*extra: str, prior: str = "prior.npz") -> int:
    return main(["sample", "--prior", prior, SCRIPT, *ARGS, *extra])


def _one_error_line(capsys) -> str:
    """The one error line of a run (after dcpe's line that names the prior, if any)."""
    return one_error_line(capsys.readouterr().err, ignore=("dcpe: sampling with ",))


def test_samples_cluster_ids_and_decodes_tokens_of_them(llamagen, capsys) -> None:
    state = (list(sys.argv), list(sys.path), sys.modules.get("__main__"))
    assert _sample("--out", "a.npz") == 0
    assert (list(sys.argv), list(sys.path), sys.modules.get("__main__")) == state
    err = capsys.readouterr().err
    assert f"predicts its {K} clusters" in err and len(err.strip().splitlines()) == 1
    from autoregressive.models import gpt

    assert gpt.BUILT == [K]  # built once, with the prior's k as its vocabulary
    out = np.load(llamagen / "a.npz")
    prior = dcpe.CodebookPrior.load(llamagen / "prior.npz")
    ids, tokens = out["ids"], out["tokens"]
    assert ids.shape == tokens.shape == (4, 256)
    assert ids.max() < K <= tokens.max() < N
    np.testing.assert_array_equal(prior.to_clusters(tokens), ids)
    # several tokens drawn for the clusters that have several
    sizes = prior.cluster_sizes.numpy()
    many = sizes[ids] > 1
    assert any(len(set(tokens[many & (ids == c)])) > 1 for c in np.unique(ids[many]))


def test_same_seed_same_tokens(llamagen) -> None:
    assert _sample("--out", "a.npz") == 0
    assert _sample("--out", "b.npz") == 0
    assert _sample("--out", "c.npz", "--seed", "1") == 0
    a, b, c = (np.load(llamagen / f"{n}.npz")["tokens"] for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_run_script_from_python_and_the_module_left_alone(llamagen) -> None:
    prior = dcpe.CodebookPrior.load(llamagen / "prior.npz")
    assert run_script(SCRIPT, [*ARGS, "--out", "p.npz"], prior) == 0
    from autoregressive.models import gpt
    from tokenizer.tokenizer_image import vq_model

    # only the script's names were replaced: the modules still build token models
    assert gpt.GPT_models["GPT-B"](vocab_size=N).vocab_size == N
    model = vq_model.VQ_models["VQ-16"](codebook_size=N)
    ids = torch.arange(N)
    assert torch.equal(model.decode_code(ids), ids)
    assert (llamagen / "p.npz").exists()


def test_a_raw_codebook_prior_and_a_prior_without_fingerprint(llamagen) -> None:
    raw = torch.load(llamagen / "vq_ds16_c2i.pt")["model"]["quantize.embedding.weight"]
    dcpe.CodebookPrior.from_codebook(raw.numpy(), K).save(llamagen / "raw.npz")
    assert _sample("--out", "r.npz", prior="raw.npz") == 0
    labels = dcpe.CodebookPrior.load(llamagen / "raw.npz").token_to_cluster
    dcpe.CodebookPrior(labels).save(llamagen / "bare.npz")
    assert _sample("--out", "s.npz", prior="bare.npz") == 0


def test_a_script_that_passes_no_vocabulary(llamagen) -> None:
    # sample_t2i.py builds its GPT without vocab_size=: the GPT gets k all the same
    write_file(llamagen, "t2i.py", SAMPLE_C2I.replace("(vocab_size=args.codebook_size,\n", "(\n"))
    assert "vocab_size" not in (llamagen / "t2i.py").read_text()
    assert main(["sample", "--prior", "prior.npz", "t2i.py", *ARGS, "--out", "t.npz"]) == 0
    from autoregressive.models import gpt

    assert gpt.BUILT == [K]
    out = np.load(llamagen / "t.npz")
    prior = dcpe.CodebookPrior.load(llamagen / "prior.npz")
    np.testing.assert_array_equal(prior.to_clusters(out["tokens"]), out["ids"])


def test_wrong_codebook_size_stops_before_anything(llamagen, capsys) -> None:
    assert _sample("--out", "a.npz", "--codebook-size", str(K)) == 1
    line = _one_error_line(capsys)
    assert f"--codebook-size {K}: it is the tokenizer's codebook size, {N} for prior.npz" \
        in line
    assert not (llamagen / "a.npz").exists()


def test_a_gpt_trained_on_tokens_is_refused(llamagen, capsys) -> None:
    gpt = {"tok_embeddings.weight": torch.zeros(N, 16), "output.weight": torch.zeros(N, 16)}
    torch.save({"model": gpt}, llamagen / "c2i_B.pt")
    assert _sample("--out", "a.npz", "--gpt-ckpt", "c2i_B.pt") == 1
    line = _one_error_line(capsys)
    assert f"predicts the tokenizer's {N} tokens (output.weight has {N} rows)" in line
    assert "trained on token ids" in line
    # another vocabulary, with the keys of a wrapped model
    gpt = {"module.output.weight": torch.zeros(K + 1, 16)}
    torch.save({"model": gpt}, llamagen / "c2i_other.pt")
    assert _sample("--out", "a.npz", "--gpt-ckpt", "c2i_other.pt") == 1
    line = _one_error_line(capsys)
    assert f"predicts {K + 1} ids (module.output.weight), but prior.npz has {K} clusters" \
        in line
    assert not (llamagen / "a.npz").exists()


def test_another_tokenizer_is_refused(llamagen, capsys) -> None:
    other = torch.randn(N, D)
    torch.save({"model": {"quantize.embedding.weight": other}}, llamagen / "other.pt")
    assert _sample("--out", "a.npz", "--vq-ckpt", "other.pt") == 1
    assert "the tokenizer's codebook (--vq-ckpt) is not the one prior.npz was made from" \
        in _one_error_line(capsys)
    # a checkpoint without the codebook's key: the codebook the model holds after loading
    torch.save({"model": {}}, llamagen / "empty.pt")
    assert _sample("--out", "a.npz", "--vq-ckpt", "empty.pt") == 1
    assert "the tokenizer's codebook (--vq-ckpt) is not the one prior.npz was made from" \
        in _one_error_line(capsys)
    # a prior of another size: --codebook-size is caught first, then the rows
    dcpe.CodebookPrior(np.arange(N + 2) % K).save(llamagen / "big.npz")
    assert _sample("--out", "a.npz", prior="big.npz") == 1
    assert f"--codebook-size {N}: it is the tokenizer's codebook size, {N + 2}" \
        in _one_error_line(capsys)
    assert _sample("--out", "a.npz", "--codebook-size", str(N + 2), prior="big.npz") == 1
    assert f"the tokenizer's codebook has {N} rows, but big.npz was made for {N + 2}" \
        in _one_error_line(capsys)
    assert not (llamagen / "a.npz").exists()


@pytest.mark.parametrize("case", ["missing", "folder", "text", "syntax", "no_main",
                                  "no_gpt", "gpt_unbuilt", "no_decode"])
def test_a_script_that_is_not_a_sampling_script(llamagen, capsys, case) -> None:
    body = {
        "syntax": "def main(:\n",
        "no_main": SAMPLE_C2I.split("if __name__")[0] + "main(None)\n",
        "no_gpt": SAMPLE_C2I.replace("from autoregressive.models.gpt import GPT_models\n",
                                     ""),
        # LlamaGen's vLLM script imports GPT_models for its names only
        "gpt_unbuilt": SAMPLE_C2I.replace("GPT_models[args.gpt_model](", "dict("),
        "no_decode": SAMPLE_C2I.replace("vq_model.decode_code(", "vq_model.decode("),
    }
    script = {"missing": "autoregressive/sample/nope.py", "folder": "autoregressive",
              "text": "notes.txt"}.get(case, f"{case}.py")
    if case in body:
        write_file(llamagen, script, body[case])
    if case == "text":
        write_file(llamagen, script, "hello\n")
    assert main(["sample", "--prior", "prior.npz", script, *ARGS]) == 1
    line = _one_error_line(capsys)
    expected = {"missing": "sampling script not found: autoregressive/sample/nope.py; give",
                "folder": "autoregressive: not a Python script (.py)",
                "text": "notes.txt: not a Python script (.py)",
                "syntax": "syntax.py: not valid Python (line 1: ",
                "no_main": "no_main.py: not one of LlamaGen's sampling scripts: it has no if "
                           "__name__ == \"__main__\": block",
                "no_gpt": "it does not import GPT_models before its __main__ block",
                "gpt_unbuilt": "it builds no model with GPT_models[...](...)",
                "no_decode": "it never calls decode_code"}[case]
    assert expected in line
    assert "tokenizer" not in sys.modules  # nothing of the script ran


def test_a_script_that_builds_no_gpt(llamagen, capsys) -> None:
    write_file(llamagen, "quiet.py", SAMPLE_C2I.replace("    main(args)\n", "    print(args)\n"))
    assert main(["sample", "--prior", "prior.npz", "quiet.py", *ARGS]) == 1
    assert "quiet.py ran to its end without building a GPT from GPT_models" \
        in _one_error_line(capsys)
    # a table of builders that is not one: a dict of something else, a list
    last_import = "from autoregressive.models.generate import generate\n"
    for name, table, message in (
            ("odd.py", "GPT_models = {'GPT-B': 3}",
             "odd.py: its GPT_models holds other things than LlamaGen's model builders"),
            ("odd2.py", "VQ_models = ['VQ-16']",
             "odd2.py: its VQ_models is a list, not LlamaGen's model builders")):
        write_file(llamagen, name, SAMPLE_C2I.replace(last_import, f"{last_import}{table}\n"))
        assert main(["sample", "--prior", "prior.npz", name, *ARGS]) == 1
        assert message in _one_error_line(capsys)


def test_llamagen_folder_not_on_the_path(llamagen, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(llamagen)])
    monkeypatch.chdir(tmp_path)
    script = str(llamagen / SCRIPT)
    assert main(["sample", "--prior", str(llamagen / "prior.npz"), script, *ARGS]) == 1
    line = _one_error_line(capsys)
    assert "cannot import 'tokenizer', a package of LlamaGen's folder" in line
    assert "put that folder on the path (PYTHONPATH=path/to/LlamaGen dcpe sample ...)" in line
    # another missing package is named as such
    write_file(llamagen, "needs.py", "import not_a_package_xyz\n" + SAMPLE_C2I)
    assert main(["sample", "--prior", str(llamagen / "prior.npz"),
                 str(llamagen / "needs.py"), *ARGS]) == 1
    assert "No module named 'not_a_package_xyz'; install the package it names" \
        in _one_error_line(capsys)


def test_checkpoints_with_training_arguments(llamagen, capsys) -> None:
    # LlamaGen's training scripts save their arguments (a Namespace) in every checkpoint
    for name in ("vq_ds16_c2i.pt", "c2i_B_clusters.pt"):
        ckpt = torch.load(llamagen / name)
        ckpt["args"] = argparse.Namespace(codebook_size=N, vocab_size=K, lr=1e-4)
        torch.save(ckpt, llamagen / name)
    with pytest.raises(Exception, match="argparse.Namespace"):  # torch's default refuses it
        torch.load(llamagen / "vq_ds16_c2i.pt")
    assert _sample("--out", "a.npz") == 0
    assert (llamagen / "a.npz").exists()
    with pytest.raises(Exception, match="argparse.Namespace"):  # and still does afterwards
        torch.load(llamagen / "vq_ds16_c2i.pt")
    # any other object is still refused, in one line with the way out
    ckpt = torch.load(llamagen / "c2i_B_clusters.pt", weights_only=False)
    ckpt["ratio"] = fractions.Fraction(1, 3)
    torch.save(ckpt, llamagen / "c2i_B_clusters.pt")
    assert _sample("--out", "b.npz") == 1
    line = _one_error_line(capsys)
    assert f"{SCRIPT} stopped: its torch.load refused an object of a checkpoint " \
           f"(fractions.Fraction)" in line
    assert line.endswith("if you trust the file, run again with "
                         "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
    assert not (llamagen / "b.npz").exists()


def test_errors_of_the_script_itself(llamagen, capsys) -> None:
    assert _sample("--gpt-ckpt", "missing.pt") == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"dcpe: error: {SCRIPT} stopped with FileNotFoundError: ")
    assert "missing.pt" in line and line.endswith("; check the path and its permissions")
    write_file(llamagen, "bug.py", SAMPLE_C2I.replace("    c_indices =",
                                                  "    {}['x']\n    c_indices ="))
    assert main(["sample", "--prior", "prior.npz", "bug.py", *ARGS]) == 1
    line = _one_error_line(capsys)
    assert "bug.py stopped with KeyError: 'x'; run the command again with --debug" in line
    with pytest.raises(ScriptError) as info:
        main(["--debug", "sample", "--prior", "prior.npz", "bug.py", *ARGS])
    assert isinstance(info.value.__cause__, KeyError)


def test_the_arguments_after_the_script_are_the_scripts(llamagen, capsys) -> None:
    assert main(["sample", "--prior", "prior.npz", SCRIPT, "--help"]) == 0
    assert "--gpt-ckpt" in capsys.readouterr().out  # the script's help, not dcpe's
    assert _sample("--debug") == 2  # the script's: it has no such option
    assert "unrecognized arguments: --debug" in capsys.readouterr().err
    assert _sample("--image-size", "300") == 2
    assert "invalid choice: 300" in capsys.readouterr().err
    assert main(["sample", "--help"]) == 0
    assert "LlamaGen's sampling scripts unedited" in capsys.readouterr().out
    assert main(["sample", SCRIPT, *ARGS]) == 2  # no --prior: dcpe's usage error
    assert "--prior" in capsys.readouterr().err
    assert main(["sample", "--prior", "prior.npz"]) == 2
    assert "SCRIPT" in capsys.readouterr().err
    for prior in (["--prior", "prior.npz"], ["--prior=prior.npz"]):
        assert main(["sample", SCRIPT, *prior, *ARGS]) == 2
        assert "--prior goes before SCRIPT (the arguments after SCRIPT are the script's)" \
            in capsys.readouterr().err


def test_prior_errors(llamagen, capsys) -> None:
    assert _sample(prior="nope.npz") == 1
    assert "prior file not found: nope.npz" in _one_error_line(capsys)
    assert _sample(prior="c2i_B_clusters.pt") == 1
    assert "not a readable dcpe prior file" in _one_error_line(capsys)


def test_one_line_of_its_own_on_rank_zero_only(llamagen, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert _sample("--out", "a.npz") == 0
    assert capsys.readouterr().err == ""


def test_check_script_accepts_the_stub_and_reads_nothing_else(llamagen) -> None:
    checked = check_script(SCRIPT)
    assert checked.path == Path(SCRIPT)
    assert "autoregressive" not in sys.modules
    # other top-level comparisons are not the __main__ block
    write_file(llamagen, "platform.py", 'import os\nif os.name == "nt":\n    pass\n'
               'if "__main__" == os.name:\n    pass\n'
               'if __name__ == "__mp_main__":\n    pass\n' + SAMPLE_C2I)
    check_script("platform.py")
    assert main(["sample", "--prior", "prior.npz", "platform.py", *ARGS, "--out", "p.npz"]) == 0
    # the block may be written the other way round
    write_file(llamagen, "reversed.py", SAMPLE_C2I.replace('if __name__ == "__main__":',
                                                           'if "__main__" == __name__:'))
    assert main(["sample", "--prior", "prior.npz", "reversed.py", *ARGS, "--out", "r.npz"]) == 0


def test_as_a_command(llamagen) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llamagen), *sys.path])}
    run = subprocess.run([sys.executable, "-m", "dcpe", "sample", "--prior", "prior.npz",
                          SCRIPT, *ARGS, "--out", "cmd.npz"], cwd=llamagen, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = np.load(llamagen / "cmd.npz")
    prior = dcpe.CodebookPrior.load(llamagen / "prior.npz")
    np.testing.assert_array_equal(prior.to_clusters(out["tokens"]), out["ids"])


@pytest.mark.slow
def test_under_torchrun_one_line_and_a_sample_per_rank(llamagen) -> None:
    # as sample_c2i_ddp.py: each rank seeds with its rank and writes its own samples
    write_file(llamagen, "ddp.py", SAMPLE_C2I.replace(
        "    torch.manual_seed(args.seed)\n",
        "    import os\n    rank = int(os.environ['RANK'])\n"
        "    torch.manual_seed(args.seed * int(os.environ['WORLD_SIZE']) + rank)\n").replace(
        "np.savez(args.out,", "np.savez(f'{args.out}.{rank}.npz',"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llamagen), *sys.path]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--standalone", "-m", "dcpe", "sample", "--prior", "prior.npz",
                          "ddp.py", *ARGS, "--out", "ddp"], cwd=llamagen, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("dcpe: sampling with prior.npz") == 1  # rank 0 only
    prior = dcpe.CodebookPrior.load(llamagen / "prior.npz")
    outs = [np.load(llamagen / f"ddp.{rank}.npz") for rank in (0, 1)]
    for out in outs:
        np.testing.assert_array_equal(prior.to_clusters(out["tokens"]), out["ids"])
    assert not np.array_equal(outs[0]["ids"], outs[1]["ids"])
