"""forward/generate precision="bf16": the weight matmuls in bf16 (fp32 accumulation), the rest as the fp32 path."""
import pytest
import torch

from helpers.checkpoint import load_checkpoint
from helpers.facts import SHAKESPEARE_PROMPT
from helpers.model import KVCache, forward, fp32_weights, generate, linear
from helpers.params import ModelArgs
from helpers.random_checkpoint import random_weights
from helpers.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model():
    return load_checkpoint()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


RANDOM = ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=1000, multiple_of=32)


def close_in_bf16(b, ref):
    """bf16 has an 8-bit mantissa: logits agree to a few hundredths of their spread, not to fp32's 1e-5."""
    assert b.dtype == torch.float32 and b.shape == ref.shape
    err = (b - ref).abs().max().item()
    assert 0 < err < 0.03 * ref.abs().max().item(), err     # > 0: the bf16 path did run in bf16


def test_bf16_logits_close_to_fp32_default_model(model, tok):
    weights, args = model
    ids = tok.encode(SHAKESPEARE_PROMPT)
    ref, b = forward(weights, args, ids), forward(weights, args, ids, precision="bf16")
    close_in_bf16(b, ref)
    # every logit moved by at most err, so a lead of more than 2 err cannot flip; a near-tie may
    err = (b - ref).abs().max()
    top2 = ref.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * err
    assert clear.sum() >= len(ids) // 2 and clear[-1]                  # most positions, and the demo's answer
    assert torch.equal(b.argmax(-1)[clear], ref.argmax(-1)[clear])


def test_bf16_logits_close_to_fp32_random_checkpoint():
    weights = random_weights(RANDOM, seed=3)
    ids = list(range(1, 40))
    close_in_bf16(forward(weights, RANDOM, ids, precision="bf16"), forward(weights, RANDOM, ids))
    # fp32 weights (an fp32 checkpoint or fp32_weights) are rounded to bf16 for the matmul: same numbers
    torch.testing.assert_close(forward(fp32_weights(weights), RANDOM, ids, precision="bf16"),
                               forward(weights, RANDOM, ids, precision="bf16"), rtol=0, atol=0)


def test_bf16_linear_is_one_bf16_matmul(model):
    weights, args = model
    x = torch.randn(3, args.dim, generator=torch.Generator().manual_seed(0))
    name = "layers.0.feed_forward.w1.weight"
    got = linear(x, weights, name, precision="bf16")
    assert got.dtype == torch.float32
    assert torch.equal(got, (x.bfloat16() @ weights[name].bfloat16().T).float())


def test_bf16_kv_cache_matches_full_recomputation(model, tok):
    weights, args = model
    ids = tok.encode(SHAKESPEARE_PROMPT)
    full = forward(weights, args, ids, precision="bf16")
    cache = KVCache(args, len(ids))
    forward(weights, args, ids[:-1], cache, 0, precision="bf16")
    last = forward(weights, args, ids[-1:], cache, len(ids) - 1, precision="bf16")
    torch.testing.assert_close(last[0], full[-1], rtol=0, atol=0.03 * full.abs().max().item())


def test_bf16_greedy_generation_same_tokens(model, tok):
    weights, args = model
    a = generate(weights, args, tok, SHAKESPEARE_PROMPT, 20)
    b = generate(weights, args, tok, SHAKESPEARE_PROMPT, 20, precision="bf16")
    assert a == b and len(tok.encode(a, bos=False)) >= 10


def test_fp32_is_the_default_and_unchanged(model, tok):
    weights, args = model
    ids = tok.encode(SHAKESPEARE_PROMPT)
    ref = forward(weights, args, ids)
    assert torch.equal(forward(weights, args, ids, precision="fp32"), ref)
    # the exact path: bf16 weights upcast per use give the same logits as an fp32 copy of the weights
    torch.testing.assert_close(forward(fp32_weights(weights), args, ids), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["fp16", "BF16x", "", None, 16, torch.bfloat16])
def test_bad_precision_refused(model, tok, bad):
    weights, args = model
    with pytest.raises(ValueError, match=r"precision=.*'fp32'.*'bf16'"):
        forward(weights, args, [1, 2, 3], precision=bad)
    with pytest.raises(ValueError, match=r"precision=.*'fp32'.*'bf16'"):
        generate(weights, args, tok, "Hello", 3, precision=bad)
