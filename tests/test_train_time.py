"""bench/train_time: the CPU timing of a training recipe; bench/model_card: what it says about a budget."""
from bench import model_card, train_time
from helpers import train as train_module
from helpers.checkpoint import ModelArgs
from helpers.train import TrainConfig


def test_per_step_means_leave_out_the_first_steps_of_each_phase():
    # 5 warm-up steps: 3.0 s, 2.0 s, then 1.0 s each; 6 play steps: 9.0 s, 9.0 s, then 4.0 s each
    seconds = [3.0, 5.0, 6.0, 7.0, 8.0, 17.0, 26.0, 30.0, 34.0, 38.0, 42.0]
    assert train_time.per_step(seconds, warm=5) == {"copy_warmup": 1.0, "plays": 4.0}
    assert train_time.per_step([9.0, 18.0, 22.0, 26.0], warm=0) == {"plays": 4.0}   # no warm-up: plays only


def test_measure_runs_the_recipe_on_the_cpu(monkeypatch):
    args = ModelArgs(**dict(train_module.TINY, dim=32, n_layers=1, n_heads=2, n_kv_heads=1))
    cfg = TrainConfig(steps=999, seq_len=32, batch=4, copy_rows=1, bos_rows=1, copy_seq_len=32, budget_minutes=5.0)
    seen, devices, real_train = [], [], train_time.train
    monkeypatch.setattr(train_time, "per_step", lambda s, warm: seen.append((len(s), warm)) or {})
    monkeypatch.setattr(train_time, "train", lambda *a, **k: devices.append(k["device"]) or real_train(*a, **k))
    train_time.measure({"config": cfg.__dict__, "copy_warmup_steps": 500}, args, steps=6)
    train_time.measure({"config": {**cfg.__dict__, "copy_rows": 0}, "copy_warmup_steps": 0}, args, steps=6)
    assert seen == [(12, 6), (6, 0)]       # steps of each phase as asked, budget and copy stop off
    assert devices == ["cpu", "cpu"]       # the CPU, also where there is a GPU


def test_card_says_what_a_budget_did():
    cfg = {**TrainConfig().__dict__, "steps": 2960, "budget_minutes": 3.1}
    note = model_card.budget_note(cfg, {"steps_asked": 6000})
    assert "`--steps 6000 --budget-minutes 3.1`" in note and "fitted 2,960 steps" in note and "within 0.4%" in note
    assert "left the steps as asked" in model_card.budget_note(cfg, {"steps_asked": 2960})
    assert model_card.budget_note({**cfg, "budget_minutes": 0.0}, {}) == ""
    t = {"cpu": "X", "torch_threads": 2, "seconds_per_step": {"copy_warmup": 0.5, "plays": 7.0}, "steps_timed": 20,
         "command": "c", "steps": {"copy_warmup": 100, "plays": 200}, "estimated_hours": 0.4}
    assert "0.50 s per copy warm-up step and 7.00 s per play step" in model_card.train_time_note({"train_time": t})
    assert model_card.train_time_note({}) == ""
