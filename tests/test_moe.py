"""The by-hand MoE (helpers/moe.py) equals implementations this project did not write, on random weights:
Meta's llama_models.llama4.moe.MoE and transformers' Llama4TextMoe (sigmoid top-k, input-scaled, shared
expert) and transformers' MixtralSparseMoeBlock (softmax top-k renormalised, output-scaled)."""
import pytest
import torch

from helpers.moe import (MoEError, hf_llama4_moe, hf_mixtral_moe, load_balancing_loss, meta_moe, moe,
                         random_moe_weights, route, tokens_per_expert)

TOL = dict(rtol=1e-5, atol=1e-5)
MIXTRAL = dict(gating="softmax", renormalize=True, scale="output")
# (dim, expert width, experts, top_k, shared expert, tokens): few tokens for many experts leaves some idle
CONFIGS = [(32, 24, 8, 2, True, 5), (32, 24, 4, 1, False, 16), (16, 12, 8, 2, False, 3),
           (24, 16, 6, 3, True, 20), (16, 8, 16, 1, True, 4), (8, 8, 2, 2, False, 7)]
IDS = [f"E{c[2]}-k{c[3]}-{'shared' if c[4] else 'noshared'}-T{c[5]}" for c in CONFIGS]


def case(dim, hidden, E, k, shared, T, seed=0):
    w = random_moe_weights(dim, hidden, E, shared, seed=seed + 10 * E + k)
    x = torch.randn(T, dim, generator=torch.Generator().manual_seed(seed + T))
    return w, x


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_llama4_routing_matches_meta_and_hf(cfg):
    w, x = case(*cfg)
    ours = moe(x, w, cfg[3])
    torch.testing.assert_close(ours, meta_moe(w, cfg[3])(x), **TOL)
    torch.testing.assert_close(ours, hf_llama4_moe(w, cfg[3])(x), **TOL)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_mixtral_routing_matches_hf(cfg):
    w, x = case(*cfg)
    w = {k: v for k, v in w.items() if not k.startswith("shared_expert.")}  # Mixtral has none
    torch.testing.assert_close(moe(x, w, cfg[3], **MIXTRAL), hf_mixtral_moe(w, cfg[3])(x), **TOL)


def test_configs_leave_some_experts_empty():
    """the cases above really include idle experts (the gather/scatter path that skips them)."""
    empty = 0
    for cfg in CONFIGS:
        w, x = case(*cfg)
        idx, _, _ = route(x, w["router_DE"], cfg[3])
        empty += int((tokens_per_expert(idx, cfg[2]) == 0).sum())
    assert empty >= 3


def test_conventions_differ():
    """input vs output scaling and sigmoid vs softmax are different functions: the checks above can fail."""
    w, x = case(32, 24, 8, 2, False, 9)
    hf = hf_mixtral_moe(w, 2)(x)
    assert (moe(x, w, 2, gating="softmax", renormalize=True, scale="input") - hf).abs().max() > 1e-3
    assert (moe(x, w, 2) - meta_moe(w, 2)(x)).abs().max() < 1e-5
    assert (moe(x, w, 2, scale="output") - meta_moe(w, 2)(x)).abs().max() > 1e-3
    assert (moe(x, w, 1) - meta_moe(w, 2)(x)).abs().max() > 1e-3


def test_all_experts_with_unit_gates_is_a_dense_swiglu():
    """k = E, every gate 1: the experts are slices of one dense SwiGLU's hidden units."""
    w, x = case(16, 8, 4, 4, False, 6)
    idx, gate, _ = route(x, w["router_DE"], 4)
    from helpers.moe import combine
    out = combine(x, w, idx, torch.ones_like(gate))
    cat = lambda k, d: torch.cat(list(w[k]), dim=d)        # [16, 32] / [32, 16]
    dense = (torch.nn.functional.silu(x @ cat("experts.w1", 1)) * (x @ cat("experts.w3", 1))) @ cat("experts.w2", 0)
    torch.testing.assert_close(out, dense, **TOL)


def test_load_balancing_loss_matches_hf():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    w, x = case(32, 24, 8, 2, False, 40)
    idx, _, logits = route(x, w["router_DE"], 2, gating="softmax")
    ours = load_balancing_loss(logits, idx, 8)
    torch.testing.assert_close(ours, load_balancing_loss_func((logits,), 8, 2), **TOL)
    uniform = load_balancing_loss(torch.zeros(8, 4), torch.arange(8).view(4, 2) % 4, 4)
    torch.testing.assert_close(uniform, torch.tensor(2.0))  # = k when perfectly balanced


@pytest.mark.parametrize("kw, match", [(dict(top_k=0), "top_k=0"), (dict(top_k=9), "top_k=9"),
                                       (dict(top_k=2, gating="relu"), "gating='relu'"),
                                       (dict(top_k=2, scale="both"), "scale='both'")])
def test_bad_options_get_one_clear_error(kw, match):
    w, x = case(16, 8, 8, 2, False, 4)
    with pytest.raises(MoEError, match=match):
        moe(x, w, **kw)


def test_bad_weights_get_one_clear_error():
    w, x = case(16, 8, 8, 2, False, 4)
    with pytest.raises(MoEError, match="router_DE"):
        moe(x, {k: v for k, v in w.items() if k != "router_DE"}, 2)
    with pytest.raises(MoEError, match=r"experts.w2 has shape \(8, 16, 8\)"):
        moe(x, w | {"experts.w2": w["experts.w2"].transpose(1, 2)}, 2)
