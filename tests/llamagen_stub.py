"""A folder in LlamaGen's layout with stand-in models, for the tests of ``dcpe sample``.

``tokenizer/tokenizer_image/vq_model.py`` (``VQ_models``), ``autoregressive/models/gpt.py``
(``GPT_models``), ``autoregressive/models/generate.py`` and
``autoregressive/sample/sample_c2i.py``: the models are tiny stand-ins with the constructors,
attributes and state-dict keys of LlamaGen's, and the script follows ``sample_c2i.py``'s
steps: build and load the tokenizer with ``codebook_size=args.codebook_size`` (the stand-in
holds only the codebook, so it loads with ``strict=False``), build the GPT
with ``vocab_size=args.codebook_size`` and load its checkpoint (``strict=False``), generate,
and decode with ``vq_model.decode_code``. The stand-in decoder returns the token ids it is
given, and the script saves them with the generated ids (``--out``, an ``.npz``).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

SCRIPT = "autoregressive/sample/sample_c2i.py"

VQ_MODEL = '''
import torch
from torch import nn


class VQModel(nn.Module):
    def __init__(self, codebook_size=16384, codebook_embed_dim=8):
        super().__init__()
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(codebook_size, codebook_embed_dim)

    def decode_code(self, code_b, shape=None, channel_first=True):
        # stand-in decoder: the token ids it is given
        assert code_b.dtype == torch.int64
        assert int(code_b.max()) < self.quantize.embedding.num_embeddings
        return code_b.clone()


def VQ_16(**kwargs):
    return VQModel(**kwargs)


VQ_models = {"VQ-16": VQ_16}
'''

GPT = '''
from torch import nn

BUILT = []


class Transformer(nn.Module):
    def __init__(self, vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1,
                 model_type="c2i", dim=16):
        super().__init__()
        self.vocab_size = vocab_size
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.cls_embedding = nn.Embedding(num_classes + 1, dim)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        BUILT.append(vocab_size)


def GPT_B(**kwargs):
    return Transformer(**kwargs)


GPT_models = {"GPT-B": GPT_B}
'''

GENERATE = '''
import torch


def generate(model, cond, max_new_tokens, **kwargs):
    return torch.randint(0, model.vocab_size, (len(cond), max_new_tokens))
'''

SAMPLE_C2I = '''
import argparse

import numpy as np
import torch

from tokenizer.tokenizer_image.vq_model import VQ_models
from autoregressive.models.gpt import GPT_models
from autoregressive.models.generate import generate


def main(args):
    torch.manual_seed(args.seed)
    vq_model = VQ_models[args.vq_model](codebook_size=args.codebook_size,
                                        codebook_embed_dim=args.codebook_embed_dim)
    checkpoint = torch.load(args.vq_ckpt, map_location="cpu")
    vq_model.load_state_dict(checkpoint["model"], strict=False)  # the stand-in: codebook only
    latent_size = args.image_size // args.downsample_size
    gpt_model = GPT_models[args.gpt_model](vocab_size=args.codebook_size,
                                           block_size=latent_size ** 2,
                                           num_classes=args.num_classes)
    checkpoint = torch.load(args.gpt_ckpt, map_location="cpu")
    gpt_model.load_state_dict(checkpoint["model"], strict=False)
    c_indices = torch.tensor([207, 360, 387, 974])
    index_sample = generate(gpt_model, c_indices, latent_size ** 2)
    samples = vq_model.decode_code(index_sample, [4, args.codebook_embed_dim, latent_size,
                                                  latent_size])
    np.savez(args.out, ids=index_sample.numpy(), tokens=samples.numpy())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpt-model", type=str, choices=list(GPT_models.keys()),
                        default="GPT-B")
    parser.add_argument("--gpt-ckpt", type=str, default=None)
    parser.add_argument("--vq-model", type=str, choices=list(VQ_models.keys()),
                        default="VQ-16")
    parser.add_argument("--vq-ckpt", type=str, default=None)
    parser.add_argument("--codebook-size", type=int, default=16384)
    parser.add_argument("--codebook-embed-dim", type=int, default=8)
    parser.add_argument("--image-size", type=int, choices=[256, 384, 512], default=384)
    parser.add_argument("--downsample-size", type=int, choices=[8, 16], default=16)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default="samples.npz")
    args = parser.parse_args()
    main(args)
'''


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _forget_stub_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("tokenizer", "autoregressive"):
            del sys.modules[name]



def write_file(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_llamagen(root: Path) -> Path:
    """The stand-in folder under ``root``; returns ``root``."""
    write_file(root, "tokenizer/tokenizer_image/vq_model.py", VQ_MODEL)
    write_file(root, "autoregressive/models/gpt.py", GPT)
    write_file(root, "autoregressive/models/generate.py", GENERATE)
    write_file(root, SCRIPT, SAMPLE_C2I)
    return root


def forget_llamagen_modules() -> None:
    """Drop the stand-in packages from ``sys.modules`` (each test imports its own)."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("tokenizer", "autoregressive"):
            del sys.modules[name]
