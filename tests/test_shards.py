"""Meta model-parallel checkpoints: split into N shards, merge lazily on load, agree with llama_models."""
import shutil
import weakref

import pytest
import torch

from helpers.checkpoint import CheckpointError, ModelArgs, load_checkpoint, write_json
from helpers.model import forward
from helpers.random_checkpoint import random_weights
from helpers.shards import (COPIES, ShardedWeights, rank_shapes, shard_name, split_weights, tail, world_sizes,
                            write_shards)

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32)
# (params, world): even and odd splits, kv heads split, whole, and copied (world > n_kv_heads), tied output
LAYOUTS = [
    (SMALL, 2),
    (SMALL, 4),                                                          # 2 kv heads, 4 ranks: copies
    (dict(SMALL, n_kv_heads=1), 2),                                      # the default model's GQA
    (dict(dim=96, n_layers=1, n_heads=6, n_kv_heads=1, vocab_size=128256, multiple_of=32,
          ffn_dim_multiplier=1.5), 3),                                   # odd world: 3 ranks, 1 kv head copied
    (dict(dim=96, n_layers=1, n_heads=6, n_kv_heads=6, vocab_size=128256, multiple_of=3), 6),
    (dict(SMALL, tied=True), 2),
]


def write(tmp_path, params, world, dtype=torch.bfloat16):
    params = dict(params)
    tied = params.pop("tied", False)
    args = ModelArgs(**params)
    weights = random_weights(args, seed=world, dtype=dtype, tied=tied)
    if tied:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return write_shards(tmp_path / "m", args, weights, world), weights, args


@pytest.mark.parametrize("params, world", LAYOUTS, ids=lambda x: str(x) if isinstance(x, int) else None)
def test_split_then_load_is_exact(tmp_path, params, world):
    d, weights, args = write(tmp_path, params, world)
    assert sorted(p.name for p in d.glob("*.pth")) == [shard_name(r) for r in range(world)]
    want = rank_shapes(args, world)
    for r in range(world):
        sd = torch.load(d / shard_name(r), weights_only=True, mmap=True)
        assert {k: tuple(t.shape) for k, t in sd.items()} == {k: s for k, s in want.items()
                                                               if k in sd}
        assert ("output.weight" in sd) != params.get("tied", False)
    merged, got_args = load_checkpoint(d)
    assert isinstance(merged, ShardedWeights) and got_args == args
    assert list(merged) == list(weights)
    assert len(merged) == len(weights)
    for k, t in weights.items():
        assert merged.shape(k) == t.shape
        assert torch.equal(merged[k], t), k


def test_meta_layouts_inferred_from_shapes(tmp_path):
    d, _, _ = write(tmp_path, SMALL, 4)
    w, _ = load_checkpoint(d)
    axes = {tail(k): axis for k, (_, axis) in w.layout.items()}
    assert axes["attention.wq.weight"] == axes["feed_forward.w1.weight"] == axes["feed_forward.w3.weight"] == 0
    assert axes["attention.wo.weight"] == axes["feed_forward.w2.weight"] == 1
    assert axes["tok_embeddings.weight"] == axes["output.weight"] == 0   # Llama 3: vocab-parallel
    assert axes["attention.wk.weight"] == COPIES                         # 4 ranks, 2 kv heads
    assert axes["attention_norm.weight"] is None and axes["norm.weight"] is None


def test_lazy(tmp_path):
    """Nothing merged at load; a merge is a fresh tensor per access; replicated ones are shard 0's mmap."""
    d, weights, args = write(tmp_path, dict(SMALL, dim=128, n_heads=8, n_kv_heads=8), 4)
    before = rss_anon()
    w, _ = load_checkpoint(d)
    total = sum(w.shape(k).numel() * 2 for k in w)
    assert rss_anon() - before < total / 4                               # the shards stay on disk (mmap)
    name = "layers.0.feed_forward.w2.weight"
    merged = w[name]
    assert w[name] is merged                                              # same tensor while it is held
    gone = weakref.ref(merged)
    del merged
    assert gone() is None                                                 # dropped after use: not kept
    assert w["norm.weight"] is w.shards[0]["norm.weight"]
    tokens = [128000, 7, 4242, 128255]
    assert torch.equal(forward(w, args, tokens), forward(weights, args, tokens))


