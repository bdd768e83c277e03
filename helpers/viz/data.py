"""The numbers behind the pictures of notebook 10: attention and residuals of a forward pass (collect, Trace),
per-head statistics, the logit lens, token labels. Tensors on the CPU, no matplotlib: tested without pixels.

Everything is sized from `args` and tensor shapes, so it runs on any Llama 3 checkpoint. Attention and
residuals come from helpers.transformer (forward(record=...) or its layer()), never a second implementation.
"""
import torch

from helpers.transformer import (DEVICE, RECORD_LIMIT, check_tokens, embed, forward, fp32, linear, nbytes,
                                 record_bytes, rms_norm, rope_rotations)
from helpers.transformer import layer as model_layer  # Trace.layer(i) below is a method; this is the block itself

LABEL_CHARS = 12         # longer token labels are cut with an ellipsis
SHORT_SPECIAL = {"<|begin_of_text|>": "<bos>", "<|end_of_text|>": "<eos>", "<|eot_id|>": "<eot>"}
STATS = ("bos", "prev", "self", "entropy")


# ---------------------------------------------------------------- labels

def token_labels(tokenizer, ids, numbered=False):
    """Readable tick labels: leading spaces shown as ␣ (' Romeo' -> '␣Romeo', so word starts are visible),
    newlines/tabs escaped, long specials shortened."""
    out = []
    for n, i in enumerate(ids):
        s = tokenizer.piece(i)
        s = SHORT_SPECIAL.get(s, s).replace("\n", "\\n").replace("\t", "\\t")
        lead = len(s) - len(s.lstrip(" "))
        s = "␣" * lead + s[lead:]
        if len(s) > LABEL_CHARS:
            s = s[:LABEL_CHARS - 1] + "…"
        out.append(f"{n}:{s}" if numbered else s)
    return out


def layer_labels(n_rows):
    """Row names for a residual stack [n_layers+1, ...]: the embedding, then the output of each layer."""
    return ["embed"] + [f"layer {i}" for i in range(n_rows - 1)]


# ---------------------------------------------------------------- collect attention and residuals

def collect_bytes(args, T):
    """Peak bytes of collect() on T tokens: the record, half of it again while stacking, logits twice."""
    return int(1.5 * record_bytes(args, T)) + 2 * 4 * T * args.vocab_size


def too_big(what, need, max_bytes, fix="look at fewer layers (Trace(...).layer(i))"):
    return ValueError(f"{what} needs about {nbytes(need)}, over max_bytes={nbytes(max_bytes)}: use a shorter "
                      f"prompt, {fix}, or raise max_bytes")


@torch.inference_mode()
def collect(weights, args, tokens, progress=False, max_bytes=RECORD_LIMIT):
    """One forward pass with record=..., stacked on the CPU; refused up front above max_bytes (collect_bytes).

    Returns dict: scores, attn [n_layers, n_heads, T, T] (before mask / after softmax),
    resid [n_layers+1, T, dim] (resid[0] = embeddings, resid[i+1] = output of layer i), logits [T, vocab].
    """
    tokens = check_tokens(args, tokens)
    if (need := collect_bytes(args, len(tokens))) > max_bytes:
        raise too_big(f"collect on {len(tokens)} tokens (attention {args.n_layers} layers x {args.n_heads} heads x "
                      f"T^2, logits T x {args.vocab_size})", need, max_bytes)
    record = {}
    logits = forward(weights, args, tokens, record=record, progress=progress, record_max_bytes=max_bytes)
    resid = [embed(weights, tokens)] + record.pop("resid")
    return {"scores": torch.stack(record.pop("scores")).cpu(),   # [L, H, T, T]; pop: one list freed at a time
            "attn": torch.stack(record.pop("attn")).cpu(),       # [L, H, T, T]
            "resid": torch.stack(resid).cpu(),                   # [L+1, T, dim]
            "logits": logits.cpu()}


