"""Tokenizers read from GGUF files (helpers.gguf_tokenizer, issue 28): SmolLM2's against transformers, a Llama 3
GGUF against helpers.tokenizer.Tokenizer, and the clear errors."""
import gguf
import pytest
import regex

from helpers.gguf_tokenizer import GGUFTokenizer, count_gguf_tokens, read_metadata
from helpers.params import CheckpointError
from helpers.tokenizer import Tokenizer, count_tokens, llama3_gguf_vocab, load_tokenizer, tokenizer_file

MIXED = [
    "Hello, world! The answer is 42.",
    "def f(x):\n\treturn x ** 2  # square\n\n\nclass A:\n    pass\n",
    "digits 0 1 22 333 4444 55555 and 3.14159265358979 and 1,234,567,890 and 2026-12-06",
    "  leading spaces, trailing   \t\t tabs\n\n  \n\r\nand    runs",
    "a  1 x   12 y\n\n3 z\t\t4",                      # whitespace runs right before digits
    "Crème brûlée, naïve façade, Ångström, ÿ, ß, œuvre",
    "emoji 🦙🔥👩‍👩‍👧 and flags 🇫🇷",
    "中文分词测试：你好，世界！ 日本語もある。",
    "superscripts ² ³ ½ and arabic ١٢٣ digits",
    "special strings as text: <|im_start|>user<|im_end|> <|endoftext|> <|eot_id|> <|begin_of_text|>",
    "I'm sure they'll say it's what we've DONE'S",
    "",
    " ",
]


@pytest.fixture(scope="module")
def theirs(smollm2):
    """transformers' tokenizer of the same file: (as loaded, with SmolLM2's own split: digits, then GPT-2's)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    as_loaded = Backend.from_str(hf.backend_tokenizer.to_str())
    fixed = Backend.from_str(hf.backend_tokenizer.to_str())
    fixed.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for b in (as_loaded, fixed):
        b.encode_special_tokens = True  # special-token strings in text are text, as ours
    return as_loaded, fixed


def hf_ids(backend, text):
    return backend.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", MIXED)
def test_smollm2_ids_equal_transformers(ours, theirs, text):
    as_loaded, fixed = theirs
    assert ours.encode(text) == hf_ids(fixed, text)
    if not regex.search(r"\s\p{N}", text):  # transformers' GGUF loader drops the digit split (see docstring)
        assert ours.encode(text) == hf_ids(as_loaded, text)


def test_smollm2_splits_digits_as_the_model_was_trained(ours):
    assert ours.pieces(ours.encode("a  12")) == ["a", "  ", "1", "2"]  # llama.cpp's smollm split: the run stays
    assert ours.pieces(ours.encode("x ²")) == ["x", " ", "²"]         # whole, a space never joins a digit


@pytest.mark.parametrize("text", MIXED)
def test_round_trip(ours, text):
    assert ours.decode(ours.encode(text)) == text


def test_smollm2_interface(ours, smollm2):
    s = ours.special_tokens
    assert ours.n_words == count_gguf_tokens(smollm2) == 49152
    assert (ours.bos_id, ours.eos_id, ours.eot_id) == (s["<|im_start|>"], s["<|im_end|>"], s["<|im_end|>"])
    assert {ours.eos_id, s["<|endoftext|>"]} <= ours.stop_tokens
    assert ours.encode("Hi") == ours.encode("Hi", bos=False)  # the file says add_bos_token = false
    assert ours.encode("Hi", eos=True)[-1] == ours.eos_id
    assert not set(ours.encode(MIXED[9])) & set(s.values())  # typed special strings stay text
    assert ours.encode_special("<|im_end|>") == 2
    assert ours.piece(ours.encode(" world")[0]) == " world"
    assert ours.piece_bytes(ours.encode("é")[0]) == "é".encode()
    with pytest.raises(ValueError, match="49152"):
        ours.decode([49152])


def test_bytes_without_a_token_are_dropped_as_transformers_does(ours, theirs):
    text = "a\x04b\x06"                                    # SmolLM2 has no token for 0x04, 0x06
    assert ours.encode(text) == hf_ids(theirs[1], text) == ours.encode("a") + ours.encode("b")


def test_load_tokenizer_dispatches_on_gguf(smollm2, monkeypatch):
    for where in (smollm2, smollm2.parent):
        tok = load_tokenizer(where)
        assert isinstance(tok, GGUFTokenizer) and tok.path == smollm2
        path, _ = tokenizer_file(where)
        assert count_tokens(path) == 49152
    monkeypatch.setenv("LLAMA3_DIR", str(smollm2))
    assert isinstance(load_tokenizer(), GGUFTokenizer)


# --- synthetic GGUF files -----------------------------------------------------------------------------------


def write_gguf(path, tokens, merges, types, pre="llama-bpe", bos=0, eos=1, add_bos=True, template=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    if tokens:
        w.add_token_list(tokens)
        w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(add_bos)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def llama3_vocab():
    return llama3_gguf_vocab()


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory, llama3_vocab):
    tokens, merges, types = llama3_vocab
    return write_gguf(tmp_path_factory.mktemp("llama3") / "llama3.gguf", tokens, merges, types,
                      bos=128000, eos=128001)


def test_llama3_gguf_equals_the_tiktoken_tokenizer(llama3_gguf, tok):
    g = GGUFTokenizer(llama3_gguf)
    assert isinstance(tok, Tokenizer) and g.n_words == tok.n_words == 128256
    assert g.special_tokens == tok.special_tokens
    assert (g.bos_id, g.eos_id, g.eot_id, g.stop_tokens) == (tok.bos_id, tok.eos_id, tok.eot_id, tok.stop_tokens)
    for text in MIXED:
        assert g.encode(text) == tok.encode(text)
        assert g.encode(text, bos=False, eos=True) == tok.encode(text, bos=False, eos=True)


def test_llama3_gguf_merges_give_transformers_the_same_ids(llama3_gguf, tok):
    """transformers tokenizes by the merges list (not ranks): the derived merges must give tiktoken's ids."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(llama3_gguf.parent, gguf_file=llama3_gguf.name).backend_tokenizer
    hf.encode_special_tokens = True
    for text in MIXED:
        assert hf_ids(hf, text) == tok.encode(text, bos=False)


