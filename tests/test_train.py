import math
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from helpers import checkpoint, data
from helpers import train as train_module
from helpers.checkpoint import CheckpointError, ModelArgs, load_checkpoint, write_checkpoint
from helpers.model import forward
from helpers.train import TinyLlama, TrainConfig, Vocab, bigram_baseline, lr_at


def small_model(seed=0):
    torch.manual_seed(seed)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=128256, multiple_of=32,
                     ffn_dim_multiplier=1.3)
    stream = torch.randint(0, 300, (5000,)) * 7 + 11          # a few hundred ids, some rare
    model = TinyLlama(args, Vocab(stream, args.vocab_size, min_count=20))
    with torch.no_grad():                                      # perturb norms so they matter too
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model, stream


def test_compact_model_equals_saved_meta_checkpoint(tmp_path):
    model, stream = small_model()
    model.round_to(torch.bfloat16)
    write_checkpoint(tmp_path, model.args, model.to_meta())
    weights, args = load_checkpoint(tmp_path)
    ids = stream[:33]
    full = torch.log_softmax(forward(weights, args, ids), dim=-1)               # [T, 128256]
    compact = torch.log_softmax(model(model.vocab.to_compact[ids][None])[0], -1)  # [T, kept + 1]
    v = model.vocab
    torch.testing.assert_close(full[:, v.ids], compact[:, :-1], atol=2e-4, rtol=1e-4)
    rare_ids = torch.tensor([i for i in range(0, 3000) if v.to_compact[i] == v.rare])
    # every rare id carries the rare class's probability divided evenly
    expect = compact[:, -1:] - math.log(v.n_rare_ids)
    torch.testing.assert_close(full[:, rare_ids], expect.expand(-1, len(rare_ids)), atol=2e-4, rtol=1e-4)
    # and the loss the trainer optimises is the full-vocabulary loss of the saved checkpoint
    y = stream[1:34]
    torch.testing.assert_close(F.cross_entropy(full, y),
                               F.cross_entropy(compact, v.to_compact[y]) + math.log(v.n_rare_ids) *
                               (v.to_compact[y] == v.rare).float().mean(), atol=2e-4, rtol=1e-4)


def test_rare_rows_are_shared_and_kept_rows_distinct():
    model, _ = small_model()
    sd = model.to_meta()
    v = model.vocab
    out = sd["output.weight"]
    assert out.shape == (128256, 64)
    assert torch.equal(out[0], out[128255]) and torch.equal(out[0], out[5])  # rare ids share one row
    assert not torch.equal(out[v.ids[0]], out[v.ids[1]])


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == 1e-4 and abs(lr_at(9, cfg) - 1e-3) < 1e-12
    assert abs(lr_at(100, cfg) - 1e-4) < 1e-12
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_schedule_after_a_copy_warmup():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4, copy_lr=5e-4)
    assert lr_at(0, cfg, warm_steps=30) == pytest.approx(5e-5)
    assert lr_at(9, cfg, 30) == lr_at(29, cfg, 30) == 5e-4      # flat after the warmup
    # the plays' schedule starts over after the warm-up, however long it ran
    assert [lr_at(30 + s, cfg, 30) for s in range(101)] == [lr_at(s, cfg) for s in range(101)]
    assert lr_at(5, TrainConfig(warmup=10, lr=1e-3, copy_lr=0), 30) == pytest.approx(6e-4)  # copy_lr 0: lr


B8 = dict(batch=8, copy_rows=1, bos_rows=4)  # the batch the tests below count with


