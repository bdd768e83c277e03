"""helpers.hf: our logits equal transformers' LlamaForCausalLM; HF-format dirs read, write and round-trip."""
import dataclasses
import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

from helpers import facts, hf
from helpers.checkpoint import CheckpointError, ModelArgs, is_llama3_8b, load_checkpoint
from helpers.model import forward
from helpers.random_checkpoint import random_weights, write_checkpoint
from helpers.reference import hf_attention, hf_logits, hf_model
from helpers.tokenizer import default_tokenizer_path, load_ranks, load_tokenizer, special_token_names

from cases import random_case

TOL = 1e-4


def max_diff(a, b):
    return (a.cpu() - b.cpu()).abs().max().item()


def test_logits_match_transformers(case, tmp_path):
    """Our files, opened by transformers' own from_pretrained, and helpers.reference's in-memory copy
    (what the notebooks and benches use) both give our forward's logits."""
    weights, args, tokens = case
    hf.write_hf_dir(tmp_path, weights, args)
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    ours = forward(weights, args, tokens)
    for theirs in hf_logits(model, tokens), hf_logits(hf_model(weights, args), tokens):
        assert ours.shape == theirs.shape == (len(tokens), args.vocab_size)
        assert max_diff(ours, theirs) <= TOL
        assert (ours.argmax(-1).cpu() == theirs.argmax(-1)).all()


def test_attention_probabilities_match_transformers(case):
    """forward(record=...)'s attention maps (what notebook 10 draws) are transformers' eager ones."""
    weights, args, tokens = case
    rec = {}
    forward(weights, args, tokens, record=rec)
    theirs = hf_attention(hf_model(weights, args), tokens)
    assert theirs.shape == (args.n_layers, args.n_heads, len(tokens), len(tokens))
    assert max_diff(torch.stack(rec["attn"]), theirs) <= TOL


def test_bf16_reference_shares_the_checkpoint_tensors():
    """In the stored dtype nothing is copied but wq/wk (HF's row order): how bench/scale fits the 8B."""
    weights, args = load_checkpoint()
    assert weights["tok_embeddings.weight"].dtype == torch.bfloat16
    model = hf_model(weights, args, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.data_ptr() == weights["tok_embeddings.weight"].data_ptr()
    assert model.model.layers[0].mlp.down_proj.weight.data_ptr() == \
        weights["layers.0.feed_forward.w2.weight"].data_ptr()
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() != \
        weights["layers.0.attention.wq.weight"].data_ptr()


def test_unpermuted_qk_would_not_match(tmp_path):
    """The q/k row reorder is what makes rotate-half RoPE equal Meta's pairs: without it logits differ."""
    weights, args, tokens = random_case(tmp_path, "n_rep2")
    ours = forward(weights, args, tokens)
    assert max_diff(ours, hf_logits(hf_model(weights, args), tokens)) <= TOL
    # pre-undo the reorder: meta_to_hf then puts Meta's row order in HF's slots, as a naive rename would
    naive = {k: hf.reorder(k, w, args, hf.unpermute) for k, w in weights.items()}
    assert max_diff(ours, hf_logits(hf_model(naive, args), tokens)) > 100 * TOL


def test_scaled_rope_case_is_not_vacuous(tmp_path):
    """Without llama 3.1 scaling the scaled case's logits move far beyond the tolerance."""
    weights, args, tokens = random_case(tmp_path, "scaled_rope")
    _, config = hf.meta_to_hf(weights, args)
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    plain = dataclasses.replace(args, use_scaled_rope=False)
    assert max_diff(forward(weights, plain, tokens), hf_logits(hf_model(weights, args), tokens)) > 100 * TOL


def test_permute_inverts_and_moves_pairs_to_halves():
    n_heads, hd = 2, 8
    w = torch.arange(n_heads * hd, dtype=torch.float32)[:, None].repeat(1, 3)  # row r holds r
    p = hf.permute(w, n_heads)
    assert p[:hd, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]  # head 0: pair firsts, then pair seconds
    assert p[hd:, 0].tolist() == [8, 10, 12, 14, 9, 11, 13, 15]
    assert torch.equal(hf.unpermute(p, n_heads), w)


@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip_is_bit_exact(tmp_path, shards):
    weights, args = load_checkpoint()
    hf.write_hf_dir(tmp_path, weights, args, shards=shards)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) == shards and (tmp_path / hf.INDEX).is_file() == (shards > 1)
    back, args2 = load_checkpoint(tmp_path)
    assert args2 == args and args2.hidden_dim == args.hidden_dim
    assert list(back) == list(weights)
    for k in weights:
        assert back[k].dtype == weights[k].dtype == torch.bfloat16
        assert torch.equal(back[k], weights[k]), k
    mem, args3 = hf.hf_to_meta(*hf.meta_to_hf(weights, args))
    assert args3 == args and all(torch.equal(mem[k], weights[k]) for k in weights)