def test_llama3_vocab_merges(llama3_vocab):
    tokens, merges, types = llama3_vocab
    assert len(tokens) == len(types) == 128256 and types.count(3) == 256
    assert merges[0] == "Ġ Ġ"                                  # rank 256: two spaces
    left, right = merges[1].split(" ")
    assert left + right == tokens[257]                        # each merge makes the next-ranked piece


def tiny_vocab():
    """A byte-level vocabulary: all 256 bytes, three merges, two specials."""
    from helpers.tokenizer import bytes_to_unicode
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    tokens = alphabet + ["ab", "abc", "Ġab", "<s>", "</s>"]
    merges = ["a b", "ab c", "Ġ ab"]
    return tokens, merges, [1] * 259 + [3, 3]


def test_tiny_vocab_works(tmp_path):
    tokens, merges, types = tiny_vocab()
    g = GGUFTokenizer(write_gguf(tmp_path / "t.gguf", tokens, merges, types, bos=259, eos=260))
    assert g.pieces(g.encode("abc ab", bos=False)) == ["abc", " ab"]
    assert g.encode("x")[0] == g.bos_id == 259


@pytest.mark.parametrize("edit, words", [
    (dict(pre="qwen2"), ["'qwen2'", "'llama-bpe'", "'smollm'"]),
    (dict(pre=None), ["None", "pre-tokenizer"]),
    (dict(tokens=[]), ["no tokenizer", "tokenizer.ggml.tokens"]),
    (dict(merges=["ab c", "a b", "Ġ ab"]), ["merges[1]", "merge order"]),
    (dict(merges=["a b", "Ġ ab"]), ["lacks 1 merges"]),
    (dict(merges=["a b", "ab c", "Ġ ab", "x y"]), ["merges[3]", "does not join"]),
    (dict(eos=999), ["eos_token_id = 999"]),
    (dict(types=[1] * 10), ["261 tokens but 10 token types"]),
])
def test_bad_gguf_tokenizers(tmp_path, edit, words):
    tokens, merges, types = tiny_vocab()
    args = dict(tokens=tokens, merges=merges, types=types, bos=259, eos=260) | edit
    path = write_gguf(tmp_path / "bad.gguf", **args)
    with pytest.raises(CheckpointError) as e:
        GGUFTokenizer(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_metadata_reader_equals_gguf(smollm2):
    fields = gguf.GGUFReader(smollm2).fields
    want = {k: f.contents() for k, f in fields.items() if not k.startswith("GGUF.")}
    assert read_metadata(smollm2) == want and len(want["tokenizer.ggml.merges"]) == 48900


@pytest.mark.parametrize("head", [b"GGUF\x03\x00", b"PK\x03\x04" + bytes(40), "first 5000 bytes"])
def test_not_a_gguf(tmp_path, smollm2, head):
    path = tmp_path / "x.gguf"
    path.write_bytes(smollm2.read_bytes()[:5000] if isinstance(head, str) else head)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        GGUFTokenizer(path)
