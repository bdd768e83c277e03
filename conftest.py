"""Root conftest: loaded for every pytest run, whatever paths it is given (tests/, notebooks/, one notebook)."""
import os

import pytest

# nbval compares stored outputs made on the bundled default model, and the notebook kernels it starts
# inherit this process's environment: a LLAMA3_DIR exported for the 8B must not reach them. Tests that
# want another checkpoint set it themselves (tests/test_notebooks_any_checkpoint.py).
USER_LLAMA3_DIR = os.environ.pop("LLAMA3_DIR", None)


def pytest_report_header(config):
    if USER_LLAMA3_DIR:
        return (f"LLAMA3_DIR={USER_LLAMA3_DIR} is ignored here: stored notebook outputs are checked on the "
                "bundled default model (assets/llama3-tiny)")
    return "stored notebook outputs are checked on the bundled default model (assets/llama3-tiny)"


# Tests that execute whole notebooks or start benchmark subprocesses: minutes each. `pytest -m "not slow"`
# skips them (and every nbval notebook item) for a quick loop; plain `pytest` still runs everything.
SLOW = ("tests/test_notebooks_any_checkpoint.py::test_notebook_runs_on_another_checkpoint",
        "tests/test_notebooks_any_checkpoint.py::test_notebook_runs_on_smollm2",
        "tests/test_portability.py::",
        "tests/test_scale.py::test_scale_harness_small",
        "tests/test_exercises.py::test_student_version_runs_and_every_graded_test_fails",
        "tests/test_perturb.py::test_nbval_",
        "tests/test_chat.py::test_smollm2_answers",
        "tests/test_gguf_tokenizer.py::test_llama3_gguf_merges_give_transformers_the_same_ids",
        "tests/test_site.py::",
        "tests/test_gguf.py::test_smollm2_logits_equal_transformers")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb" or item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
