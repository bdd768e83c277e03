"""Bad input to the model, tokenizer and viz side (issue 12, section 5): one clear ValueError that names
the value or file and the fix, or correct behaviour; never a raw deep error or a silent wrong result."""
import copy
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import viz
from helpers.checkpoint import load_checkpoint
from helpers.model import forward, generate, pick_device
from helpers.random_checkpoint import write_random_checkpoint
from helpers.sampling import check_sampling
from helpers.tokenizer import Tokenizer, default_tokenizer_path, load_tokenizer, split_runs

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def default():
    return load_checkpoint()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = write_random_checkpoint(tmp_path_factory.mktemp("bad_input"), seed=5, dim=64, n_layers=2, n_heads=4,
                                n_kv_heads=2, vocab_size=128256, multiple_of=32)
    return load_checkpoint(d)


# ---- 1. token ids: forward, viz and generate share helpers.model.check_tokens

ENTRY = {
    "forward": lambda w, a, t, tok: forward(w, a, t),
    "collect": lambda w, a, t, tok: viz.collect(w, a, t),
    "Trace": lambda w, a, t, tok: viz.Trace(w, a, t),
    "generate": lambda w, a, t, tok: generate(w, a, tok, t, 3),
}


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("bad, match", [
    ("123", r"got str '123'; to run text, tokenizer.encode\(text\) first"),
    (b"123", r"got bytes b'123'; to run text, tokenizer.encode\(text\) first"),
    ([1.0, 2.0], r"token ids must be integers, got float 1.0 at position 0"),
    ([5, True], r"token ids must be integers, got bool True at position 1"),
    (torch.tensor([1.5, 2.0]), r"got float 1.5 at position 0"),
    (np.array([3.0]), r"got float 3.0 at position 0"),
    (torch.tensor([True, False]), r"got bool True at position 0"),
    (["a", "b"], r"got str 'a' at position 0; to run text, tokenizer.encode\(text\)"),
    (5, r"must be a list of integers \(one id: \[id\]\), got int 5"),
    (np.int64(5), r"must be a list of integers \(one id: \[id\]\), got int64"),
    (None, r"must be a list of integers .*got NoneType None"),
    ({1, 2}, r"must be a list of integers .*got set"),
    ([[1, 2, 3]], r"one flat sequence, got a batch of shape \[1, 3\].*pass a flat list of ids"),
    (torch.tensor([[1, 2, 3]]), r"one flat sequence, got a batch of shape \[1, 3\]"),
    (np.zeros((2, 4), dtype=np.int64), r"one flat sequence, got a batch of shape \[2, 4\]"),
    ([], r"no tokens"),
    (torch.zeros(0, dtype=torch.long), r"no tokens"),
    ([1, 128256], r"token id 128256 is outside the vocabulary \(vocab_size=128256\)"),
    ([-1], r"token id -1 is outside the vocabulary"),
])
def test_bad_token_ids_are_refused(default, tok, entry, bad, match):
    weights, args = default
    if entry == "generate" and isinstance(bad, str):              # generate's prompt may be text
        assert isinstance(ENTRY[entry](weights, args, bad, tok), str)
        return
    with pytest.raises(ValueError, match=match):
        ENTRY[entry](weights, args, bad, tok)


@pytest.mark.parametrize("ids", [
    lambda x: tuple(x), lambda x: np.array(x), lambda x: np.array(x, dtype=np.int32),
    lambda x: torch.tensor(x), lambda x: torch.tensor(x, dtype=torch.int32),
    lambda x: [np.int64(i) for i in x], lambda x: list(torch.tensor(x)),
], ids=["tuple", "np-int64", "np-int32", "torch-int64", "torch-int32", "list-of-np-ints", "list-of-0d-tensors"])
def test_integer_ids_of_any_kind_keep_working(default, tok, ids):
    weights, args = default
    plain = tok.encode(PROMPT)
    torch.testing.assert_close(forward(weights, args, ids(plain)), forward(weights, args, plain), rtol=0, atol=0)


def test_batch_is_refused_before_anything_runs(default):
    weights, args = default
    record = {}
    with pytest.raises(ValueError, match="flat"):
        forward(weights, args, [[1, 2, 3]], record=record)
    assert record == {}


