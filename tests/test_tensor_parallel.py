"""Tensor parallelism by hand: simulated ranks and real gloo processes give the one-process logits."""
import pytest
import torch

from helpers.checkpoint import CheckpointError, ModelArgs
from helpers.model import forward
from helpers.random_checkpoint import random_weights
from helpers.shards import split_weights, write_shards
from helpers.tensor_parallel import launch, load_rank, local_args, simulate, wire_floats

TOL = dict(rtol=1e-4, atol=1e-4)
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=128256, multiple_of=32)
TOKENS = [128000, 3, 791, 4320, 99999, 128255, 12]


@pytest.fixture(scope="module")
def model():
    weights = random_weights(ARGS, seed=5, dtype=torch.float32)
    return weights, forward(weights, ARGS, TOKENS)


@pytest.mark.parametrize("world", [1, 2, 4, 8])      # 8 > n_kv_heads: kv-head copies
def test_simulated_ranks_equal_one_process(model, world):
    weights, expected = model
    torch.testing.assert_close(simulate(split_weights(weights, ARGS, world), ARGS, TOKENS), expected, **TOL)


def test_simulated_ranks_of_tied_embeddings():
    """tied embeddings (Llama 3.2 1B/3B, SmolLM2): the shards hold no output.weight, each rank reads its
    tok_embeddings slice"""
    w = random_weights(ARGS, seed=6, dtype=torch.float32, tied=True)
    w["output.weight"] = w["tok_embeddings.weight"]
    shards = split_weights(w, ARGS, 2)
    assert "output.weight" not in shards[0]
    torch.testing.assert_close(simulate(shards, ARGS, TOKENS), forward(w, ARGS, TOKENS), **TOL)


def test_simulation_is_not_vacuous(model):
    """Ranks in the wrong order (each looks up the other's vocab slice) give other logits."""
    weights, expected = model
    shards = split_weights(weights, ARGS, 2)
    assert (simulate(shards[::-1], ARGS, TOKENS) - expected).abs().max() > 1


def test_local_args():
    lo = local_args(ARGS, 4)
    assert (lo.n_heads, lo.n_kv_heads, lo.head_dim, lo.dim) == (2, 1, ARGS.head_dim, 2 * ARGS.head_dim)
    assert local_args(ARGS, 8).n_kv_heads == 1                      # a copy of one kv head


def test_two_gloo_processes(model, tmp_path):
    weights, expected = model
    d = write_shards(tmp_path / "m", ARGS, weights, 2)
    out = launch(d, 2, TOKENS, tmp_path / "logits.pt")
    torch.testing.assert_close(out["logits"], expected, **TOL)
    s, T = out["stats"], len(TOKENS)
    assert s["all_reduce_floats"] == (2 * ARGS.n_layers + 1) * T * ARGS.dim   # 2 per layer + the embedding
    assert s["all_gather_floats"] == T * ARGS.vocab_size // 2
    assert s["all_reduce_floats"] + s["all_gather_floats"] == wire_floats(ARGS, 2, T)
    norms = sum(t.nbytes for k, t in weights.items() if k.endswith("norm.weight"))
    assert s["shard_bytes"] == (sum(t.nbytes for t in weights.values()) - norms) // 2 + norms  # norms whole


def test_meta_fairscale_two_processes(model, tmp_path):
    """Meta's Transformer with fairscale model-parallel size 2 on our shards: the same logits."""
    weights, expected = model
    d = write_shards(tmp_path / "m", ARGS, weights, 2)
    torch.testing.assert_close(launch(d, 2, TOKENS, tmp_path / "meta.pt", meta=True)["logits"], expected, **TOL)


def test_rank_needs_the_matching_world(model, tmp_path):
    d = write_shards(tmp_path / "m", ARGS, model[0], 4)
    with pytest.raises(CheckpointError, match=r"holds 4 shard file\(s\), one per rank: run with world size 4"):
        load_rank(d, 0, 2)
    shard, _ = load_rank(d, 3, 4)
    assert shard["layers.1.attention.wq.weight"].shape == (ARGS.dim // 4, ARGS.dim)


def test_failed_rank_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match=r"rank 0 of 1 failed .*params.json not found"):
        launch(tmp_path, 1, TOKENS, tmp_path / "x.pt", timeout=120)
