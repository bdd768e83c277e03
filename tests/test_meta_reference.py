"""Our by-hand forward equals Meta's own reference, llama_models.llama3.model.Transformer.

Meta's model is written for model parallelism (fairscale Column/RowParallelLinear, VocabParallelEmbedding),
which needs a torch.distributed process group even on one process. A single-rank gloo group on localhost
is enough: with model-parallel size 1 every fairscale scatter/gather is the identity, and nothing in the
model itself needs CUDA, so it runs unpatched on CPU.
"""
import dataclasses
import socket

import pytest
import torch
import torch.distributed as dist
import fairscale.nn.model_parallel.initialize as fs_init
from llama_models.llama3 import model as meta_model
from llama_models.llama3.args import ModelArgs as MetaArgs

from helpers.model import forward

from cases import random_case

TOL = 1e-4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def model_parallel():
    """One process, one rank: what Meta's fairscale layers need to exist."""
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)
    yield
    fs_init.destroy_model_parallel()
    if started:
        dist.destroy_process_group()


def reference_logits(weights, args, tokens):
    """Meta's Transformer, fp32 on CPU, holding our weights: forward(tokens, start_pos=0) -> [T, vocab]."""
    if args.use_scaled_rope:  # Meta's apply_scaling hard-codes these
        assert (args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor,
                args.rope_original_context) == (8, 1, 4, 8192)
    margs = MetaArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                     vocab_size=args.vocab_size, multiple_of=args.multiple_of,
                     ffn_dim_multiplier=args.ffn_dim_multiplier, norm_eps=args.norm_eps,
                     rope_theta=args.rope_theta, use_scaled_rope=args.use_scaled_rope,
                     max_batch_size=1, max_seq_len=len(tokens))  # sizes its kv cache and rope table
    model = meta_model.Transformer(margs).eval()
    model.load_state_dict({k: v.float().cpu() for k, v in weights.items()}, strict=True)
    return model(torch.tensor([tokens]), start_pos=0)[0]  # [T, vocab]


def max_diff(a, b):
    return (a.cpu() - b.cpu()).abs().max().item()


def test_logits_match_meta_reference(case):
    weights, args, tokens = case
    ours = forward(weights, args, tokens)
    theirs = reference_logits(weights, args, tokens)
    assert ours.shape == theirs.shape == (len(tokens), args.vocab_size)
    assert max_diff(ours, theirs) <= TOL
    assert (ours.argmax(-1).cpu() == theirs.argmax(-1)).all()


def test_scaled_rope_case_is_not_vacuous(tmp_path):
    """Meta's scaled rope vs our unscaled one: far apart, so the scaled case above really tests scaling."""
    weights, args, tokens = random_case(tmp_path, "scaled_rope")
    plain = dataclasses.replace(args, use_scaled_rope=False)
    assert max_diff(forward(weights, plain, tokens), reference_logits(weights, args, tokens)) > 100 * TOL
