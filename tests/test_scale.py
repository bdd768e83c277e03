"""bench/synthetic_checkpoint: the four Llama 3 presets have Meta's shapes; small tied / scaled-rope files
written the low-memory way load and run. bench/scale: the harness runs end to end on a small checkpoint."""
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench.synthetic_checkpoint import PRESETS, TIED, check, n_params, preset_args, write_synthetic
from helpers import facts
from helpers.checkpoint import ModelArgs, expected_shapes, is_llama3_8b, is_tied, load_checkpoint
from helpers.model import forward, rope_frequencies
from helpers.tokenizer import default_tokenizer_path

# published: SwiGLU width (HF config intermediate_size) and parameter count (model cards: 8.03B, 1.24B, 3.21B)
PUBLISHED = {"llama3-8b": (14336, facts.N_PARAMS), "llama3.1-8b": (14336, facts.N_PARAMS),
             "llama3.2-1b": (8192, 1_235_814_400), "llama3.2-3b": (8192, 3_212_749_824)}
SCALED_ROPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32,
             ffn_dim_multiplier=1.5, use_scaled_rope=True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_shapes(name):
    args = preset_args(name)
    for k, v in PRESETS[name].items():
        assert getattr(args, k) == v, k
    assert args.extra == {"synthetic": True}
    assert args.hidden_dim == PUBLISHED[name][0]
    shapes = expected_shapes(args)
    assert len(shapes) == 9 * args.n_layers + 3
    assert n_params(args, name in TIED) == PUBLISHED[name][1]
    if name.endswith("8b"):
        assert len(shapes) == facts.N_TENSORS
        assert shapes["layers.31.attention.wk.weight"] == (1024, 4096)   # 8 kv heads of 128
    assert args.use_scaled_rope == (name != "llama3-8b")


def test_synthetic_flag_keeps_oracles_off():
    real = ModelArgs.from_params(facts.PARAMS)
    assert is_llama3_8b(real)
    assert not is_llama3_8b(preset_args("llama3-8b"))          # same shapes, marked synthetic
    assert not is_llama3_8b(preset_args("llama3.1-8b"))


def test_scaled_rope_matches_meta_reference():
    from llama_models.llama3.model import apply_scaling      # Meta's own code, hard-coded llama 3.1 constants
    args = preset_args("llama3.1-8b")
    plain = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2).float() / args.head_dim))
    torch.testing.assert_close(rope_frequencies(args), apply_scaling(plain))
    assert rope_frequencies(args)[-1] < plain[-1] / 7           # low frequencies slowed by the factor 8


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic") / "tied"
    write_synthetic(d, ModelArgs.from_params({**SCALED_ROPE, "synthetic": True}), seed=3, tied=True, progress=False)
    return d


def test_written_file_is_a_valid_checkpoint(tied_dir):
    args = ModelArgs.from_params({**SCALED_ROPE, "synthetic": True})
    weights, n = check(tied_dir, args, tied=True)
    assert n == n_params(args, tied=True) < sum(t.numel() for t in weights.values())
    assert is_tied(weights) and not is_llama3_8b(args, weights)
    with zipfile.ZipFile(tied_dir / "consolidated.00.pth") as z:
        assert z.testzip() is None                               # every CRC was filled in
    assert json.loads((tied_dir / "params.json").read_text())["synthetic"] is True
    assert (tied_dir / "tokenizer.model").read_bytes() == default_tokenizer_path().read_bytes()
    assert not list(tied_dir.glob("*.partial"))


def test_values_are_scaled(tied_dir):
    weights, args = load_checkpoint(tied_dir)
    std = {k: weights[k].float().std().item() for k in ("tok_embeddings.weight", "layers.0.attention.wq.weight",
                                                         "layers.1.feed_forward.w2.weight")}
    assert abs(std["tok_embeddings.weight"] - 1) < 0.01
    assert abs(std["layers.0.attention.wq.weight"] * args.dim ** 0.5 - 1) < 0.05
    want = 1 / (args.hidden_dim * 2 * args.n_layers) ** 0.5
    assert abs(std["layers.1.feed_forward.w2.weight"] / want - 1) < 0.05
    norm = weights["layers.0.ffn_norm.weight"].float()
    assert abs(norm.mean().item() - 1) < 0.05 and 0.05 < norm.std().item() < 0.15


