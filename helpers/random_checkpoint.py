"""Write seeded random checkpoints in Meta's format, for tests and for scale benchmarks."""
import torch

from helpers.checkpoint import write_checkpoint  # noqa: F401  (re-exported: tests and notebooks import it here)
from helpers.params import ModelArgs
from helpers.state_dict import expected_shapes


def random_weights(args, seed=0, dtype=torch.bfloat16, tied=False):
    """Random state dict with the exact Meta key set; scaled so activations stay finite over many layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_shapes(args).items():
        if name == "output.weight" and tied:
            continue
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name == "tok_embeddings.weight":
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5   # unit-variance outputs
            if name.endswith(("wo.weight", "w2.weight")):
                t /= (2 * args.n_layers) ** 0.5                        # residual branches stay small
        out[name] = t.to(dtype)
    return out


def write_random_checkpoint(out_dir, args=None, seed=0, dtype=torch.bfloat16, tied=False, **params):
    """e.g. write_random_checkpoint(tmp, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256)."""
    if args is None:
        args = ModelArgs(**params)
    return write_checkpoint(out_dir, args, random_weights(args, seed, dtype, tied))
