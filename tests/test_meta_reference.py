"""Our by-hand forward equals Meta's own reference, llama_models.llama3.model.Transformer.

helpers.reference.meta_model builds it (fp32 on CPU, in a single-rank gloo group for fairscale's
model-parallel layers; with model-parallel size 1 they are plain linear layers and embeddings).
"""
import dataclasses

import pytest

from helpers.model import forward
from helpers.reference import meta_logits, meta_model

from cases import random_case

TOL = 1e-4


def reference_logits(weights, args, tokens):
    """Meta's Transformer holding our weights: forward(tokens, start_pos=0) -> [T, vocab]."""
    return meta_logits(meta_model(weights, args, max_seq_len=len(tokens)), tokens)


def max_diff(a, b):
    return (a.cpu() - b.cpu()).abs().max().item()


def test_logits_match_meta_reference(case):
    weights, args, tokens = case
    ours = forward(weights, args, tokens)
    theirs = reference_logits(weights, args, tokens)
    assert ours.shape == theirs.shape == (len(tokens), args.vocab_size)
    assert max_diff(ours, theirs) <= TOL
    assert (ours.argmax(-1).cpu() == theirs.argmax(-1)).all()


def test_scaled_rope_case_is_not_vacuous(tmp_path):
    """Meta's scaled rope vs our unscaled one: far apart, so the scaled case above really tests scaling."""
    weights, args, tokens = random_case(tmp_path, "scaled_rope")
    plain = dataclasses.replace(args, use_scaled_rope=False)
    assert max_diff(forward(weights, plain, tokens), reference_logits(weights, args, tokens)) > 100 * TOL


def test_other_rope_scaling_is_refused(tmp_path):
    """Meta's apply_scaling hard-codes llama 3.1's constants: another factor would be a silent wrong check."""
    weights, args, _ = random_case(tmp_path, "scaled_rope")
    with pytest.raises(ValueError, match=r"\(16.*Meta's reference hard-codes llama 3.1's \(8, 1, 4, 8192\)"):
        meta_model(weights, dataclasses.replace(args, rope_scaling_factor=16))
