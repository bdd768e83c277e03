import json
import os
import shutil

import pytest
import torch

from helpers import checkpoint, facts, model_dir
from helpers.checkpoint import CheckpointError, ModelArgs, expected_shapes, load_checkpoint
from helpers.random_checkpoint import random_weights, write_checkpoint, write_random_checkpoint

from cases import SMALL  # tests/ is on sys.path under pytest (tests/conftest.py)


@pytest.fixture
def ckpt(tmp_path):
    return write_random_checkpoint(tmp_path / "m", **SMALL)


def test_model_args_from_8b_params():
    a = ModelArgs.from_params({**facts.PARAMS, "some_new_key": [1, 2]})
    assert (a.head_dim, a.n_rep, a.hidden_dim) == (128, 4, 14336)
    assert a.extra == {"some_new_key": [1, 2]}              # unknown keys kept, not dropped
    assert a.to_params()["some_new_key"] == [1, 2]
    assert {k: a.to_params()[k] for k in facts.PARAMS} == facts.PARAMS
    n = sum(torch.Size(s).numel() for s in expected_shapes(a).values())
    assert len(expected_shapes(a)) == facts.N_TENSORS and n == facts.N_PARAMS


def test_n_kv_heads_defaults_to_n_heads():
    a = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=10)
    assert a.n_kv_heads == 4 and a.n_rep == 1


@pytest.mark.parametrize("params,match", [
    (dict(dim=65, n_layers=1, n_heads=4, vocab_size=10), "not divisible by n_heads"),
    (dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=10), "not a multiple of n_kv_heads"),
    (dict(dim=64, n_layers=0, n_heads=4, vocab_size=10), "n_layers=0 must be a positive integer; fix the value"),
])
def test_model_args_validation(params, match):
    with pytest.raises(CheckpointError, match=match):
        ModelArgs(**params)


def test_load_random_checkpoint(ckpt):
    weights, args = load_checkpoint(ckpt)
    assert args.dim == 64 and args.n_kv_heads == 2
    assert args.hidden_dim == weights["layers.0.feed_forward.w1.weight"].shape[0]
    assert set(weights) == set(expected_shapes(args))
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    assert not checkpoint.is_tied(weights) and not checkpoint.is_llama3_8b(args, weights)