# ---- 2. generate: numpy integers work; bools, floats and <= 0 do not; prompt of the wrong type

def test_generate_takes_numpy_integers(small, tok):
    weights, args = small
    want = generate(weights, args, tok, PROMPT, 5)
    assert generate(weights, args, tok, PROMPT, np.int64(5)) == want
    assert generate(weights, args, tok, PROMPT, np.int32(5)) == want
    assert generate(weights, args, tok, [np.int64(i) for i in tok.encode(PROMPT)], 5) == want
    assert generate(weights, args, tok, torch.tensor(tok.encode(PROMPT)), 5) == want
    assert generate(weights, args, tok, PROMPT, 5, top_k=np.int64(3), temperature=np.float32(0.8), seed=1) == \
        generate(weights, args, tok, PROMPT, 5, top_k=3, temperature=0.8, seed=1)


@pytest.mark.parametrize("n", [True, np.True_, 2.0, np.float64(2.0), 0, np.int64(0), -1, "5", None])
def test_generate_bad_max_new_tokens(small, tok, n):
    weights, args = small
    with pytest.raises(ValueError, match=re.escape(f"max_new_tokens={n!r} must be a positive integer")):
        generate(weights, args, tok, PROMPT, n)


@pytest.mark.parametrize("prompt, match", [
    (5, "got int 5"), (None, "got NoneType"), (b"hi", "got bytes"), ([1.5], "got float 1.5"),
    ([[128000, 1]], "flat"), ([128256], "outside the vocabulary"), ("", "empty prompt"), ([], "no tokens"),
])
def test_generate_bad_prompt(small, tok, prompt, match):
    weights, args = small
    with pytest.raises(ValueError, match=match):
        generate(weights, args, tok, prompt, 3)


@pytest.mark.parametrize("kw", [dict(top_k=np.True_), dict(temperature=np.True_), dict(top_k=np.float64(2.0))])
def test_sampling_refuses_numpy_bools_and_float_top_k(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        check_sampling(**kw)


# ---- 3. decode / piece of ids outside the vocabulary

@pytest.mark.parametrize("bad", [128256, -1, 2 ** 70, 1.5, "7", None, True])
def test_decode_names_a_bad_id(tok, bad):
    with pytest.raises(ValueError, match=re.escape(f"token id {bad!r} is not in this tokenizer's vocabulary "
                                                   "(integers 0..128255)")):
        tok.decode([1, bad])
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.piece(bad)


@pytest.mark.parametrize("bad", ["abc", 5, None])
def test_decode_wants_a_list(tok, bad):
    with pytest.raises(ValueError, match="decode\\(\\) takes a list of token ids"):
        tok.decode(bad)


def test_decode_takes_numpy_and_torch_ids(tok):
    ids = tok.encode(PROMPT)
    assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == tok.decode(ids) == "<|begin_of_text|>" + PROMPT


# ---- 4. non-finite weights or params: the first culprit in forward order is named

def poisoned(weights, name, index, value):
    out = dict(weights)
    t = weights[name].clone()
    t.view(-1)[index] = value
    out[name] = t
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["layers.0.attention_norm.weight", "layers.1.attention.wk.weight",
                                  "layers.0.feed_forward.w2.weight", "norm.weight", "output.weight"])
def test_nonfinite_weight_is_named(small, tok, name, value):
    weights, args = small
    bad = poisoned(weights, name, 7, value)
    with pytest.raises(ValueError, match=rf"the logits hold NaN/inf: weight {re.escape(name)} holds 1 NaN/inf"):
        forward(bad, args, tok.encode(PROMPT))
    if value != value:                                           # NaN: generate says so too, not '!!!!!'
        with pytest.raises(ValueError, match=re.escape(name)):
            generate(bad, args, tok, PROMPT, 4)


def test_first_culprit_in_forward_order(small, tok):
    weights, args = small
    bad = poisoned(poisoned(weights, "layers.1.attention.wq.weight", 3, float("nan")),
                   "layers.0.feed_forward.w2.weight", 3, float("nan"))
    with pytest.raises(ValueError, match=r"weight layers\.0\.feed_forward\.w2\.weight holds"):
        forward(bad, args, tok.encode(PROMPT))


