"""Implementations this project did not write, holding our Meta-format weights: the independent checks.

hf_model: Hugging Face transformers' LlamaForCausalLM. Its RoPE rotates the two halves of each head where
Meta rotates pairs, so helpers.hf.meta_to_hf reorders the wq/wk rows; everything else is a rename.
meta_model: Meta's own reference, llama_models.llama3.model.Transformer. It is written for model
parallelism (fairscale layers), which needs a torch.distributed group even on one process: one gloo rank
on localhost is enough, every fairscale scatter/gather is then the identity and nothing needs CUDA.

transformers and llama_models are imported inside the functions: importing helpers stays cheap.
"""
import contextlib
import io
import socket

import torch

from helpers.hf import meta_to_hf
from helpers.model import fp32_bytes

MAX_BYTES = 2 << 30  # budget for one fp32 reference copy: small models yes, the real 8B (32 GB) no


def fits(weights, max_bytes=None):
    """True when an fp32 copy of these weights (what each reference model holds) fits max_bytes (MAX_BYTES)."""
    return fp32_bytes(weights) <= (MAX_BYTES if max_bytes is None else max_bytes)


def hf_model(weights, args, dtype=torch.float32, attn_implementation="eager"):
    """transformers' LlamaForCausalLM holding our weights in dtype, in eval mode, on the CPU.

    Built on the meta device, then the converted tensors are assigned: a tensor already in dtype is used as
    it is (an mmap'd bf16 model is not copied, except wq/wk, whose rows HF orders differently).
    "eager" attention is plain matmul + softmax and can return its probabilities (output_attentions).
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    sd, config = meta_to_hf(weights, args)
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    cfg = LlamaConfig(**config, dtype=dtype, attn_implementation=attn_implementation)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    got = model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True, strict=False)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # one tensor, two names, as in the checkpoint
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # its buffers were left on meta
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if got.unexpected_keys or left:
        raise RuntimeError(f"this transformers version lays out LlamaForCausalLM differently: unexpected "
                           f"{got.unexpected_keys[:4]}, unset {left[:4]}; install the version in requirements.txt")
    return model.eval()


@torch.no_grad()
def hf_logits(model, tokens):
    """token ids -> transformers' fp32 logits [T, vocab_size] (one sequence, no cache)."""
    return model(torch.tensor([list(tokens)], device=model.device), use_cache=False).logits[0].float()


@torch.no_grad()
def hf_attention(model, tokens):
    """token ids -> transformers' attention probabilities [n_layers, n_heads, T, T] (needs eager attention)."""
    out = model(torch.tensor([list(tokens)], device=model.device), use_cache=False, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).float()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_parallel():
    """One process, one rank: what Meta's fairscale layers need to exist. Safe to call again."""
    import torch.distributed as dist
    import fairscale.nn.model_parallel.initialize as fs_init
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints "> initializing ... size 1"
            fs_init.initialize_model_parallel(1)


def meta_model(weights, args, max_seq_len=None):
    """Meta's reference Transformer, fp32 on the CPU, holding our weights, in eval mode.

    max_seq_len (default args.max_seq_len) sizes its KV cache and RoPE table.
    """
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer
    scaling = (args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor,
               args.rope_original_context)
    if args.use_scaled_rope and scaling != (8, 1, 4, 8192):
        raise ValueError(f"rope scaling (factor, low, high, original context) = {scaling}: Meta's reference "
                         "hard-codes llama 3.1's (8, 1, 4, 8192), so it cannot check this checkpoint; "
                         "use hf_model instead")
    model_parallel()
    margs = MetaArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                     vocab_size=args.vocab_size, multiple_of=args.multiple_of,
                     ffn_dim_multiplier=args.ffn_dim_multiplier, norm_eps=args.norm_eps,
                     rope_theta=args.rope_theta, use_scaled_rope=args.use_scaled_rope,
                     max_batch_size=1, max_seq_len=max_seq_len or args.max_seq_len)
    model = Transformer(margs).eval()
    model.load_state_dict({k: v.float().cpu() for k, v in weights.items()}, strict=True)
    return model


def meta_logits(model, tokens):
    """token ids -> Meta's fp32 logits [T, vocab_size]: forward(tokens, start_pos=0), no cache reuse."""
    return model(torch.tensor([list(tokens)]), start_pos=0)[0].float()
