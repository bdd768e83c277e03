"""Mixture of Experts by hand: a router sends each token to its top-k SwiGLU experts (notebook 12).

The weights dict is keyed like Meta's llama_models.llama4.moe.MoE state dict, so it loads there as it is:
    router_DE [dim, E]                       one logit per expert: x @ router_DE
    experts.w1, experts.w3 [E, dim, F]       each expert's SwiGLU, stored input-major (x @ w)
    experts.w2 [E, F, dim]
    shared_expert.w1.weight, .w3.weight [F, dim], shared_expert.w2.weight [dim, F]   (optional)
Two routing conventions:
    Llama 4:  gating="sigmoid", scale="input":  top-k of the raw logits, sigmoid of each chosen logit,
              which multiplies the expert's *input*; plus a shared expert every token goes through.
    Mixtral:  gating="softmax", renormalize=True, scale="output": softmax over all experts, top-k,
              the k weights rescaled to sum to 1, each multiplying its expert's *output*.
"""
import math

import torch
import torch.nn.functional as F

from helpers.model import apply_rope, rope_rotations
from helpers.tiny import TinyLlama


class MoEError(ValueError):
    pass


def swiglu(x, w1, w3, w2):
    """one expert in Meta's [in, out] layout: x [n, dim] -> [n, dim]."""
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def route(x, router_DE, top_k, gating="sigmoid", renormalize=False):
    """-> (idx [T, k] chosen experts, gate [T, k] their weights, logits [T, E])."""
    E = router_DE.shape[1]
    if not 1 <= top_k <= E:
        raise MoEError(f"top_k={top_k} must be between 1 and the number of experts ({E})")
    logits = x @ router_DE                                   # [T, E]
    if gating == "softmax":
        gate, idx = logits.softmax(-1).topk(top_k, dim=-1)   # [T, k]
    elif gating == "sigmoid":
        top, idx = logits.topk(top_k, dim=-1)                # [T, k]
        gate = torch.sigmoid(top)
    else:
        raise MoEError(f"gating={gating!r}: use 'softmax' (Mixtral) or 'sigmoid' (Llama 4)")
    if renormalize:
        gate = gate / gate.sum(-1, keepdim=True)             # the k weights sum to 1
    return idx, gate, logits


def combine(x, w, idx, gate, scale="input"):
    """each expert runs on only its tokens (gather), weighted, added back at their rows (scatter)."""
    if scale not in ("input", "output"):
        raise MoEError(f"scale={scale!r}: use 'input' (Llama 4) or 'output' (Mixtral)")
    out = torch.zeros_like(x)                                # [T, dim]
    for e in range(w["experts.w1"].shape[0]):
        tok, slot = torch.where(idx == e)                    # [n_e] rows routed to e, and which of their k
        if len(tok) == 0:
            continue                                         # an idle expert costs nothing
        g = gate[tok, slot].unsqueeze(-1)                    # [n_e, 1]
        xe = x[tok]                                          # [n_e, dim] gather
        if scale == "input":
            y = swiglu(xe * g, w["experts.w1"][e], w["experts.w3"][e], w["experts.w2"][e])
        else:
            y = swiglu(xe, w["experts.w1"][e], w["experts.w3"][e], w["experts.w2"][e]) * g
        out = out.index_add(0, tok, y)                       # [T, dim] scatter-add
    return out


def shared_expert(x, w):
    """the always-on expert (Llama 4, DeepSeek); zeros when w has none."""
    if "shared_expert.w1.weight" not in w:
        return torch.zeros_like(x)
    p = "shared_expert."
    return swiglu(x, w[p + "w1.weight"].T, w[p + "w3.weight"].T, w[p + "w2.weight"].T)


def moe(x, w, top_k, gating="sigmoid", renormalize=False, scale="input"):
    """x [T, dim] -> [T, dim]. Defaults are Llama 4's; Mixtral: gating="softmax", renormalize=True, scale="output"."""
    check_weights(w, x.shape[-1])
    idx, gate, _ = route(x, w["router_DE"], top_k, gating, renormalize)
    return shared_expert(x, w) + combine(x, w, idx, gate, scale)


