import hashlib
import shutil

import pytest

from helpers import facts
from helpers.tokenizer import Tokenizer, default_tokenizer_path, load_tokenizer, special_token_names


def test_bundled_file_is_the_real_llama3_tokenizer():
    path = default_tokenizer_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == facts.TOKENIZER_SHA256


def test_published_ids(tok):
    assert tok.encode(facts.TEST_SENTENCE, bos=True, eos=True) == facts.TEST_SENTENCE_IDS
    assert tok.encode(facts.PROMPT) == facts.PROMPT_IDS
    assert tok.pieces(facts.PROMPT_IDS) == facts.PROMPT_PIECES


def test_sizes_and_special_tokens(tok):
    assert tok.n_base == 128000 and tok.n_words == 128256
    assert len(tok.special_tokens) == 256
    assert sorted(tok.special_tokens.values()) == list(range(128000, 128256))
    assert tok.special_tokens["<|begin_of_text|>"] == 128000 == tok.bos_id
    assert tok.special_tokens["<|end_of_text|>"] == 128001 == tok.eos_id
    assert tok.special_tokens["<|start_header_id|>"] == 128006
    assert tok.special_tokens["<|end_header_id|>"] == 128007
    assert tok.special_tokens["<|eot_id|>"] == 128009 == tok.eot_id
    assert tok.special_tokens["<|reserved_special_token_250|>"] == 128255
    assert {tok.eos_id, tok.eot_id} <= tok.stop_tokens


def test_llama31_names_rename_four_reserved_slots():
    old, new = special_token_names(), special_token_names(llama31=True)
    changed = {i: (a, b) for i, (a, b) in enumerate(zip(old, new)) if a != b}
    assert changed == {4: ("<|reserved_special_token_2|>", "<|finetune_right_pad_id|>"),
                       5: ("<|reserved_special_token_3|>", "<|step_id|>"),
                       8: ("<|reserved_special_token_4|>", "<|eom_id|>"),
                       10: ("<|reserved_special_token_5|>", "<|python_tag|>")}


@pytest.mark.parametrize("text", ["", "hello", "To be, or not to be", "naïve café ☕ 日本語 🦙",
                                  "  spaces\n\n\ttabs  ", "x" * 1000, "<|eot_id|> is plain text"])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text, bos=False)) == text
    assert tok.decode(tok.encode(text)) == "<|begin_of_text|>" + text


def test_special_token_text_is_encoded_as_plain_text(tok):
    ids = tok.encode("<|eot_id|><|begin_of_text|>", bos=False)
    assert not set(ids) & set(tok.special_tokens.values())
    assert len(ids) > 2
    assert tok.encode_special("<|eot_id|>") == 128009
    with pytest.raises(KeyError, match="not a special token"):
        tok.encode_special("<|nope|>")


def test_pieces_show_partial_utf8_safely(tok):
    ids = tok.encode("🦙", bos=False)
    raw = b"".join(tok.piece_bytes(i) for i in ids)
    assert raw.decode("utf-8") == "🦙"
    assert len(ids) > 1 and any("\\x" in p for p in tok.pieces(ids))  # the llama is split mid-character


def test_model_dir_tokenizer_wins(tmp_path):
    shutil.copy(default_tokenizer_path(), tmp_path / "tokenizer.model")
    assert load_tokenizer(tmp_path).path == tmp_path / "tokenizer.model"
    (tmp_path / "tokenizer.model").unlink()
    assert load_tokenizer(tmp_path).path == default_tokenizer_path()  # falls back to the bundled file


def test_llama31_dir_gets_llama31_names(tmp_path):
    (tmp_path / "params.json").write_text('{"use_scaled_rope": true}')
    assert "<|eom_id|>" in load_tokenizer(tmp_path).special_tokens


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        Tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "tokenizer.model"
    bad.write_text("this is not base64 rank\n")
    with pytest.raises(ValueError, match=r"tokenizer.model:1: expected 'base64 rank'"):
        Tokenizer(bad)


def test_encode_rejects_non_str(tok):
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(b"bytes")
