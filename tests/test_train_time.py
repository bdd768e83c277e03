"""bench/train_time: the CPU timing of a training recipe; bench/model_card: what it says about a budget."""
import torch

from bench import model_card, train_time
from helpers import train as train_module
from helpers.checkpoint import ModelArgs
from helpers.train import TrainConfig


def test_measure_times_both_phases_of_a_recipe():
    args = ModelArgs(**dict(train_module.TINY, dim=32, n_layers=1, n_heads=2, n_kv_heads=1))
    cfg = TrainConfig(steps=999, seq_len=32, batch=4, copy_rows=1, bos_rows=1, copy_seq_len=32, budget_minutes=5.0)
    per = train_time.measure({"config": cfg.__dict__, "copy_warmup_steps": 500}, args, steps=6)
    assert set(per) == {"copy_warmup", "plays"} and all(v >= 0 for v in per.values())
    per = train_time.measure({"config": {**cfg.__dict__, "copy_rows": 0}, "copy_warmup_steps": 0}, args, steps=6)
    assert set(per) == {"plays"}                                   # a run without a warm-up: plays only
    assert torch.get_num_threads() >= 1


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
