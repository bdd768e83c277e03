"""A GGUF file (llama.cpp, Ollama, LM Studio) as a Meta-keyed checkpoint: ModelArgs from its metadata, and
weights that are dequantized (helpers.dequant) only when they are used.

The container is parsed by the `gguf` package (llama.cpp's own reader, which memory-maps the file); what is
ours is the renaming to Meta's keys and the dequantizing. llama.cpp stores attn_q/attn_k rows in Meta's
interleaved RoPE order, so no rows are permuted (transformers un-permutes into its rotate_half layout on load).

GGUFWeights[name] dequantizes one whole tensor, as a notebook indexing weights by hand expects. forward never
asks for that: linear() multiplies a block of rows at a time (matmul) and the embedding lookup dequantizes
only the rows of the prompt's ids (rows), so an 8B Q4_K_M file never becomes 32 GB of fp32 in memory.
"""
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from threading import local

import numpy as np
import torch

from helpers.dequant import SUPPORTED, dequantize
from helpers.device import DEVICE
from helpers.hf import ffn_params
from helpers.params import CheckpointError, ModelArgs
from helpers.state_dict import expected_shapes
from helpers.transformer import rope_frequencies
from helpers.upcast import CHUNK, in_threads, modes

# GGUF tensor name -> Meta key; {} is the layer number
NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
         "output.weight": "output.weight"}
LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
         "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
         "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}
BLK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1+: llama.cpp's converter stores the rope scaling as divisors
FIX = "download the file again, or convert the model with llama.cpp's convert_hf_to_gguf.py"


def meta_name(gguf_name):
    """blk.3.attn_q.weight -> layers.3.attention.wq.weight; None for a name Llama does not have."""
    if gguf_name in NAMES:
        return NAMES[gguf_name]
    m = BLK.fullmatch(gguf_name)
    if m and m[2] in LAYER:
        return f"layers.{m[1]}.{LAYER[m[2]]}.weight"
    return None


def open_reader(path):
    """gguf.GGUFReader on path, or one CheckpointError saying why the file cannot be read."""
    import gguf
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                              "pass a .gguf model file of llama.cpp / Ollama")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, IndexError, ... on cut or corrupt headers
        raise CheckpointError(f"{path}: cannot read this GGUF file ({type(e).__name__}: {str(e)[:120]}); it is "
                              f"truncated or corrupt: {FIX}") from None
    size = Path(path).stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path} is truncated: tensor {t.name} needs bytes up to "
                                  f"{t.data_offset + t.n_bytes:,} but the file has {size:,}; {FIX}")
    return reader


def field(reader, key, path, default=None, required=True):
    """A metadata value (str, number, bool); a missing required key is a CheckpointError naming it."""
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise CheckpointError(f"{path}: metadata key {key} is missing; a Llama GGUF has llama.block_count, "
                                  f"llama.embedding_length, ...: {FIX}")
        return default
    return f.contents()


