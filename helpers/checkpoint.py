"""Open a Meta-format Llama 3 checkpoint: params.json -> ModelArgs, consolidated.00.pth -> weights dict."""
import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
import zipfile
from pathlib import Path

import torch

from helpers.params import CheckpointError, ModelArgs  # noqa: F401  (re-exported: import them from here)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "assets" / "llama3-tiny"
# sha256 of the bundled consolidated.00.pth, pinned in code so that nothing that writes checkpoints can
# rewrite it; retraining the bundled model on purpose means updating this line
DEFAULT_SHA256 = "ea826959802536d74ae4d5068c6282e03e71ade7a48672f7f3a9a224bd7cd630"
SHARD = re.compile(r"consolidated\.\d\d\.pth")  # Meta's names; "consolidated.00 (1).pth" is a stray copy
DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def expected_shapes(args):
    """Every key of a Meta Llama 3 state dict with its shape."""
    d, h, kv = args.dim, args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"tok_embeddings.weight": (args.vocab_size, d)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (args.n_heads * h, d),
            p + "attention.wk.weight": (kv, d),
            p + "attention.wv.weight": (kv, d),
            p + "attention.wo.weight": (d, args.n_heads * h),
            p + "feed_forward.w1.weight": (args.hidden_dim, d),
            p + "feed_forward.w2.weight": (d, args.hidden_dim),
            p + "feed_forward.w3.weight": (args.hidden_dim, d),
            p + "attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
        }
    shapes |= {"norm.weight": (d,), "output.weight": (args.vocab_size, d)}
    return shapes


def resolve_dir(model_dir=None):
    """argument > LLAMA3_DIR > bundled default. ~ is expanded; a relative path is tried against the cwd, then
    the repo root (notebooks run in notebooks/); a checkpoint's own file (params.json, .pth) means its folder."""
    given, what = model_dir, "model dir"
    if not given:
        given, what = os.environ.get("LLAMA3_DIR", "").strip(), "LLAMA3_DIR"  # empty or blank: unset
    if not given:
        return DEFAULT_DIR
    p = Path(given).expanduser()
    tried = [p] if p.is_absolute() else [p, ROOT / p]
    d = next((t for t in tried if t.exists()), None)
    if d is None:
        where = f"{p}" if p.is_absolute() else f"{p} (neither {Path.cwd() / p} nor {ROOT / p})"
        raise CheckpointError(f"{what} {where} does not exist; pass a dir with params.json and "
                              "consolidated.00.pth, or set LLAMA3_DIR to one")
    if d.is_file():
        if d.name in ("params.json", "config.json") or SHARD.fullmatch(d.name) or d.suffix == ".safetensors":
            return d.parent  # the user picked a file of the checkpoint: load its folder
        raise CheckpointError(f"{what} {d} is a file; pass the folder that holds params.json and "
                              "consolidated.00.pth (weights named otherwise must be renamed to consolidated.00.pth)")
    return d


def read_params(model_dir):
    path = Path(model_dir) / "params.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a Meta checkpoint dir holds params.json and "
                              "consolidated.00.pth (for Meta-Llama-3-8B use its original/ folder)")
    try:
        params = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} must hold a JSON object of model hyperparameters")
    return ModelArgs.from_params(params, source=str(path))


def sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def load_state_dict(path):
    """torch.load with mmap (tensors stay on disk until touched) and weights_only (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle: the file holds more than tensors "
                              f"(weights_only=True blocks code in checkpoints). Only load checkpoints "
                              f"from a source you trust, as plain state dicts. [{str(e).splitlines()[0]}]") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint ({str(e).splitlines()[0]}); "
                              "the file is truncated, corrupt or not a torch.save zip: download it again") from None


def check_weights(weights, args, path):
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(weights).__name__}")
    want = expected_shapes(args)
    missing = sorted(set(want) - set(weights))
    unexpected = sorted(set(weights) - set(want), key=str)
    if missing or unexpected:
        msg = [f"{path}: key set does not match params.json (n_layers={args.n_layers})"]
        if missing:
            msg.append(f"missing {len(missing)}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError("; ".join(msg) + ". Is params.json from the same model as the .pth?")
    for k in want:
        t = weights[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {k} is a {type(t).__name__}, not a tensor; save a state dict of "
                                  "tensors only (name -> tensor)")
        if t.is_meta:
            raise CheckpointError(f"{path}: {k} is a 'meta' device tensor, which has no data (the model was saved "
                                  "before its weights were loaded); save it again with real weights")
        if t.dtype not in DTYPES:
            raise CheckpointError(f"{path}: {k} has dtype {t.dtype}; this forward pass needs floating-point "
                                  "weights (bf16, fp16, fp32 or fp64): use the unquantized bf16 download")
    bad = [f"{k}: {tuple(weights[k].shape)} != expected {s}" for k, s in want.items()
           if tuple(weights[k].shape) != s]
    if bad:
        raise CheckpointError(f"{path}: wrong tensor shapes for params.json "
                              f"(dim={args.dim}, n_heads={args.n_heads}, n_kv_heads={args.n_kv_heads}, "
                              f"hidden_dim={args.hidden_dim}): " + "; ".join(bad[:6]))


def tokenizer_size(model_dir):
    """ranks + 256 specials of the tokenizer that goes with model_dir, without building it."""
    from helpers.tokenizer import NUM_SPECIAL, default_tokenizer_path
    path = Path(model_dir) / "tokenizer.model"
    path = path if path.is_file() else default_tokenizer_path()
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) + NUM_SPECIAL, path


def load_checkpoint(model_dir=None, verify=True):
    """(weights, args) from a Meta-format dir (or an HF one, via helpers.hf). Weights stay mmap'd in their
    stored dtype (bf16)."""
    d = resolve_dir(model_dir)
    if not (d / "params.json").is_file():  # a Hugging Face download? prefer Meta's files in its original/
        from helpers import hf
        if hf.original_dir(d):
            d = hf.original_dir(d)
        elif (d / "config.json").is_file():
            return hf.load_hf_dir(d)
    args = read_params(d)
    pths = sorted(d.glob("*.pth"))
    shards = [p for p in pths if SHARD.fullmatch(p.name)]
    if not shards:
        found = f"only {[p.name for p in pths]}: rename the weights to" if pths else "download the checkpoint's"
        raise CheckpointError(f"no consolidated.00.pth in {d}; {found} consolidated.00.pth next to params.json")
    if len(shards) > 1:
        raise CheckpointError(f"{d} holds {len(shards)} shards ({shards[0].name} ...): multi-shard "
                              "(70B-style, model-parallel) checkpoints are not supported yet; use an 8B/1B/3B")
    path = shards[0]
    if verify and d.resolve() == DEFAULT_DIR.resolve():
        got = sha256(path)
        if got != DEFAULT_SHA256:
            raise CheckpointError(f"{path}: sha256 {got[:16]}... is not the pinned DEFAULT_SHA256 "
                                  f"{DEFAULT_SHA256[:16]}... (helpers/checkpoint.py); the bundled model is damaged "
                                  "or was overwritten: `git checkout -- assets/llama3-tiny` restores it")
    weights = load_state_dict(path)
    if isinstance(weights, dict) and "output.weight" not in weights and "tok_embeddings.weight" in weights:
        weights["output.weight"] = weights["tok_embeddings.weight"]  # tied embeddings (llama 3.2 1B/3B)
    check_weights(weights, args, path)
    n_tok, tok_path = tokenizer_size(d)
    if n_tok > args.vocab_size:
        raise CheckpointError(f"tokenizer {tok_path} has {n_tok} tokens but the model has only "
                              f"{args.vocab_size} embedding rows (vocab_size in params.json); "
                              "use the tokenizer that came with this checkpoint")
    return weights, args


def atomic_write(path, write):
    """write(tmp) makes a new file beside path, then os.replace puts it in place. A process that has the old
    file mmap'd keeps the old bytes; rewriting in place would change its weights, or SIGBUS it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, data):
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def check_not_bundled(out_dir, overwrite_bundled=False):
    if Path(out_dir).expanduser().resolve() == DEFAULT_DIR.resolve() and not overwrite_bundled:
        raise CheckpointError(f"{out_dir} is the bundled model {DEFAULT_DIR}; write to another dir (e.g. "
                              "runs/llama3-tiny), or pass overwrite_bundled=True (--overwrite-bundled) on purpose")


def write_checkpoint(out_dir, args, weights, tokenizer=None, overwrite_bundled=False):
    """params.json + consolidated.00.pth (+ a copy of tokenizer.model if given), each replaced atomically."""
    check_not_bundled(out_dir, overwrite_bundled)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "consolidated.00.pth", lambda p: torch.save(weights, p))
    write_json(out / "params.json", args.to_params())
    if tokenizer is not None:
        atomic_write(out / "tokenizer.model", lambda p: shutil.copyfile(tokenizer, p))
    return out


def is_tied(weights):
    a, b = weights["tok_embeddings.weight"], weights["output.weight"]
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def is_llama3_8b(args, weights=None):
    """True for Meta-Llama-3-8B's shapes (the published-facts oracle cells use this)."""
    ok = (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size, args.hidden_dim) == \
        (4096, 32, 32, 8, 128256, 14336) and not args.use_scaled_rope and args.rope_theta == 500000.0
    ok = ok and not args.extra.get("synthetic")  # our random 8B-shaped checkpoints say so
    return ok and (weights is None or not is_tied(weights))