def test_fp32_size_is_counted_without_merging(tmp_path, monkeypatch):
    """generate()'s fp32 decision must not merge (and so hold) every tensor of a big sharded model."""
    from helpers.model import fp32_bytes, fp32_weights
    d, weights, args = write(tmp_path, dict(SMALL, dim=128, n_heads=8, n_kv_heads=8), 4)
    w, _ = load_checkpoint(d)
    merges = []
    real = ShardedWeights.__getitem__
    monkeypatch.setattr(ShardedWeights, "__getitem__", lambda self, k: merges.append(k) or real(self, k))
    assert fp32_bytes(w) == fp32_bytes(weights)
    with pytest.raises(ValueError, match="max_bytes"):
        fp32_weights(w, max_bytes=fp32_bytes(weights) - 1)
    assert merges == []


def test_write_checkpoint_merges_shards_and_drops_stale_ones(tmp_path):
    """shards -> one file in the same dir: the old consolidated.01.pth must not shadow the new .00"""
    from helpers.checkpoint import write_checkpoint
    d, weights, args = write(tmp_path, SMALL, 2)
    w, _ = load_checkpoint(d)                                         # lazily merged
    out = write_checkpoint(tmp_path / "one", args, w)
    again, _ = load_checkpoint(out)
    assert isinstance(again, dict) and all(torch.equal(again[k], weights[k]) for k in weights)
    write_checkpoint(d, args, dict(weights))                          # over the 2-shard dir itself
    assert sorted(p.name for p in d.glob("*.pth")) == ["consolidated.00.pth"]
    assert torch.equal(load_checkpoint(d)[0]["layers.1.feed_forward.w2.weight"],
                       weights["layers.1.feed_forward.w2.weight"])


def test_fp32_size_counts_a_tied_table_once(tmp_path):
    from helpers.model import fp32_bytes
    d, weights, args = write(tmp_path, dict(SMALL, tied=True), 2)
    w, _ = load_checkpoint(d)
    assert fp32_bytes(w) == fp32_bytes(weights)                       # the dict shares one tensor


def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))


