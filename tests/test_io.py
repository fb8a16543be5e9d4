"""Tests of dcpe.io: codebook loading from the checkpoint layouts in use."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dcpe.io import atomic_write, load_codebook, save_codebook


@pytest.fixture()
def weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g)


def _vq_state(w: torch.Tensor) -> dict:
    # the parts of a LlamaGen / taming VQ state dict that matter here
    return {
        "encoder.conv_in.weight": torch.randn(4, 3, 3, 3),
        "encoder.conv_in.bias": torch.randn(4),
        "quantize.embedding.weight": w,
        "quant_conv.weight": torch.randn(8, 4, 1, 1),
        "decoder.conv_out.weight": torch.randn(3, 4, 3, 3),
        "quantize.codebook_used": torch.zeros(64, dtype=torch.int64),
    }


def test_llamagen_checkpoint(tmp_path, weight):
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": _vq_state(weight), "optimizer": {"state": {}}, "steps": 10}, path)
    x = load_codebook(path)
    assert x.dtype == np.float32 and x.shape == (64, 8) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, weight.numpy())


@pytest.mark.parametrize("wrapper", ["ema", "state_dict"])
def test_wrappers(tmp_path, weight, wrapper):
    path = tmp_path / "ckpt.ckpt"
    torch.save({wrapper: _vq_state(weight), "epoch": 3}, path)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())


def test_model_preferred_over_ema(tmp_path, weight):
    # LlamaGen's extract_codes_c2i.py encodes with checkpoint["model"]: that is the default
    path = tmp_path / "ckpt.pt"
    torch.save({"model": _vq_state(weight), "ema": _vq_state(weight * 0)}, path)
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())
    # an explicit key reaches either one
    np.testing.assert_array_equal(
        load_codebook(path, key="ema.quantize.embedding.weight"), np.zeros((64, 8)))
    np.testing.assert_array_equal(
        load_codebook(path, key="quantize.embedding.weight"), weight.numpy())


def test_bare_state_dict_and_tensor(tmp_path, weight):
    p1 = tmp_path / "state.pth"
    torch.save(_vq_state(weight), p1)
    np.testing.assert_array_equal(load_codebook(p1), weight.numpy())
    p2 = tmp_path / "tensor.pt"
    torch.save(weight.to(torch.bfloat16), p2)
    np.testing.assert_array_equal(load_codebook(p2), weight.to(torch.bfloat16).float().numpy())
    with pytest.raises(ValueError, match="single tensor"):
        load_codebook(p2, key="codebook")


def test_npy_npz_safetensors(tmp_path, weight):
    w = weight.numpy()
    np.save(tmp_path / "cb.npy", w.astype(np.float64))
    np.testing.assert_array_equal(load_codebook(tmp_path / "cb.npy"), w)
    np.savez(tmp_path / "one.npz", anything=w)
    np.testing.assert_array_equal(load_codebook(tmp_path / "one.npz"), w)
    np.savez(tmp_path / "two.npz", codebook=w, other=w[:3])
    np.testing.assert_array_equal(load_codebook(tmp_path / "two.npz"), w)
    from safetensors.torch import save_file

    save_file({"quantize.embedding.weight": weight, "decoder.w": torch.randn(3, 3)},
              str(tmp_path / "vq.safetensors"))
    np.testing.assert_array_equal(load_codebook(tmp_path / "vq.safetensors"), w)


def test_key_rule_suffixes(tmp_path, weight):
    for name in ["vq.codebook", "quantizer._codebook.embed", "layers.0.embed.weight",
                 "codebook.weight", "q.embeddings"]:
        path = tmp_path / "k.pt"
        torch.save({name: weight, "pos_embed_table": torch.randn(16, 8)}, path)
        np.testing.assert_array_equal(load_codebook(path), weight.numpy(), err_msg=name)
    # vector-quantize-pytorch keeps (1, K, d); the leading 1 is squeezed
    torch.save({"_codebook.embed": weight.unsqueeze(0)}, tmp_path / "vq3.pt")
    np.testing.assert_array_equal(load_codebook(tmp_path / "vq3.pt"), weight.numpy())


def test_ambiguous_lists_candidates(tmp_path, weight):
    path = tmp_path / "two.pt"
    torch.save({"a.embedding.weight": weight, "b.codebook": weight[:10]}, path)
    with pytest.raises(ValueError, match="several") as info:
        load_codebook(path)
    msg = str(info.value)
    assert "a.embedding.weight [64, 8]" in msg and "b.codebook [10, 8]" in msg
    np.testing.assert_array_equal(load_codebook(path, key="b.codebook"), weight[:10].numpy())


def test_no_candidate_lists_matrices(tmp_path, weight):
    path = tmp_path / "none.pt"
    torch.save({"model": {"fc.weight": weight, "fc.bias": torch.zeros(64)}}, path)
    with pytest.raises(ValueError, match="no codebook found") as info:
        load_codebook(path)
    assert "fc.weight [64, 8]" in str(info.value)
    np.testing.assert_array_equal(load_codebook(path, key="fc.weight"), weight.numpy())
    with pytest.raises(ValueError, match="no key 'nope'"):
        load_codebook(path, key="nope")
    with pytest.raises(ValueError, match="2-D floating-point.*choose the codebook with key="):
        load_codebook(path, key="fc.bias")


def test_token_ids_are_not_a_codebook(tmp_path):
    """Extracted codes (integer token ids) given as a codebook: the message says how token
    ids are mapped, in Python's terms (the command line names `dcpe remap`)."""
    path = tmp_path / "0.npy"
    np.save(path, np.arange(2560).reshape(1, 10, 256))
    with pytest.raises(ValueError, match=r"shape \[1, 10, 256\] and dtype int64.*"
                       r"CodebookPrior.to_clusters"):
        load_codebook(path)
    np.save(path, np.zeros(8))
    with pytest.raises(ValueError, match="2-D floating-point") as info:
        load_codebook(path)
    assert "to_clusters" not in str(info.value)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a tensor.*; give the tokenizer"):
        load_codebook(tmp_path / "list.pt")


