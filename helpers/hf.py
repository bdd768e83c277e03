"""Hugging Face format <-> Meta format for Llama 3.

An HF download holds the same tensors as Meta's consolidated.00.pth, renamed, in safetensors files, with
config.json in place of params.json. One real difference: HF's attention rotates the two *halves* of each
head (rotate_half) where Meta rotates consecutive *pairs*, so Meta's converter reorders the rows of every
wq and wk. We undo that on load (permute back) and redo it on save; everything else is a rename.
"""
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from helpers.files import atomic_write, read_json, write_json  # noqa: F401  (read_json re-exported)
from helpers.model_dir import HF_INDEX as INDEX
from helpers.model_dir import hf_weight_files, original_dir, rope_params  # noqa: F401  (original_dir re-exported)
from helpers.params import CheckpointError, ModelArgs
from helpers.state_dict import check_weights, expected_shapes, is_tied
from helpers.tokenizer import bytes_to_unicode, check_tokenizer_json, tokenizer_file  # noqa: F401

ARCH = "LlamaForCausalLM"
OUR_KEY = "llama3_by_hand_params"  # params.json as given, so our own files round-trip exactly

LAYER_NAMES = {  # meta -> hf, inside layers.{i}
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
HF_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",  # ours: hf
           "n_kv_heads": "num_key_value_heads", "norm_eps": "rms_norm_eps", "max_seq_len": "max_position_embeddings",
           "rope_scaling_factor": "rope_scaling.factor", "rope_low_freq_factor": "rope_scaling.low_freq_factor",
           "rope_high_freq_factor": "rope_scaling.high_freq_factor",
           "rope_original_context": "rope_scaling.original_max_position_embeddings"}
TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}