def check_weights(w, dim):
    need = ("router_DE", "experts.w1", "experts.w3", "experts.w2")
    if missing := [k for k in need if k not in w]:
        raise MoEError(f"MoE weights lack {missing}: expected keys {need} (+ optional shared_expert.*)")
    E, D, Fh = w["experts.w1"].shape
    want = {"router_DE": (dim, E), "experts.w1": (E, dim, Fh), "experts.w3": (E, dim, Fh), "experts.w2": (E, Fh, dim)}
    for k, s in want.items():
        if tuple(w[k].shape) != s:
            raise MoEError(f"{k} has shape {tuple(w[k].shape)}, expected {s} for dim={dim}, {E} experts of width {Fh}")


def tokens_per_expert(idx, n_experts):
    """[E] how many (token, slot) assignments each expert got."""
    return torch.bincount(idx.flatten(), minlength=n_experts)


def load_balancing_loss(logits, idx, n_experts):
    """Switch Transformer / Mixtral: E * sum_e f_e * P_e; f_e = share of tokens sent to e (sums to k),
    P_e = mean softmax probability of e. Equals k when both are uniform; grows as experts collapse."""
    f = tokens_per_expert(idx, n_experts).to(logits.dtype) / idx.shape[0]   # [E], no gradient
    P = logits.softmax(-1).mean(0)                                          # [E], carries the gradient
    return n_experts * (f * P).sum()


def random_moe_weights(dim, hidden, n_experts, shared=True, seed=0, std=None):
    """a random weights dict in the layout above (fp32)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda fan_in, *s: torch.randn(*s, generator=g) * (std or fan_in ** -0.5)
    w = {"router_DE": r(dim, dim, n_experts), "experts.w1": r(dim, n_experts, dim, hidden),
         "experts.w3": r(dim, n_experts, dim, hidden), "experts.w2": r(hidden, n_experts, hidden, dim)}
    if shared:
        w |= {"shared_expert.w1.weight": r(dim, hidden, dim), "shared_expert.w3.weight": r(dim, hidden, dim),
              "shared_expert.w2.weight": r(hidden, dim, hidden)}
    return w


# --- implementations this project did not write, holding the same weights ------------------------------

def meta_moe(w, top_k):
    """Meta's llama_models.llama4.moe.MoE (fp32, one-rank model parallel). It always has a shared expert:
    without one in w, its weights are zeros (whose SwiGLU output is exactly 0)."""
    from llama_models.llama4.args import MoEArgs
    from llama_models.llama4.moe import MoE
    from helpers.reference import model_parallel
    model_parallel()
    E, dim, Fh = w["experts.w1"].shape
    # MoE.__init__ derives F = int(2 * hidden_dim / 3) (then multiplier 1, multiple_of 1): pass 3F/2
    m = MoE(dim, 3 * Fh // 2 + (Fh % 2), 1.0, 1, MoEArgs(num_experts=E, top_k=top_k, auto_scale_F=False))
    sd = {k: v.float() for k, v in w.items()}
    for k in ("w1", "w3", "w2"):
        sd.setdefault(f"shared_expert.{k}.weight", torch.zeros_like(m.shared_expert.state_dict()[f"{k}.weight"]))
    m.load_state_dict(sd, strict=True)
    return lambda x: m(x[None])[0].detach()


def hf_mixtral_moe(w, top_k):
    """transformers' MixtralSparseMoeBlock (softmax, top-k, renormalised, output-scaled; no shared expert)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    E, dim, Fh = w["experts.w1"].shape
    m = MixtralSparseMoeBlock(MixtralConfig(hidden_size=dim, intermediate_size=Fh, num_local_experts=E,
                                            num_experts_per_tok=top_k, experts_implementation="eager")).eval()
    m.gate.weight.data = w["router_DE"].T.float().contiguous()                               # [E, dim]
    m.experts.gate_up_proj.data = torch.cat([w["experts.w1"], w["experts.w3"]], -1).transpose(1, 2).float()
    m.experts.down_proj.data = w["experts.w2"].transpose(1, 2).float().contiguous()           # [E, dim, F]
    return lambda x: m(x[None])[0].detach()


