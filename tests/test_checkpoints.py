"""Checkpoints as tokenizer training scripts write them, read without running pickled code.

Every file is built here in the layout of the project that writes it: LlamaGen / GigaTok
``vq_train.py`` (``"args": argparse.Namespace``), an MAE-style ``save_model`` as VQGAN-LC
uses, a PyTorch Lightning ``.ckpt`` holding objects of a package that is not installed,
multi-codebook tokenizers (UniTok, TokenFlow, vector-quantize-pytorch), and pickles that
try to run a command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pickle
import sys
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import one_error_line

from dcpe import io as dio
from dcpe.io import load_codebook, load_codebook_with_source

K, D = 96, 8

# Most files here store LlamaGen's training args (codebook_l2_norm=True) and are read raw:
# that warning is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:.*codebook_l2_norm=True:UserWarning")


@pytest.fixture()
def weight() -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(1))


def _vq_state(w: torch.Tensor) -> OrderedDict:
    """The parts of a LlamaGen / taming VQ model's state dict that matter here."""
    return OrderedDict([
        ("encoder.conv_in.weight", torch.randn(4, 3, 3, 3)),
        ("encoder.conv_in.bias", torch.randn(4)),
        ("quant_conv.weight", torch.randn(D, 4, 1, 1)),
        ("quantize.embedding.weight", w),
        ("quantize.codebook_used", torch.zeros(K, dtype=torch.int64)),
        ("post_quant_conv.weight", torch.randn(4, D, 1, 1)),
        ("decoder.conv_out.weight", torch.randn(3, 4, 3, 3)),
    ])


def _train_args() -> argparse.Namespace:
    # what LlamaGen's / GigaTok's vq_train.py parse and store as checkpoint["args"]
    return argparse.Namespace(
        data_path="/data/imagenet/train", vq_model="VQ-16", vq_ckpt=None, finetune=False,
        ema=True, codebook_size=K, codebook_embed_dim=D, codebook_l2_norm=True,
        codebook_weight=1.0, entropy_loss_ratio=0.0, commit_loss_beta=0.25,
        reconstruction_weight=1.0, perceptual_weight=1.0, disc_weight=0.5,
        image_size=256, lr=1e-4, beta1=0.9, beta2=0.95, global_batch_size=128,
        mixed_precision="bf16", gpus=[0, 1], results_dir="results_tokenizer_image")


def _optimizer_state(w: torch.Tensor) -> dict:
    return {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(w),
                          "exp_avg_sq": torch.zeros_like(w)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]}


def _llamagen_checkpoint(w: torch.Tensor, ema: torch.Tensor | None = None) -> dict:
    """vq_train.py: model, optimizer, discriminator, steps, args (and ema with --ema)."""
    ckpt = {"model": _vq_state(w), "optimizer": _optimizer_state(w),
            "discriminator": {"conv.weight": torch.randn(8, 3, 4, 4)},
            "optimizer_disc": _optimizer_state(w), "steps": 10000, "args": _train_args()}
    if ema is not None:
        ckpt["ema"] = _vq_state(ema)
    return ckpt


@contextlib.contextmanager
def _module(tmp_path: Path, name: str, source: str) -> Iterator[ModuleType]:
    """Import a module written to a temporary folder; afterwards it is not importable."""
    folder = tmp_path / f"{name}_src"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(folder))
        importlib.invalidate_caches()


# --------------------------------------------------------------------------- project layouts


def test_llamagen_vq_train_checkpoint_loads_with_no_flag(tmp_path, weight, caplog):
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(_llamagen_checkpoint(weight, ema=weight * 2), path)
    # torch's own safe mode refuses this file (argparse.Namespace is not allow-listed)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with caplog.at_level(logging.INFO, logger="dcpe.io"):
        x = load_codebook(path)
    np.testing.assert_array_equal(x, weight.numpy())  # checkpoint["model"], not "ema"
    assert "model.quantize.embedding.weight [96, 8] float32" in caplog.text

    x, src = load_codebook_with_source(path)
    assert src.key == "model.quantize.embedding.weight"
    assert src.location == ("model", "quantize.embedding.weight")
    assert src.wrapper == "model" and src.head is None
    assert src.stored_shape == (K, D) and src.shape == (K, D) and src.dtype == "float32"
    assert src.alternatives == ("ema.quantize.embedding.weight",)
    assert src.foreign == ()
    text = src.describe()
    assert 'checkpoint["model"]' in text and "ema.quantize.embedding.weight" in text

    x, src = load_codebook_with_source(path, key="ema.quantize.embedding.weight",
                                       normalize=True)
    ref = torch.nn.functional.normalize(weight * 2, dim=-1).numpy()
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-7)
    assert src.wrapper == "ema" and src.normalize and "L2-normalised" in src.describe()


