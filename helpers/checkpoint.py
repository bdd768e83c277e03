"""Open a Meta-format Llama 3 checkpoint: params.json -> ModelArgs, consolidated.00.pth -> weights dict."""
import dataclasses
import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "assets" / "llama3-tiny"


class CheckpointError(ValueError):
    """Bad checkpoint input; the message names the file or value and the fix."""


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = False
    rope_scaling_factor: float = 8.0      # llama 3.1 scaling, as in Meta's apply_scaling
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    max_seq_len: int = 8192
    extra: dict = field(default_factory=dict)  # params.json keys we do not use, kept as given

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CheckpointError(f"params.json: {name}={v!r} must be a positive integer")
        if self.dim % self.n_heads:
            raise CheckpointError(f"params.json: dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise CheckpointError(f"params.json: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise CheckpointError(f"params.json: head_dim={self.head_dim} must be even for RoPE")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def n_rep(self):
        """query heads per kv head (GQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def hidden_dim(self):
        """SwiGLU hidden size, Meta's formula: 2/3 of 4*dim, times the multiplier, rounded up."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params(cls, params, source="params.json"):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if k not in params]
        if missing:
            raise CheckpointError(f"{source}: missing key(s) {missing}; a Llama 3 params.json has "
                                  "dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of, ...")
        known = {k: v for k, v in params.items() if k in names}
        return cls(**known, extra={k: v for k, v in params.items() if k not in names})

    def to_params(self):
        """params.json dict: the keys we were given back, in Meta's spelling."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) != f.default}
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                  "ffn_dim_multiplier", "norm_eps", "rope_theta"):
            out[k] = getattr(self, k)
        return {**out, **self.extra}


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
    """argument > LLAMA3_DIR > bundled default."""
    if model_dir:
        return Path(model_dir)
    if os.environ.get("LLAMA3_DIR"):
        return Path(os.environ["LLAMA3_DIR"])
    return DEFAULT_DIR


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
    unexpected = sorted(set(weights) - set(want))
    if missing or unexpected:
        msg = [f"{path}: key set does not match params.json (n_layers={args.n_layers})"]
        if missing:
            msg.append(f"missing {len(missing)}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError("; ".join(msg) + ". Is params.json from the same model as the .pth?")
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
    if not d.is_dir():
        raise CheckpointError(f"model dir {d} does not exist; pass a dir with params.json and "
                              "consolidated.00.pth, or set LLAMA3_DIR to one")
    if not (d / "params.json").is_file():  # a Hugging Face download? prefer Meta's files in its original/
        from helpers import hf
        if hf.original_dir(d):
            d = hf.original_dir(d)
        elif (d / "config.json").is_file():
            return hf.load_hf_dir(d)
    args = read_params(d)
    shards = sorted(d.glob("consolidated*.pth"))
    if not shards:
        raise CheckpointError(f"no consolidated*.pth in {d}; download the checkpoint's .pth next to params.json")
    if len(shards) > 1:
        raise CheckpointError(f"{d} holds {len(shards)} shards ({shards[0].name} ...): multi-shard "
                              "(70B-style, model-parallel) checkpoints are not supported yet; use an 8B/1B/3B")
    path = shards[0]
    if verify and d.resolve() == DEFAULT_DIR.resolve():
        expect = (d / (path.name + ".sha256")).read_text().split()[0]
        got = sha256(path)
        if got != expect:
            raise CheckpointError(f"{path}: sha256 {got[:16]}... does not match the recorded {expect[:16]}...; "
                                  "the bundled model is damaged: `git checkout -- assets/` restores it")
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


def is_tied(weights):
    a, b = weights["tok_embeddings.weight"], weights["output.weight"]
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def is_llama3_8b(args, weights=None):
    """True for Meta-Llama-3-8B's shapes (the published-facts oracle cells use this)."""
    ok = (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size, args.hidden_dim) == \
        (4096, 32, 32, 8, 128256, 14336) and not args.use_scaled_rope and args.rope_theta == 500000.0
    ok = ok and not args.extra.get("synthetic")  # our random 8B-shaped checkpoints say so
    return ok and (weights is None or not is_tied(weights))
