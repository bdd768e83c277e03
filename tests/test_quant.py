"""helpers.quant: int4 packing, the error bounds of int8/int4 quantization, the int8 weight-only matmul."""
import pytest
import torch

from helpers.checkpoint import load_checkpoint
from helpers.facts import N_PARAMS, PARAMS
from helpers.params import ModelArgs
from helpers.state_dict import expected_shapes
from helpers.quant import (GROUPS, bytes_per_format, dequantize_int4, dequantize_int8, dequantized_weights,
                           int8_linear, pack_int4, quantize_int4, quantize_int8, quantize_roundtrip,
                           relative_error, unpack_int4)


def matrix(out=48, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g) * torch.rand(out, 1, generator=g)  # rows of different scales
    w[3] = 0                                                                  # an all-zero row
    return w.bfloat16()


@pytest.mark.parametrize("group", GROUPS)
def test_pack_unpack_round_trip(group):
    q = torch.randint(-8, 8, (5, 4 * group), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    packed = pack_int4(q, group)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 2 * group)
    assert torch.equal(unpack_int4(packed, group), q)


def test_pack_layout_is_q4_0():
    q = torch.arange(32, dtype=torch.int8).remainder(16).sub(8)[None]  # values -8..7, -8..7
    packed = pack_int4(q, 32)
    # byte j: value j + 8 in the low nibble, value j + 16 (+ 8) in the high nibble
    assert [int(b) for b in packed[0, :3]] == [0 | 0 << 4, 1 | 1 << 4, 2 | 2 << 4]


def test_int8_error_bound():
    w = matrix()
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0],)
    torch.testing.assert_close(scale[0], w[0].float().abs().max() / 127)
    assert int(q.abs().max()) == 127
    err = (w.float() - dequantize_int8(q, scale)).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-4)).all()  # 1e-4: fp32 rounding of q * scale
    assert (dequantize_int8(q, scale)[3] == 0).all()


@pytest.mark.parametrize("group", GROUPS)
def test_int4_error_bound(group):
    w = matrix()
    packed, d = quantize_int4(w, group)
    assert d.dtype == torch.float16 and d.shape == (w.shape[0], w.shape[1] // group)
    deq = dequantize_int4(packed, d, group)
    dd = d.float().repeat_interleave(group, dim=1)
    err = (w.float() - deq).abs()
    clamped = w.float() / dd > 7.5                  # w/d would round to 8: only the opposite extreme
    dd = dd.abs()
    assert (err[~clamped] <= dd[~clamped] / 2 * (1 + 1e-4)).all()
    assert (err <= dd * (1 + 1e-4)).all()
    assert (deq[3] == 0).all()
    # the value of largest magnitude in each group is exact: it is -8 * d
    g = w.float().view(w.shape[0], -1, group)
    big = g.abs().argmax(-1, keepdim=True)
    torch.testing.assert_close(deq.view_as(g).gather(-1, big)[d != 1], (-8 * d.float())[..., None][d != 1])


def test_int4_pads_a_ragged_input_dim():
    w = matrix(out=8, n=80)                         # 80 = 2 groups of 32 + 16
    packed, d = quantize_int4(w, 32)
    assert packed.shape == (8, 48) and d.shape == (8, 3)
    deq = dequantize_int4(packed, d, 32, n=80)
    assert deq.shape == w.shape
    # the last, short group quantizes as if alone
    p2, d2 = quantize_int4(w[:, 64:], 32)
    torch.testing.assert_close(deq[:, 64:], dequantize_int4(p2, d2, 32, n=16), rtol=0, atol=0)


def test_smaller_groups_err_less():
    w = matrix(out=64, n=512)
    errs = [relative_error(w, quantize_roundtrip(w, f)) for f in ("bf16", "int8", "int4-32", "int4-128")]
    assert errs[0] == 0 and errs[1] < errs[2] < errs[3] < 0.2


def test_bad_format_and_group():
    w = matrix()
    with pytest.raises(ValueError, match="int4-G"):
        quantize_roundtrip(w, "int3")
    with pytest.raises(ValueError, match="group=7"):
        quantize_int4(w, 7)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(w[0])


def test_int8_kernel_equals_dequantize_then_matmul():
    w = matrix(out=96, n=256)
    q, scale = quantize_int8(w)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    ref = x @ dequantize_int8(q, scale).T
    torch.testing.assert_close(int8_linear(x, q, scale), ref, rtol=1e-5, atol=1e-4)
    assert hasattr(torch.ops.aten, "_weight_int8pack_mm")  # the kernel itself, not only the fallback
    torch.testing.assert_close(torch.ops.aten._weight_int8pack_mm(x, q, scale), ref, rtol=1e-5, atol=1e-4)
    xb = x.bfloat16()
    ref_b = xb.float() @ dequantize_int8(q, scale.bfloat16().float()).T
    torch.testing.assert_close(int8_linear(xb, q, scale).float(), ref_b, rtol=2e-2, atol=2e-2)


def test_dequantized_weights_keep_ties_and_norms():
    w = matrix(out=32, n=64)
    norm = torch.rand(64).bfloat16()
    deq = dequantized_weights({"tok_embeddings.weight": w, "output.weight": w, "norm.weight": norm}, "int8")
    assert deq["tok_embeddings.weight"] is deq["output.weight"]
    assert torch.equal(deq["norm.weight"], norm.float())


def test_dequantized_weights_of_a_gguf_file(smollm2):
    """a GGUF file's weights dict makes a new tensor at each access: every name still gets its own matrix (an
    id taken from a freed tensor once gave wk the shape of another matrix), and the tied output stays tied"""
    weights, args = load_checkpoint(smollm2)
    deq = dequantized_weights(weights, "int8")
    assert {k: tuple(t.shape) for k, t in deq.items()} == {k: tuple(s) for k, s in expected_shapes(args).items()}
    assert deq["output.weight"] is deq["tok_embeddings.weight"]


def test_bytes_per_format_8b():
    args = ModelArgs.from_params(PARAMS)
    n = N_PARAMS
    assert bytes_per_format(args, "bf16") == 2 * n
    assert bytes_per_format(args, "fp32") == 4 * n
    assert n < bytes_per_format(args, "int8") < 1.001 * n
    # Q4_0: 18 bytes per 32 weights = 4.5 bits
    assert abs(bytes_per_format(args, "int4-32") / n - 4.5 / 8) < 1e-3


def small_model(tied=False):
    from helpers.random_checkpoint import random_weights
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32)
    w = random_weights(args, seed=3)
    if tied:
        w["output.weight"] = w["tok_embeddings.weight"]
    return w, args