def test_tied_round_trip_stores_one_embedding(tmp_path):
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128256)
    weights = random_weights(args, seed=3, tied=True)
    weights["output.weight"] = weights["tok_embeddings.weight"]
    hf.write_hf_dir(tmp_path / "hf", weights, args)
    from safetensors import safe_open
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is True
    back, _ = load_checkpoint(tmp_path / "hf")
    assert back["output.weight"] is back["tok_embeddings.weight"]
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def strip_ours(d):
    """Make a dir look like a real download: config.json without our params.json copy."""
    config = json.loads((d / "config.json").read_text())
    del config[hf.OUR_KEY]
    (d / "config.json").write_text(json.dumps(config))
    return config


def test_real_download_layout_loads(tmp_path):
    """A config.json as HF writes it (no params.json copy): args come from the HF keys alone."""
    weights, args = load_checkpoint()
    hf.write_hf_dir(tmp_path, weights, args, shards=2)
    strip_ours(tmp_path)
    back, args2 = load_checkpoint(tmp_path)
    for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps", "rope_theta",
              "use_scaled_rope", "head_dim", "n_rep"):
        assert getattr(args2, f) == getattr(args, f), f
    assert all(torch.equal(back[k], weights[k]) for k in weights)
    torch.testing.assert_close(forward(back, args2, [128000, 791]), forward(weights, args, [128000, 791]))


# meta-llama/Meta-Llama-3-8B's config.json, as published
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 128256}


def test_llama3_8b_config_gives_meta_params():
    args = hf.args_from_config(LLAMA3_8B_CONFIG)
    assert args == ModelArgs.from_params(facts.PARAMS)
    assert is_llama3_8b(args)
    llama31 = LLAMA3_8B_CONFIG | {"max_position_embeddings": 131072, "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    args31 = hf.args_from_config(llama31)
    assert args31.use_scaled_rope and args31.max_seq_len == 131072 and not is_llama3_8b(args31)
    v5 = {k: v for k, v in llama31.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = llama31["rope_scaling"] | {"rope_theta": 500000.0}  # transformers 5 spelling
    assert hf.args_from_config(v5) == args31


@pytest.mark.parametrize("dim, hidden, recipe", [
    (4096, 14336, (1024, 1.3)),  # Meta-Llama-3-8B
    (8192, 28672, (4096, 1.3)),  # 70B
    (2048, 8192, None), (3072, 8192, None), (16384, 53248, None), (64, 100, None), (128, 384, None)])
def test_ffn_params_reproduce_intermediate_size(dim, hidden, recipe):
    multiple_of, mult = hf.ffn_params(dim, hidden)
    assert recipe is None or (multiple_of, mult) == recipe
    assert ModelArgs(dim=dim, n_layers=1, n_heads=2, vocab_size=8, multiple_of=multiple_of,
                     ffn_dim_multiplier=mult).hidden_dim == hidden


def test_load_checkpoint_prefers_original_folder(tmp_path, monkeypatch):
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=1, vocab_size=128256)
    hf.write_hf_dir(tmp_path, random_weights(args, seed=1), args)
    meta = random_weights(args, seed=2)
    write_checkpoint(tmp_path / "original", args, meta, tokenizer=default_tokenizer_path())
    monkeypatch.setenv("LLAMA3_DIR", str(tmp_path))
    weights, _ = load_checkpoint()
    assert all(torch.equal(weights[k], meta[k]) for k in meta)
    assert load_tokenizer().path == tmp_path / "original" / "tokenizer.model"


# ---- tokenizer of an HF dir


@pytest.fixture(scope="module")
def llama3_json():
    """tokenizer.json(llama31) -> dict with the Llama 3 vocab spelled as HF spells it (GPT-2 byte chars)."""
    ranks = load_ranks(default_tokenizer_path())
    spell = hf.bytes_to_unicode()
    vocab = {"".join(spell[c] for c in b): r for b, r in ranks.items()}

    def make(llama31=False):
        added = [{"id": len(ranks) + i, "content": n, "special": True}
                 for i, n in enumerate(special_token_names(llama31))]
        return {"added_tokens": added, "model": {"type": "BPE", "vocab": dict(vocab), "merges": []}}
    return make


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    """A tiny HF dir (vocab 128256 so the tokenizer fits), copied per test."""
    d = tmp_path_factory.mktemp("small_hf")
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128256)
    hf.write_hf_dir(d, random_weights(args, seed=4), args)
    return d