def test_shards_made_by_meta_reshard_mp_load(tmp_path):
    """llama_models.checkpoint.reshard_mp, the function Meta's generation code reshards with."""
    from llama_models.checkpoint import reshard_mp
    for n_kv, world in ((2, 2), (4, 4), (1, 2), (1, 4)):
        args = ModelArgs(**dict(SMALL, n_heads=8, n_kv_heads=n_kv))
        weights, d = random_weights(args, seed=n_kv), tmp_path / f"{n_kv}-{world}"
        d.mkdir()
        for r in range(world):
            torch.save(reshard_mp([weights], size=world, rank=r, repeat_qk_qv=max(world // n_kv, 1)),
                       d / shard_name(r))
        write_json(d / "params.json", args.to_params())
        merged, _ = load_checkpoint(d)
        assert all(torch.equal(merged[k], t) for k, t in weights.items())


def test_our_shards_merge_in_meta_reshard_mp():
    from llama_models.checkpoint import reshard_mp
    args = ModelArgs(**dict(SMALL, n_heads=8, n_kv_heads=4))
    weights = random_weights(args)
    for world in (2, 4):
        back = reshard_mp(split_weights(weights, args, world), size=1, rank=0)
        assert back.keys() == weights.keys() and all(torch.equal(back[k], t) for k, t in weights.items())


def test_meta_round_robin_kv_copies_are_refused(tmp_path):
    """reshard_mp with 2 kv heads over 4 ranks deals kv heads 0,1,0,1; rank 1's queries need kv head 0."""
    from llama_models.checkpoint import reshard_mp
    args = ModelArgs(**dict(SMALL, n_heads=8, n_kv_heads=2))
    weights, d = random_weights(args), tmp_path / "m"
    d.mkdir()
    for r in range(4):
        torch.save(reshard_mp([weights], size=4, rank=r, repeat_qk_qv=2), d / shard_name(r))
    write_json(d / "params.json", args.to_params())
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: .*w[kv].weight should be a copy of kv head 0.*"
                                              r"round-robin"):
        load_checkpoint(d)


@pytest.fixture
def four(tmp_path):
    d, _, _ = write(tmp_path, SMALL, 4)
    return d


def test_missing_rank(four):
    (four / shard_name(2)).unlink()
    with pytest.raises(CheckpointError, match=r"consolidated.02.pth missing; .*consolidated.00.pth to consolidated.03"):
        load_checkpoint(four)


def test_mixed_shapes(four, tmp_path):
    two, _, _ = write(tmp_path / "two", SMALL, 2)
    shutil.copy(two / shard_name(1), four / shard_name(1))
    with pytest.raises(CheckpointError, match=r"shards of tok_embeddings.weight have mixed shapes.*consolidated."
                                              r"00.pth: \(32064, 64\), consolidated.01.pth: \(64128, 64\)"):
        load_checkpoint(four)


def test_different_key_sets(four):
    sd = torch.load(four / shard_name(3), weights_only=True)
    del sd["layers.1.ffn_norm.weight"]
    torch.save(sd, four / shard_name(3))
    with pytest.raises(CheckpointError, match=r"consolidated.03.pth: its keys differ .*lacking \['layers.1.ffn_norm"):
        load_checkpoint(four)


def test_replicated_tensor_differs(four):
    sd = torch.load(four / shard_name(2), weights_only=True)
    sd["layers.0.ffn_norm.weight"] = sd["layers.0.ffn_norm.weight"] + 1
    torch.save(sd, four / shard_name(2))
    with pytest.raises(CheckpointError, match=r"consolidated.02.pth: layers.0.ffn_norm.weight is replicated .*differs"):
        load_checkpoint(four)


def test_mixed_dtypes(four):
    sd = torch.load(four / shard_name(1), weights_only=True)
    sd["layers.0.attention.wq.weight"] = sd["layers.0.attention.wq.weight"].float()
    torch.save(sd, four / shard_name(1))
    with pytest.raises(CheckpointError, match=r"shards of layers.0.attention.wq.weight have mixed dtypes"):
        load_checkpoint(four)


def test_params_of_another_model(four):
    write_json(four / "params.json", ModelArgs(**dict(SMALL, dim=128)).to_params())
    with pytest.raises(CheckpointError, match=r"4 shards of tok_embeddings.weight with shape \(32064, 64\) each do "
                                              r"not make its shape \(128256, 128\) from params.json"):
        load_checkpoint(four)


def test_params_with_more_layers(four):
    write_json(four / "params.json", ModelArgs(**dict(SMALL, n_layers=3)).to_params())
    with pytest.raises(CheckpointError, match=r"key set does not match params.json \(n_layers=3\); missing 9"):
        load_checkpoint(four)


def test_copies_of_one_file_are_not_shards(tmp_path):
    d, _, _ = write(tmp_path, SMALL, 1)
    shutil.copy(d / "consolidated.00.pth", d / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"full shape .* in each of the 2 shards.*Keep consolidated.00.pth only"):
        load_checkpoint(d)


def test_world_that_does_not_divide(tmp_path):
    args = ModelArgs(**SMALL)
    assert world_sizes(args) == [1, 2, 4]
    with pytest.raises(CheckpointError, match=r"over 3 ranks: 3 does not divide n_heads=4 .*use one of \[1, 2, 4\]"):
        write_shards(tmp_path, args, random_weights(args), 3)


def test_rewrite_with_fewer_shards_removes_stale_ones(four):
    w, args = load_checkpoint(four)
    write_shards(four, args, dict(w.items()), 2)
    assert sorted(p.name for p in four.glob("*.pth")) == [shard_name(0), shard_name(1)]
    merged, _ = load_checkpoint(four)
    assert all(torch.equal(merged[k], w[k]) for k in w)


def test_weights_of_another_shape_are_not_split(tmp_path):
    args = ModelArgs(**SMALL)
    weights = random_weights(args)
    weights["layers.1.feed_forward.w2.weight"] = weights["layers.1.feed_forward.w2.weight"][:, :-32]
    with pytest.raises(CheckpointError, match=r"weights do not match args .*layers.1.feed_forward.w2.weight: "
                                              r"\(64, 160\) != \(64, 192\)"):
        write_shards(tmp_path, args, weights, 2)


def test_shard_that_is_not_a_state_dict_of_tensors(four):
    sd = torch.load(four / shard_name(1), weights_only=True)
    sd["layers.0.ffn_norm.weight"] = [1.0, 2.0]
    torch.save(sd, four / shard_name(1))
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: layers.0.ffn_norm.weight is a list, not a tensor"):
        load_checkpoint(four)


def test_int8_weights_of_a_sharded_checkpoint(tmp_path):
    """int8_weights on lazily merged shards (each merged tensor freed after use) = on the merged dict."""
    from helpers.quant import int8_weights
    d, weights, args = write(tmp_path, dict(SMALL, n_layers=4), 2)
    w, _ = load_checkpoint(d)
    assert isinstance(w, ShardedWeights)
    got, want = int8_weights(w), int8_weights(weights)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
