"""Seeded random checkpoints with the exact shapes of the published Llama 3 models, written with low memory.

    python -m bench.synthetic_checkpoint --preset llama3-8b --out /tmp/llama3-8b-synthetic

The result is a Meta-format dir (params.json with "synthetic": true, consolidated.00.pth, tokenizer.model)
that helpers.checkpoint.load_checkpoint opens like the real download. The 8B is 16 GB of bf16, more than
fits beside torch.save's own copy in a modest machine's RAM, so the file is written in two passes:
1. torch.save under skip_data() writes the zip with every record's header and empty (sparse) data;
2. the file is mmap'd shared and each tensor is filled in place, a block of rows at a time.
Peak memory is one block (~64 MB), whatever the model size. A last pass writes the CRC-32 of each record,
which skip_data left at 0, so the file is a valid zip (`unzip -t` / zipfile.testzip agree).
"""
import argparse
import json
import mmap
import os
import shutil
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import facts  # noqa: E402
from helpers.checkpoint import ModelArgs, atomic_write, expected_shapes, load_checkpoint, write_json  # noqa: E402
from helpers.measure import PeakRss  # noqa: E402
from helpers.tokenizer import default_tokenizer_path  # noqa: E402

# params.json of Meta's downloads (llama-models sku_list arch_args); 3.2 1B/3B tie output to the embedding
PRESETS = {
    "llama3-8b": dict(facts.PARAMS),
    "llama3.1-8b": {**facts.PARAMS, "use_scaled_rope": True},
    "llama3.2-1b": {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05,
                    "rope_theta": 500000.0, "use_scaled_rope": True},
    "llama3.2-3b": {"dim": 3072, "n_layers": 28, "n_heads": 24, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.0, "multiple_of": 256, "norm_eps": 1e-05,
                    "rope_theta": 500000.0, "use_scaled_rope": True},
}
TIED = {"llama3.2-1b", "llama3.2-3b"}
BLOCK = 1 << 24  # elements generated at once (64 MB of fp32)


def preset_args(name):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelArgs.from_params({**PRESETS[name], "synthetic": True})


def n_params(args, tied=False):
    """Parameters stored on disk (a tied output matrix is the embedding, counted once)."""
    shapes = expected_shapes(args)
    if tied:
        del shapes["output.weight"]
    return sum(torch.Size(s).numel() for s in shapes.values())


