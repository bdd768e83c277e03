"""The 8B on a modest CPU machine: memory and time of the by-hand forward pass, next to HF and the naive way.

    python -m bench.synthetic_checkpoint --preset llama3-8b --out /tmp/llama3-8b-synthetic
    python -m bench.scale --model-dir /tmp/llama3-8b-synthetic --cap 8G --parts probe,ours,hf,naive

Each part runs in its own subprocess so peaks do not mix, optionally inside a fresh memory cgroup with a
hard limit (--cap). Before a capped run the checkpoint is dropped from the page cache (fadvise DONTNEED),
so the run has to fault every weight in itself and its page cache is charged to, and limited by, its cgroup.

Parts:
  probe  allocate anonymous memory until killed: proves the cap is enforced
  ours   helpers.model.forward on the demo prompt (mmap'd bf16, one tensor upcast at a time, last_only),
         greedy decode with the KV cache (helpers.model.generate), and the bandwidth bounds of the same bytes
  ours_bf16  the same with precision="bf16" (the weight matmuls in bf16, fp32 accumulation; no upcast)
  ours_int8  the same on int8 weights (helpers.quant.int8_weights, in memory: every matrix but the embedding,
         one scale per row), each matmul PyTorch's int8 weight-only kernel on bf16 activations
  hf     transformers LlamaForCausalLM in bf16 on the same weights (helpers.reference.hf_model, assigned from
         the mmap: no copy except the wq/wk rows HF orders differently), forward + greedy decode
  naive  torch.load without mmap (every byte read into RAM), then every tensor upcast to fp32
Peak memory: RssAnon (anonymous: what the process owns; sampled every 5 ms by a thread), VmHWM (peak
resident incl. mmap'd file pages, which the kernel can drop and re-read), and the cgroup's max usage.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.files import write_json  # noqa: E402
from helpers.measure import (MemoryCgroup, PeakRss, cached_bytes, drop_cache, my_cgroup, parse_size,  # noqa: E402
                             proc_status, timed, warm_cache)

GiB = 2 ** 30


# ---- the parts (each runs in a child process) ---------------------------------------------------------

def bandwidth(weights, reps=3):
    """Lower bounds for one pass over the weights, in the blocks of rows helpers.model.linear uses:
    bf16->fp32 upcast of every tensor, a bf16 copy, and a 512 MiB memcpy between anonymous buffers."""
    import torch
    from helpers.model import CHUNK
    f32, b16 = torch.empty(CHUNK), torch.empty(CHUNK, dtype=torch.bfloat16)
    seen, blocks = set(), []
    for t in weights.values():
        if t.untyped_storage().data_ptr() in seen:
            continue                                          # a tied output is the embedding: read once
        seen.add(t.untyped_storage().data_ptr())
        flat = t.view(-1)
        blocks += [flat[r:r + CHUNK] for r in range(0, flat.numel(), CHUNK)]
    nbytes = sum(b.numel() * 2 for b in blocks)

    def upcast():
        for b in blocks:
            f32[:b.numel()].copy_(b)

    def copy16():
        for b in blocks:
            b16[:b.numel()].copy_(b)

    src = torch.ones(GiB // 4, dtype=torch.bfloat16)                    # 512 MiB
    dst = torch.empty_like(src)
    out = {"weight_bytes": nbytes}
    for name, fn in (("upcast_pass_s", upcast), ("copy_pass_s", copy16), ("memcpy_512mib_s", lambda: dst.copy_(src))):
        out[name] = round(min(timed(fn)[1] for _ in range(reps)), 3)
    out["memcpy_gbps"] = round(GiB / 2 / out["memcpy_512mib_s"] / 1e9, 2)    # bytes copied per second
    out["upcast_gbps"] = round(nbytes / out["upcast_pass_s"] / 1e9, 2)  # bf16 bytes read per second
    return out


def part_ours(a, peak, precision="fp32"):
    import torch
    from helpers import facts
    from helpers.checkpoint import load_checkpoint
    from helpers.model import forward, generate
    from helpers.tokenizer import load_tokenizer
    res = {}
    peak.stage = "load"
    (weights, args), res["load_s"] = timed(lambda: load_checkpoint(a.model_dir))
    tok = load_tokenizer(a.model_dir)
    int8 = precision == "int8"
    if int8:                                  # int8 weight-only (helpers.quant.int8_weights)
        from helpers.quant import int8_weights
        peak.stage = "quantize"
        weights, res["quantize_s"] = timed(lambda: int8_weights(weights))
        res["int8_matrix_bytes"] = sum(t.numel() * t.element_size() for n, t in weights.items()
                                       if t.dtype == torch.int8 or n.endswith("_scale"))
        precision = "bf16"                    # the kernel is fast on bf16 activations (fp32: 6x slower decode here)
    ids = facts.PROMPT_IDS
    peak.stage = "forward"
    with torch.inference_mode():
        for r in range(a.repeat):
            logits, s = timed(lambda: forward(weights, args, ids, last_only=True, progress=True, precision=precision))
            res.setdefault("forward_s", []).append(s)
    res["peak_rss_anon_forward"] = peak.peak_anon
    res["logits_finite"] = bool(logits.isfinite().all())
    torch.save(logits[-1].clone(), Path(a.result).with_suffix(".logits.pt"))
    if a.decode:
        peak.stage = "decode"
        stamps, toks = [], []

        def on_token(t):
            stamps.append(time.perf_counter())
            toks.append(t)
        t0 = time.perf_counter()
        generate(weights, args, tok, ids, a.decode + 1, on_token=on_token, progress=False, precision=precision)
        res["decode_tokens"] = toks
        res["prefill_s"] = round(stamps[0] - t0, 3)
        res["decode_s_per_token"] = [round(t1 - t0, 3) for t0, t1 in zip(stamps, stamps[1:])]
        res["peak_rss_anon_decode"] = peak.peak_anon
    if a.bandwidth and not int8:
        peak.stage = "bandwidth"
        res["bandwidth"] = bandwidth(weights)
    return res


def part_hf(a, peak):
    import torch
    from helpers import facts
    from helpers.checkpoint import load_checkpoint
    from helpers.reference import hf_model
    res = {}
    peak.stage = "load"
    t = time.perf_counter()
    weights, args = load_checkpoint(a.model_dir)
    # bf16 as stored, assigned from the mmap (no copy but wq/wk); sdpa, transformers' default attention
    model = hf_model(weights, args, dtype=weights["tok_embeddings.weight"].dtype, attn_implementation="sdpa")
    res["load_s"] = round(time.perf_counter() - t, 3)
    res["peak_rss_anon_load"] = proc_status()["RssAnon"]
    ids = torch.tensor([facts.PROMPT_IDS])
    peak.stage = "forward"
    with torch.inference_mode():
        for r in range(a.repeat):
            out, s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1))
            res.setdefault("forward_s", []).append(s)
        logits = out.logits[0, -1].float()
        res["peak_rss_anon_forward"] = peak.peak_anon
        torch.save(logits.clone(), Path(a.result).with_suffix(".logits.pt"))
        if a.decode:
            peak.stage = "decode"
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            res["prefill_s"] = round(time.perf_counter() - t0, 3)
            toks, steps = [], []
            for _ in range(a.decode):
                nxt = int(out.logits[0, -1].argmax())
                toks.append(nxt)
                t0 = time.perf_counter()
                out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
                steps.append(round(time.perf_counter() - t0, 3))
            res["decode_tokens"] = toks + [int(out.logits[0, -1].argmax())]
            res["decode_s_per_token"] = steps
            res["peak_rss_anon_decode"] = peak.peak_anon
    return res


def part_naive(a, peak):
    import torch
    path = Path(a.model_dir) / "consolidated.00.pth"
    res = {}
    peak.stage = "load bf16 into RAM"
    sd, res["load_s"] = timed(lambda: torch.load(path, map_location="cpu", weights_only=True))
    res["peak_rss_anon_after_load"] = peak.peak_anon
    peak.stage = "upcast all to fp32"
    t = time.perf_counter()
    for k in list(sd):
        sd[k] = sd[k].float()
    res["upcast_s"] = round(time.perf_counter() - t, 3)
    return res


def part_probe(a, peak):
    """Touch anonymous memory 256 MiB at a time up to --probe-gib: under a cap this must be killed."""
    import torch
    held = []
    for i in range(int(a.probe_gib * 4)):
        peak.stage = f"{(i + 1) / 4:.2f} GiB"
        held.append(torch.ones(GiB // 4, dtype=torch.uint8))
        peak.sample()
    return {"allocated_gib": len(held) / 4}


PARTS = {"probe": part_probe, "ours": part_ours, "ours_bf16": lambda a, peak: part_ours(a, peak, "bf16"),
         "ours_int8": lambda a, peak: part_ours(a, peak, "int8"), "hf": part_hf, "naive": part_naive}


def child(a):
    import torch
    res = {"part": a.child, "pid": os.getpid(), "cgroup": my_cgroup(), "threads": torch.get_num_threads()}
    with PeakRss(progress=a.progress) as peak:
        res |= PARTS[a.child](a, peak)
    res |= peak.report()
    Path(a.result).write_text(json.dumps(res))


# ---- the parent: cgroups, cold cache, subprocesses ----------------------------------------------------

def run_part(part, a, tmp, cap):
    result, progress = tmp / f"{part}.json", tmp / f"{part}.progress"
    for p in (result, progress, result.with_suffix(".logits.pt")):
        p.unlink(missing_ok=True)
    ckpt = Path(a.model_dir) / "consolidated.00.pth"
    if a.cold or cap:
        drop_cache(ckpt)
    elif part != "probe":
        warm_cache(ckpt)
    cmd = [sys.executable, "-m", "bench.scale", "--child", part, "--model-dir", a.model_dir,
           "--result", str(result), "--progress", str(progress), "--decode", str(a.decode),
           "--repeat", str(a.repeat), "--probe-gib", str(a.probe_gib)] + \
        (["--bandwidth"] if a.bandwidth else [])
    cached = cached_bytes(ckpt)
    cg = MemoryCgroup(cap, f"llama3-scale-{os.getpid()}-{part}") if cap else None
    print(f"== {part}: {' '.join(cmd[1:])}" + (f"  [cgroup {cg.dir}, limit {cap / GiB:g} GiB]" if cg else ""),
          file=sys.stderr, flush=True)
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, preexec_fn=cg.join if cg else None).returncode
        stats = cg.stats() if cg else {}
    finally:
        if cg:
            cg.remove()
    res = json.loads(result.read_text()) if result.exists() else {"part": part}
    res |= {"rc": rc, "wall_s": round(time.perf_counter() - t, 1), "cap": cap, "cold": bool(a.cold or cap),
            "page_cache_at_start": cached, **stats}
    if rc != 0 and progress.exists():
        lines = progress.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        res |= {"died_in_stage": last.get("stage"), "peak_rss_anon": last.get("peak_anon")}
    print(json.dumps(res), flush=True)
    return res


def compare(tmp, ours="ours"):
    """ours (or ours_bf16, ours_int8) vs HF on the same weights: top-1 and the largest logit difference."""
    import torch
    a, b = tmp / f"{ours}.logits.pt", tmp / "hf.logits.pt"
    if not (a.exists() and b.exists()):
        return None
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return {"argmax_ours": int(x.argmax()), "argmax_hf": int(y.argmax()),
            "top5_overlap": len(set(x.topk(5).indices.tolist()) & set(y.topk(5).indices.tolist())),
            "max_abs_diff": round(float((x - y).abs().max()), 4), "logit_std": round(float(x.std()), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=os.environ.get("LLAMA3_DIR"), help="Meta dir (default LLAMA3_DIR)")
    p.add_argument("--parts", default="ours,hf", help=f"comma list of {sorted(PARTS)}")
    p.add_argument("--cap", default=None, help="hard memory limit per part, e.g. 8G (a memory cgroup)")
    p.add_argument("--cold", action="store_true", help="drop the checkpoint from the page cache first")
    p.add_argument("--decode", type=int, default=4, help="greedy tokens to time after the forward")
    p.add_argument("--repeat", type=int, default=2, help="forward passes to time")
    p.add_argument("--bandwidth", action="store_true", help="also time bf16->fp32 / copy passes (ours)")
    p.add_argument("--probe-gib", type=float, default=10.0)
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--tmp", default="/tmp/llama3-scale")
    p.add_argument("--child", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    if not a.model_dir or not (Path(a.model_dir) / "consolidated.00.pth").is_file():
        p.error(f"--model-dir {a.model_dir!r} holds no consolidated.00.pth; write one with "
                "`python -m bench.synthetic_checkpoint --out /tmp/llama3-8b-synthetic`")
    parts = [s for s in a.parts.split(",") if s]
    bad = [s for s in parts if s not in PARTS]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {sorted(PARTS)}")
    tmp = Path(a.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    cap = parse_size(a.cap) if a.cap else None
    import platform
    import torch
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "ram": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "torch": torch.__version__, "model_dir": a.model_dir, "cmd": " ".join(sys.argv)}
    print(json.dumps(info), flush=True)
    results = {"info": info, "parts": [run_part(s, a, tmp, cap) for s in parts]}
    for ours in ("ours", "ours_bf16", "ours_int8"):
        if {ours, "hf"} <= set(parts):
            results[f"{ours}_vs_hf"] = compare(tmp, ours)
            print(json.dumps({f"{ours}_vs_hf": results[f"{ours}_vs_hf"]}), flush=True)
    if a.json:
        write_json(a.json, results)


if __name__ == "__main__":
    main()
