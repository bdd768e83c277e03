"""Data parallelism by hand (notebook 15): ranks that all-reduce their gradients train the same weights as one
process on the whole batch, and as torch's DistributedDataParallel."""
import pytest
import torch

from helpers import data_parallel as dp
from helpers.params import ModelArgs
from helpers.tokenizer import load_tokenizer

# a tenth of the lr, the most one AdamW step moves a weight: Adam divides a gradient by its own size, so the
# fp32 rounding of a near-zero gradient (sums in another order) can move a weight by a few % of a step; a
# skipped all-reduce moves them by ~10 steps' worth
TOL = dict(rtol=1e-3, atol=dp.CFG.lr / 10)
ARGS = dp.small_args(ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=128256))


@pytest.fixture(scope="module")
def run():
    torch.set_num_threads(1)
    ids, bos = dp.text_ids(load_tokenizer())
    vocab, data = dp.setup(ARGS, ids, bos)
    return ids, bos, vocab, data, dp.flat(dp.train_whole(ARGS, vocab, data))


def test_text_ids_of_a_tokenizer_without_bos(ours):
    """SmolLM2's tokenizer starts text with no BOS: no bos id, and no batch row is put behind one"""
    ids, bos = dp.text_ids(ours)
    assert bos is None and ids[-1] == ours.eos_id and ours.bos_id not in ids
    args = dp.small_args(ModelArgs(dim=144, n_layers=3, n_heads=9, n_kv_heads=3, vocab_size=ours.n_words))
    vocab, data = dp.setup(args, ids, bos)
    stream = vocab.to_compact[torch.tensor(ids)].tolist()
    windows = {tuple(stream[s:s + dp.CFG.seq_len]) for s in range(len(stream) - dp.CFG.seq_len)}
    assert all(tuple(row) in windows for row in data[0][0].tolist())


def test_training_moves_the_weights(run):
    _, _, vocab, _, whole = run
    start = dp.flat(dp.new_model(ARGS, vocab)[0])
    assert (whole - start).abs().max() > 1e-3      # else every comparison below would pass trivially


@pytest.mark.parametrize("world", [2, 4])
def test_simulated_ranks_equal_one_process_and_accumulation(run, world):
    _, _, vocab, data, whole = run
    ranks = [dp.flat(m) for m in dp.simulate(ARGS, vocab, data, world)]
    assert all(torch.equal(r, ranks[0]) for r in ranks)
    torch.testing.assert_close(ranks[0], whole, **TOL)
    torch.testing.assert_close(dp.flat(dp.train_whole(ARGS, vocab, data, micro=world)), whole, **TOL)


def test_without_the_all_reduce_ranks_drift_apart(run):
    _, _, vocab, data, whole = run
    ranks = [dp.flat(m) for m in dp.simulate(ARGS, vocab, data, 2, reduce=False)]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ranks[0], whole, **TOL)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ranks[0], ranks[1], **TOL)


def test_rows_must_split_evenly():
    with pytest.raises(ValueError, match="multiple of 3"):
        dp.rows(torch.zeros(8, 4), 0, 3)


def test_two_gloo_processes_by_hand_and_ddp(run, tmp_path):
    ids, bos, _, _, whole = run
    out = dp.launch(ARGS, ids, bos, 2, tmp_path)
    n_params = whole.numel()
    for r in out:
        assert torch.equal(r["hand"], out[0]["hand"]) and torch.equal(r["ddp"], out[0]["ddp"])
        torch.testing.assert_close(r["hand"], whole, **TOL)
        torch.testing.assert_close(r["ddp"], whole, **TOL)
        assert r["stats"]["hand_floats"] == r["stats"]["ddp_floats"] == dp.CFG.steps * n_params


def test_failed_rank_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="rank 0 of 1 failed"):
        dp.launch(ARGS, [1], 128000, 1, tmp_path, timeout=120)   # one token: too short for a window