def test_copy_warmup_stops_when_the_copy_loss_is_low(tmp_path):
    shape = dict(train_module.TINY, dim=32, n_layers=1, n_heads=2, n_kv_heads=1)
    cfg = TrainConfig(**B8, steps=3, seq_len=64, copy_warmup=80, copy_stop=100.0, copy_seq_len=128, probe_every=0,
                      eval_every=1000)
    _, stats = train_module.train(tmp_path, cfg, args_dict=shape, log=lambda *a: None, progress=False)
    rows = (tmp_path / "train_log.tsv").read_text().splitlines()[1:]
    assert stats["copy_warmup_steps"] == 50 and len(rows) == 53   # any loss < 100: stops once 50 are averaged
    assert [r.split("\t")[2] != "" for r in rows[48:]] == [False, False, True, True, True]  # then the plays
    assert stats["tokens_seen"] == 8 * (50 * 128 + 3 * 64)
    cfg = TrainConfig(**B8, steps=0, seq_len=64, copy_warmup=60, copy_stop=0.0, probe_every=0, eval_every=1000)
    _, stats = train_module.train(tmp_path / "b", cfg, args_dict=shape, log=lambda *a: None, progress=False)
    assert stats["copy_warmup_steps"] == 60                       # copy_stop 0: the whole warm-up
    # a warm-up alone, given as init_from to the same settings with play steps: one log, one clock, one schedule
    cfg = TrainConfig(**B8, steps=3, seq_len=64, copy_warmup=60, copy_stop=0.0, probe_every=0, eval_every=1000)
    _, stats = train_module.train(tmp_path / "c", cfg, args_dict=shape, log=lambda *a: None, progress=False,
                                  init_from=tmp_path / "b")
    rows, warm = train_module.read_log(tmp_path / "c" / "train_log.tsv")
    assert warm == stats["copy_warmup_steps"] == 60 and [int(r["step"]) for r in rows] == list(range(1, 64))
    assert rows[:60] == train_module.read_log(tmp_path / "b" / "train_log.tsv")[0]
    assert [float(r["lr"]) for r in rows[60:]] == pytest.approx([lr_at(s, cfg, 60) for s in (60, 61, 62)], rel=1e-3)
    before = float(rows[59]["seconds"])                            # the clock goes on from the warm-up's
    assert float(rows[60]["seconds"]) >= before and stats["wall_seconds"] >= round(before)  # stats: whole seconds
    assert stats["tokens_seen"] == 8 * (60 * cfg.copy_seq_len + 3 * 64)
    assert stats["warmup_from"] == str(tmp_path / "b")            # the card says the warm-up ran on its own
    with pytest.raises(ValueError, match="copy_lr"):              # another warm-up recipe: refused, not mixed
        train_module.train(tmp_path / "d", TrainConfig(**B8, steps=3, seq_len=64, copy_warmup=60, copy_lr=5e-4),
                           args_dict=shape, log=lambda *a: None, progress=False, init_from=tmp_path / "b")


def test_bigram_baseline_beats_unigram_on_repetitive_text():
    train = torch.tensor([1, 2, 3] * 200)
    val = torch.tensor([1, 2, 3] * 20)
    res = bigram_baseline(train, val, vocab_size=10, lams=(0.0, 0.9))
    assert res[0.9] < res[0.0]
    assert abs(res[0.0] - -math.log((200 + 1) / (600 + 10))) < 1e-6  # lambda 0 is the add-one unigram


def test_load_meta_restores_the_model(tmp_path):
    model, stream = small_model()
    model.round_to(torch.bfloat16)
    torch.manual_seed(1)
    other = TinyLlama(model.args, model.vocab)                 # fresh random init
    other.load_meta(model.to_meta())
    ids = model.vocab.to_compact[stream[:20]][None]
    torch.testing.assert_close(other(ids), model(ids))


# ---- the trainer never overwrites the bundled model unless asked --------------------------------

def run_main(monkeypatch, *argv):
    calls = []
    monkeypatch.setattr(train_module, "train", lambda out, cfg, **kw: calls.append((out, kw)))
    monkeypatch.setattr(sys, "argv", ["helpers.train", *argv])
    train_module.main()
    return calls


def test_default_out_is_not_the_bundled_model(monkeypatch):
    (out, kw), = run_main(monkeypatch, "--steps", "1")
    assert out == "runs/llama3-tiny" and kw["overwrite_bundled"] is False
    assert (checkpoint.ROOT / out).resolve() != checkpoint.DEFAULT_DIR.resolve()


@pytest.mark.parametrize("out", ["assets/llama3-tiny", "assets/llama3-tiny/", str(checkpoint.DEFAULT_DIR)])
def test_writing_the_bundled_model_needs_the_flag(monkeypatch, capsys, out):
    monkeypatch.chdir(checkpoint.ROOT)
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, "--out", out)
    assert e.value.code == 2 and "is the bundled model" in capsys.readouterr().err
    assert run_main(monkeypatch, "--out", out, "--overwrite-bundled") == [(out, {"init_from": None,
                                                                                 "overwrite_bundled": True,
                                                                                 "args_dict": train_module.TINY})]


def test_model_shape_flags(monkeypatch, capsys):
    (_, kw), = run_main(monkeypatch, "--n-kv-heads", "1", "--n-layers", "4")
    assert kw["args_dict"] == {**train_module.TINY, "n_kv_heads": 1, "n_layers": 4}
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, "--n-kv-heads", "3")                 # 4 query heads do not split into 3 groups
    assert e.value.code == 2 and "n_kv_heads" in capsys.readouterr().err