def as_float(v):
    """A float32 metadata value as the decimal it was written from (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def args_from_gguf(reader, path, tensors):
    """ModelArgs from llama.* metadata; tensors (gguf name -> ReaderTensor) for the vocab and the rope factors."""
    arch = field(reader, "general.architecture", path)
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture is {arch!r}, not 'llama': this forward pass runs the "
                              "Llama architecture only (Llama 3, SmolLM2, ...); pick a Llama GGUF")
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise CheckpointError(f"{path} has no tokenizer (no tokenizer.ggml.tokens in its metadata); use a GGUF "
                              "converted with its tokenizer (llama.cpp's convert_hf_to_gguf.py writes it)")
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    get = lambda k, **kw: field(reader, "llama." + k, path, **kw)  # noqa: E731
    dim, n_heads = get("embedding_length"), get("attention.head_count")
    hidden = get("feed_forward_length")
    multiple_of, mult = ffn_params(dim, hidden)
    params = dict(dim=dim, n_layers=get("block_count"), n_heads=n_heads,
                  n_kv_heads=get("attention.head_count_kv", default=n_heads, required=False),
                  vocab_size=get("vocab_size", default=n_tokens, required=False), multiple_of=multiple_of,
                  ffn_dim_multiplier=mult, norm_eps=as_float(get("attention.layer_norm_rms_epsilon")),
                  rope_theta=as_float(get("rope.freq_base", default=10000.0, required=False)),
                  max_seq_len=get("context_length", default=8192, required=False))
    if get("rope.dimension_count", default=dim // n_heads, required=False) != dim // n_heads:
        raise CheckpointError(f"{path}: llama.rope.dimension_count differs from the head size {dim // n_heads}: "
                              "partial RoPE is not Llama 3's; this forward pass cannot run it")
    kind = get("rope.scaling.type", default="none", required=False)
    if kind not in ("none", "llama3") and as_float(get("rope.scaling.factor", default=1.0, required=False)) != 1:
        raise CheckpointError(f"{path}: llama.rope.scaling.type={kind!r} is not Llama 3's RoPE; this forward "
                              "pass cannot run it")
    try:
        args = ModelArgs.from_params(params, source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{e} (from the GGUF's llama.* metadata)") from None
    if args.hidden_dim != hidden:
        raise CheckpointError(f"{path}: llama.feed_forward_length={hidden} cannot be written with Meta's "
                              "multiple_of/ffn_dim_multiplier")
    if n_tokens > args.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {n_tokens} tokens but llama.vocab_size is "
                              f"{args.vocab_size}: ids past the embedding table; {FIX}")
    if ROPE_FREQS in tensors:
        args = with_rope_scaling(args, tensors[ROPE_FREQS], reader, path)
    return args


def with_rope_scaling(args, t, reader, path):
    """Llama 3.1 scaling recovered from rope_freqs.weight (the divisor of each frequency): the Meta recipe
    (factor, low 1, high 4, original context) whose divisors these are."""
    got = torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(-1)
    old = field(reader, "llama.rope.scaling.original_context_length", path, default=8192, required=False)
    plain = rope_frequencies(args)
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
        cand = ModelArgs(**{**args.__dict__, "use_scaled_rope": True, "rope_scaling_factor": factor,
                            "rope_original_context": old})
        if got.shape == plain.shape and torch.allclose(plain / rope_frequencies(cand), got, rtol=1e-4):
            return cand
    raise CheckpointError(f"{path}: {ROPE_FREQS} holds RoPE divisors that no Llama 3.1 scaling (factor 2-32, "
                          "low 1, high 4) gives; this forward pass cannot run it")


def load_gguf(path):
    """(GGUFWeights, ModelArgs) of a Llama GGUF file, every tensor's name, shape and type checked."""
    path = Path(path)
    reader = open_reader(path)
    stored = {t.name: t for t in reader.tensors}
    args = args_from_gguf(reader, path, stored)
    tensors, unknown = {}, []
    for name, t in stored.items():
        key = meta_name(name)
        if key is None and name != ROPE_FREQS:
            unknown.append(name)
        elif key is not None:
            tensors[key] = t
    want = expected_shapes(args)
    if "output.weight" not in tensors and "tok_embeddings.weight" in tensors:
        tensors["output.weight"] = tensors["tok_embeddings.weight"]  # tied: output reads the embedding table
    missing = [k for k in want if k not in tensors]
    unknown += [k for k in tensors if k not in want]  # e.g. blk.N past block_count
    if missing or unknown:
        raise CheckpointError(f"{path}: tensors do not match its metadata (block_count={args.n_layers}): missing "
                              f"{len(missing)} {missing[:4]}, unexpected {len(unknown)} {unknown[:4]}; {FIX}")
    shapes = {k: tuple(int(n) for n in reversed(t.shape)) for k, t in tensors.items()}  # GGUF lists ne0 first
    emb = shapes["tok_embeddings.weight"]
    if emb[0] != args.vocab_size:
        raise CheckpointError(f"{path}: token_embd has {emb[0]} rows but the vocabulary has {args.vocab_size} "
                              f"ids (llama.vocab_size or the tokenizer's token count): the file is inconsistent; {FIX}")
    bad = [f"{k}: {shapes[k]} != {s}" for k, s in want.items() if shapes[k] != s]
    if bad:
        raise CheckpointError(f"{path}: tensor shapes do not match its metadata (dim={args.dim}, n_heads="
                              f"{args.n_heads}, n_kv_heads={args.n_kv_heads}, hidden_dim={args.hidden_dim}): "
                              f"{'; '.join(bad[:4])}; {FIX}")
    odd = sorted({t.tensor_type.name for t in tensors.values()} - set(SUPPORTED))
    if odd:
        first = next(k for k, t in tensors.items() if t.tensor_type.name in odd)
        raise CheckpointError(f"{path}: tensor type(s) {odd} (first: {first}) cannot be dequantized here; "
                              f"supported: {', '.join(SUPPORTED)}: use a Q4_K_M, Q8_0 or F16 file of the model")
    return GGUFWeights(path, reader, tensors, shapes), args


