"""Peak memory (RssAnon) of a GGUF model in our forward: an 8B-shaped Q4_K_M-like file and the real SmolLM2.

    python bench/gguf_8b.py                       # writes a 4.9 GB file to a temp dir, deletes it afterwards
    python bench/gguf_8b.py --decode 1 --tmp /tmp

The 8B file has Llama 3 8B's shapes (dim 4096, 32 layers, 32/8 heads, hidden 14336, vocab 128256) and random
blocks: Q4_K for most matrices, Q6_K for output, wv and w2 (as llama.cpp's Q4_K_M does). Each measurement runs
in its own process (a child of this script), so one peak never includes another's: load, a 17-token forward
with a KV cache, then --decode one-token steps. Writing the file happens in a third process. Goal: <= 3 GiB for
the 8B, whose fp32 weights would be 32 GB. The mmap'd file's pages are RssFile, not RssAnon: the kernel can drop
them at any time, so they are reported but are not the goal.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.evaluate import cpu_name  # noqa: E402
from helpers.generate import KVCache  # noqa: E402
from helpers.gguf_write import random_tensors, write_gguf  # noqa: E402
from helpers.measure import PeakRss  # noqa: E402
from helpers.model import auto_fp32, forward  # noqa: E402
from helpers.model_dir import smollm2_path  # noqa: E402
from helpers.params import ModelArgs  # noqa: E402

LLAMA3_8B = ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                      ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0)
Q6 = ("output.weight", "attention.wv.weight", "feed_forward.w2.weight")
PROMPT = 17


def q4_k_m(key):
    return "Q6_K" if key.endswith(Q6) else "Q4_K"


def llama3_tokens():
    """(tokens, kv, what) of Llama 3's tokenizer for the file (helpers.tokenizer.llama3_gguf_vocab)."""
    try:
        from helpers.tokenizer import llama3_gguf_vocab
    except ImportError:
        return [f"<t{i}>" for i in range(LLAMA3_8B.vocab_size)], {}, "placeholder tokens only"
    tokens, merges, types = llama3_gguf_vocab()
    return tokens, {"tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
                    "tokenizer.ggml.pre": "llama-bpe"}, "Llama 3's tokens, merges and types"


def write(path):
    tokens, kv, what = llama3_tokens()
    t0 = time.perf_counter()
    write_gguf(path, LLAMA3_8B, random_tensors(LLAMA3_8B, q4_k_m), tokens, kv=kv)
    return {"file_bytes": Path(path).stat().st_size, "tokenizer": what,
            "write_s": round(time.perf_counter() - t0, 1)}


def measure(path, decode, fast):
    """peak RssAnon of load + a PROMPT-token forward + decode steps, in this process."""
    ids = [(i * 7919) % 1000 + 10 for i in range(PROMPT)]
    with PeakRss() as peak:
        t0 = time.perf_counter()
        weights, args = load_checkpoint(path)
        weights = auto_fp32(weights) if fast else weights
        t1 = time.perf_counter()
        cache = KVCache(args, PROMPT + decode)
        logits = forward(weights, args, ids, cache, 0, last_only=True)
        t2 = time.perf_counter()
        for pos in range(PROMPT, PROMPT + decode):
            logits = forward(weights, args, [int(logits[-1].argmax())], cache, pos, last_only=True)
        t3 = time.perf_counter()
    r = peak.report()
    return {"file": Path(path).name, "auto_fp32": fast, "peak_rss_anon_gib": round(r["peak_rss_anon"] / 2**30, 3),
            "peak_rss_file_gib": round(r["peak_rss_file"] / 2**30, 3), "load_s": round(t1 - t0, 1),
            "forward_s": round(t2 - t1, 1), "decode_s_per_token": round((t3 - t2) / max(decode, 1), 1)}


def child(*argv):
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decode", type=int, default=2, help="one-token decode steps after the prompt")
    ap.add_argument("--tmp", default=None, help="where the temp dir for the 8B file goes (default: the system's)")
    ap.add_argument("--write", help=argparse.SUPPRESS)          # child: write the 8B file here
    ap.add_argument("--measure", help=argparse.SUPPRESS)        # child: measure this file
    ap.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.write or a.measure:
        print(json.dumps(write(a.write) if a.write else measure(a.measure, a.decode, a.fast)))
        return
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}; command: python bench/gguf_8b.py --decode {a.decode}")
    with tempfile.TemporaryDirectory(dir=a.tmp, prefix="gguf8b-") as d:   # removed on exit, even on errors
        path = Path(d) / "llama3-8b-shaped.Q4_K_M.gguf"
        print(json.dumps(child("--write", str(path))), flush=True)
        print(json.dumps(child("--measure", str(path), "--decode", str(a.decode))), flush=True)
    small = str(smollm2_path())
    print(json.dumps(child("--measure", small, "--decode", str(a.decode))), flush=True)
    print(json.dumps(child("--measure", small, "--decode", str(a.decode), "--fast")), flush=True)


if __name__ == "__main__":
    main()