def fresh(small_hf, tmp_path):
    return shutil.copytree(small_hf, tmp_path / "m")


def test_bytes_to_unicode_equals_transformers():
    assert hf.bytes_to_unicode() == hf_bytes_to_unicode()


@pytest.mark.parametrize("llama31", [False, True])
def test_hf_tokenizer_json_checked_then_bundled_file_used(small_hf, tmp_path, llama3_json, llama31):
    d = fresh(small_hf, tmp_path)
    data = llama3_json(llama31)
    assert data["model"]["vocab"]["Ġthe"] == 279 and data["model"]["vocab"]["ĊĊ"] == 271
    (d / "tokenizer.json").write_text(json.dumps(data))
    tok = load_tokenizer(d)
    assert tok.path == default_tokenizer_path()
    assert ("<|eom_id|>" in tok.special_tokens) == llama31
    if llama31:
        assert tok.special_tokens["<|eom_id|>"] == 128008
        assert load_checkpoint(d)[1].dim == 32


def test_tokenizer_json_is_checked_once_per_file_version(small_hf, tmp_path, llama3_json):
    from helpers import tokenizer
    d = fresh(small_hf, tmp_path)
    (d / "tokenizer.json").write_text(json.dumps(llama3_json()))
    tokenizer._check_tokenizer_json.cache_clear()
    load_checkpoint(d)
    load_tokenizer(d)                                        # the notebooks' pair: one 128,000-entry check
    assert tokenizer._check_tokenizer_json.cache_info().misses == 1
    bad = llama3_json()
    bad["added_tokens"][9]["content"] = "<|im_end|>"
    (d / "tokenizer.json").write_text(json.dumps(bad) + " ")  # a new version of the file is checked again
    with pytest.raises(CheckpointError, match="im_end"):
        load_tokenizer(d)


def test_hf_tokenizer_without_tokenizer_json_is_bundled(small_hf, tmp_path):
    assert load_tokenizer(fresh(small_hf, tmp_path)).path == default_tokenizer_path()


def test_hf_dir_with_only_original_tokenizer_uses_it(small_hf, tmp_path):
    d = fresh(small_hf, tmp_path)
    (d / "original").mkdir()
    shutil.copy(default_tokenizer_path(), d / "original" / "tokenizer.model")
    assert load_tokenizer(d).path == d / "original" / "tokenizer.model"
    assert load_checkpoint(d)[1].n_kv_heads == 2


@pytest.mark.parametrize("edit, match", [
    ("swap", r"token 'Ġthe' has id 1820, Llama 3 has 279"),
    ("special", r"special token id 128009 is '<\|im_end\|>', Llama 3 has '<\|eot_id\|>'"),
    ("drop", r"127999 vocab entries"),
])
def test_wrong_tokenizer_json_is_refused(small_hf, tmp_path, llama3_json, edit, match):
    d = fresh(small_hf, tmp_path)
    data = llama3_json()
    vocab = data["model"]["vocab"]
    if edit == "swap":
        vocab["Ġthe"], vocab["the"] = vocab["the"], vocab["Ġthe"]
    elif edit == "special":
        data["added_tokens"][9]["content"] = "<|im_end|>"
    else:
        vocab.pop("Ġthe")
    (d / "tokenizer.json").write_text(json.dumps(data))
    for load in (load_tokenizer, load_checkpoint) if edit == "special" else (load_checkpoint,):
        with pytest.raises(CheckpointError, match=match) as e:
            load(d)
        assert "tokenizer.json" in str(e.value) and "original" in str(e.value)


# ---- bad HF dirs: CheckpointError naming the file and the fix