BUFFERS = local()  # one reused fp32 block per thread, on the CPU where dequantize runs


def block(n):
    """this thread's reused fp32 buffer, at least n elements: its first n."""
    buf = getattr(BUFFERS, "buf", None)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):
            buf = BUFFERS.buf = torch.empty(n)
    return buf[:n]


class GGUFWeights(Mapping):
    """Meta key -> fp32 tensor, dequantized from the mmap'd file when asked for. The cache is weak: while a
    dequantized tensor lives, every access returns that same tensor (a tied output *is* tok_embeddings)."""

    def __init__(self, path, reader, tensors, shapes):
        self.path, self.reader, self.tensors, self.shapes = path, reader, tensors, shapes
        self.alive = weakref.WeakValueDictionary()  # gguf name -> dequantized tensor

    def __getitem__(self, name):
        t = self.tensors[name]
        w = self.alive.get(t.name)
        if w is None:
            w = self.alive[t.name] = dequantize(t.data, t.tensor_type, self.shapes[name])
        return w

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    def shape(self, name):
        return torch.Size(self.shapes[name])

    def qtype(self, name):
        """The stored type's name: 'Q4_K', 'F32', ..."""
        return self.tensors[name].tensor_type.name

    def fp32_bytes(self):
        """bytes of an fp32 copy of every stored tensor (a tied output counts once), from shapes only."""
        seen = {t.name: k for k, t in self.tensors.items()}
        return sum(4 * int(np.prod(self.shapes[k])) for k in seen.values())

    def rows(self, name, ids):
        """fp32 rows ids of name (embedding lookup): only those rows are read and dequantized."""
        t, ids = self.tensors[name], torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        raw = t.data[ids.numpy()]                                          # [len(ids), row_bytes]
        return dequantize(raw, t.tensor_type, (len(ids), self.shapes[name][1]))

    def matmul(self, x, name, bf16=False):
        """x [T, in] @ W.T -> [T, out] fp32, W dequantized CHUNK elements at a time into a reused buffer.
        On a multi-core CPU each of n threads (one core each) takes its own blocks: dequantizing is many small
        elementwise ops, and one parallel op per step measured 15x slower on a busy 2-core machine."""
        t, (n_out, n_in) = self.tensors[name], self.shapes[name]
        step = max(1, CHUNK // n_in)
        starts = range(0, n_out, step)
        y = torch.empty(x.shape[0], n_out, dtype=torch.float32, device=x.device)
        xb = x.to(torch.bfloat16) if bf16 else x

        def work(k, n):
            with torch.inference_mode():
                for r in starts[k::n]:
                    rows = min(step, n_out - r)
                    out = block(rows * n_in).view(rows, n_in)
                    w = dequantize(t.data[r:r + rows], t.tensor_type, (rows, n_in), out=out).to(DEVICE)
                    y[:, r:r + rows] = xb @ (w.to(torch.bfloat16) if bf16 else w).T

        n = torch.get_num_threads()
        if n == 1 or len(starts) == 1 or x.device.type != "cpu" or modes():
            work(0, 1)
        else:
            in_threads(lambda k: work(k, n), n)
        return y

    def __repr__(self):
        kinds = sorted({t.tensor_type.name for t in self.tensors.values()})
        return f"GGUFWeights({len(self)} tensors dequantized on access from {self.path.name}, types {kinds})"