def hf_llama4_moe(w, top_k):
    """transformers' Llama4TextMoe (Llama 4's routing, with its shared expert)."""
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe
    E, dim, Fh = w["experts.w1"].shape
    m = Llama4TextMoe(Llama4TextConfig(hidden_size=dim, intermediate_size=Fh, num_local_experts=E,
                                       num_experts_per_tok=top_k)).eval()
    m.router.weight.data = w["router_DE"].T.float().contiguous()
    m.experts.gate_up_proj.data = torch.cat([w["experts.w1"], w["experts.w3"]], -1).float()  # [E, dim, 2F]
    m.experts.down_proj.data = w["experts.w2"].float().contiguous()
    s, p = m.shared_expert, "shared_expert."
    for lin, k in ((s.gate_proj, "w1"), (s.up_proj, "w3"), (s.down_proj, "w2")):
        lin.weight.data = w[p + k + ".weight"].float() if p + k + ".weight" in w else torch.zeros_like(lin.weight)
    return lambda x: m(x[None])[0].reshape(x.shape).detach()


# --- a trainable tiny MoE Llama (notebook 12's demo) -------------------------------------------------

class TinyMoE(TinyLlama):
    """helpers.tiny.TinyLlama with each FFN replaced by n_experts SwiGLU experts of width expert_hidden
    (route + combine above); each forward keeps every layer's (router logits, chosen experts) in .routing."""

    def __init__(self, args, vocab, n_experts, top_k, expert_hidden, gating="softmax", renormalize=True,
                 scale="output"):
        super().__init__(args, vocab)
        self.top_k, self.opts = top_k, dict(gating=gating, renormalize=renormalize)
        self.scale, self.routing = scale, []
        P = lambda *s, std=0.02: torch.nn.Parameter(torch.randn(*s) * std)
        res_std = 0.02 / math.sqrt(2 * args.n_layers)
        for m in self.layers:
            for k in ("w1", "w2", "w3"):
                del m[k]
            d, E, Fh = args.dim, n_experts, expert_hidden
            m.update(dict(router_DE=P(d, E), experts_w1=P(E, d, Fh), experts_w3=P(E, d, Fh),
                          experts_w2=P(E, Fh, d, std=res_std)))

    def forward(self, idx):                                               # idx [B, T] compact
        a, (B, T) = self.args, idx.shape
        hd, rot = a.head_dim, rope_rotations(a, torch.arange(T)).to(idx.device)
        h, self.routing = self.tok_embeddings[idx], []                    # [B, T, dim]
        for m in self.layers:
            x = F.rms_norm(h, (a.dim,), m["attention_norm"], a.norm_eps)
            q = apply_rope((x @ m["wq"].T).view(B, T, a.n_heads, hd), rot).transpose(1, 2)
            k = apply_rope((x @ m["wk"].T).view(B, T, a.n_kv_heads, hd), rot).transpose(1, 2)
            v = (x @ m["wv"].T).view(B, T, a.n_kv_heads, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            h = h + o.transpose(1, 2).reshape(B, T, a.dim) @ m["wo"].T    # [B, T, dim]
            x = F.rms_norm(h, (a.dim,), m["ffn_norm"], a.norm_eps).reshape(B * T, a.dim)  # [B*T, dim]
            w = {"experts." + k: m["experts_" + k] for k in ("w1", "w2", "w3")}
            i, g, logits = route(x, m["router_DE"], self.top_k, **self.opts)
            self.routing.append((logits, i))
            h = h + combine(x, w, i, g, self.scale).view(B, T, a.dim)     # [B, T, dim]
        logits = F.rms_norm(h, (a.dim,), self.norm, a.norm_eps) @ self.output.T
        return torch.cat([logits[..., :-1], logits[..., -1:] + self.rare_bias], dim=-1)

    def balance_loss(self):
        """load_balancing_loss of the last forward, averaged over layers."""
        E = self.layers[0]["router_DE"].shape[1]
        return sum(load_balancing_loss(lg, i, E) for lg, i in self.routing) / len(self.routing)