def test_random_weights_are_seeded():
    a = ModelArgs(**SMALL)
    w0, w1, w2 = random_weights(a, 0), random_weights(a, 0), random_weights(a, 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(w0["layers.0.attention.wq.weight"], w2["layers.0.attention.wq.weight"])
    assert random_weights(a, dtype=torch.float32)["norm.weight"].dtype == torch.float32


def test_tensors_are_memory_mapped(ckpt):
    weights, _ = load_checkpoint(ckpt)
    path = str(ckpt / "consolidated.00.pth")
    # mmap=True: the file itself is mapped into the process (no copy of it is read into RAM)
    with open("/proc/self/maps") as f:
        assert any(line.rstrip().endswith(path) for line in f)
    assert weights["tok_embeddings.weight"].is_contiguous()


def test_tied_embeddings(tmp_path):
    d = write_random_checkpoint(tmp_path, tied=True, **SMALL)
    weights, _ = load_checkpoint(d)
    assert weights["output.weight"] is weights["tok_embeddings.weight"] and checkpoint.is_tied(weights)


def test_resolution_order(ckpt, tmp_path, monkeypatch):
    other = write_random_checkpoint(tmp_path / "other", **{**SMALL, "n_layers": 1})
    assert load_checkpoint()[1].dim == ModelArgs(**json.loads((checkpoint.DEFAULT_DIR / "params.json").read_text())).dim
    monkeypatch.setenv("LLAMA3_DIR", str(other))
    assert load_checkpoint()[1].n_layers == 1                # env beats the default
    assert load_checkpoint(ckpt)[1].n_layers == 2            # argument beats env


def test_default_checkpoint_sha256_is_verified(tmp_path, monkeypatch):
    d = tmp_path / "default"
    shutil.copytree(checkpoint.DEFAULT_DIR, d)
    monkeypatch.setattr(checkpoint, "DEFAULT_DIR", d)
    monkeypatch.setattr(model_dir, "DEFAULT_DIR", d)            # where load_checkpoint() finds it
    load_checkpoint()                                          # intact copy loads
    with open(d / "consolidated.00.pth", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="is not the pinned DEFAULT_SHA256.*git checkout"):
        load_checkpoint()


def test_bundled_sha256_is_pinned_in_code():
    assert checkpoint.sha256(checkpoint.DEFAULT_DIR / "consolidated.00.pth") == checkpoint.DEFAULT_SHA256
    assert not list(checkpoint.DEFAULT_DIR.glob("*.sha256"))  # no sidecar that a writer could rewrite


def test_write_checkpoint_refuses_the_bundled_dir(monkeypatch, tmp_path):
    d = tmp_path / "bundled"
    monkeypatch.setattr(model_dir, "DEFAULT_DIR", d)   # where check_not_bundled looks
    args = ModelArgs(**SMALL)
    with pytest.raises(CheckpointError, match="is the bundled model.*overwrite_bundled=True"):
        write_random_checkpoint(d, args)
    assert not d.exists()
    write_checkpoint(d, args, random_weights(args), overwrite_bundled=True)
    assert load_checkpoint(d, verify=False)[1] == args


# ---- writers replace files atomically: a reader with the old file mmap'd keeps its weights ----------

def test_rewriting_a_loaded_checkpoint_keeps_the_old_weights(ckpt):
    args = ModelArgs(**SMALL)
    old, _ = load_checkpoint(ckpt)                              # mmap'd from the file we now replace
    before = {k: v.clone() for k, v in old.items()}
    write_checkpoint(ckpt, args, random_weights(args, seed=1))  # same shapes, same file size
    assert all(torch.equal(old[k], before[k]) for k in old)
    new, _ = load_checkpoint(ckpt)
    assert torch.equal(new["norm.weight"], random_weights(args, seed=1)["norm.weight"])
    assert not torch.equal(new["norm.weight"], old["norm.weight"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["consolidated.00.pth", "params.json"]  # no temp files


def test_failed_hf_write_leaves_no_half_file(tmp_path, monkeypatch):
    from helpers import hf
    args = ModelArgs(**SMALL)

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(hf, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        hf.write_hf_dir(tmp_path / "hf", random_weights(args), args)
    assert list((tmp_path / "hf").iterdir()) == []  # no model.safetensors stub, no config.json, no temp file
    monkeypatch.undo()
    hf.write_hf_dir(tmp_path / "hf", random_weights(args), args)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    w, _ = load_checkpoint(tmp_path / "hf")
    assert torch.equal(w["norm.weight"], random_weights(args)["norm.weight"])


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "params.json"
    path.write_text("old")

    def crash(p):
        p.write_text("half writ")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["params.json"]
    checkpoint.atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["params.json"]


# ---- bad input: one clear error naming the file or value -----------------------------------------

def test_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match=r"model dir .*nope does not exist.*LLAMA3_DIR"):
        load_checkpoint(tmp_path / "nope")


def test_params_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"params.json not found"):
        load_checkpoint(tmp_path)


def test_params_not_json(ckpt):
    (ckpt / "params.json").write_text("{dim: 4096")
    with pytest.raises(CheckpointError, match=r"params.json is not valid JSON"):
        load_checkpoint(ckpt)


def test_params_missing_key(ckpt):
    p = json.loads((ckpt / "params.json").read_text())
    del p["n_heads"]
    (ckpt / "params.json").write_text(json.dumps(p))
    with pytest.raises(CheckpointError, match=r"params.json: missing key\(s\) \['n_heads'\]"):
        load_checkpoint(ckpt)


def test_no_pth(ckpt):
    (ckpt / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=r"no consolidated.00.pth in .*download the checkpoint's"):
        load_checkpoint(ckpt)


def test_copied_shard_is_not_taken_for_model_parallel(ckpt):
    shutil.copy(ckpt / "consolidated.00.pth", ckpt / "consolidated.01.pth")  # multi-shard: tests/test_shards.py
    with pytest.raises(CheckpointError, match=r"copies of one single-file checkpoint\? Keep consolidated.00.pth"):
        load_checkpoint(ckpt)


def test_truncated_pth(ckpt):
    p = ckpt / "consolidated.00.pth"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: cannot read this checkpoint.*truncated"):
        load_checkpoint(ckpt)


def test_garbage_pth(ckpt):
    (ckpt / "consolidated.00.pth").write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match=r"cannot read this checkpoint"):
        load_checkpoint(ckpt)


def test_wrong_shape_named(ckpt):
    args = ModelArgs(**SMALL)
    w = random_weights(args)
    w["layers.1.attention.wk.weight"] = torch.zeros(16, 64, dtype=torch.bfloat16)
    write_checkpoint(ckpt, args, w)
    with pytest.raises(CheckpointError, match=r"layers.1.attention.wk.weight: \(16, 64\) != expected \(32, 64\)"):
        load_checkpoint(ckpt)


def test_missing_and_unexpected_keys(ckpt):
    args = ModelArgs(**SMALL)
    w = random_weights(args)
    del w["layers.0.ffn_norm.weight"]
    w["layers.0.feed_forward.w4.weight"] = torch.zeros(2)
    write_checkpoint(ckpt, args, w)
    with pytest.raises(CheckpointError, match=r"missing 1: \['layers.0.ffn_norm.weight'\].*"
                                              r"unexpected 1: \['layers.0.feed_forward.w4.weight'\]"):
        load_checkpoint(ckpt)


def test_params_disagree_with_layers(ckpt):
    p = json.loads((ckpt / "params.json").read_text())
    p["n_layers"] = 3
    (ckpt / "params.json").write_text(json.dumps(p))
    with pytest.raises(CheckpointError, match=r"missing 9: \['layers.2"):
        load_checkpoint(ckpt)


def test_tokenizer_larger_than_embeddings(tmp_path):
    d = write_random_checkpoint(tmp_path, **{**SMALL, "vocab_size": 1000})
    with pytest.raises(CheckpointError, match=r"tokenizer .*tokenizer.model has 128256 tokens but the model has "
                                              r"only 1000 embedding rows \(.*params.json has vocab_size=1000\)"):
        load_checkpoint(d)


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this would write a file: code execution
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused(ckpt, tmp_path):
    target = tmp_path / "side_effect.txt"
    weights, _ = load_checkpoint(ckpt)
    torch.save({**{k: v.clone() for k, v in weights.items()}, "evil": Evil(target)}, ckpt / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*weights_only=True"):
        load_checkpoint(ckpt)
    assert not target.exists()
    # the same file does run code when unpickled without weights_only: the test is real
    torch.load(ckpt / "consolidated.00.pth", weights_only=False)
    assert target.read_text() == "pwned"
