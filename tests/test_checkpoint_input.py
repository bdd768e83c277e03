"""Bad input to the checkpoint loader: params.json values, tensor dtypes, paths. Each gets one clear error."""
import dataclasses
import json
import os
import shutil

import pytest
import torch

from helpers import checkpoint, facts, model_dir
from helpers.checkpoint import CheckpointError, ModelArgs, load_checkpoint, resolve_dir
from helpers.random_checkpoint import random_weights, write_checkpoint, write_random_checkpoint

from cases import SMALL  # tests/ is on sys.path under pytest (tests/conftest.py)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("src") / "m", **SMALL)


@pytest.fixture
def ckpt(source, tmp_path):
    return shutil.copytree(source, tmp_path / "m")


def edit_params(d, **changes):
    p = json.loads((d / "params.json").read_text())
    (d / "params.json").write_text(json.dumps({**p, **changes}))


# ---- params.json: every known key's type and range -----------------------------------------------

@pytest.mark.parametrize("changes, match", [
    (dict(use_scaled_rope="false"), r"use_scaled_rope='false' must be true or false \(a JSON boolean\), not a str; "
                                    r"write it without quotes"),
    (dict(use_scaled_rope=1), r"use_scaled_rope=1 must be true or false"),
    (dict(rope_theta="500000"), r"rope_theta='500000' must be a positive finite number, not a str"),
    (dict(ffn_dim_multiplier="1.3"), r"ffn_dim_multiplier='1.3' must be a positive finite number or null, not a str"),
    (dict(max_seq_len="8192"), r"max_seq_len='8192' must be a positive integer, not a str"),
    (dict(norm_eps=-1e-5), r"norm_eps=-1e-05 must be a positive finite number; fix the value"),
    (dict(norm_eps=float("nan")), r"norm_eps=nan must be a positive finite number"),
    (dict(rope_theta=float("inf")), r"rope_theta=inf must be a positive finite number"),
    (dict(rope_theta=0), r"rope_theta=0 must be a positive"),
    (dict(ffn_dim_multiplier=-1.3), r"ffn_dim_multiplier=-1.3 must be"),
    (dict(n_kv_heads=2.0), r"n_kv_heads=2.0 must be a positive integer, not a float"),
    (dict(dim=True), r"dim=True must be a positive integer, not a bool"),
    (dict(multiple_of=-256), r"multiple_of=-256 must be a positive integer"),
    (dict(use_scaled_rope=True, rope_scaling_factor=0), r"rope_scaling_factor=0 must be a positive"),
    (dict(rope_high_freq_factor=1.0), r"rope_high_freq_factor=1.0 must be greater than rope_low_freq_factor=1.0"),
    (dict(n_kv_head=1), r"unknown key 'n_kv_head'; did you mean 'n_kv_heads'\?"),
    (dict(rope_thetha=1e4), r"unknown key 'rope_thetha'; did you mean 'rope_theta'\?"),
    (dict(max_seq_length=4096), r"unknown key 'max_seq_length'; did you mean 'max_seq_len'\?"),
])
def test_bad_params_value_is_named_with_its_file(ckpt, changes, match):
    edit_params(ckpt, **changes)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(ckpt)
    assert str(e.value).startswith(f"{ckpt / 'params.json'}: ")


def test_numbers_as_meta_writes_them_load(ckpt):
    edit_params(ckpt, rope_theta=500000, norm_eps=1e-5, ffn_dim_multiplier=None, max_seq_len=131072,
                use_scaled_rope=True, rope_scaling_factor=32)
    args = load_checkpoint(ckpt)[1]
    assert args.rope_theta == 500000.0 and isinstance(args.rope_theta, float)   # int accepted where float expected
    assert isinstance(args.rope_scaling_factor, float) and args.ffn_dim_multiplier is None
    assert args.use_scaled_rope is True and args.max_seq_len == 131072


def real_meta_keys():
    """Every key Meta's own ModelArgs (llama-models, Llama 3 and 4) reads from params.json."""
    pytest.importorskip("llama_models")
    from llama_models.llama3.args import ModelArgs as M3
    from llama_models.llama4.args import ModelArgs as M4
    return {f.name for f in dataclasses.fields(M3)} | set(M4.model_fields) | {"vision_model", "rope_freq_base"}


def test_no_real_meta_key_is_called_a_typo():
    keys = real_meta_keys()
    assert {"max_batch_size", "vision_chunk_size", "quantization_args", "rope_scaling_factor"} <= keys
    ours = {f.name for f in dataclasses.fields(ModelArgs)}
    # llama 3.1/3.2 style params.json plus every other key Meta's code knows: all load, unknown ones kept
    params = {**facts.PARAMS, "use_scaled_rope": True, "max_seq_len": 131072,
              **{k: "x" for k in keys - ours}}
    a = ModelArgs.from_params(params)
    assert set(a.extra) == keys - ours and a.use_scaled_rope is True
    assert ModelArgs.from_params({**facts.PARAMS, "synthetic": True}).extra == {"synthetic": True}


