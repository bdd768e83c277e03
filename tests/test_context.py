"""Context stretching: the scaled RoPE frequencies against transformers', the loss per position against
helpers.evaluate, the memory formulas against the objects they count."""
import dataclasses

import pytest
import torch

from helpers import context as C
from helpers.checkpoint import ModelArgs, load_checkpoint
from helpers.evaluate import token_losses
from helpers.random_checkpoint import write_random_checkpoint

SHAPES = [ModelArgs(dim=160, n_layers=1, n_heads=4, vocab_size=64, rope_theta=500000.0),
          ModelArgs(dim=96, n_layers=1, n_heads=6, vocab_size=64, rope_theta=10000.0)]


@pytest.mark.parametrize("args", SHAPES, ids=["hd40", "hd16"])
@pytest.mark.parametrize("method", ["linear", "dynamic", "llama3"])
@pytest.mark.parametrize("factor, trained, seq_len", [(4.0, 512, None), (4.0, 512, 2048), (8.0, 8192, 20000),
                                                      (2.5, 300, 1000)])
def test_frequencies_match_transformers(args, method, factor, trained, seq_len):
    ours = C.scaled_frequencies(args, method, factor, trained, seq_len=seq_len)
    torch.testing.assert_close(ours, C.hf_frequencies(args, method, factor, trained, seq_len=seq_len),
                               rtol=1e-6, atol=0)


def test_scaling_changes_what_it_should():
    a = SHAPES[0]
    none = C.scaled_frequencies(a, "none", 4.0, 512)
    ntk = C.scaled_frequencies(a, "ntk", 4.0, 512)
    assert ntk[0] == none[0] and torch.isclose(none[-1] / ntk[-1], torch.tensor(4.0), rtol=1e-5)
    assert (ntk[1:] < none[1:]).all()
    torch.testing.assert_close(C.scaled_frequencies(a, "linear", 4.0, 512), none / 4)
    # dynamic NTK does nothing up to the trained length, and equals static NTK at factor x the trained length
    torch.testing.assert_close(C.scaled_frequencies(a, "dynamic", 4.0, 512, seq_len=300), none)
    torch.testing.assert_close(C.dynamic_factor(1.0, 2048, 512), 4.0)
    # llama3 with Meta's 3.1 numbers equals the forward pass's own frequencies for a use_scaled_rope model
    a31 = dataclasses.replace(a, use_scaled_rope=True)
    from helpers.transformer import rope_frequencies
    torch.testing.assert_close(C.scaled_frequencies(a, "llama3", 8.0, 8192), rope_frequencies(a31))


@pytest.mark.parametrize("bad", [dict(method="ntk2"), dict(factor=0.5), dict(factor=float("nan")),
                                 dict(trained=0), dict(trained=512.0)])
def test_bad_scaling_is_one_clear_error(bad):
    kw = dict(method="ntk", factor=2.0, trained=512) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        C.scaled_frequencies(SHAPES[0], **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = write_random_checkpoint(tmp_path_factory.mktemp("ctx"), seed=3, dim=64, n_layers=2, n_heads=4,
                                n_kv_heads=2, vocab_size=128256, multiple_of=32)
    return load_checkpoint(d)


def test_position_losses_equal_the_forward_pass(small):
    weights, args = small
    ids = torch.randint(0, args.vocab_size, (2 * 40 + 1,), generator=torch.Generator().manual_seed(0))
    want = token_losses(weights, args, ids, window=40).view(2, 40)        # windows of 40 inputs
    wins = torch.stack([ids[:41], ids[40:81]])                            # the same windows with their targets
    got = C.position_losses(weights, args, wins, C.scaled_frequencies(args))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    strided = C.position_losses(weights, args, wins, C.scaled_frequencies(args), stride=3)
    torch.testing.assert_close(strided, got[:, ::3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        C.position_losses(weights, args, wins, C.scaled_frequencies(args), stride=0)


def test_positions_past_max_seq_len_are_scored(small):
    weights, args = small
    short = dataclasses.replace(args, max_seq_len=16)
    wins = torch.arange(33)[None] % args.vocab_size
    got = C.position_losses(weights, short, wins, C.scaled_frequencies(short, "none", 1.0, 16))
    assert got.shape == (1, 32) and torch.isfinite(got).all()


@pytest.mark.parametrize("args", SHAPES + [ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=1, vocab_size=9)])
def test_memory_formulas_count_the_real_objects(args):
    assert C.kv_cache_bytes(args, 37) == C.kv_cache_nbytes(args, 37)
    assert C.attention_bytes(args, 37) == torch.empty(args.n_heads, 37, 37).nbytes


# bench/context_length.py: its block-at-a-time attention and its loss per position
@pytest.mark.parametrize("block", [1, 7, 16, 50, 64])
def test_block_attention_equals_full_causal_attention(block):
    from bench.context_length import block_causal_attention
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(50, 6, 8, generator=g), torch.randn(50, 2, 8, generator=g), torch.randn(50, 2, 8, generator=g)
    kk, vv = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)          # query head h reads kv head h // 3
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk.transpose(0, 1),
                                                            vv.transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(block_causal_attention(q, k, v, block), want, rtol=1e-5, atol=1e-5)


def test_bench_losses_equal_position_losses(small):
    from bench.context_length import bucket_means, losses
    weights, args = small
    ids = torch.randint(0, args.vocab_size, (61,), generator=torch.Generator().manual_seed(2))
    f = C.scaled_frequencies(args, "llama3", 2.0, 30)
    want = C.position_losses(weights, args, ids[None], f)[0]             # [60]
    torch.testing.assert_close(losses(weights, args, ids, f, block=16, rows=25), want, rtol=1e-5, atol=1e-5)
    assert bucket_means(want, 25) == pytest.approx([want[a:b].mean().item() for a, b in [(0, 25), (25, 50), (50, 60)]])
