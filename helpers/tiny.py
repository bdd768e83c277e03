"""The model helpers.train trains: Llama 3 with compact embedding tables, its loss on held-out windows, and
the bigram baseline of the training log.

Only the ids that occur in the training plays get rows of their own: rarer and unseen ids share one learned
input row and one learned output row, so the saved 128256-row tables are exact and the softmax over the full
vocabulary equals the compact one with one extra "rare" class whose logit is shifted by log(number of rare ids).
Training uses fused ops (scaled_dot_product_attention); the by-hand path in helpers/model.py is for inference.
"""
import math

import torch
import torch.nn.functional as F

from helpers.transformer import apply_rope, rope_rotations

COPY_MIN_COUNT = 10  # copy rows use ids seen at least this often (5,000-odd of them), specials excluded


class Vocab:
    """full id <-> compact index; compact index len(ids) is the shared rare class."""

    def __init__(self, train_ids, vocab_size, min_count):
        counts = torch.bincount(train_ids, minlength=vocab_size)
        self.ids = torch.nonzero(counts >= min_count).flatten()        # [n_kept]
        n_common = int((counts >= COPY_MIN_COUNT).sum())
        self.by_count = torch.argsort(counts, descending=True, stable=True)[:n_common]  # copy ids, most frequent first
        self.rare = len(self.ids)
        self.n_rare_ids = vocab_size - len(self.ids)
        self.to_compact = torch.full((vocab_size,), self.rare, dtype=torch.long)
        self.to_compact[self.ids] = torch.arange(len(self.ids))