def test_seeded(tied_dir, tmp_path):
    args = ModelArgs.from_params({**SCALED_ROPE, "synthetic": True})
    sha = lambda d: hashlib.sha256((d / "consolidated.00.pth").read_bytes()).hexdigest()  # noqa: E731
    write_synthetic(tmp_path / "same", args, seed=3, tied=True, progress=False)
    write_synthetic(tmp_path / "other", args, seed=4, tied=True, progress=False)
    a, b = load_checkpoint(tmp_path / "same")[0], load_checkpoint(tmp_path / "other")[0]
    assert all(torch.equal(a[k], load_checkpoint(tied_dir)[0][k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], b["layers.0.attention.wq.weight"])
    assert sha(tmp_path / "same") != sha(tmp_path / "other")


def test_forward_tied_stored_either_way(tied_dir, tmp_path):
    """3.2-style tying: output.weight sharing the embedding's storage, or absent from the file."""
    weights, args = load_checkpoint(tied_dir)
    dropped = tmp_path / "dropped"
    dropped.mkdir()
    torch.save({k: v for k, v in weights.items() if k != "output.weight"}, dropped / "consolidated.00.pth")
    (dropped / "params.json").write_text((tied_dir / "params.json").read_text())
    w2, args2 = load_checkpoint(dropped)
    assert w2["output.weight"] is w2["tok_embeddings.weight"]
    a = forward(weights, args, facts.PROMPT_IDS, last_only=True)
    b = forward(w2, args2, facts.PROMPT_IDS, last_only=True)
    assert a.shape == (1, args.vocab_size) and a.isfinite().all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forward_untied_scaled_rope(tmp_path):
    args = ModelArgs.from_params({**SCALED_ROPE, "n_layers": 3, "synthetic": True})
    write_synthetic(tmp_path, args, seed=0, progress=False)
    weights, got = load_checkpoint(tmp_path)
    assert got.use_scaled_rope and not is_tied(weights)
    cache_len = 300
    from helpers.model import KVCache
    ids = facts.PROMPT_IDS
    logits = {}
    for scaled in (True, False):
        a = ModelArgs.from_params({**got.to_params(), "use_scaled_rope": scaled})
        cache = KVCache(a, cache_len)
        forward(weights, a, ids, cache, 0)
        logits[scaled] = forward(weights, a, ids[1:3], cache, 250, last_only=True)   # far positions
    assert all(v.isfinite().all() for v in logits.values())
    assert (logits[True] - logits[False]).abs().max() > 1e-3   # the flag reaches the forward pass


def test_scale_harness_small(tied_dir, tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "bench.scale", "--model-dir", str(tied_dir), "--parts", "ours,hf",
           "--decode", "2", "--repeat", "1", "--tmp", str(tmp_path / "w"), "--json", str(out)]
    subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    ours, hf = res["parts"]
    assert ours["rc"] == hf["rc"] == 0
    assert 0 < ours["peak_rss_anon"] <= ours["vm_hwm"]
    assert ours["decode_tokens"] == hf["decode_tokens"] and len(ours["decode_tokens"]) == 3
    assert res["ours_vs_hf"]["argmax_ours"] == res["ours_vs_hf"]["argmax_hf"]
    assert res["ours_vs_hf"]["top5_overlap"] == 5


@pytest.mark.parametrize("n_in", [64, 4096, "over"])
def test_linear_blocks_equal_whole_matrix(n_in, monkeypatch):
    """helpers.model.linear upcasts a few rows at a time into a reused buffer: same product, any shape."""
    from helpers import upcast
    from helpers.model import linear
    if n_in == "over":                                            # a row longer than a block: one row at a time
        monkeypatch.setattr(upcast, "CHUNK", 64)
        n_in = 100
    shape = (2 * max(1, upcast.CHUNK // n_in) + 3, n_in)          # two blocks of rows and a ragged tail
    g = torch.Generator().manual_seed(0)
    w = {"w": torch.randn(shape, generator=g).to(torch.bfloat16)}
    x = torch.randn(5, shape[1], generator=g)
    want = (x.double() @ w["w"].double().T).float()
    tol = dict(rtol=1e-5, atol=1e-5 * shape[1] ** 0.5)          # fp32 sums of K terms: error ~ sqrt(K)
    torch.testing.assert_close(linear(x, w, "w"), want, **tol)
    torch.testing.assert_close(linear(x, w, "w"), want, **tol)  # buffer reuse leaves no stale rows
    xg = x.clone().requires_grad_()
    linear(xg, w, "w").sum().backward()                      # autograd takes the plain path
    grad = w["w"].double().sum(0).float().expand_as(x)             # d(sum)/dx: the column sums of W
    torch.testing.assert_close(xg.grad, grad, rtol=1e-5, atol=1e-5 * shape[0] ** 0.5)  # K = rows here


@pytest.mark.parametrize("T", [1, 8, 9])                      # decode rows (threaded) and a prompt (not)
@pytest.mark.parametrize("inference", [False, True])
def test_decode_threads_same_product(T, inference, monkeypatch):
    """helpers.upcast.matmul_upcast: up to DECODE_ROWS rows of x, each thread upcasts and multiplies its own
    blocks; the product equals the one-thread blocked product, and torch's thread count is left as it was."""
    from helpers import upcast
    calls = []
    real = upcast.threaded
    monkeypatch.setattr(upcast, "threaded", lambda *a: calls.append(a[-1]) or real(*a))
    rows = max(1, upcast.CHUNK // 256)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5 * rows + 3, 256, generator=g).to(torch.bfloat16)   # five blocks and a ragged tail
    x = torch.randn(T, 256, generator=g)
    n = torch.get_num_threads()
    torch.set_num_threads(2)                                             # the threaded path needs 2+ threads
    try:
        with torch.inference_mode(inference):
            got = upcast.matmul_upcast(x, w)
            assert torch.get_num_threads() == 2
            torch.set_num_threads(1)                                     # one thread: the plain blocked path
            want = upcast.matmul_upcast(x, w)
    finally:
        torch.set_num_threads(n)
    assert calls == ([2] if T <= upcast.DECODE_ROWS else [])           # threaded for decoding only
    assert got.shape == (T, w.shape[0]) and got.dtype == torch.float32 and got.is_inference() == inference
    tol = dict(rtol=1e-5, atol=1e-5 * 256 ** 0.5)                       # fp32 sums of 256 terms, any order
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got, (x.double() @ w.double().T).float(), **tol)


def test_decode_blocks_seen_by_flop_counter():
    """A dispatch mode is per thread: under FlopCounterMode the blocks stay on this thread and are all counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from helpers import upcast
    w = torch.randn(3 * max(1, upcast.CHUNK // 256) + 1, 256).to(torch.bfloat16)
    n = torch.get_num_threads()
    torch.set_num_threads(2)                                            # enough blocks for 2 threads
    try:
        with FlopCounterMode(display=False) as counter:
            upcast.matmul_upcast(torch.randn(1, 256), w)
    finally:
        torch.set_num_threads(n)
    assert counter.get_total_flops() == 2 * w.numel()


def test_scale_harness_int8(tied_dir, tmp_path):
    """bench.scale's ours_int8 part: quantizes in the child, then times forward and decode on int8 weights."""
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "bench.scale", "--model-dir", str(tied_dir), "--parts", "ours_int8",
           "--decode", "2", "--repeat", "1", "--tmp", str(tmp_path / "w"), "--json", str(out)]
    subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True, timeout=300)
    (part,) = json.loads(out.read_text())["parts"]
    weights, _ = load_checkpoint(tied_dir)
    matrices = [t for n, t in weights.items() if t.ndim == 2 and n != "tok_embeddings.weight"]
    assert part["rc"] == 0 and part["quantize_s"] > 0 and part["logits_finite"]
    # one byte per weight and one fp32 scale per row
    assert part["int8_matrix_bytes"] == sum(t.numel() + 4 * t.shape[0] for t in matrices)
    assert len(part["decode_tokens"]) == 3