def edit_config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, match", [
    (dict(model_type="mistral", architectures=["MistralForCausalLM"]), r"not a Llama causal LM.*LlamaForCausalLM"),
    (dict(model_type="llama", architectures=["LlamaModel"]), r"not a Llama causal LM"),
    (dict(hidden_act="gelu"), r"'hidden_act': 'gelu'.*cannot run"),
    (dict(attention_bias=True), r"'attention_bias': True"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"'rope_type': 'yarn'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"lacks 'low_freq_factor'"),
    (dict(hidden_size=None), r"missing key\(s\) \['hidden_size'\]"),
])
def test_unsupported_config_is_refused(small_hf, tmp_path, changes, match):
    d = fresh(small_hf, tmp_path)
    edit_config(d, **changes)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(d)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("changes, match", [
    (dict(intermediate_size=512), r"intermediate_size=512.*model\.layers\.0\.mlp\.gate_proj\.weight in model\."
                                  r"safetensors: \(256, 32\) != \(512, 32\).*use the config.json that came"),
    (dict(hidden_size=64, head_dim=None), r"hidden_size=64.*model\.embed_tokens\.weight in model\.safetensors"),
    (dict(num_key_value_heads=4), r"heads=4/4.*k_proj"),
    (dict(num_hidden_layers=2), r"num_hidden_layers=2\): missing \['model\.layers\.1\."),
    (dict(tie_word_embeddings=True), r"unexpected \['lm_head\.weight'\]"),
])
def test_config_that_disagrees_with_tensors_is_refused(small_hf, tmp_path, changes, match):
    d = fresh(small_hf, tmp_path)
    strip_ours(d)
    edit_config(d, **changes)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(d)
    assert "config.json" in str(e.value)


def test_edited_config_disagreeing_with_our_params_copy_is_refused(small_hf, tmp_path):
    d = fresh(small_hf, tmp_path)
    edit_config(d, num_key_value_heads=4)
    with pytest.raises(CheckpointError, match=r"config.json: llama3_by_hand_params disagrees.*n_kv_heads"):
        load_checkpoint(d)


def test_missing_lm_head_when_untied_names_the_flag(small_hf, tmp_path):
    d = fresh(small_hf, tmp_path)
    strip_ours(d)
    from safetensors.torch import load_file, save_file
    sd = load_file(d / "model.safetensors")
    sd.pop("lm_head.weight")
    save_file({k: v.clone() for k, v in sd.items()}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \['lm_head\.weight'\] \(config.json says "
                                              r"tie_word_embeddings=false\)"):
        load_checkpoint(d)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512)
    hf.write_hf_dir(d, random_weights(args, seed=5), args, shards=3)
    return d


def test_missing_shard_is_named(sharded, tmp_path):
    d = shutil.copytree(sharded, tmp_path / "m")
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json names 1 shard\(s\) missing from "
                                              r".*\['model-00002-of-00003.safetensors'\].*incomplete"):
        load_checkpoint(d)


def test_shards_without_index_are_refused(sharded, tmp_path):
    d = shutil.copytree(sharded, tmp_path / "m")
    (d / hf.INDEX).unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors.index.json; download the index"):
        load_checkpoint(d)


def test_index_pointing_at_wrong_shard_is_refused(sharded, tmp_path):
    d = shutil.copytree(sharded, tmp_path / "m")
    index = json.loads((d / hf.INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"
    (d / hf.INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"\['model.norm.weight'\] not found in the shard it names"):
        load_checkpoint(d)


def test_corrupt_and_pickle_only_dirs_are_refused(sharded, tmp_path):
    d = shutil.copytree(sharded, tmp_path / "m")
    shard = d / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model-00003-of-00003.safetensors: not a readable"):
        load_checkpoint(d)
    for p in [*d.glob("*.safetensors"), d / hf.INDEX]:
        p.unlink()
    (d / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"pytorch_model\*\.bin pickles; we load \.safetensors only"):
        load_checkpoint(d)


def test_small_vocab_hf_dir_loads_without_tokenizer_check(sharded):
    weights, args = hf.load_hf_dir(sharded)
    assert args.vocab_size == 512 and weights["tok_embeddings.weight"].shape == (512, 32)
    with pytest.raises(CheckpointError, match=r"has 128256 tokens but .*config.json has vocab_size=512"):
        load_checkpoint(sharded)


def test_write_refuses_a_dir_with_hf_weights(sharded):
    weights, args = hf.load_hf_dir(sharded)
    with pytest.raises(FileExistsError, match="already holds HF weights"):
        hf.write_hf_dir(sharded, weights, args)
