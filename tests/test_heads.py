"""helpers.heads: the probes behind the model card's head scores, and the heads the shipped model must have."""
import json

import pytest
import torch

from helpers import heads, viz
from helpers.checkpoint import DEFAULT_DIR, DEFAULT_SHA256, ModelArgs, load_checkpoint
from helpers.random_checkpoint import random_weights
from helpers.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_common_words_are_distinct_single_tokens(tok):
    assert len(set(heads.COMMON_WORDS)) == len(heads.COMMON_WORDS) == 200
    ids = [heads.word_id(tok, w) for w in heads.COMMON_WORDS]
    assert len(set(ids)) == 200 and max(ids) < tok.n_base


def test_induction_probe_is_bos_then_a_sequence_twice(tok):
    p = heads.induction_probe(tok, n=50, seed=3)
    assert len(p) == 101 and p[0] == tok.special_tokens["<|begin_of_text|>"] == tok.encode("")[0]
    assert p[1:51] == p[51:] and len(set(p[1:51])) == 50
    assert heads.induction_probe(tok, n=50, seed=3) == p != heads.induction_probe(tok, n=50, seed=4)
    with pytest.raises(ValueError, match="n=1"):
        heads.induction_probe(tok, n=1)


def test_induction_probe_follows_a_tokenizer_without_bos(ours, tok):
    """SmolLM2's tokenizer starts plain text with no BOS: its probe is the sequence twice, nothing before"""
    assert not ours.add_bos and ours.encode("the and", bos=True) == ours.encode("the and", bos=False)
    assert len({heads.word_id(ours, w) for w in heads.COMMON_WORDS}) == 200     # one token each there too
    p = heads.induction_probe(ours, n=50, seed=3)
    assert len(p) == 100 and p[:50] == p[50:] and ours.bos_id not in p
    assert [ours.decode([i]) for i in p] == [tok.decode([i]) for i in heads.induction_probe(tok, n=50, seed=3)[1:]]


def test_word_id_refuses_a_word_of_two_tokens(tok):
    with pytest.raises(ValueError, match="not one"):
        heads.word_id(tok, "honorificabilitudinitatibus")


def test_scores_are_the_viz_statistics(tok):
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32)
    w = random_weights(args, seed=1, dtype=torch.float32)
    ind = heads.induction_scores(w, args, tok, n=20, seeds=(0, 1))
    by_hand = []
    for s in (0, 1):
        ids = heads.induction_probe(tok, n=20, seed=s)
        a = viz.collect(w, args, ids)["attn"]                        # [L, H, 41, 41]
        t = torch.arange(21, 41)                                      # queries of the second copy
        by_hand.append(a[..., t, t - 19].mean(-1))                    # the token after the first occurrence
    torch.testing.assert_close(ind, torch.stack(by_hand).mean(0))
    assert ind.shape == (2, 4) and heads.best(ind)[2] == float(ind.max())
    assert float(ind.max()) < 0.3                                     # a random model has no induction head


def test_recorded_head_scores_are_the_shipped_models(tok):
    """the model card's head figures (train_stats.json, helpers.evaluate --record) belong to the shipped file"""
    weights, args = load_checkpoint()
    ev = json.loads((DEFAULT_DIR / "train_stats.json").read_text())["heldout_eval"]
    assert ev["sha256"] == DEFAULT_SHA256
    ind = heads.induction_scores(weights, args, tok)
    i, h, v = heads.best(ind)
    rec = ev["heads"]["induction"]
    assert (i, h) == (rec["layer"], rec["head"]) and v == pytest.approx(rec["score"], abs=1e-4)
    torch.testing.assert_close(ind, torch.tensor(rec["all"]), atol=1e-4, rtol=0)
