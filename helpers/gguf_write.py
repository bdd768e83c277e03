"""Synthetic GGUF files for tests and bench/gguf_8b.py: Llama metadata, a tokenizer's tokens, and random blocks
of any type helpers.dequant reads, written one tensor at a time (an 8B-shaped file never sits in memory)."""
from pathlib import Path

import numpy as np

from helpers.dequant import random_blocks
from helpers.gguf_file import LAYER, NAMES
from helpers.state_dict import expected_shapes


def gguf_name(key):
    """Meta key -> GGUF tensor name (the inverse of meta_name)."""
    inverse = {v: k for k, v in NAMES.items()}
    if key in inverse:
        return inverse[key]
    _, i, rest = key.split(".", 2)
    return f"blk.{i}.{next(g for g, m in LAYER.items() if rest == m + '.weight')}.weight"


def random_tensors(args, qtype_of, seed=0, tied=False):
    """{gguf name: (type name, shape, make)} for every tensor of args; make() returns random_blocks of the
    type chosen by qtype_of(meta key) (norms: F32), made only when written, one tensor at a time."""
    out = {}
    for n, (key, shape) in enumerate(expected_shapes(args).items()):
        if tied and key == "output.weight":
            continue
        kind = "F32" if len(shape) == 1 else qtype_of(key)
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        out[gguf_name(key)] = (kind, shape, lambda k=kind, r=rows, c=cols, s=seed + n: random_blocks(k, r, c, s))
    return out


def write_gguf(path, args, tensors, tokens=None, arch="llama", kv=None):
    """A GGUF file of args's llama.* metadata, tokens (a list of str; None: no tokenizer), kv (more metadata:
    key -> str/int/float/list) and tensors ({gguf name: (type name, shape, make)}), written one at a time."""
    import gguf
    w = gguf.GGUFWriter(path, arch)
    a = arch + "."
    for k, v in {"block_count": args.n_layers, "context_length": args.max_seq_len, "embedding_length": args.dim,
                 "feed_forward_length": args.hidden_dim, "attention.head_count": args.n_heads,
                 "attention.head_count_kv": args.n_kv_heads, "vocab_size": args.vocab_size}.items():
        w.add_uint32(a + k, v)
    w.add_float32(a + "rope.freq_base", args.rope_theta)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", args.norm_eps)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
    for k, v in (kv or {}).items():
        w.add_key_value(k, v, gguf.GGUFValueType.get_type(v), sub_type=gguf.GGUFValueType.get_type(v[0])
                        if isinstance(v, list) else None)
    qt = gguf.GGMLQuantizationType
    for name, (kind, shape, _) in tensors.items():
        per_block, nbytes = gguf.GGML_QUANT_SIZES[qt[kind]]
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        w.add_tensor_info(name, (rows, cols // per_block * nbytes) if len(shape) == 2 else (cols * nbytes,),
                          np.dtype(np.uint8), rows * cols // per_block * nbytes, raw_dtype=qt[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for kind, shape, make in tensors.values():
        w.write_tensor_data(np.ascontiguousarray(make()).view(np.uint8).reshape(-1))
    w.close()
    return Path(path)
