"""Greedy tokens/s: helpers.model.generate vs Hugging Face transformers on the same checkpoint.

    python bench/generate.py                      # default model, 128 new tokens
    python bench/generate.py --model-dir DIR --new-tokens 64 --threads 1

Both sides start from the same Meta checkpoint (converted to HF in memory by helpers.hf), produce the same greedy
tokens (asserted), and are timed once each after one short warm-up. Prints tokens/s and the ratio.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.demo import demo_prompt  # noqa: E402
from helpers.model import DEVICE, generate  # noqa: E402
from helpers.reference import hf_model  # noqa: E402
from helpers.tokenizer import load_tokenizer  # noqa: E402


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    """(result, wall seconds, CPU seconds of this process): CPU time is what a busy machine distorts least."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - t0, time.process_time() - c0


def time_ours(weights, args, tok, ids, n, stop, fp32_copy="auto"):
    out = []
    _, wall, cpu = timed(lambda: generate(weights, args, tok, ids, n, stop_tokens=stop, progress=False,
                                          on_token=out.append, fp32_copy=fp32_copy))
    return out, wall, cpu


@torch.inference_mode()
def time_hf(model, ids, n, stop):
    x = torch.tensor([ids], device=DEVICE)
    y, wall, cpu = timed(lambda: model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                                do_sample=False, eos_token_id=sorted(stop),
                                                pad_token_id=sorted(stop)[0]))
    return [int(i) for i in y[0, len(ids):] if int(i) not in stop], wall, cpu


def agree(a, b):
    """length of the common prefix of two token lists."""
    return next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="Meta checkpoint dir (default: LLAMA3_DIR or assets/llama3-tiny)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    weights, args = load_checkpoint(a.model_dir)
    tok = load_tokenizer(a.model_dir)
    ids = tok.encode(demo_prompt(args, weights))
    stop = set(tok.stop_tokens)
    hf32, hf16 = (hf_model(weights, args, dtype, attn_implementation="sdpa").to(DEVICE)  # HF's default attention
                  for dtype in (torch.float32, torch.bfloat16))
    runs = {  # name -> function returning (tokens, seconds)
        "ours: generate(fp32_copy=False), upcast per use": lambda n: time_ours(weights, args, tok, ids, n, stop, False),
        "ours: generate() default (fp32 copy if < 1 GiB)": lambda n: time_ours(weights, args, tok, ids, n, stop),
        "transformers generate(), float32": lambda n: time_hf(hf32, ids, n, stop),
        "transformers generate(), bfloat16": lambda n: time_hf(hf16, ids, n, stop),
    }
    for run in runs.values():  # warm-up: page faults, allocator growth, kernel choice
        run(4)
    got = {name: run(a.new_tokens) for name, run in runs.items()}  # one timed run each
    (ours, *_), (ours32, *_), (theirs, *_), (theirs16, *_) = got.values()
    assert ours == ours32, "the fp32 copy changed the greedy tokens"
    ours = ours32
    assert ours == theirs, f"greedy tokens differ from transformers float32 from step {agree(ours, theirs)}"
    rate = {name: (len(t) / wall, len(t) / cpu) for name, (t, wall, cpu) in got.items()}
    print(f"model: dim={args.dim} n_layers={args.n_layers} n_heads={args.n_heads} n_kv_heads={args.n_kv_heads} "
          f"vocab={args.vocab_size}; HF model via helpers.reference.hf_model")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {DEVICE}, torch "
          f"{torch.__version__}; prompt {len(ids)} tokens, {len(ours)} new tokens")
    print(f"ours == transformers float32 token for token: {tok.decode(ours)[:70]!r}")
    print(f"transformers bfloat16 (bf16 arithmetic) agrees for the first {agree(ours, theirs16)} of {len(ours)}")
    print(f"  {'tokens/s':48s} {'wall':>8s} {'CPU time':>9s}")
    for name, (w, c) in rate.items():
        print(f"  {name:48s} {w:8.1f} {c:9.1f}")
    r = list(rate.values())
    for k, clock in enumerate(("wall", "CPU time")):
        print(f"ratio ours/transformers float32 ({clock}): {r[1][k] / r[2][k]:.2f}x default generate(), "
              f"{r[0][k] / r[2][k]:.2f}x with fp32_copy=False")


if __name__ == "__main__":
    main()
