"""What keeps `pytest` green on every machine: an exported LLAMA3_DIR does not reach the nbval run."""
import os
import subprocess
import sys
from pathlib import Path

from helpers.random_checkpoint import write_random_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_exported_llama3_dir_does_not_change_stored_outputs(tmp_path):
    # a checkpoint of another shape: had the kernel loaded it, 03's printed shapes would differ
    other = write_random_checkpoint(tmp_path / "other", dim=96, n_layers=2, n_heads=6, n_kv_heads=2,
                                    vocab_size=128256, multiple_of=32)
    env = {**os.environ, "LLAMA3_DIR": str(other)}
    run = subprocess.run([sys.executable, "-m", "pytest", "notebooks/03_qkv_heads.ipynb"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"LLAMA3_DIR={other} is ignored" in run.stdout