def test_ema_only_checkpoint(tmp_path, weight):
    path = tmp_path / "ema.pt"
    torch.save({"ema": _vq_state(weight), "args": _train_args()}, path)
    x, src = load_codebook_with_source(path)
    np.testing.assert_array_equal(x, weight.numpy())
    assert src.wrapper == "ema" and src.alternatives == ()


def test_mae_style_checkpoint_with_args_and_scaler(tmp_path, weight):
    # misc.save_model of MAE-derived code (VQGAN-LC): model, optimizer, epoch, scaler, args
    path = tmp_path / "vqgan_lc.pth"
    torch.save({"model": _vq_state(weight), "optimizer": _optimizer_state(weight),
                "epoch": 99, "scaler": {"scale": 65536.0, "growth_factor": 2.0},
                "args": _train_args()}, path)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())


def test_legacy_serialization_format(tmp_path, weight):
    path = tmp_path / "legacy.pt"
    torch.save(_llamagen_checkpoint(weight), path, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())


def test_numpy_values_and_protocol_4(tmp_path, weight):
    path = tmp_path / "np.pt"
    torch.save({"model": _vq_state(weight), "best_fid": np.float64(3.1),
                "class_counts": np.arange(10)}, path, pickle_protocol=4)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())


LIGHTNING_STUB = """
    import enum

    import torch


    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/rec_loss"
            self.best_model_score = torch.tensor(0.25)
            self.dirpath = "logs/checkpoints"


    class ContainerMetadata:
        def __init__(self):
            self.ref_type = object
            self.flags = {"readonly": False}


    class DictConfig:
        def __init__(self, content):
            self.__dict__["_content"] = content
            self.__dict__["_metadata"] = ContainerMetadata()

        def __getstate__(self):
            return {"_content": self._content, "_metadata": self._metadata, "_parent": None}

        def __setstate__(self, state):
            self.__dict__.update(state)


    class AttributeDict(dict):
        pass


    class Precision(enum.Enum):
        BF16 = "bf16-mixed"


    class CodebookTensor(torch.Tensor):
        pass


    def touch(path):
        open(path, "w").close()


    class Harmless:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (touch, (self.marker,))
"""


def _lightning_checkpoint(stub: ModuleType, w: torch.Tensor, marker: Path) -> dict:
    state = _vq_state(stub.CodebookTensor(w.clone()))
    return {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "callbacks": {stub.ModelCheckpoint: {"best_model_score": torch.tensor(0.25),
                                             "dirpath": "logs/checkpoints"},
                      "instance": stub.ModelCheckpoint()},
        "optimizer_states": [_optimizer_state(w)], "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": stub.DictConfig({"embed_dim": D, "n_embed": K,
                                             "precision": stub.Precision.BF16}),
        "hparams_type": stub.DictConfig,
        "extra": stub.AttributeDict(lr=4.5e-6, batch_size=12),
        "on_load": stub.Harmless(str(marker)),
    }


