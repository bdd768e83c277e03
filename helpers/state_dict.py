"""A Meta Llama 3 state dict: its keys and shapes (from ModelArgs), reading one from a .pth, checking one."""
import pickle
import zipfile

import torch

from helpers.params import CheckpointError

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


def is_tied(weights):
    a, b = weights["tok_embeddings.weight"], weights["output.weight"]
    return a is b or (a.shape == b.shape and torch.equal(a, b))


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
