"""Open a Meta-format Llama 3 checkpoint: params.json -> ModelArgs, consolidated.00.pth -> weights dict.

Which dir and what it holds (Meta, HF or GGUF files, which tokenizer) is decided in helpers.model_dir; the
state dict's keys and checks are in helpers.state_dict; HF files are converted by helpers.hf, GGUF files
read by helpers.gguf_file.
"""
import json
import shutil
from pathlib import Path

import torch

from helpers.facts import is_llama3_8b  # noqa: F401  (re-exported: import it from here)
from helpers.files import atomic_write, read_json, sha256, write_json  # noqa: F401  (re-exported)
from helpers.gguf_file import load_gguf
from helpers.hf import load_hf_dir
from helpers.model_dir import (DEFAULT_DIR, ROOT, SHARD, check_not_bundled, layout, meta_shards,  # noqa: F401
                               resolve_dir)
from helpers.params import CheckpointError, ModelArgs  # noqa: F401  (re-exported: import them from here)
from helpers.shards import load_shards, remove_stale_shards
from helpers.state_dict import DTYPES, check_weights, expected_shapes, is_tied, load_state_dict  # noqa: F401
from helpers.tokenizer import count_tokens, tokenizer_file

# sha256 of the bundled consolidated.00.pth, pinned in code so that nothing that writes checkpoints can
# rewrite it; retraining the bundled model on purpose means updating this line
DEFAULT_SHA256 = "b74a818e7edf4b947d30815160e5ce7d4ef095f354978c96ff11860e47513820"


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


def tokenizer_size(model_dir):
    """ranks + 256 specials of the tokenizer that goes with model_dir, without building it."""
    path, _ = tokenizer_file(model_dir)
    return count_tokens(path), path


def load_checkpoint(model_dir=None, verify=True):
    """(weights, args) from a Meta-format dir (or an HF one, via helpers.hf; or a .gguf file, via
    helpers.gguf_file). Weights stay mmap'd in their stored dtype (bf16; GGUF: quantized, dequantized on use)."""
    top = resolve_dir(model_dir)
    fmt, d = layout(top)  # a Hugging Face download? Meta's files in its original/ win
    if fmt == "gguf":     # one file: weights, metadata and the tokenizer, checked against each other there
        return load_gguf(d)
    if fmt == "hf":
        weights, args = load_hf_dir(d)
        return weights, check_tokenizer_fits(top, args, d / "config.json")
    args = read_params(d)
    shards = meta_shards(d)
    if len(shards) > 1:  # model-parallel (70B: 8 files): a slice of every matrix per file, merged on use
        weights = load_shards(shards, args)     # checked against params.json there
    else:
        path = shards[0]
        if verify and d.resolve() == DEFAULT_DIR.resolve():
            got = sha256(path)
            if got != DEFAULT_SHA256:
                raise CheckpointError(f"{path}: sha256 {got[:16]}... is not the pinned DEFAULT_SHA256 "
                                      f"{DEFAULT_SHA256[:16]}... (helpers/checkpoint.py); the bundled model is "
                                      "damaged or was overwritten: `git checkout -- assets/llama3-tiny` restores it")
        weights = load_state_dict(path)
        if isinstance(weights, dict) and "output.weight" not in weights and "tok_embeddings.weight" in weights:
            weights["output.weight"] = weights["tok_embeddings.weight"]  # tied embeddings (llama 3.2 1B/3B)
        check_weights(weights, args, path)
    return weights, check_tokenizer_fits(top, args, d / "params.json")


def check_tokenizer_fits(model_dir, args, source):
    """args, once the model dir's tokenizer (the one load_tokenizer picks) fits in its embedding table."""
    n_tok, tok_path = tokenizer_size(model_dir)
    if n_tok > args.vocab_size:
        raise CheckpointError(f"tokenizer {tok_path} has {n_tok} tokens but the model has only "
                              f"{args.vocab_size} embedding rows ({source} has vocab_size={args.vocab_size}); "
                              "use the tokenizer that came with this checkpoint")
    return args


def write_checkpoint(out_dir, args, weights, tokenizer=None, overwrite_bundled=False):
    """params.json + consolidated.00.pth (+ a copy of tokenizer.model if given), each replaced atomically.
    weights may be a lazily merged multi-shard dict: it is merged here, the whole model at once."""
    check_not_bundled(out_dir, overwrite_bundled)
    weights = weights if isinstance(weights, dict) else dict(weights.items())
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "consolidated.00.pth", lambda p: torch.save(weights, p))
    remove_stale_shards(out, 1)                                 # an older N-shard split would shadow it
    write_json(out / "params.json", args.to_params())
    if tokenizer is not None:
        atomic_write(out / "tokenizer.model", lambda p: shutil.copyfile(tokenizer, p))
    return out
