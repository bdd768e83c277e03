import math

import pytest
import torch
import torch.nn.functional as F

from helpers.checkpoint import ModelArgs, load_checkpoint
from helpers.evaluate import Bigram, fit_bigram, heldout_loss, token_losses, windows
from helpers.model import forward
from helpers.random_checkpoint import write_checkpoint, write_random_checkpoint
from helpers.train import TinyLlama, Vocab, evaluate

W = 16  # window


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    write_random_checkpoint(d, seed=3, n_layers=2, dim=64, n_heads=4, n_kv_heads=1, vocab_size=128256)
    weights, args = load_checkpoint(d)
    tokens = torch.randint(0, args.vocab_size, (3 * W + 5,), generator=torch.Generator().manual_seed(0))
    return weights, args, tokens


def test_windows_drop_the_tail_and_shift_by_one():
    x, y = windows(list(range(2 * W + 7)), W)
    assert x.shape == y.shape == (2, W)
    assert x[1, 0] == W and y[1, 0] == W + 1 and y[-1, -1] == 2 * W  # window i+1 starts at window i's last target
    with pytest.raises(ValueError, match="at least 17"):
        windows(list(range(W)), W)


def test_loss_equals_cross_entropy_of_forward(small):
    weights, args, tokens = small
    got = token_losses(weights, args, tokens, W)
    assert got.dtype == torch.float64 and got.shape == (3 * W,)  # 5 tail ids unscored
    want = torch.cat([F.cross_entropy(forward(weights, args, tokens[i * W:(i + 1) * W].tolist()),
                                      tokens[i * W + 1:(i + 1) * W + 1], reduction="none") for i in range(3)])
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    assert abs(heldout_loss(weights, args, tokens, W) - want.mean().item()) < 1e-4


def test_merged_class_is_scored_as_one(small):
    weights, args, tokens = small
    merged = torch.zeros(args.vocab_size, dtype=torch.bool)
    merged[tokens[1:W + 1:2]] = True                       # half the first window's targets, among others
    merged[100_000:] = True
    full, grouped = token_losses(weights, args, tokens, W, merged=merged)
    logp = torch.log_softmax(forward(weights, args, tokens[:W].tolist()), dim=-1)  # [W, vocab]
    y = tokens[1:W + 1]
    want = torch.where(merged[y], -torch.logsumexp(logp[:, merged], dim=-1), -logp[torch.arange(W), y])
    torch.testing.assert_close(grouped[:W].float(), want, rtol=1e-4, atol=1e-4)
    assert (grouped <= full + 1e-9).all() and (grouped[:W][merged[y]] < full[:W][merged[y]] - 1).all()


def test_merged_loss_reproduces_the_compact_training_loss(tmp_path):
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=128256, multiple_of=32)
    stream = torch.randint(0, 300, (3000,)) * 7 + 11
    vocab = Vocab(stream, args.vocab_size, min_count=12)
    model = TinyLlama(args, vocab)
    model.round_to(torch.bfloat16)
    write_checkpoint(tmp_path, args, model.to_meta())
    weights, args = load_checkpoint(tmp_path)
    rare = torch.ones(args.vocab_size, dtype=torch.bool)
    rare[vocab.ids] = False
    val = stream[:4 * W + 1]
    full, grouped = token_losses(weights, args, val, W, merged=rare)
    compact = evaluate(model, vocab.to_compact[val], W)  # the trainer's own figure
    assert abs(grouped.mean().item() - compact) < 1e-4
    hit = rare[windows(val, W)[1].flatten()]
    assert hit.any()  # each rare target costs log(number of rare ids) more on the full vocabulary
    torch.testing.assert_close(full - grouped, hit.double() * math.log(vocab.n_rare_ids), rtol=0, atol=1e-4)


def test_bigram_by_hand():
    b = Bigram([1, 2, 1, 3, 1, 2], vocab_size=5, lam=0.5, mu=0.1)
    p = b.prob(torch.tensor([1, 2, 4, 1]), torch.tensor([2, 4, 0, 3]))
    u = lambda c: 0.9 * c / 6 + 0.1 / 5
    want = [0.5 * 2 / 3 + 0.5 * u(2), 0.5 * 0 + 0.5 * u(0), u(0), 0.5 * 1 / 3 + 0.5 * u(1)]  # 4: never a context
    torch.testing.assert_close(p, torch.tensor(want, dtype=torch.float64))


def test_bigram_rows_sum_to_one_over_the_full_vocab():
    train = torch.randint(0, 500, (20_000,), generator=torch.Generator().manual_seed(1)) * 3
    b = Bigram(train, 128256, lam=0.8, mu=1e-3)
    for prev in (0, 3, int(train[-1]), 1, 128255):  # seen contexts, the last id (no successor), unseen ids
        row = b.row(prev)
        assert row.shape == (128256,) and (row > 0).all()
        assert abs(row.sum().item() - 1) < 1e-9
        nxt = torch.tensor([0, 3, 1, 128255])
        torch.testing.assert_close(b.prob(torch.full((4,), prev), nxt), row[nxt])


def test_bigram_losses_use_the_same_windows():
    train = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(2))
    val = torch.randint(0, 60, (3 * W + 5,), generator=torch.Generator().manual_seed(3))
    b = Bigram(train, 128256, lam=0.7, mu=0.01)
    got = b.token_losses(val, W)
    assert got.shape == (3 * W,)
    want = torch.tensor([-math.log(b.prob(val[t - 1], val[t]).item()) for t in range(1, 3 * W + 1)])
    torch.testing.assert_close(got, want.double())


def test_fit_bigram_chooses_on_the_training_stream():
    jumps = torch.randint(2, 40, (4000,), generator=torch.Generator().manual_seed(4))
    steps = torch.where(torch.rand(4000, generator=torch.Generator().manual_seed(5)) < 0.9, 1, jumps)
    train = torch.cumsum(steps, 0) % 40                         # id + 1 follows id 90% of the time: large lam wins
    b, grid = fit_bigram(train, 128256, dev_frac=0.25, lams=(0.1, 0.5, 0.9), mus=(1e-3, 0.5))
    assert (b.lam, b.mu) == min(grid, key=grid.get) and b.lam == 0.9
    assert b.N == len(train)                                    # refit on the whole stream
    dev = train[3000:]
    manual = -torch.log(Bigram(train[:3000], 128256, 0.5, 0.5).prob(dev[:-1], dev[1:])).mean().item()
    assert abs(grid[(0.5, 0.5)] - manual) < 1e-12


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="lam=1"):
        Bigram([1, 2, 3], 10, lam=1, mu=0.1)
    with pytest.raises(ValueError, match="mu=0"):
        Bigram([1, 2, 3], 10, lam=0.5, mu=0)
    with pytest.raises(ValueError, match="token id 12 is outside"):
        Bigram([1, 2, 12], 10, lam=0.5, mu=0.1)
    with pytest.raises(ValueError, match="window=0"):
        windows([1, 2, 3], 0)
