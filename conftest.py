"""Root conftest: loaded for every pytest run, whatever paths it is given (tests/, notebooks/, one notebook)."""
import os

# nbval compares stored outputs made on the bundled default model, and the notebook kernels it starts
# inherit this process's environment: a LLAMA3_DIR exported for the 8B must not reach them. Tests that
# want another checkpoint set it themselves (tests/test_notebooks_any_checkpoint.py).
USER_LLAMA3_DIR = os.environ.pop("LLAMA3_DIR", None)


def pytest_report_header(config):
    if USER_LLAMA3_DIR:
        return (f"LLAMA3_DIR={USER_LLAMA3_DIR} is ignored here: stored notebook outputs are checked on the "
                "bundled default model (assets/llama3-tiny)")
    return "stored notebook outputs are checked on the bundled default model (assets/llama3-tiny)"