class Trace:
    """One prompt run lazily, a layer at a time: trace.layer(i) computes layers <= i only, once.

    For 8B-size models, where looking at layer 3 should not cost all 32 layers. Residuals of every layer
    run so far are kept (tiny: [T, dim] each); attention is recorded only for the layers asked for.
    Uses helpers.model.layer, the same block that forward() runs. The attention kept (all recorded layers
    together) is capped at max_bytes.
    """

    def __init__(self, weights, args, tokens, max_bytes=RECORD_LIMIT):
        self.weights, self.args, self.max_bytes = weights, args, max_bytes
        self.tokens = check_tokens(args, tokens)
        if len(self.tokens) > args.max_seq_len:
            raise ValueError(f"{len(self.tokens)} tokens exceed max_seq_len={args.max_seq_len}; shorten the prompt")
        with torch.inference_mode():
            self.rot = rope_rotations(args, torch.arange(len(self.tokens)))
            self.resid = [embed(weights, self.tokens)]   # resid[i] enters layer i
        self.records = {}

    @property
    def n_done(self):
        """how many layers have been run so far."""
        return len(self.resid) - 1

    def _check_layer(self, i):
        if not 0 <= i < self.args.n_layers:
            n = self.args.n_layers
            raise ValueError(f"layer {i} does not exist: this model has n_layers={n} (0..{n - 1})")

    @torch.inference_mode()
    def run_to(self, i, progress=False):
        """Run layers up to and including i (no recording); return resid[:i+2]."""
        self._check_layer(i)
        todo = range(self.n_done, i + 1)
        if progress and len(todo):
            from tqdm.auto import tqdm
            todo = tqdm(todo, desc="layers", leave=False)
        for j in todo:
            self.resid.append(model_layer(self.resid[j], self.weights, self.args, j, self.rot))
        return self.resid[:i + 2]

    @torch.inference_mode()
    def layer(self, i, progress=False):
        """dict(scores, attn [n_heads, T, T], resid_in, resid_out [T, dim]) of layer i."""
        self._check_layer(i)
        if i not in self.records:
            T = len(self.tokens)
            need = (len(self.records) + 1) * 2 * 4 * self.args.n_heads * T * T   # scores + attn of each layer kept
            if need > self.max_bytes:
                raise too_big(f"keeping attention of {len(self.records) + 1} layer(s) on {T} tokens "
                              f"({self.args.n_heads} heads x T^2 each)", need, self.max_bytes,
                              "a new Trace for other layers")
            if i > 0:
                self.run_to(i - 1, progress)
            rec = {}
            out = model_layer(self.resid[i], self.weights, self.args, i, self.rot, record=rec)
            if self.n_done == i:
                self.resid.append(out)
            self.records[i] = {"scores": rec["scores"][0].cpu(), "attn": rec["attn"][0].cpu(),
                               "resid_in": self.resid[i].cpu(), "resid_out": out.cpu()}
        return self.records[i]


# ---------------------------------------------------------------- masks and per-head statistics

def blocked(T, S=None):
    """bool [T, S]: True where causal masking hides key s from query t (queries are the last T of S)."""
    S = T if S is None else S
    q = torch.arange(T)[:, None] + (S - T)
    return torch.arange(S)[None, :] > q


def head_stats(attn):
    """Per-head statistics of attention probabilities attn [..., T, S] (e.g. [n_heads, T, T] or
    [n_layers, n_heads, T, T]), averaged over query positions 1.. (position 0 can only see itself).

    bos:     mass on key position 0 (the <|begin_of_text|> token when the prompt starts with it)
    prev:    mass on the previous token
    self:    mass on the query's own position
    entropy: row entropy / its maximum log(#visible keys): 0 = one key, 1 = uniform over all visible
    entropy_nats: the same without dividing, in nats
    Each is a tensor of shape attn.shape[:-2]; all but entropy_nats lie in [0, 1]. (For query 1 the
    first token is also the previous one, so it counts for both bos and prev.)
    """
    attn = attn.float().cpu()
    T, S = attn.shape[-2:]
    if T < 2:
        raise ValueError(f"head_stats needs at least 2 query positions, got T={T}: use a longer prompt")
    pos = torch.arange(T) + (S - T)                  # absolute position of each query
    rows = attn[..., 1:, :]                          # [..., T-1, S]
    p = pos[1:]
    ent = -torch.special.xlogy(rows, rows).sum(-1)   # [..., T-1]
    return {"bos": rows[..., 0].mean(-1),
            "prev": rows[..., torch.arange(T - 1), p - 1].mean(-1),
            "self": rows[..., torch.arange(T - 1), p].mean(-1),
            "entropy": (ent / torch.log(p + 1.0)).mean(-1),
            "entropy_nats": ent.mean(-1)}