def hf_name(name):
    """Meta key -> HF key, e.g. layers.3.attention.wq.weight -> model.layers.3.self_attn.q_proj.weight."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{LAYER_NAMES[rest]}"


def permute(w, n_heads):
    """Meta -> HF rows of wq/wk: in each head, pair members (0,1),(2,3).. move to the two halves."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute(w, n_heads):
    """HF -> Meta rows of wq/wk: the inverse of permute."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def reorder(name, w, args, fn):
    if name.endswith("attention.wq.weight"):
        return fn(w, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return fn(w, args.n_kv_heads)
    return w


# ---- config.json <-> ModelArgs


def ffn_params(dim, hidden_dim):
    """(multiple_of, ffn_dim_multiplier) for which Meta's hidden_dim formula gives hidden_dim.

    config.json stores the result (intermediate_size), params.json the recipe; try Meta's recipes first.
    """
    base = int(2 * (4 * dim) / 3)
    for multiple_of in (4096, 1024, 512, 256, 128, 64, 32, 16, 8):
        for mult in (None, 1.3, 1.5, 1.0, 1.2):
            h = base if mult is None else int(mult * base)
            if multiple_of * ((h + multiple_of - 1) // multiple_of) == hidden_dim:
                return multiple_of, mult
    return hidden_dim, None if base <= hidden_dim else hidden_dim / base  # rounds up to exactly hidden_dim


def rope_config(config):
    """(kind, params) from either spelling: rope_scaling + rope_theta (transformers 4) or rope_parameters (5)."""
    kind, rope = rope_params(config)
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))  # hf's default when absent
    return kind, rope, theta


def args_from_config(config, source="config.json"):
    """ModelArgs from an HF Llama config.json dict; CheckpointError for anything our forward cannot run."""
    arch = config.get("architectures") or []
    if config.get("model_type") != "llama" or (arch and ARCH not in arch):
        raise CheckpointError(f"{source}: model_type={config.get('model_type')!r}, architectures={arch}: "
                              f"not a Llama causal LM. This project runs Llama 3 checkpoints ({ARCH}) only; "
                              "download a meta-llama/Llama-3* repo")
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")
    missing = [k for k in need if k not in config]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {missing}; use the config.json of the download")
    for k in need:  # checked here: the shapes below are computed from them before ModelArgs checks the rest
        if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] <= 0:
            raise CheckpointError(f"{source}: {k}={config[k]!r} must be a positive integer (a JSON number without "
                                  "quotes); use the config.json of the download")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    unsupported = {k: config[k] for k, ok in (("hidden_act", "silu"), ("attention_bias", False),
                                              ("mlp_bias", False)) if config.get(k, ok) != ok}
    if config.get("head_dim") not in (None, dim // n_heads):
        unsupported["head_dim"] = config["head_dim"]
    kind, rope, theta = rope_config(config)
    if kind not in ("default", "llama3"):
        unsupported["rope_type"] = kind
    if unsupported:
        raise CheckpointError(f"{source}: {unsupported} is not Llama 3's architecture (silu, no biases, "
                              "head_dim = hidden_size / heads, default or llama3 RoPE); this forward pass "
                              "cannot run it")
    multiple_of, mult = ffn_params(dim, config["intermediate_size"])
    params = dict(dim=dim, n_layers=config["num_hidden_layers"], n_heads=n_heads,
                  n_kv_heads=config.get("num_key_value_heads") or n_heads, vocab_size=config["vocab_size"],
                  multiple_of=multiple_of, ffn_dim_multiplier=mult,
                  norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=theta,
                  max_seq_len=config.get("max_position_embeddings", 2048))
    if kind == "llama3":
        try:
            params |= dict(use_scaled_rope=True, rope_scaling_factor=rope["factor"],
                           rope_low_freq_factor=rope["low_freq_factor"],
                           rope_high_freq_factor=rope["high_freq_factor"],
                           rope_original_context=rope["original_max_position_embeddings"])
        except KeyError as e:
            raise CheckpointError(f"{source}: llama3 rope scaling lacks {e}; use the config.json of the "
                                  "download") from None
    try:
        args = ModelArgs.from_params(params, source=str(source))
    except CheckpointError as e:  # name the value by its config.json key
        msg = str(e)
        for ours, theirs in HF_KEYS.items():
            msg = msg.replace(f": {ours}=", f": {theirs}=", 1)
        raise CheckpointError(msg) from None
    if OUR_KEY in config:  # written by write_hf_dir: keep the exact recipe and extras, if they still agree
        ours = ModelArgs.from_params(config[OUR_KEY], source=f"{source} [{OUR_KEY}]")
        fields = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps",
                  "rope_theta", "use_scaled_rope")
        diff = {f: (getattr(ours, f), getattr(args, f)) for f in fields if getattr(ours, f) != getattr(args, f)}
        if diff:
            raise CheckpointError(f"{source}: {OUR_KEY} disagrees with the HF keys (ours, hf): {diff}; "
                                  f"the file was edited by hand: delete {OUR_KEY} or fix the HF keys")
        args = ours
    if args.hidden_dim != config["intermediate_size"]:
        raise CheckpointError(f"{source}: cannot express intermediate_size={config['intermediate_size']} "
                              "with Meta's multiple_of/ffn_dim_multiplier")
    return args


def config_from_args(args, tied=False, dtype=torch.bfloat16):
    """An HF LlamaForCausalLM config.json dict (transformers 4 spelling, which 5 also reads)."""
    config = {
        "architectures": [ARCH], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "hidden_act": "silu",
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len, "vocab_size": args.vocab_size,
        "tie_word_embeddings": tied, "attention_bias": False, "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if args.use_scaled_rope:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": args.rope_scaling_factor,
                                  "low_freq_factor": args.rope_low_freq_factor,
                                  "high_freq_factor": args.rope_high_freq_factor,
                                  "original_max_position_embeddings": args.rope_original_context}
    if args.vocab_size >= 128256:  # the llama 3 tokenizer's ids fit
        config |= {"bos_token_id": 128000, "eos_token_id": 128001}
    config[OUR_KEY] = args.to_params()
    return config


# ---- state dicts


def meta_to_hf(weights, args):
    """Meta-keyed weights -> (HF state dict, config.json dict). Tied models get no lm_head.weight, as in HF."""
    tied = is_tied(weights)
    hf = {hf_name(k): reorder(k, weights[k], args, permute).contiguous()
          for k in expected_shapes(args) if not (tied and k == "output.weight")}
    return hf, config_from_args(args, tied, weights["tok_embeddings.weight"].dtype)


def hf_to_meta(hf, config, source="config.json", where=None):
    """(HF state dict, config.json dict) -> (Meta-keyed weights, ModelArgs); wq/wk get their rows back.

    where: tensor name -> file it came from, for error messages.
    """
    args = args_from_config(config, source)
    where = where or {}
    tied = bool(config.get("tie_word_embeddings", False))
    want = {hf_name(k): s for k, s in expected_shapes(args).items()}
    if tied:
        want.pop("lm_head.weight")
    stale = [k for k in hf if k.endswith("rotary_emb.inv_freq")]  # old exports kept this buffer: unused
    extra = sorted(set(hf) - set(want) - set(stale))
    missing = sorted(set(want) - set(hf))
    if missing or extra:
        hint = " (config.json says tie_word_embeddings=false)" if missing == ["lm_head.weight"] else ""
        raise CheckpointError(f"{source}: tensors do not match this config (num_hidden_layers="
                              f"{args.n_layers}): missing {missing[:6]}{hint}, unexpected {extra[:6]}; "
                              "config.json and the .safetensors must come from the same download")
    bad = [f"{k} in {where.get(k, 'state dict')}: {tuple(hf[k].shape)} != {s}" for k, s in want.items()
           if tuple(hf[k].shape) != s]
    if bad:
        raise CheckpointError(f"{source}: hidden_size={args.dim}, intermediate_size={args.hidden_dim}, "
                              f"heads={args.n_heads}/{args.n_kv_heads}, vocab_size={args.vocab_size} disagree "
                              "with the tensors: " + "; ".join(bad[:4]) +
                              "; use the config.json that came with these weights")
    weights = {}
    for k in expected_shapes(args):
        if tied and k == "output.weight":
            weights[k] = weights["tok_embeddings.weight"]  # one tensor, two names (llama 3.2 1B/3B)
        else:
            weights[k] = reorder(k, hf[hf_name(k)], args, unpermute)
    return weights, args


# ---- files


def write_hf_dir(out_dir, weights, args, shards=1):
    """config.json + model.safetensors (or `shards` files + model.safetensors.index.json), HF layout; each file
    is written beside its name and then renamed into place (atomic_write), so readers never see half a file."""
    out = Path(out_dir)
    if (out / INDEX).exists() or any(out.glob("model*.safetensors")):
        raise FileExistsError(f"{out} already holds HF weights; write to an empty dir")
    out.mkdir(parents=True, exist_ok=True)
    hf, config = meta_to_hf(weights, args)
    save = lambda part, file: atomic_write(out / file, lambda p: save_file(part, p, metadata={"format": "pt"}))
    if shards == 1:
        save(hf, "model.safetensors")
    else:
        names, weight_map = list(hf), {}
        for n in range(shards):
            file = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
            part = names[n * len(names) // shards:(n + 1) * len(names) // shards]
            save({k: hf[k] for k in part}, file)
            weight_map |= dict.fromkeys(part, file)
        size = sum(t.numel() * t.element_size() for t in hf.values())
        write_json(out / INDEX, {"metadata": {"total_size": size}, "weight_map": weight_map})
    write_json(out / "config.json", config)  # last: a dir with config.json has all its weights
    return out


weight_files = hf_weight_files  # the old name


def load_hf_dir(model_dir):
    """(weights, args) from an HF Llama dir: Meta-keyed, mmap'd in the stored dtype, wq/wk rows Meta's.
    Whether the dir's tokenizer fits the embedding table is load_checkpoint's check, for both formats."""
    d = Path(model_dir)
    config = read_json(d / "config.json", "the model config")
    args_from_config(config, d / "config.json")  # architecture errors before touching the weights
    files, weight_map = hf_weight_files(d)
    hf, where = {}, {}
    for f in files:
        try:
            part = load_file(f)  # mmap: a tensor's bytes are read when first used
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: not a readable .safetensors file ({e}); download it again") from None
        hf |= part
        where |= dict.fromkeys(part, f.name)
    wrong = [k for k, f in (weight_map or {}).items() if where.get(k) != f]
    if wrong:
        raise CheckpointError(f"{d / INDEX}: {wrong[:4]} not found in the shard it names; the index and the "
                              "shards are from different downloads: fetch them again")
    weights, args = hf_to_meta(hf, config, d / "config.json", where)
    check_weights(weights, args, d)
    return weights, args


def hf_tokenizer(model_dir):
    """(tokenizer.model path, llama31 names) for an HF dir (helpers.tokenizer.tokenizer_file)."""
    return tokenizer_file(model_dir)