def test_normalize(tmp_path, weight):
    path = tmp_path / "cb.npy"
    w = weight.numpy().copy()
    w[5] = 0.0
    np.save(path, w)
    x = load_codebook(path, normalize=True)
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(np.delete(norms, 5), 1.0, rtol=1e-6)
    assert np.all(x[5] == 0)
    ref = torch.nn.functional.normalize(torch.from_numpy(w), dim=-1).numpy()
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-7)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_codebook(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pt"):
        load_codebook(tmp_path / "junk.pt")
    (tmp_path / "junk.npy").write_bytes(b"nope")
    with pytest.raises(ValueError, match="junk.npy"):
        load_codebook(tmp_path / "junk.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_codebook(tmp_path / "junk.safetensors")
    np.save(tmp_path / "vec.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        load_codebook(tmp_path / "vec.npy")
    np.save(tmp_path / "ints.npy", np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="floating"):
        load_codebook(tmp_path / "ints.npy")
    bad = np.ones((5, 2), dtype=np.float32)
    bad[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="1 row"):
        load_codebook(tmp_path / "nan.npy")
    # values past float32's distances (or its range: a float64 tensor of 1e200), which had
    # loaded as Inf rows or overflowed later: refused with the largest value and a next step
    np.save(tmp_path / "big.npy", np.ones((5, 2)) * 1e20)
    with pytest.raises(ValueError, match=r"big.npy: .* up to 1e\+20, too large .* scale it"):
        load_codebook(tmp_path / "big.npy")
    torch.save({"model": {"quantize.embedding.weight": torch.ones(5, 2, dtype=torch.float64)
                          * 1e200}}, tmp_path / "huge.pt")
    with pytest.raises(ValueError, match=r"huge.pt: .* up to 1e\+200, too large"):
        load_codebook(tmp_path / "huge.pt")
    np.save(tmp_path / "fine.npy", np.ones((5, 2)) * 1e14)
    assert load_codebook(tmp_path / "fine.npy").max() == np.float32(1e14)
    # ... and values whose squared differences underflow
    np.save(tmp_path / "tiny.npy", np.ones((5, 2)) * 1e-12)
    with pytest.raises(ValueError, match=r"tiny.npy: .* at most 1e-12, too small .* scale it "
                                         r"up .* and save it again"):
        load_codebook(tmp_path / "tiny.npy")
    np.save(tmp_path / "small.npy", np.ones((5, 2)) * 1e-9)
    assert load_codebook(tmp_path / "small.npy").max() == np.float32(1e-9)
    np.save(tmp_path / "dead.npy", np.zeros((5, 2)))  # every row 0: ties, but taken
    assert load_codebook(tmp_path / "dead.npy").max() == 0
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="N >= 1"):
        load_codebook(tmp_path / "empty.npy")
    with pytest.raises(ValueError, match="directory"):
        load_codebook(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_codebook(tmp_path / "list.pt")
    with pytest.raises(TypeError, match="key"):
        load_codebook(tmp_path / "vec.npy", key=3)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_save_codebook_roundtrip(tmp_path, weight, suffix):
    path = tmp_path / f"cb{suffix}"
    save_codebook(path, weight)
    assert os.listdir(tmp_path) == [path.name]
    np.testing.assert_array_equal(load_codebook(path), weight.numpy())


@pytest.mark.parametrize("sync", [True, False])
def test_atomic_write_cleans_up(tmp_path, monkeypatch, sync):
    flushed = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), fsync(fd))[1])
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, sync=sync) as fh:
            fh.write(b"partial")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    with atomic_write(path, sync=sync) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert len(flushed) == (1 if sync else 0)  # the complete file only, when asked
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "nodir" / "x.bin"):
            pass


def test_path_arguments_take_one_path(tmp_path):
    """Every function that reads or writes a file takes one str or os.PathLike; a list, an
    array or None is a TypeError naming the argument before any work, not pathlib's."""
    from dcpe import CodebookPrior, export, report, sweep
    from dcpe.io import load_codebook_with_source

    x = np.zeros((4, 2), np.float32)
    prior = CodebookPrior.from_labels(np.arange(4) % 2)
    calls = {
        "path": [lambda v: load_codebook(v), lambda v: load_codebook_with_source(v),
                 lambda v: save_codebook(v, x), lambda v: CodebookPrior.load(v),
                 lambda v: prior.save(v), lambda v: sweep.read_usage(v, 4)],
        "checkpoint": [lambda v: export.export_iar(prior, v, tmp_path / "out")],
        "out_dir": [lambda v: export.export_iar(prior, tmp_path / "c.pt", v),
                    lambda v: report.write_report(v, x, prior),
                    lambda v: sweep.write_sweep(v, {})],
    }
    hints = {"list": "give one path", "ndarray": "names a file, not data", "NoneType": ""}
    for name, funcs in calls.items():
        for func in funcs:
            for value in (["a.npy", "b.npy"], x, None):
                kind = type(value).__name__
                with pytest.raises(TypeError, match=f"^{name} must be a str or os.PathLike, "
                                                    f"got {kind}.*{hints[kind]}"):
                    func(value)
    assert os.listdir(tmp_path) == []