def induction_stat(attn, ids):
    """Mass a query puts on the token right after an earlier copy of itself (the 'induction' pattern).

    attn [..., T, T], ids [T]; averaged over queries whose token occurred before; nan if none did.
    """
    ids = torch.as_tensor(list(ids))
    T = attn.shape[-1]
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    copy = (ids[:, None] == ids[None, :]) & (j < t - 1)  # [T, T]: token j is an earlier copy of query t
    target = torch.zeros(T, T, dtype=torch.bool)
    target[:, 1:] = copy[:, :-1]                          # look at j+1, what followed the copy
    has = target.any(-1)
    if not has.any():
        return torch.full(attn.shape[:-2], float("nan"))
    mass = (attn.float().cpu() * target).sum(-1)        # [..., T]
    return mass[..., has].mean(-1)


def top_heads(stats, key, k=5):
    """The k (layer, head, value) with the highest stats[key] [n_layers, n_heads]."""
    v = stats[key]
    vals, idx = v.flatten().topk(min(k, v.numel()))
    return [(int(i) // v.shape[1], int(i) % v.shape[1], round(float(x), 3)) for x, i in zip(vals, idx)]


def head_types(stats, threshold=0.5, spread=0.8):
    """A name for every head [n_layers, n_heads] -> list of rows of labels.

    'bos' / 'prev' / 'self' when that mass is above threshold (the largest wins), 'spread' when the
    normalised entropy is above `spread` (close to uniform over what it may see), else 'mixed'.
    """
    L, H = stats["bos"].shape
    names = []
    for i in range(L):
        row = []
        for h in range(H):
            key = max(("bos", "prev", "self"), key=lambda s: float(stats[s][i, h]))
            if stats[key][i, h] > threshold:
                row.append(key)
            elif stats["entropy"][i, h] > spread:
                row.append("spread")
            else:
                row.append("mixed")
        names.append(row)
    return names


def stats_table(stats, keys=STATS, heads=None):
    """Text table, one line per (layer, head) (all heads unless `heads` lists some), values rounded."""
    L, H = stats["bos"].shape
    heads = heads if heads is not None else [(i, h) for i in range(L) for h in range(H)]
    lines = ["layer head " + " ".join(f"{k:>8}" for k in keys)]
    for i, h in heads:
        lines.append(f"{i:5d} {h:4d} " + " ".join(f"{float(stats[k][i, h]):8.3f}" for k in keys))
    return "\n".join(lines)


# ---------------------------------------------------------------- logit lens

@torch.inference_mode()
def logit_lens(weights, args, resid, rows_per_call=1024, progress=False):
    """Stop the model early: final norm + output on every residual resid [R, T, dim].

    Returns dict (each [R, T]): ids = top-1 token, probs = its probability, final_prob = probability
    given to the token that the last row predicts (the model's own prediction when resid is complete).
    """
    R, T, dim = resid.shape
    norm = fp32(weights, "norm.weight")

    def logits(x):                                        # [rows, dim] -> [rows, vocab], as forward() ends
        return linear(rms_norm(x.to(DEVICE), norm, args.norm_eps), weights, "output.weight")

    final = logits(resid[-1]).argmax(-1).cpu()            # [T]
    flat = resid.reshape(R * T, dim)                      # [R*T, dim]
    want = final.repeat(R)                                # [R*T]: row r*T+t wants final[t]
    ids, probs, fin = [], [], []
    chunks = range(0, R * T, rows_per_call)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="logit lens", leave=False)
    for a in chunks:
        lg = logits(flat[a:a + rows_per_call]).cpu()
        lp = torch.log_softmax(lg, dim=-1)
        top = lg.argmax(-1)
        ids.append(top)
        probs.append(lp.gather(-1, top[:, None])[:, 0].exp())
        fin.append(lp.gather(-1, want[a:a + rows_per_call, None])[:, 0].exp())
    return {"ids": torch.cat(ids).view(R, T), "probs": torch.cat(probs).view(R, T),
            "final_prob": torch.cat(fin).view(R, T)}


def lens_table(tokenizer, lens, position=-1, row_names=None):
    """Text table of the logit lens at one position: per row the top token, its prob, p(final).

    Two significant digits: an early row's probability moves by ~1e-5 of itself between CPU kernel families,
    and a third digit flipped on AVX-512 (helpers/perturb.py finds such digits)."""
    R = lens["ids"].shape[0]
    row_names = row_names or layer_labels(R)
    lines = [f"{'':>9} {'top-1':>14} {'prob':>9} {'p(final)':>9}"]
    for r in range(R):
        tid = int(lens["ids"][r, position])
        lines.append(f"{row_names[r]:>9} {tokenizer.piece(tid)!r:>14} {float(lens['probs'][r, position]):9.2g} "
                     f"{float(lens['final_prob'][r, position]):9.2g}")
    return "\n".join(lines)