def fill(t, name, args, g):
    """Random values in place, scaled like helpers.random_checkpoint so 32+ layers stay finite."""
    rows = t.view(-1, t.shape[-1]) if t.dim() > 1 else t.view(1, -1)        # [rows, cols]
    step = max(1, BLOCK // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        x = torch.randn(rows[r:r + step].shape, generator=g)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.1 * x
        elif name != "tok_embeddings.weight":
            x /= rows.shape[1] ** 0.5                                        # unit-variance outputs
            if name.endswith(("wo.weight", "w2.weight")):
                x /= (2 * args.n_layers) ** 0.5                              # residual branches stay small
        rows[r:r + step] = x                                                 # casts to the stored dtype


def fix_crcs(path):
    """skip_data leaves each data record's CRC-32 at 0: compute it and write it where zip keeps it."""
    with zipfile.ZipFile(path) as z:
        infos, cd = z.infolist(), z.start_dir
    crcs = {}
    with open(path, "r+b") as f:
        for info in infos:
            f.seek(info.header_offset)
            head = f.read(30)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            crc, left = 0, info.file_size
            while left:
                buf = f.read(min(left, 1 << 26))
                crc, left = zlib.crc32(buf, crc), left - len(buf)
            if crc == info.CRC:
                continue
            crcs[info.filename] = crc
            if info.flag_bits & 0x08:                              # data descriptor follows the data
                f.seek(start + info.file_size)
                sig = f.read(4)
                f.seek(start + info.file_size + (4 if sig == b"PK\x07\x08" else 0))
            else:
                f.seek(info.header_offset + 14)                    # crc field of the local header
            f.write(struct.pack("<I", crc))
        pos = cd                                                   # central directory: crc at +16
        while crcs:
            f.seek(pos)
            head = f.read(46)
            if head[:4] != b"PK\x01\x02":
                raise RuntimeError(f"{path}: central directory entry not found at {pos}")
            n, m, k = struct.unpack("<HHH", head[28:34])
            name = f.read(n).decode()
            if name in crcs:
                f.seek(pos + 16)
                f.write(struct.pack("<I", crcs.pop(name)))
            pos += 46 + n + m + k


def write_synthetic(out_dir, args, seed=0, tied=False, dtype=torch.bfloat16, progress=True):
    """Write params.json + consolidated.00.pth + tokenizer.model to out_dir; return the dir.

    tied=True stores output.weight as the same storage as tok_embeddings.weight (one copy on disk,
    the Meta key set kept). Tensor i is drawn from torch.Generator seeded seed * 1_000_003 + i.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = expected_shapes(args)
    final, tmp = out / "consolidated.00.pth", out / "consolidated.00.pth.partial"
    with FakeTensorMode():                                                   # shapes only, no memory
        sd = {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}
    if tied:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save(sd, tmp)
    del sd
    old = torch.serialization.get_default_mmap_options()
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)           # writes reach the file
    try:
        w = torch.load(tmp, map_location="cpu", mmap=True, weights_only=True)
    finally:
        torch.serialization.set_default_mmap_options(old)
    names = [k for k in shapes if not (tied and k == "output.weight")]
    bar = names
    if progress:
        from tqdm import tqdm
        bar = tqdm(names, desc="tensors", unit="t", file=sys.stderr)
    g = torch.Generator()
    for i, name in enumerate(bar):
        g.manual_seed(seed * 1_000_003 + i)
        fill(w[name], name, args, g)
    del w
    fix_crcs(tmp)
    os.replace(tmp, final)
    params = {**args.to_params(), "synthetic": True}
    write_json(out / "params.json", params)
    atomic_write(out / "tokenizer.model", lambda p: shutil.copyfile(default_tokenizer_path(), p))
    return out


def check(out_dir, args, tied, expect_tensors=None, expect_params=None):
    """Reopen the way notebooks do and check keys, shapes, dtype, counts. Returns (weights, n_unique)."""
    weights, got = load_checkpoint(out_dir)
    assert got.to_params() == args.to_params() and got.extra.get("synthetic") is True, got
    assert set(weights) == set(expected_shapes(args)), "key set differs from Meta's"
    assert all(t.dtype == torch.bfloat16 for t in weights.values()), "dtype is not bf16"
    ptrs = {t.untyped_storage().data_ptr(): t.numel() for t in weights.values()}   # tied: counted once
    n = sum(ptrs.values())
    assert n == n_params(args, tied), (n, n_params(args, tied))
    if expect_tensors is not None:
        assert len(weights) == expect_tensors, (len(weights), expect_tensors)
    if expect_params is not None:
        assert n == expect_params, (n, expect_params)
    return weights, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama3-8b", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output dir (keep it outside the repo: 2.5-16 GB)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if Path(a.out).resolve().is_relative_to(Path(__file__).resolve().parent.parent):
        p.error(f"--out {a.out} is inside the repository; write big checkpoints elsewhere, e.g. /tmp")
    args, tied = preset_args(a.preset), a.preset in TIED
    need = n_params(args, tied) * 2
    free = os.statvfs(Path(a.out).resolve().parent if not Path(a.out).exists() else a.out)
    if free.f_bavail * free.f_frsize < need * 1.05:
        p.error(f"{a.out}: {need / 2**30:.1f} GiB needed, only {free.f_bavail * free.f_frsize / 2**30:.1f} free")
    t0 = time.perf_counter()
    with PeakRss() as peak:
        write_synthetic(a.out, args, a.seed, tied)
    t1 = time.perf_counter()
    eight = a.preset.endswith("-8b")
    _, n = check(a.out, args, tied, facts.N_TENSORS if eight else None, facts.N_PARAMS if eight else None)
    with zipfile.ZipFile(Path(a.out) / "consolidated.00.pth") as z:
        n_records = len(z.infolist())
    print(json.dumps({"preset": a.preset, "out": a.out, "tensors": len(expected_shapes(args)),
                      "params": n, "bytes": os.path.getsize(Path(a.out) / "consolidated.00.pth"),
                      "zip_records": n_records, "write_s": round(t1 - t0, 1),
                      "write_peak_rss_anon": peak.peak_anon,
                      "check_s": round(time.perf_counter() - t1, 1)}))


if __name__ == "__main__":
    main()