class TinyLlama(torch.nn.Module):
    """Llama 3 with compact embedding tables; same layout (wq rows = heads x head_dim, RoPE pairs) as Meta."""

    def __init__(self, args, vocab, dropout=0.0):
        super().__init__()
        self.args, self.vocab, self.dropout = args, vocab, dropout
        n, d, hd = vocab.rare + 1, args.dim, args.head_dim
        P = lambda *s, std=0.02: torch.nn.Parameter(torch.randn(*s) * std)
        self.tok_embeddings = P(n, d)
        self.output = P(n, d)
        res_std = 0.02 / math.sqrt(2 * args.n_layers)
        self.layers = torch.nn.ModuleList()
        for _ in range(args.n_layers):
            m = torch.nn.ParameterDict(dict(
                wq=P(args.n_heads * hd, d), wk=P(args.n_kv_heads * hd, d), wv=P(args.n_kv_heads * hd, d),
                wo=P(d, args.n_heads * hd, std=res_std), w1=P(args.hidden_dim, d), w3=P(args.hidden_dim, d),
                w2=P(d, args.hidden_dim, std=res_std),
                attention_norm=torch.nn.Parameter(torch.ones(d)), ffn_norm=torch.nn.Parameter(torch.ones(d))))
            self.layers.append(m)
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.rare_bias = math.log(vocab.n_rare_ids)  # the rare row stands for this many ids
        self.register_buffer("bias", torch.zeros(n), persistent=False)  # one addmm instead of a copy
        self.bias[-1] = self.rare_bias

    def forward(self, idx, cols=None):  # idx [B, T] compact; cols: score only these output rows (copy warm-up)
        a, (B, T) = self.args, idx.shape
        hd, rot = a.head_dim, rope_rotations(a, torch.arange(T)).to(idx.device)  # [T, hd/2]
        rotate = lambda x: apply_rope(x, rot)                                 # [B, T, H, hd] broadcasts

        drop = lambda t: F.dropout(t, self.dropout, self.training) if self.dropout else t
        h = drop(self.tok_embeddings[idx])
        for m in self.layers:
            x = F.rms_norm(h, (a.dim,), m["attention_norm"], a.norm_eps)
            q = rotate((x @ m["wq"].T).view(B, T, a.n_heads, hd)).transpose(1, 2)
            k = rotate((x @ m["wk"].T).view(B, T, a.n_kv_heads, hd)).transpose(1, 2)
            v = (x @ m["wv"].T).view(B, T, a.n_kv_heads, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            h = h + drop(o.transpose(1, 2).reshape(B, T, a.dim) @ m["wo"].T)
            x = F.rms_norm(h, (a.dim,), m["ffn_norm"], a.norm_eps)
            h = h + drop((F.silu(x @ m["w1"].T) * (x @ m["w3"].T)) @ m["w2"].T)
        h = F.rms_norm(h, (a.dim,), self.norm, a.norm_eps)
        return F.linear(h, self.output, self.bias) if cols is None else h @ self.output[cols].T

    def to_meta(self, dtype=torch.bfloat16):
        """Full 128256-row Meta state dict: kept ids get their rows, every other id the shared rare row."""
        v, a = self.vocab, self.args
        full = lambda t: t[-1].expand(a.vocab_size, a.dim).clone().index_copy_(0, v.ids, t[:-1])
        sd = {"tok_embeddings.weight": full(self.tok_embeddings.detach().cpu())}
        for i, m in enumerate(self.layers):
            for k in ("wq", "wk", "wv", "wo"):
                sd[f"layers.{i}.attention.{k}.weight"] = m[k].detach().cpu()
            for k in ("w1", "w2", "w3"):
                sd[f"layers.{i}.feed_forward.{k}.weight"] = m[k].detach().cpu()
            sd[f"layers.{i}.attention_norm.weight"] = m["attention_norm"].detach().cpu()
            sd[f"layers.{i}.ffn_norm.weight"] = m["ffn_norm"].detach().cpu()
        sd["norm.weight"] = self.norm.detach().cpu()
        sd["output.weight"] = full(self.output.detach().cpu())
        return {k: t.to(dtype).contiguous() for k, t in sd.items()}

    @torch.no_grad()
    def load_meta(self, weights):
        """Start from a saved Meta checkpoint of the same config (to continue a run)."""
        v = self.vocab
        rare_id = int(torch.nonzero(v.to_compact == v.rare)[0])
        for name, p in (("tok_embeddings.weight", self.tok_embeddings), ("output.weight", self.output)):
            w = weights[name].float()
            p.copy_(torch.cat([w[v.ids], w[rare_id:rare_id + 1]]))
        for i, m in enumerate(self.layers):
            for k in ("wq", "wk", "wv", "wo"):
                m[k].copy_(weights[f"layers.{i}.attention.{k}.weight"].float())
            for k in ("w1", "w2", "w3"):
                m[k].copy_(weights[f"layers.{i}.feed_forward.{k}.weight"].float())
            m["attention_norm"].copy_(weights[f"layers.{i}.attention_norm.weight"].float())
            m["ffn_norm"].copy_(weights[f"layers.{i}.ffn_norm.weight"].float())
        self.norm.copy_(weights["norm.weight"].float())

    def round_to(self, dtype=torch.bfloat16):
        """round every parameter through dtype, so evaluation sees the weights that ship."""
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(p.to(dtype).float())


@torch.no_grad()
def evaluate(model, stream, seq_len, max_windows=None, batch=16):
    """mean next-token loss (nats) over non-overlapping seq_len windows of a compact stream."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    n = n if max_windows is None else min(n, max_windows)
    x = stream[:n * seq_len].view(n, seq_len)
    y = stream[1:n * seq_len + 1].view(n, seq_len)
    dev = next(model.parameters()).device
    total = 0.0
    for i in range(0, n, batch):
        logits = model(x[i:i + batch].to(dev))
        total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch].to(dev).flatten(), reduction="sum").item()
    model.train()
    return total / (n * seq_len)


def bigram_baseline(train, val, vocab_size, lams=(0.5, 0.6, 0.7, 0.8, 0.9)):
    """interpolated bigram (add-one unigram backoff) fit on train, scored on val: {lambda: nats/token}."""
    uni = (torch.bincount(train, minlength=vocab_size).double() + 1) / (len(train) + vocab_size)
    pair = train[:-1] * vocab_size + train[1:]
    keys, counts = torch.unique(pair, return_counts=True)
    ctx = torch.bincount(train[:-1], minlength=vocab_size).double()
    q = val[:-1] * vocab_size + val[1:]
    pos = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    c_pair = torch.where(keys[pos] == q, counts[pos], 0).double()
    c_ctx = ctx[val[:-1]]
    p_big = torch.where(c_ctx > 0, c_pair / c_ctx.clamp(min=1), 0.0)
    out = {}
    for lam in lams:
        lam_eff = torch.where(c_ctx > 0, lam, 0.0)
        out[lam] = (-torch.log(lam_eff * p_big + (1 - lam_eff) * uni[val[1:]])).mean().item()
    return out