def test_train_refuses_the_bundled_model_before_training(monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(train_module, "load_tokenizer", no_data)
    with pytest.raises(CheckpointError, match="is the bundled model"):
        train_module.train(checkpoint.DEFAULT_DIR)
    assert checkpoint.sha256(checkpoint.DEFAULT_DIR / "consolidated.00.pth") == checkpoint.DEFAULT_SHA256


def test_write_log_leaves_no_temp_files(tmp_path):
    model, _ = small_model()
    args = model.args
    write_checkpoint(tmp_path, args, model.to_meta())
    train_module.write_log(tmp_path / "train_log.tsv", [{"step": 1, "lr": 1e-3, "train_loss": 5.0, "val_loss": None,
                                                         "seconds": 0.1},
                                                        {"step": 2, "lr": 1e-3, "train_loss": 4.0, "copy_loss": 3.0,
                                                         "induction": 0.25, "prev": 0.5, "seconds": 0.2}])
    assert (tmp_path / "train_log.tsv").read_text() == (
        "step\tlr\ttrain_loss\tcopy_loss\tval_loss\tinduction\tprev\tseconds\n"
        "1\t0.001000\t5.0000\t\t\t\t\t0.1\n"
        "2\t0.001000\t4.0000\t3.0000\t\t0.2500\t0.5000\t0.2\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consolidated.00.pth", "params.json", "train_log.tsv"]


def test_copy_rows_repeat_and_score_only_what_copying_predicts():
    gen = torch.Generator().manual_seed(0)
    pool = torch.arange(1000, 1100)
    x, y = data.copy_row(pool, 7, 200, gen, lens=(5, 9))
    assert x.shape == y.shape == (200,) and x[0] == 7 and ((x[1:] >= 1000) & (x[1:] < 1100)).all()
    kept = torch.nonzero(y != -100).flatten()
    assert 0 < len(kept) < 100
    inner = kept[kept < 199]
    assert torch.equal(y[inner], x[inner + 1])                 # a scored target is the next input
    # every scored target already appeared once, right after an earlier copy of its input token
    for t in kept.tolist():
        earlier = [j for j in range(1, t) if x[j] == x[t]]
        assert any(x[j + 1] == y[t] for j in earlier)
    # an id seen for the first time is never a scored target
    first = [t for t in range(199) if not (x[:t + 1] == x[t + 1]).any()]
    assert all(y[t] == -100 for t in first)


def test_copy_rows_with_more_repeats_score_every_later_copy():
    gen = torch.Generator().manual_seed(1)
    x, y = data.copy_row(torch.arange(1000, 1500), 7, 300, gen, lens=(6, 6), repeats=4)
    # one sequence = 24 inputs: 6 unscored + the 2nd copy's first token, then 17 scored
    assert [int(v != -100) for v in y[:25]] == [0] * 7 + [1] * 17 + [0]
    assert torch.equal(y[7:24], x[8:25]) and torch.equal(x[1:7], x[19:25])
    kept = torch.nonzero(y != -100).flatten()
    for t in kept.tolist():                                    # still only what copying predicts
        assert any(x[j + 1] == y[t] for j in range(1, t) if x[j] == x[t])


def test_copy_options_out_of_range_are_one_clear_error(monkeypatch, capsys):  # bos rows: at most 28 of 32
    with pytest.raises(ValueError, match="repeats=1"):
        data.copy_row(torch.arange(10), 0, 20, torch.Generator(), repeats=1)
    for flag, value in (("--copy-repeats", "1"), ("--copy-pool", "-5"), ("--copy-seq-len", "-1"), ("--bos-rows", "29"),
                        ("--budget-minutes", "-1"), ("--budget-minutes", "nan"), ("--budget-minutes", "inf")):
        with pytest.raises(SystemExit) as e:
            run_main(monkeypatch, flag, value)
        assert e.value.code == 2 and flag in capsys.readouterr().err


def test_copy_pool_logits_are_the_full_logits_of_those_ids():
    model, stream = small_model()
    v, ids = model.vocab, stream[:20]
    pool = v.to_compact[torch.tensor([v.ids[3], v.ids[0], v.ids[7]])]
    full = model(v.to_compact[ids][None])
    torch.testing.assert_close(model(v.to_compact[ids][None], pool), full[..., pool])


def test_read_log_counts_the_copy_warmup(tmp_path):
    rows = [{"step": 1, "lr": 1e-3, "copy_loss": 6.9, "seconds": 0.1}, {"step": 2, "lr": 1e-3, "copy_loss": 1.0,
                                                                       "induction": 0.9, "seconds": 0.2},
            {"step": 3, "lr": 1e-4, "train_loss": 5.0, "copy_loss": 0.5, "seconds": 1.5}]
    train_module.write_log(tmp_path / "train_log.tsv", rows)
    back, warm = train_module.read_log(tmp_path / "train_log.tsv")
    assert warm == 2 and [r["step"] for r in back] == ["1", "2", "3"]
    assert back[1]["induction"] == "0.9000" and back[0]["induction"] == ""


def test_vocab_orders_copy_ids_by_count():
    stream = torch.tensor([5] * 30 + [9] * 50 + [2] * 12 + [4] * 3)
    v = Vocab(stream, 100, min_count=1)
    assert v.by_count.tolist() == [9, 5, 2]                    # seen >= COPY_MIN_COUNT times, most first


def test_copy_batch_rows_can_be_shorter_than_play_windows():
    cfg = TrainConfig(batch=3, seq_len=512, copy_repeats=3)
    gen = torch.Generator().manual_seed(0)
    x, y = data.copy_batch(torch.arange(100, 200), 1, cfg, gen, seq_len=64)
    assert x.shape == y.shape == (3, 64) and (x[:, 0] == 1).all()
    assert data.copy_batch(torch.arange(100, 200), 1, cfg, gen)[0].shape == (3, 512)


def test_batches_end_with_copy_rows():
    cfg = TrainConfig(batch=4, seq_len=32, copy_rows=1, bos_rows=0)
    stream = torch.arange(500)
    x, y = next(data.batches(stream, cfg, torch.Generator().manual_seed(0), torch.arange(600, 700), 1))
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(y[:3], x[:3] + 1)                       # play windows: every target is the next id
    assert x[3, 0] == 1 and (y[3] == -100).any()               # the copy row starts with bos, partly unscored
    cfg = TrainConfig(batch=4, seq_len=32, copy_rows=1, bos_rows=2)
    x, y = next(data.batches(stream, cfg, torch.Generator().manual_seed(0), torch.arange(600, 700), 1))
    assert (x[:2, 0] == 1).all() and (x[2:3, 0] != 1).all()      # 2 play rows start like a prompt
    assert torch.equal(y[:2, 0], x[:2, 1]) and torch.equal(y[:3, 1:], x[:3, 1:] + 1)  # then the plays go on


def test_evaluate_counts_rare_ids_like_the_trainer():
    import inspect

    from helpers import evaluate
    assert inspect.signature(evaluate.evaluate).parameters["min_count"].default is None  # the run's own, else:
    assert evaluate.MIN_COUNT == TrainConfig().min_count


def test_budget_fits_the_play_steps_to_the_time_left(tmp_path, monkeypatch):
    cfg = TrainConfig(steps=1000, budget_minutes=2.0)
    assert train_module.fit_steps(cfg, elapsed=60.0, per_step=0.1) == 200 + int(0.95 * 60 / 0.1)  # 770
    assert train_module.fit_steps(cfg, elapsed=10.0, per_step=0.01) == 1000   # time to spare: steps as asked
    assert train_module.fit_steps(cfg, elapsed=500.0, per_step=0.1) == 200    # overrun already: stop at once
    shape = dict(train_module.TINY, dim=32, n_layers=1, n_heads=2, n_kv_heads=1)
    cfg = TrainConfig(steps=400, seq_len=32, batch=2, copy_rows=1, bos_rows=1, copy_warmup=0, probe_every=0,
                      eval_every=10_000, budget_minutes=1e-4)
    _, stats = train_module.train(tmp_path, cfg, args_dict=shape, log=lambda *a: None, progress=False)
    rows, _ = train_module.read_log(tmp_path / "train_log.tsv")
    assert stats["play_steps"] == stats["config"]["steps"] == len(rows) == 200 and cfg.steps == 400
    fits = []                                                      # a fit between the two: the cosine ends with it
    monkeypatch.setattr(train_module, "fit_steps", lambda c, elapsed, per_step: fits.append(per_step) or 260)
    _, stats = train_module.train(tmp_path / "b", cfg, args_dict=shape, log=lambda *a: None, progress=False)
    rows, _ = train_module.read_log(tmp_path / "b" / "train_log.tsv")
    assert len(fits) == 1 and fits[0] > 0 and stats["play_steps"] == len(rows) == 260
    assert [float(r["lr"]) for r in rows[200:]] == pytest.approx([lr_at(s, replace(cfg, steps=260)) for s in
                                                                   range(200, 260)], abs=1e-6)  # lr logged to 1e-6
    assert float(rows[-1]["lr"]) < 1.1 * cfg.min_lr
    _, stats = train_module.train(tmp_path / "c", replace(cfg, steps=150), args_dict=shape, log=lambda *a: None,
                                  progress=False)
    assert len(fits) == 1 and stats["play_steps"] == 150          # no more than 200 play steps: nothing to fit