def test_nonfinite_embedding_row(small, tok):
    weights, args = small
    ids = tok.encode(PROMPT)
    dim = args.dim
    with pytest.raises(ValueError, match=rf"tok_embeddings.weight row {ids[2]} \(the embedding of token {ids[2]}\)"):
        forward(poisoned(weights, "tok_embeddings.weight", ids[2] * dim + 1, float("nan")), args, ids)
    unused = max(set(range(1000)) - set(ids))                    # a NaN in a row this prompt never reads is harmless
    forward(poisoned(weights, "tok_embeddings.weight", unused * dim, float("nan")), args, ids)


@pytest.mark.parametrize("name, value", [("rope_theta", -1.0), ("rope_theta", 0.0), ("rope_theta", float("nan")),
                                         ("norm_eps", float("nan")), ("norm_eps", -1e3)])
def test_bad_params_built_by_hand_are_named(small, tok, name, value):
    weights, args = small
    args = copy.copy(args)
    setattr(args, name, value)                                   # past ModelArgs' checks, as a hand edit would be
    with pytest.raises(ValueError, match=rf"weights are finite but {name}={re.escape(repr(value))} must be a positive"):
        forward(weights, args, tok.encode(PROMPT))


def test_bad_rope_scaling_built_by_hand_is_named(small, tok):
    weights, args = small
    args = copy.copy(args)
    args.use_scaled_rope, args.rope_scaling_factor = True, 0.0           # low frequencies / 0
    with pytest.raises(ValueError, match=r"RoPE frequencies are not finite: check rope_scaling_factor="):
        forward(weights, args, tok.encode(PROMPT))


def test_activation_overflow_is_said(small, tok):
    weights, args = small
    big = dict(weights)
    for k in ("layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w3.weight"):
        big[k] = weights[k] * 1e25                                # finite in bf16, gate * up overflows fp32
    assert all(torch.isfinite(t).all() for t in big.values())
    with pytest.raises(ValueError, match="weights and params are finite, so the activations overflowed"):
        forward(big, args, tok.encode(PROMPT))


# ---- 5. tokenizer.model files

# the start of a sentencepiece ModelProto: pieces '<unk>' (score 0) and '<s>' (score -1.0, bytes 80 bf)
SENTENCEPIECE = b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02\n\x0c\n\x03<s>\x15\x00\x00\x80\xbf\x18\x03"


@pytest.fixture(scope="module")
def lines():
    return default_tokenizer_path().read_text().splitlines()


@pytest.mark.parametrize("kind, match", [
    ("truncated", r"holds 1,000 ranks; the Llama 3 tokenizer has exactly 128,000"),
    ("empty", r"is empty: a Llama 3 tokenizer.model has 128,000"),
    ("sentencepiece", r"is not a text file: this looks like a sentencepiece model \(Llama 2\); Llama 3 uses a "
                      r"tiktoken"),
    ("repeated rank", r"ranks must be 0..127999, each once, but rank 5 is repeated"),
    ("rank out of range", r"ranks must be 0..127999, each once, but rank 127999 is missing"),
    ("repeated piece", r":128000: piece .* appears twice \(ranks 5 and 127999\)"),
    ("not base64", r":1: expected 'base64 rank'"),
])
def test_bad_tokenizer_model_is_refused(tmp_path, lines, kind, match):
    last = lines[-1].split()[0]
    body = {"truncated": "\n".join(lines[:1000]),
            "empty": "",
            "sentencepiece": SENTENCEPIECE,
            "repeated rank": "\n".join(lines[:-1] + [last + " 5"]),
            "rank out of range": "\n".join(lines[:-1] + [last + " 999999"]),
            "repeated piece": "\n".join(lines[:-1] + [lines[5].split()[0] + " 127999"]),
            "not base64": "this is not base64 rank\n"}[kind]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    for load in (lambda: Tokenizer(path), lambda: load_tokenizer(tmp_path)):
        with pytest.raises(ValueError, match=match) as e:
            load()
        assert str(path) in str(e.value)


# ---- 6. long runs without whitespace: Meta's ids exactly

@pytest.fixture(scope="module")
def meta():
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    return MetaTokenizer(Path(default_tokenizer_path()))


