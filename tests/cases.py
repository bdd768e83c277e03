"""Random fp32 checkpoints shared by the reference tests: name -> (params, prompt length)."""
import torch

from helpers.checkpoint import load_checkpoint
from helpers.random_checkpoint import write_random_checkpoint

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256)  # a quick checkpoint to load

CASES = {
    "n_rep1": (dict(dim=64, n_heads=4, n_kv_heads=4, multiple_of=32), 7),
    "n_rep2": (dict(dim=64, n_heads=4, n_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3), 13),
    "n_rep4": (dict(dim=64, n_heads=4, n_kv_heads=1), 1),
    "n_rep8": (dict(dim=128, n_heads=8, n_kv_heads=1, ffn_dim_multiplier=1.5), 9),
    # llama 3.1 rope scaling (Meta's constants); 129 positions so the slowed frequencies move the logits
    "scaled_rope": (dict(dim=64, n_heads=4, n_kv_heads=2, use_scaled_rope=True, max_seq_len=131072), 129),
    "tied": (dict(dim=64, n_heads=4, n_kv_heads=1, tied=True), 11),
}


def random_case(tmp, name, dtype=torch.float32):
    params, T = CASES[name]
    params = dict(params)
    tied = params.pop("tied", False)
    seed = list(CASES).index(name)
    write_random_checkpoint(tmp, seed=seed, dtype=dtype, tied=tied, n_layers=2, vocab_size=128256, **params)
    weights, args = load_checkpoint(tmp)
    tokens = torch.randint(0, args.vocab_size, (T,), generator=torch.Generator().manual_seed(seed)).tolist()
    return weights, args, tokens
