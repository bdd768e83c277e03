import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def no_llama3_dir(monkeypatch):
    """tests choose their checkpoint explicitly; a user's LLAMA3_DIR must not leak in."""
    monkeypatch.delenv("LLAMA3_DIR", raising=False)


@pytest.fixture(scope="session")
def tok():
    from helpers.tokenizer import load_tokenizer
    return load_tokenizer()