def test_lightning_checkpoint_with_uninstalled_classes(tmp_path, weight):
    marker = tmp_path / "marker"
    path = tmp_path / "last.ckpt"
    with _module(tmp_path, "lightning_stub_pkg", LIGHTNING_STUB) as stub:
        torch.save(_lightning_checkpoint(stub, weight, marker), path)
    assert "lightning_stub_pkg" not in sys.modules
    with pytest.raises(ModuleNotFoundError):  # what full unpickling would need
        torch.load(path, weights_only=False)

    x, src = load_codebook_with_source(path)
    np.testing.assert_array_equal(x, weight.numpy())
    assert src.key == "state_dict.quantize.embedding.weight" and src.wrapper == "state_dict"
    assert "lightning_stub_pkg.DictConfig" in src.foreign
    assert "lightning_stub_pkg.ModelCheckpoint" in src.foreign
    assert "lightning_stub_pkg.touch" in src.foreign
    assert "not loaded" in src.describe()
    assert "lightning_stub_pkg" not in sys.modules  # never imported
    assert not marker.exists()  # never called

    # the tensors held by foreign objects are loaded too, inside inert placeholders
    obj, _ = dio._read_torch(path, False, dio._PYTHON)
    score = obj["callbacks"]["instance"]._dcpe_data["state"]["best_model_score"]
    assert torch.equal(score, torch.tensor(0.25))
    assert type(obj["state_dict"]["quantize.embedding.weight"]) is torch.Tensor
    assert obj["extra"]._dcpe_data["items"] == {"lr": 4.5e-6, "batch_size": 12}
    assert "not loaded" in repr(obj["hyper_parameters"])


def test_importable_module_is_not_imported(tmp_path, weight):
    # even when the module could be imported, the loader neither imports nor calls it
    marker = tmp_path / "marker"
    path = tmp_path / "last.ckpt"
    with _module(tmp_path, "lightning_stub_here", LIGHTNING_STUB) as stub:
        torch.save(_lightning_checkpoint(stub, weight, marker), path)
        sys.modules.pop("lightning_stub_here")
        np.testing.assert_array_equal(load_codebook(path), weight.numpy())
        assert "lightning_stub_here" not in sys.modules
        assert not marker.exists()


def test_trust_reads_with_full_unpickling(tmp_path, weight):
    marker = tmp_path / "marker"
    path = tmp_path / "last.ckpt"
    with _module(tmp_path, "lightning_stub_trust", LIGHTNING_STUB) as stub:
        torch.save(_lightning_checkpoint(stub, weight, marker), path)
        # with the package installed, trust=True imports it and calls what the file names
        x, src = load_codebook_with_source(path, trust=True)
        np.testing.assert_array_equal(x, weight.numpy())
        assert src.foreign == ()
        assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="lightning_stub_trust.*not installed"):
        load_codebook(path, trust=True)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())
    assert not marker.exists()
    with pytest.raises(TypeError, match="trust"):
        load_codebook(path, trust="yes")


# --------------------------------------------------------------------------- pickles that run code


class _System:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


class _Subprocess(_System):
    def __reduce__(self):
        import subprocess

        return (subprocess.call, (["touch", self.marker],))


class _Exec(_System):
    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class _Eval(_System):
    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


class _Import(_System):
    def __reduce__(self):
        return (__import__, ("antigravity",))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("cls,name", [(_System, "system"), (_Subprocess, "subprocess.call"),
                                      (_Exec, "builtins.exec"), (_Eval, "builtins.eval"),
                                      (_Import, "builtins.__import__")])