@pytest.mark.parametrize("text", [
    "a" * 30000, "abc" * 10000, "ab " * 20000, " " * 60000, "\n" * 25001,
    "x" * 26000 + " " * 51000 + "héllo " + "7" * 25001 + "\n" * 30000 + "end",
    "b" * 25000 + " " * 25000 + "c" * 25001, "a" * 420000 + " z",
], ids=lambda t: f"{len(t)}chars")
def test_long_runs_match_meta(tok, meta, text):
    assert tok.encode(text, bos=True, eos=True) == meta.encode(text, bos=True, eos=True)


def test_long_runs_needed_the_split(tok, meta):
    """without the cut, a long whitespace run encodes differently: the test above can fail."""
    text = " " * 60000
    assert tok.model.encode(text, disallowed_special=()) != meta.encode(text, bos=False, eos=False)


def test_split_runs_equals_meta_on_random_text(meta):
    rng = random.Random(0)
    chars = "ab \n\t\u3000\x1cé"
    for _ in range(2000):
        s = "".join(rng.choice(chars) * rng.randint(1, 9) for _ in range(rng.randint(0, 12)))
        for m in (1, 2, 3, 5):
            assert split_runs(s, m) == list(meta._split_whitespaces_or_nonwhitespaces(s, m)), (s, m)


# ---- 7. LLAMA3_DEVICE

@pytest.mark.parametrize("value, why", [("gpu", "is not a device name"), ("cuda:x", "is not a device name"),
                                        ("cuda:99", "is not available on this machine"), ("tpu", "")])
def test_bad_device_names_the_variable(value, why):
    with pytest.raises(ValueError, match=rf"LLAMA3_DEVICE='{value}' {why}.*use cpu, cuda, cuda:N or mps "
                                         r"\(available here: cpu"):
        pick_device(value)


def test_unavailable_device_is_refused(monkeypatch):
    for value, here in (("cuda", torch.cuda.is_available()),
                        ("mps", torch.backends.mps.is_available())):
        if here:
            assert pick_device(value).type == value
        else:
            with pytest.raises(ValueError, match=rf"LLAMA3_DEVICE='{value}' is not available on this machine"):
                pick_device(value)
    monkeypatch.setenv("LLAMA3_DEVICE", "gpu")
    with pytest.raises(ValueError, match="LLAMA3_DEVICE='gpu'"):
        pick_device()


def test_good_device_values(monkeypatch):
    assert pick_device("cpu") == pick_device(" CPU ") == torch.device("cpu")
    monkeypatch.delenv("LLAMA3_DEVICE", raising=False)
    assert pick_device() == pick_device("")                     # unset or empty: the best available


# ---- 8. memory of record= / collect / Trace, refused before running

def test_collect_refuses_long_prompt_up_front(default):
    weights, args = default
    ids = list(range(1000, 3000))
    assert viz.collect_bytes(args, 2000) > 2 * 2 ** 30
    with pytest.raises(ValueError, match=r"collect on 2000 tokens .* needs about \d+\.\d\d GiB, over "
                                         r"max_bytes=1\.00 GiB: use a shorter prompt"):
        viz.collect(weights, args, ids)
    with pytest.raises(ValueError, match=r"max_bytes=1\.0 MiB"):
        viz.collect(weights, args, ids[:20], max_bytes=2 ** 20)
    assert viz.collect(weights, args, ids[:20], max_bytes=viz.collect_bytes(args, 20))["attn"].shape[-1] == 20


def test_forward_record_limit(default):
    weights, args = default
    record = {}
    with pytest.raises(ValueError, match=r"record= would keep .* over record_max_bytes=.*shorter prompt"):
        forward(weights, args, list(range(1000, 1100)), record=record, record_max_bytes=10 ** 6)
    assert record == {}                                          # refused before any layer ran
    forward(weights, args, list(range(1000, 1100)), record=record)
    assert len(record["attn"]) == args.n_layers


def test_trace_limit_counts_kept_layers(default):
    weights, args = default
    T = 50
    per_layer = 2 * 4 * args.n_heads * T * T
    tr = viz.Trace(weights, args, list(range(1000, 1000 + T)), max_bytes=2 * per_layer)
    tr.layer(0)
    tr.layer(args.n_layers - 1)
    tr.layer(0)                                                  # cached: costs nothing
    with pytest.raises(ValueError, match=r"keeping attention of 3 layer\(s\) on 50 tokens .*a new Trace"):
        tr.layer(1)