def dequantized_int8(q, w):
    """int8_weights' matrices dequantized to fp32, under w's names; the rest as they are."""
    return {n: dequantize_int8(q[n], q[n + "_scale"]) if q[n].dtype == torch.int8 else q[n] for n in w}


@pytest.mark.parametrize("tied", [False, True])
def test_int8_weights_forward_equals_dequantized(tied):
    """forward on int8_weights (the int8 weight-only kernel in every matmul) = forward on the same int8 values
    dequantized to fp32, with the embedding table kept as it is."""
    from helpers.model import forward
    from helpers.quant import int8_weights
    w, args = small_model(tied)
    q = int8_weights(w, rows=7)                                   # ragged blocks of rows: same as whole matrices
    assert q["layers.0.attention.wq.weight"].dtype == torch.int8
    assert q["tok_embeddings.weight"] is w["tok_embeddings.weight"]      # a row lookup: left as it is
    whole = int8_weights(w)
    assert q.keys() == whole.keys()
    for name in q:
        assert torch.equal(q[name], whole[name])                            # values and scales
    deq = dequantized_int8(q, w)
    ids = [1, 5, 9, 200, 7, 3]
    got = forward(q, args, ids)
    torch.testing.assert_close(got, forward(deq, args, ids), rtol=1e-4, atol=1e-4)
    assert (got - forward(w, args, ids)).abs().max() > 0             # it really is quantized


def test_int8_weights_generate_and_no_fp32_copy():
    from helpers.model import fp32_weights, generate
    from helpers.quant import int8_weights
    from helpers.tokenizer import load_tokenizer
    w, args = small_model()
    q = int8_weights(w)
    tok = load_tokenizer()
    ids = [1, 5, 9]
    assert generate(q, args, tok, ids, 4, temperature=0) == generate(dequantized_int8(q, w), args, tok, ids, 4,
                                                                     temperature=0)
    with pytest.raises(ValueError, match="int8"):
        fp32_weights(q)


def test_int8_weights_bf16_activations():
    """precision="bf16" on int8 weights: the same kernel on bf16 activations, close to the fp32 ones."""
    from helpers.model import forward
    from helpers.quant import int8_weights
    w, args = small_model()
    q = int8_weights(w)
    ids = [1, 5, 9, 200, 7, 3]
    exact, fast = forward(q, args, ids), forward(q, args, ids, precision="bf16")
    assert (exact - fast).abs().max() > 0                                  # bf16 rounding: really the other path
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05 * exact.abs().max().item())