def test_pickle_that_runs_code_is_refused(tmp_path, weight, cls, name, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "vq.pt"
    # a harmless-looking entry next to a real codebook
    torch.save({"model": _vq_state(weight), "args": cls(str(marker))}, path,
               pickle_protocol=protocol)
    with pytest.raises(ValueError) as info:
        load_codebook(path)
    msg = str(info.value)
    assert "refused" in msg and name in msg and "nothing was run" in msg
    assert "trust=True" in msg and "\n" not in msg
    assert not marker.exists()


def test_error_messages_have_no_terminal_codes(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError) as info:
        load_codebook(path)
    assert "\x1b" not in str(info.value) and "junk.pt" in str(info.value)
    assert dio._first_line(RuntimeError("\x1b[31mWeights only load failed\x1b[0m\nmore")) \
        == "Weights only load failed"


# --------------------------------------------------------------------------- several codebooks


def test_unitok_codebooks_are_listed(tmp_path):
    books = [torch.randn(K, D, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    state = {f"quantizer.codebooks.{i}.codebook.weight": b for i, b in enumerate(books)}
    state["quantizer.quant_proj.weight"] = torch.randn(64, 32)
    path = tmp_path / "unitok.pt"
    torch.save({"model": state, "args": _train_args()}, path)
    with pytest.raises(ValueError, match="several") as info:
        load_codebook(path)
    msg = str(info.value)
    for i in range(8):
        assert f"model.quantizer.codebooks.{i}.codebook.weight [96, 8] float32" in msg
    assert "key=" in msg and "quant_proj" not in msg
    x, src = load_codebook_with_source(path, key="quantizer.codebooks.5.codebook.weight")
    np.testing.assert_array_equal(x, books[5].numpy())
    assert src.key == "model.quantizer.codebooks.5.codebook.weight"


def test_tokenflow_two_tables_are_listed(tmp_path, weight):
    semantic = torch.randn(K, 32)
    state = _vq_state(weight)
    del state["quantize.embedding.weight"]
    state["quantize.embedding_vqkd.weight"] = semantic  # semantic codebook
    state["quantize.embedding_vqgan.weight"] = weight   # pixel codebook
    state["encode_task_layer.2.weight"] = torch.randn(32, 64)
    path = tmp_path / "tokenflow.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="several") as info:
        load_codebook(path)
    msg = str(info.value)
    assert "model.quantize.embedding_vqkd.weight [96, 32]" in msg
    assert "model.quantize.embedding_vqgan.weight [96, 8]" in msg
    assert "encode_task_layer" not in msg
    np.testing.assert_array_equal(
        load_codebook(path, key="quantize.embedding_vqgan.weight"), weight.numpy())


def test_vector_quantize_pytorch_heads(tmp_path):
    embed = torch.randn(4, K, D)
    state = {"vq._codebook.initted": torch.tensor([True]),
             "vq._codebook.cluster_size": torch.ones(4, K),
             "vq._codebook.embed_avg": torch.randn(4, K, D),
             "vq._codebook.embed": embed}
    path = tmp_path / "vqp.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="several") as info:
        load_codebook(path)
    msg = str(info.value)
    for h in range(4):
        assert f"vq._codebook.embed[{h}] [96, 8] float32" in msg
    assert "embed_avg" not in msg and "cluster_size" not in msg
    x, src = load_codebook_with_source(path, key="vq._codebook.embed[2]")
    np.testing.assert_array_equal(x, embed[2].numpy())
    assert src.key == "vq._codebook.embed[2]" and src.head == 2
    assert src.stored_shape == (4, K, D) and src.shape == (K, D)
    with pytest.raises(ValueError, match=r"4 codebooks.*key='vq._codebook.embed\[0\]'"):
        load_codebook(path, key="vq._codebook.embed")
    with pytest.raises(ValueError, match=r"head \[4\] does not exist"):
        load_codebook(path, key="vq._codebook.embed[4]")
    with pytest.raises(ValueError, match="2-D floating-point"):
        load_codebook(path, key="vq._codebook.initted")
    # one head: squeezed, no choice needed; a head index on a 2-D tensor is refused
    torch.save({"vq._codebook.embed": embed[:1], "vq.proj.weight": torch.randn(8, 8)}, path)
    np.testing.assert_array_equal(load_codebook(path), embed[0].numpy())
    torch.save({"vq.codebook": embed[0]}, path)
    with pytest.raises(ValueError, match=r"\[1\] selects a head"):
        load_codebook(path, key="vq.codebook[1]")


def test_residual_vq_layers_are_listed(tmp_path):
    state = {f"rq.layers.{i}._codebook.embed": torch.randn(1, K, D) for i in range(3)}
    path = tmp_path / "rvq.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="several") as info:
        load_codebook(path)
    for i in range(3):
        assert f"rq.layers.{i}._codebook.embed [1, 96, 8]" in str(info.value)


def test_bare_tensor_with_heads(tmp_path):
    embed = torch.randn(2, K, D)
    path = tmp_path / "heads.pt"
    torch.save(embed, path)
    with pytest.raises(ValueError, match=r"2 codebooks.*key='\[0\]'"):
        load_codebook(path)
    np.testing.assert_array_equal(load_codebook(path, key="[1]"), embed[1].numpy())


def test_find_codebook_candidates_rule():
    m = torch.zeros(4, 2)
    tensors = {
        "quantize.embedding.weight": m, "quantize.embedding.embed_avg": m,
        "quantize.embedding.cluster_size": torch.zeros(4), "q.codebook_used": m,
        "quantize.embedding_sem.weight": m, "codebooks.0.weight": m,
        "pos_embed": m, "tok_embeddings.weight": m, "vq._codebook.embed": torch.zeros(3, 4, 2),
        "q.codebook": torch.zeros(4, 2, dtype=torch.int64),
    }
    assert dio.find_codebook_candidates(tensors) == [
        "quantize.embedding.weight", "quantize.embedding_sem.weight", "codebooks.0.weight",
        "vq._codebook.embed[0]", "vq._codebook.embed[1]", "vq._codebook.embed[2]"]


def test_no_key_lists_candidates_of_whole_file(tmp_path, weight):
    path = tmp_path / "vq.pt"
    torch.save(_llamagen_checkpoint(weight, ema=weight), path)
    with pytest.raises(ValueError, match="no key 'quantize.embed.weight'") as info:
        load_codebook(path, key="quantize.embed.weight")
    assert "model.quantize.embedding.weight [96, 8]" in str(info.value)
    assert "ema.quantize.embedding.weight [96, 8]" in str(info.value)


def test_key_naming_a_part_of_the_file_takes_its_one_codebook(tmp_path, weight):
    """``key="ema"`` (``--key ema``) names the part of the file, not the tensor: its one
    codebook candidate is taken (the source names the tensor, which a prior records);
    ``"quantize"`` is looked up under checkpoint["model"] as a full key would be. A part
    with several candidates lists them; the missing-key message says how to give one."""
    other = weight + 1.0
    path = tmp_path / "vq.pt"
    torch.save(_llamagen_checkpoint(weight, ema=other), path)
    for key, want, full in (("ema", other, "ema.quantize.embedding.weight"),
                            ("model", weight, "model.quantize.embedding.weight"),
                            ("quantize", weight, "model.quantize.embedding.weight"),
                            ("ema.quantize", other, "ema.quantize.embedding.weight")):
        x, src = load_codebook_with_source(path, key=key)
        np.testing.assert_array_equal(x, want.numpy())
        assert src.key == full, key
    with pytest.raises(ValueError, match="no key 'emb'.*give one of them with key=") as info:
        load_codebook(path, key="emb")
    assert "ema.quantize.embedding.weight [96, 8]" in str(info.value)
    books = {f"quantizer.codebooks.{i}.codebook.weight": weight + i for i in range(3)}
    path = tmp_path / "unitok.pt"
    torch.save({"model": books}, path)
    with pytest.raises(ValueError, match="several tensors under 'quantizer'") as info:
        load_codebook(path, key="quantizer")
    msg = str(info.value)
    assert all(f"model.quantizer.codebooks.{i}.codebook.weight" in msg for i in range(3))
    x = load_codebook(path, key="quantizer.codebooks.2")
    np.testing.assert_array_equal(x, (weight + 2).numpy())


# ------------------------------------------------------------- how the quantizer compares rows


def test_training_args_say_how_rows_are_compared(tmp_path, weight):
    """LlamaGen's args have codebook_l2_norm=True: reading the raw rows warns and names
    normalize=True; normalize=True reads them as the quantizer compares them, silently."""
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(_llamagen_checkpoint(weight), path)
    with pytest.warns(UserWarning, match=r"codebook_l2_norm=True.*normalize=True") as got:
        load_codebook(path)
    assert len(got) == 1 and "--normalize" not in str(got[0].message)
    with pytest.warns(UserWarning, match="codebook_l2_norm=True"):
        _, src = load_codebook_with_source(path)
    assert src.trained_l2_norm is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, src = load_codebook_with_source(path, normalize=True)
        load_codebook(path, normalize=True)
    assert src.trained_l2_norm is True and src.normalize


@pytest.mark.parametrize("holder", ["namespace", "dict", "lightning"])
def test_training_args_without_l2_norm(tmp_path, weight, holder):
    """codebook_l2_norm=False (a Namespace, a dict, Lightning's hyper_parameters): the
    normalised rows are the ones that warn, naming normalize=False."""
    args = argparse.Namespace(codebook_l2_norm=False, codebook_size=K)
    ckpt = {"model": _vq_state(weight)}
    if holder == "namespace":
        ckpt["args"] = args
    elif holder == "dict":
        ckpt["args"] = vars(args)
    else:
        ckpt = {"state_dict": _vq_state(weight), "hyper_parameters": vars(args)}
    path = tmp_path / "vq.pt"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match=r"codebook_l2_norm=False.*normalize=False"):
        load_codebook(path, normalize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, src = load_codebook_with_source(path)
    assert src.trained_l2_norm is False


@pytest.mark.parametrize("args", [None, argparse.Namespace(codebook_size=K),
                                  {"codebook_l2_norm": "yes"}, "codebook_l2_norm"])
def test_no_training_args_no_warning(tmp_path, weight, args):
    """A file that does not say (no args, no such field, not a bool) reads either way."""
    ckpt = {"model": _vq_state(weight)}
    if args is not None:
        ckpt["args"] = args
    path = tmp_path / "vq.pt"
    torch.save(ckpt, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for normalize in (False, True):
            _, src = load_codebook_with_source(path, normalize=normalize)
            assert src.trained_l2_norm is None


def test_cli_warns_when_rows_are_read_otherwise(tmp_path, weight, capsys):
    """dcpe cluster / sweep on a LlamaGen checkpoint without --normalize: one warning line
    on standard error naming --normalize; the run goes on. With --normalize: none."""
    from dcpe.cli import main

    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(_llamagen_checkpoint(weight), path)
    out = tmp_path / "p.npz"
    assert main(["cluster", str(path), "-k", "10", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("dcpe: warning:")]
    assert len(lines) == 1, err
    assert "codebook_l2_norm=True" in lines[0] and "--normalize" in lines[0]
    assert "normalize=True" not in lines[0] and out.exists()
    assert main(["cluster", str(path), "-k", "10", "--normalize", "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["sweep", str(path), "--k", "8,16", "-o", str(tmp_path / "sw")]) == 0
    assert "codebook_l2_norm=True" in capsys.readouterr().err


# --------------------------------------------------------------------------- command line


def test_cli_says_which_tensor(tmp_path, weight, capsys):
    from dcpe.cli import main

    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(_llamagen_checkpoint(weight, ema=weight * 2), path)
    out = tmp_path / "p.npz"
    assert main(["cluster", str(path), "-k", "10", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert ('model.quantize.embedding.weight [96, 8] float32 (from checkpoint["model"]; also '
            'in the file: ema.quantize.embedding.weight)') in text
    assert "--key chooses another" in text
    assert main(["cluster", str(path), "-k", "10", "-o", str(out),
                 "--key", "ema.quantize.embedding.weight"]) == 0
    assert 'ema.quantize.embedding.weight [96, 8] float32 (from checkpoint["ema"]' in \
        capsys.readouterr().out


def test_cli_errors_name_the_cli_options(tmp_path, weight, capsys):
    from dcpe.cli import main

    out = tmp_path / "p.npz"
    vqp = tmp_path / "vqp.pt"
    torch.save({"vq._codebook.embed": torch.randn(3, K, D)}, vqp)
    assert main(["cluster", str(vqp), "-k", "4", "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--key vq._codebook.embed[0]" in line and "key=" not in line
    assert main(["cluster", str(vqp), "-k", "4", "--key", "vq._codebook.embed[1]",
                 "-o", str(out)]) == 0
    assert "vq._codebook.embed[1] [3, 96, 8]" in capsys.readouterr().out

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _vq_state(weight), "args": _System(str(marker))}, evil)
    assert main(["cluster", str(evil), "-k", "4", "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "refused" in line and "--trust-checkpoint" in line and "trust=True" not in line
    assert not marker.exists()


def test_cli_lightning_and_trust(tmp_path, weight, capsys):
    from dcpe.cli import main

    marker = tmp_path / "marker"
    path = tmp_path / "last.ckpt"
    out = tmp_path / "p.npz"
    with _module(tmp_path, "lightning_stub_cli", LIGHTNING_STUB) as stub:
        torch.save(_lightning_checkpoint(stub, weight, marker), path)
    assert main(["cluster", str(path), "-k", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "state_dict.quantize.embedding.weight [96, 8]" in text and "not loaded" in text
    assert not marker.exists() and "lightning_stub_cli" not in sys.modules
    assert main(["cluster", str(path), "-k", "4", "--trust-checkpoint", "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "'lightning_stub_cli'" in line and "not installed" in line
    assert "--trust-checkpoint" in line
