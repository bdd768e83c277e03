"""How long the bundled model's training recipe takes on this machine's CPU, measured, not guessed.

    python bench/train_time.py              # time N steps of each phase with the bundled run's config
    python bench/train_time.py --record     # ... and store it as "train_time" in its train_stats.json

Runs helpers.train.train on the CPU (also where there is a GPU) with the config in assets/llama3-tiny/train_stats.json
for --steps copy warm-up steps and --steps play steps (evaluations and head probes off, into a temp dir), takes
the mean seconds per step of each phase from its train_log.tsv (the first 2 steps of each left out), and scales
them to the run's own step counts. The estimate leaves out what the run did besides steps: an evaluation every
eval_every steps and head probes every probe_every steps. After the timed steps the trainer still evaluates
and saves its model, which takes a few minutes more. The model card prints the result beside the run's own
wall time.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from helpers.checkpoint import DEFAULT_DIR, load_checkpoint  # noqa: E402
from helpers.evaluate import cpu_name  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.train import TrainConfig, read_log, step_seconds, train  # noqa: E402


SKIP = 2  # the first steps of each phase warm caches and allocators


def per_step(seconds, warm):
    """{phase: mean seconds per step} from train_log.tsv's "seconds" column, the first SKIP steps of each phase
    left out."""
    mean = lambda d: sum(d[SKIP:]) / len(d[SKIP:])
    copy, plays = step_seconds(seconds, warm)
    return {"plays": mean(plays), **({"copy_warmup": mean(copy)} if warm else {})}


def measure(stats, args, steps=20):
    """{phase: mean seconds per step} over `steps` steps of each phase, with the run's config."""
    cfg = TrainConfig(**{**stats["config"], "steps": steps, "copy_warmup": steps if stats["copy_warmup_steps"] else 0,
                         "copy_stop": 0.0, "probe_every": 0, "eval_every": 10**9, "budget_minutes": 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        train(tmp, cfg, args_dict=args.to_params(), log=lambda *a: None, progress=False, device="cpu")
        rows, warm = read_log(Path(tmp) / "train_log.tsv")
    return per_step([float(r["seconds"]) for r in rows], warm)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="steps timed in each phase (default: %(default)s)")
    p.add_argument("--record", action="store_true", help="store the result in the bundled train_stats.json")
    a = p.parse_args()
    if a.steps < SKIP + 3:
        p.error(f"--steps {a.steps}: time at least {SKIP + 3} steps of each phase")
    path = DEFAULT_DIR / "train_stats.json"
    stats = json.loads(path.read_text())
    _, args = load_checkpoint()
    per = measure(stats, args, a.steps)
    warm, plays = stats["copy_warmup_steps"], stats["config"]["steps"]
    est = warm * per.get("copy_warmup", 0.0) + plays * per["plays"]
    out = {"command": f"python bench/train_time.py --steps {a.steps} --record", "device": "cpu", "cpu": cpu_name(),
           "torch_threads": torch.get_num_threads(), "steps_timed": a.steps - SKIP,
           "seconds_per_step": {k: round(v, 3) for k, v in per.items()}, "steps": {"copy_warmup": warm, "plays": plays},
           "estimated_hours": round(est / 3600, 2)}
    print(json.dumps(out, indent=2))
    if a.record:
        stats["train_time"] = out
        write_json(path, stats)


if __name__ == "__main__":
    main()
