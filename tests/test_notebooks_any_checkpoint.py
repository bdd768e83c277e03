"""Every notebook must run unchanged on any Llama 3 checkpoint: here a random one of another shape.

nbval (run by plain `pytest`) checks the stored outputs on the default model; this test only requires
that each notebook executes without error when LLAMA3_DIR points elsewhere.
"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.random_checkpoint import write_random_checkpoint

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
# other dim, depth, heads and GQA ratio than the default model (dim 128, 6 layers, 4 heads, 1 kv head)
OTHER_SHAPE = dict(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=128256, multiple_of=32,
                   ffn_dim_multiplier=1.5, rope_theta=10000.0)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("other_shape"), seed=7, **OTHER_SHAPE)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_another_checkpoint(path, other_checkpoint, monkeypatch):
    monkeypatch.setenv("LLAMA3_DIR", str(other_checkpoint))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()  # stops at the first cell that raises
    except CellExecutionError as e:
        pytest.fail(f"{path.name} fails on a random checkpoint of another shape ({OTHER_SHAPE}):\n{e}")
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip())