def test_model_args_checks_without_a_file():
    with pytest.raises(CheckpointError, match=r"params.json: use_scaled_rope='no' must be true or false"):
        ModelArgs(**SMALL, use_scaled_rope="no")
    with pytest.raises(CheckpointError, match=r"config.json: rope_theta='1e4' must be"):
        ModelArgs.from_params({**SMALL, "rope_theta": "1e4"}, source="config.json")
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("key, value, match", [
    ("rms_norm_eps", "1e-5", r"config.json: rms_norm_eps='1e-5' must be a positive finite number, not a str"),
    ("num_key_value_heads", 2.0, r"config.json: num_key_value_heads=2.0 must be a positive integer, not a float"),
    ("rope_theta", -1, r"config.json: rope_theta=-1 must be a positive finite number"),
    ("hidden_size", "64", r"config.json: hidden_size='64' must be a positive integer"),        # before dim // heads
    ("num_attention_heads", 0, r"config.json: num_attention_heads=0 must be a positive integer"),
    ("intermediate_size", 176.0, r"config.json: intermediate_size=176.0 must be a positive integer"),
])
def test_bad_hf_config_value_is_named_by_its_hf_key(tmp_path, key, value, match):
    from helpers import hf
    args = ModelArgs(**SMALL)
    d = hf.write_hf_dir(tmp_path / "hf", random_weights(args), args)
    config = json.loads((d / "config.json").read_text())
    del config[hf.OUR_KEY]
    (d / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(d)


# ---- tensors: floating point, real data, tensors only ---------------------------------------------

def resave(d, **replace):
    args = ModelArgs(**SMALL)
    write_checkpoint(d, args, {**random_weights(args), **replace})


@pytest.mark.parametrize("value, match", [
    (torch.zeros(64, dtype=torch.int8), r"norm.weight has dtype torch.int8; .*floating-point.*bf16"),
    (torch.zeros(64, dtype=torch.complex64), r"norm.weight has dtype torch.complex64"),
    (torch.zeros(64, dtype=torch.bool), r"norm.weight has dtype torch.bool"),
    (torch.empty(64, device="meta"), r"norm.weight is a 'meta' device tensor, which has no data"),
    ([1.0] * 64, r"norm.weight is a list, not a tensor"),
    (1.0, r"norm.weight is a float, not a tensor"),
])
def test_bad_tensor_is_named(ckpt, value, match):
    resave(ckpt, **{"norm.weight": value})
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(ckpt)
    assert "consolidated.00.pth" in str(e.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_float_dtypes_load(tmp_path, dtype):
    d = write_random_checkpoint(tmp_path, dtype=dtype, **SMALL)
    assert load_checkpoint(d)[0]["norm.weight"].dtype == dtype


def test_non_string_keys_give_the_key_error(ckpt):
    w = torch.load(ckpt / "consolidated.00.pth", weights_only=True)
    torch.save({**w, 7: torch.zeros(1), "zzz": torch.zeros(1)}, ckpt / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 2: \[7, 'zzz'\]"):
        load_checkpoint(ckpt)


# ---- paths ------------------------------------------------------------------------------------------

def test_relative_path_tries_cwd_then_repo_root(source, tmp_path, monkeypatch):
    root = tmp_path / "repo"
    shutil.copytree(source, root / "models" / "m")
    (root / "notebooks").mkdir()
    monkeypatch.setattr(model_dir, "ROOT", root)
    monkeypatch.chdir(root / "notebooks")                      # where notebooks run
    monkeypatch.setenv("LLAMA3_DIR", "models/m")
    assert load_checkpoint()[1].n_layers == 2                   # found under the repo root
    assert load_checkpoint("models/m")[1].n_layers == 2         # the argument too
    write_random_checkpoint(root / "notebooks" / "models" / "m", **{**SMALL, "n_layers": 1})
    assert load_checkpoint()[1].n_layers == 1                   # the cwd comes first
    monkeypatch.setenv("LLAMA3_DIR", "models/nope")
    with pytest.raises(CheckpointError, match=r"LLAMA3_DIR models/nope \(neither .*notebooks/models/nope nor "
                                              r".*repo/models/nope\) does not exist"):
        load_checkpoint()


def test_bundled_relative_path_works_from_notebooks(monkeypatch):
    monkeypatch.chdir(checkpoint.ROOT / "notebooks")
    assert resolve_dir("assets/llama3-tiny").resolve() == checkpoint.DEFAULT_DIR.resolve()


def test_tilde_is_expanded(source, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(source, tmp_path / "m")
    assert load_checkpoint("~/m")[1].dim == 64
    monkeypatch.setenv("LLAMA3_DIR", "~/m")
    assert resolve_dir() == tmp_path / "m"


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_blank_llama3_dir_is_unset(monkeypatch, value):
    monkeypatch.setenv("LLAMA3_DIR", value)
    assert resolve_dir() == checkpoint.DEFAULT_DIR


@pytest.mark.parametrize("name", ["consolidated.00.pth", "params.json"])
def test_a_checkpoint_file_means_its_folder(ckpt, name):
    assert load_checkpoint(ckpt / name)[1].dim == 64


def test_another_file_asks_for_the_folder(ckpt):
    (ckpt / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"notes.txt is a file; pass the folder that holds params.json"):
        load_checkpoint(ckpt / "notes.txt")


def test_browser_duplicate_is_not_a_shard(ckpt):
    shutil.copy(ckpt / "consolidated.00.pth", ckpt / "consolidated.00 (1).pth")
    assert load_checkpoint(ckpt)[1].dim == 64


def test_only_stray_pth_files_are_named(ckpt):
    os.rename(ckpt / "consolidated.00.pth", ckpt / "consolidated.00 (1).pth")
    with pytest.raises(CheckpointError, match=r"no consolidated.00.pth in .*only \['consolidated.00 \(1\).pth'\]: "
                                              r"rename the weights to consolidated.00.pth"):
        load_checkpoint(ckpt)
