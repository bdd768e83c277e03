"""generate(), sampling, the KV cache, fp32_weights and the chat format (issue 7)."""
import pytest
import torch

from helpers.chat import chat, encode_dialog
from helpers.checkpoint import load_checkpoint
from helpers.model import KVCache, forward, fp32_weights, generate
from helpers.random_checkpoint import write_random_checkpoint
from helpers.sampling import check_sampling, kept_distribution, sample_next

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small random GQA model (2 query heads per kv head) with the real vocab, so the tokenizer fits."""
    d = write_random_checkpoint(tmp_path_factory.mktemp("rand"), seed=3, dim=64, n_layers=2, n_heads=4,
                                n_kv_heads=2, vocab_size=128256, multiple_of=32)
    weights, args = load_checkpoint(d)
    return weights, args


def greedy_no_cache(weights, args, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(torch.argmax(forward(weights, args, ids, last_only=True)[-1])))
    return ids


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    (dict(prompt=""), "empty prompt"),
    (dict(prompt=[]), "empty prompt"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
])
def test_bad_input_is_a_clear_value_error(model, tok, kw, word):
    weights, args = model
    call = dict(prompt=PROMPT, max_new_tokens=4) | kw
    with pytest.raises(ValueError, match=word):
        generate(weights, args, tok, call.pop("prompt"), call.pop("max_new_tokens"), **call)


def test_context_limit(model, tok):
    weights, args = model
    n_prompt = len(tok.encode(PROMPT))
    with pytest.raises(ValueError, match=rf"{n_prompt + args.max_seq_len}.*max_seq_len={args.max_seq_len}"):
        generate(weights, args, tok, PROMPT, args.max_seq_len)
    # one past the limit is already refused, up front
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(weights, args, tok, PROMPT, args.max_seq_len - n_prompt + 1)


@pytest.mark.parametrize("temperature, top_k, top_p, kept", [
    (0.7, 1, 1.0, 1),       # top_k=1: only the best token
    (2, 50, 1e-9, 1),       # a tiny top_p keeps the first token only
    (1.0, 3, None, 3),
    (1.0, None, 1.0, 10),   # no limit: every token of this 10-token vocab
])
def test_valid_sampling_options_pass_and_limit_the_draw(temperature, top_k, top_p, kept):
    check_sampling(temperature, top_k, top_p)                    # accepted...
    logits = torch.arange(10.0)                                  # token 9 is the best, then 8, ...
    probs, ids = kept_distribution(logits, temperature, top_k, top_p)
    assert ids.tolist() == list(range(9, 9 - kept, -1))          # ...and they keep what they say
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, temperature, top_k, top_p, gen) for _ in range(200)}
    assert draws <= set(ids.tolist()) and (len(draws) > 1) == (kept > 1)
    assert check_sampling(0.0, None, None) is None and sample_next(logits, 0.0) == 9  # greedy: the argmax


# --- greedy and the cache ---------------------------------------------------------------------------

def test_greedy_equals_a_loop_without_cache(model, tok):
    weights, args = model
    ids = tok.encode(PROMPT)
    got = []
    text = generate(weights, args, tok, ids, 12, stop_tokens=set(), on_token=got.append)
    want = greedy_no_cache(weights, args, ids, 12)[len(ids):]
    assert got == want
    assert text == tok.decode(want)
    assert generate(weights, args, tok, PROMPT, 12, stop_tokens=set()) == text  # str prompt == its ids


def test_cached_logits_equal_full_recomputation_every_step(model, tok):
    weights, args = model
    ids = tok.encode(PROMPT)
    n = 6
    cache = KVCache(args, len(ids) + n)
    logits = forward(weights, args, ids, cache, 0, last_only=True)
    for _ in range(n):
        torch.testing.assert_close(logits[-1], forward(weights, args, ids, last_only=True)[-1],
                                   rtol=1e-4, atol=1e-4)
        ids.append(int(torch.argmax(logits[-1])))
        logits = forward(weights, args, ids[-1:], cache, len(ids) - 1, last_only=True)
    # cache holds n_kv_heads heads, not n_heads: GQA stores less
    assert cache.k.shape == (args.n_layers, len(ids), args.n_kv_heads, args.head_dim)
    assert cache.nbytes == 2 * args.n_layers * len(ids) * args.n_kv_heads * args.head_dim * 4


def test_stop_tokens_end_generation_and_are_not_returned(model, tok):
    weights, args = model
    prompt = tok.encode(PROMPT)
    ids = greedy_no_cache(weights, args, prompt, 8)[len(prompt):]
    assert generate(weights, args, tok, PROMPT, 8, stop_tokens={ids[0]}) == ""
    j = next(j for j, t in enumerate(ids) if t != ids[0])       # the first token that differs (greedy on a
    assert generate(weights, args, tok, PROMPT, 8, stop_tokens={ids[j]}) == tok.decode(ids[:j])  # random model)


@pytest.mark.parametrize("stop_name", ["<|end_of_text|>", "<|eot_id|>"])
def test_default_stops_on_end_tokens(model, tok, monkeypatch, stop_name):
    """A scripted model says 'A B <stop> C': generation returns 'A B' and never asks for C."""
    import helpers.generate
    weights, args = model
    a, b, c = tok.encode(" A B C", bos=False)
    script, calls = [a, b, tok.special_tokens[stop_name], c], []

    def scripted(weights, args, tokens, cache=None, start_pos=0, last_only=False, **kw):
        logits = torch.zeros(1, args.vocab_size)
        logits[0, script[len(calls)]] = 1.0
        calls.append(list(tokens))
        return logits

    monkeypatch.setattr(helpers.generate, "forward", scripted)
    got = []
    assert generate(weights, args, tok, PROMPT, 10, on_token=got.append) == " A B"
    assert got == [a, b] and len(calls) == 3
    assert calls[1:] == [[a], [b]]                            # after the prompt, one new token per step


# --- sampling --------------------------------------------------------------------------------------

def test_top_k_1_and_tiny_top_p_are_greedy(model, tok):
    weights, args = model
    greedy = generate(weights, args, tok, PROMPT, 10, stop_tokens=set())
    assert generate(weights, args, tok, PROMPT, 10, temperature=1.5, top_k=1, seed=7, stop_tokens=set()) == greedy
    assert generate(weights, args, tok, PROMPT, 10, temperature=1.5, top_p=1e-9, seed=7, stop_tokens=set()) == greedy


def test_seed_reproduces_and_differs(model, tok):
    weights, args = model
    kw = dict(temperature=1.0, top_p=0.95, stop_tokens=set())
    a = generate(weights, args, tok, PROMPT, 10, seed=1, **kw)
    assert generate(weights, args, tok, PROMPT, 10, seed=1, **kw) == a
    assert generate(weights, args, tok, PROMPT, 10, seed=2, **kw) != a


P = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("kw, want", [
    (dict(), [0.5, 0.3, 0.15, 0.05]),
    (dict(top_k=2), [0.625, 0.375]),
    (dict(top_p=0.6), [0.625, 0.375]),              # 0.5 < 0.6, so the 2nd token is needed
    (dict(top_p=0.5), [1.0]),                       # 0.5 alone reaches 0.5
    (dict(top_p=0.9), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]),
    (dict(top_k=3, top_p=0.6), [0.625, 0.375]),
])
def test_kept_distribution(kw, want):
    probs, ids = kept_distribution(P.log(), 1.0, **kw)
    torch.testing.assert_close(probs, torch.tensor(want))
    assert ids.tolist() == list(range(len(want)))


def test_temperature_reshapes():
    probs, _ = kept_distribution(P.log(), 2.0)
    sq = P.sqrt()
    torch.testing.assert_close(probs, sq / sq.sum())          # T=2: p^(1/2), renormalised
    cold, _ = kept_distribution(P.log(), 0.1)
    assert cold[0] > 0.99


def test_draws_follow_the_kept_distribution():
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = [sample_next(P.log(), 1.0, top_p=0.9, generator=g) for _ in range(n)]
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.015, rtol=0)
    assert freq[3] == 0                                      # cut by top_p: never drawn


# --- fp32 copy --------------------------------------------------------------------------------------

def test_fp32_weights_same_logits_and_bounded(model, tok):
    weights, args = model
    fast = fp32_weights(weights)
    assert all(t.dtype == torch.float32 for t in fast.values())
    ids = tok.encode(PROMPT)
    torch.testing.assert_close(forward(fast, args, ids), forward(weights, args, ids), rtol=1e-5, atol=1e-5)
    need = 4 * sum(t.numel() for t in weights.values())
    with pytest.raises(ValueError, match="max_bytes"):
        fp32_weights(weights, max_bytes=need - 1)


# --- chat format ------------------------------------------------------------------------------------

DIALOGS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": "7"}, {"role": "user", "content": "Another?"}],
    [{"role": "user", "content": "  spaces around, <|eot_id|> as text, héllo 世界\n\n"},
     {"role": "tool", "content": '{"result": 42}'}, {"role": "user", "content": ""}],
]


@pytest.mark.parametrize("dialog", DIALOGS)
def test_chat_format_matches_llama_models(tok, dialog):
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    want = ChatFormat(Tokenizer.get_instance()).encode_dialog_prompt([RawMessage(**m) for m in dialog]).tokens
    assert encode_dialog(tok, dialog) == want


def test_chat_format_shape(tok):
    ids = encode_dialog(tok, DIALOGS[0])
    s = tok.special_tokens
    assert ids[:2] == [tok.bos_id, s["<|start_header_id|>"]]
    assert ids.count(tok.eot_id) == 1
    assert tok.decode(ids[-4:]) == "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.mark.parametrize("dialog, word", [
    ([], "non-empty"),
    ("Hi", "non-empty"),
    ([{"role": "robot", "content": "x"}], "robot"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "user", "content": 3}], "content must be a str"),
])
def test_chat_bad_dialog(tok, dialog, word):
    with pytest.raises(ValueError, match=word):
        encode_dialog(tok, dialog)


def test_chat_replies_greedily(model, tok):
    weights, args = model
    ids = encode_dialog(tok, DIALOGS[0])
    assert chat(weights, args, tok, DIALOGS[0], 5) == generate(weights, args, tok, ids, 5)
