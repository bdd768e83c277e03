"""helpers.model.forward and its parts (helpers.transformer): the contract, its own errors, and that forward is
exactly the composition of the pieces the notebooks build by hand."""
import pytest
import torch
import torch.nn.functional as F

from cases import SMALL  # tests/ is on sys.path under pytest (tests/conftest.py)
from helpers.checkpoint import load_checkpoint
from helpers.model import (KVCache, apply_rope, causal_mask, embed, forward, fp32, fp32_bytes, fp32_weights, layer,
                           linear, rms_norm, rope_frequencies, rope_rotations)
from helpers.random_checkpoint import write_random_checkpoint

TOKENS = [128000, 791, 4320, 311, 279, 17139, 3488, 374, 220]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = write_random_checkpoint(tmp_path_factory.mktemp("model"), seed=5, dtype=torch.float32, **SMALL)
    return load_checkpoint(d)


def test_logits_are_fp32_one_row_per_token(model):
    weights, args = model
    logits = forward(weights, args, TOKENS)
    assert logits.shape == (len(TOKENS), args.vocab_size) and logits.dtype == torch.float32
    torch.testing.assert_close(forward(weights, args, TOKENS, last_only=True), logits[-1:])
    torch.testing.assert_close(forward(weights, args, torch.tensor(TOKENS)), logits, rtol=0, atol=0)


def test_forward_is_the_composition_of_its_parts(model):
    weights, args = model
    h = embed(weights, TOKENS)                                       # [T, dim]
    assert torch.equal(h, weights["tok_embeddings.weight"][TOKENS].float())
    rot = rope_rotations(args, torch.arange(len(TOKENS)))
    for i in range(args.n_layers):
        h = layer(h, weights, args, i, rot)
    logits = linear(rms_norm(h, fp32(weights, "norm.weight"), args.norm_eps), weights, "output.weight")
    torch.testing.assert_close(forward(weights, args, TOKENS), logits, rtol=0, atol=0)


def test_causal_later_tokens_do_not_change_earlier_logits(model):
    weights, args = model
    full, prefix = forward(weights, args, TOKENS), forward(weights, args, TOKENS[:4])
    torch.testing.assert_close(full[:4], prefix, rtol=1e-5, atol=1e-5)
    other = forward(weights, args, TOKENS[:4] + [42] * (len(TOKENS) - 4))
    torch.testing.assert_close(other[:4], prefix, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other[-1], full[-1])                   # the changed tokens do matter


def test_prefill_in_two_chunks_equals_one_pass(model):
    weights, args = model
    cache = KVCache(args, len(TOKENS))
    forward(weights, args, TOKENS[:5], cache, 0)
    rest = forward(weights, args, TOKENS[5:], cache, 5)
    torch.testing.assert_close(rest, forward(weights, args, TOKENS)[5:], rtol=1e-4, atol=1e-4)


def test_record_holds_what_forward_computed(model):
    weights, args = model
    record = {}
    logits = forward(weights, args, TOKENS, record=record)
    T = len(TOKENS)
    assert [len(record[k]) for k in ("attn", "scores", "resid")] == [args.n_layers] * 3
    assert record["attn"][0].shape == (args.n_heads, T, T)
    torch.testing.assert_close(record["attn"][1].sum(-1), torch.ones(args.n_heads, T))
    assert (record["attn"][0].triu(1) == 0).all()                    # no weight on future keys
    last = linear(rms_norm(record["resid"][-1], fp32(weights, "norm.weight"), args.norm_eps), weights,
                  "output.weight")
    torch.testing.assert_close(last, logits, rtol=0, atol=0)


def test_positions_past_the_limit_are_refused(model):
    weights, args = model
    with pytest.raises(ValueError, match=rf"{args.max_seq_len + 1} positions exceed the limit of "
                                         rf"{args.max_seq_len} \(max_seq_len"):
        forward(weights, args, [1] * (args.max_seq_len + 1))
    cache = KVCache(args, 4)
    with pytest.raises(ValueError, match="6 positions exceed the limit of 4 .*cache size"):
        forward(weights, args, TOKENS[:3], cache, start_pos=3)


def test_rms_norm_equals_torch(model):
    weights, args = model
    x = torch.randn(5, args.dim, generator=torch.Generator().manual_seed(0))
    w = fp32(weights, "norm.weight")
    torch.testing.assert_close(rms_norm(x, w, args.norm_eps), F.rms_norm(x, (args.dim,), w, args.norm_eps))


def test_rope_rotates_pairs_and_keeps_norms(model):
    _, args = model
    x = torch.randn(7, 2, args.head_dim, generator=torch.Generator().manual_seed(1))
    rot = rope_rotations(args, torch.arange(7))
    y = apply_rope(x, rot)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[0], x[0])                           # position 0: no rotation
    f = rope_frequencies(args)
    assert f.shape == (args.head_dim // 2,) and f[0] == 1 and (f.diff() < 0).all()
    c, s = torch.cos(f[0]), torch.sin(f[0])                           # pair 0 at position 1, by hand
    a, b = x[1, 0, 0], x[1, 0, 1]
    torch.testing.assert_close(y[1, 0, :2], torch.stack([a * c - b * s, a * s + b * c]))


def test_causal_mask_blocks_the_future_only():
    m = causal_mask(3, start_pos=2)                                   # 3 new queries after 2 cached keys
    assert m.shape == (3, 5)
    assert (m.isinf() == (torch.arange(5)[None, :] > torch.arange(3)[:, None] + 2)).all()


def test_fp32_weights_refuses_above_the_limit_and_keeps_ties(tmp_path):
    d = write_random_checkpoint(tmp_path, seed=1, tied=True, **SMALL)
    weights, _ = load_checkpoint(d)
    with pytest.raises(ValueError, match="fp32 copy of these weights needs .* over max_bytes"):
        fp32_weights(weights, max_bytes=fp32_bytes(weights) - 1)
    w32 = fp32_weights(weights)
    assert w32["output.weight"] is w32["tok_embeddings.weight"] and w32["norm.weight"].dtype == torch.float32
