"""The tokenizer stored inside a GGUF file (llama.cpp, Ollama), built into tiktoken.

A GGUF with `tokenizer.ggml.model = "gpt2"` holds a byte-level BPE vocabulary: every token's bytes spelled in
GPT-2's printable alphabet (`tokenizer.ggml.tokens`), the merges in priority order (`tokenizer.ggml.merges`),
a type per token (`tokenizer.ggml.token_type`: NORMAL pieces, CONTROL/USER_DEFINED special tokens) and the name
of the pre-split regex (`tokenizer.ggml.pre`). tiktoken wants ranks, not merges: a token's id is its rank, and
that works when the ids follow the merge order and each token is the merge BPE finds with the ranks below it
(helpers.bpe.merges_from_ranks), which is checked here once per file version.
"""
import functools
import mmap
import struct
from pathlib import Path

from helpers.bpe import DIGITS_THEN_GPT2, PAT_STR, BPETokenizer, bytes_to_unicode, merges_from_ranks
from helpers.params import CheckpointError

PRE_TOKENIZERS = {"llama-bpe": PAT_STR,          # Llama 3 (= helpers.tokenizer.PAT_STR)
                  "smollm": DIGITS_THEN_GPT2}    # SmolLM/SmolLM2: every digit alone, then GPT-2's regex
NORMAL = 1                                       # gguf.TokenType: 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, ...
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end_of_turn|>", "<end_of_turn>")
ALSO_STOP = ("<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # struct codes
FIX = "use a GGUF converted with its tokenizer by llama.cpp's convert_hf_to_gguf.py"


def _stat(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} not found; pass a .gguf file (or a dir holding one)")
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def read_vocab(path):
    """The file's tokenizer.* metadata as plain Python values, parsed once per file version."""
    return _read_vocab(*_stat(path))


@functools.lru_cache(maxsize=4)
def _read_vocab(path, _mtime, _size):
    try:
        out = read_metadata(path, "tokenizer.")
    except (ValueError, struct.error, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it is truncated or "
                              "not GGUF: download it again") from None
    if not out.get("tokenizer.ggml.tokens"):
        raise CheckpointError(f"{path} has no tokenizer (no tokenizer.ggml.tokens in its metadata); {FIX}")
    return out


def read_metadata(path, prefix=""):
    """{key: value} of a GGUF file's metadata whose key starts with prefix; arrays as lists.

    The same values as gguf.GGUFReader(path).fields[key].contents() (tests check it), read straight from the
    header: GGUFReader makes a numpy view per string, 20+ s for Llama 3's 128,256 tokens and 280,147 merges.
    """
    with open(path, "rb") as f:
        m = f.read(4 + 4 + 8 + 8)
        if len(m) < 24 or m[:4] != b"GGUF":
            raise ValueError(f"starts with {m[:4]!r}, not b'GGUF'")
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with m:
        version, _, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; this reader knows 2 and 3 (little-endian)")
        pos, out = 24, {}

        def strings(n):
            nonlocal pos
            got = []
            for _ in range(n):
                (k,) = struct.unpack_from("<Q", m, pos)
                got.append(m[pos + 8:pos + 8 + k].decode("utf-8"))
                pos += 8 + k
            if pos > len(m):
                raise ValueError("the metadata runs past the end of the file")
            return got

        def values(kind, n):
            nonlocal pos
            if kind == 8:
                return strings(n)
            if kind == 9:
                got = []
                for _ in range(n):
                    item, count = struct.unpack_from("<IQ", m, pos)
                    pos += 12
                    got.append(values(item, count))
                return got
            if kind not in SCALARS:
                raise ValueError(f"unknown metadata value type {kind}")
            fmt = f"<{n}{SCALARS[kind]}"
            got = list(struct.unpack_from(fmt, m, pos))
            pos += struct.calcsize(fmt)
            return got

        for _ in range(n_kv):
            key = strings(1)[0]
            (kind,) = struct.unpack_from("<I", m, pos)
            pos += 4
            if kind == 9:
                item, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                value = values(item, count)
            else:
                value = values(kind, 1)[0]
            if key.startswith(prefix):
                out[key] = value
    return out


def count_gguf_tokens(path):
    """Number of ids in the file's vocabulary, without building the tokenizer."""
    return len(read_vocab(path)["tokenizer.ggml.tokens"])


@functools.lru_cache(maxsize=4)
def _check_merges(path, _mtime, _size):
    """CheckpointError unless tiktoken, ranking by id, merges as the file's merges list does: every merge joins
    two tokens into a token, results come in id order, and the merge BPE finds for each token is listed."""
    vocab = read_vocab(path)
    ranks, _ = split_vocab(path, vocab)
    spell = {c: b for b, c in bytes_to_unicode().items()}
    merges, listed, last = vocab.get("tokenizer.ggml.merges") or [], set(), -1
    for n, m in enumerate(merges):
        pair = tuple(bytes(spell.get(c, 0) for c in side) for side in m.split(" "))
        rank = ranks.get(b"".join(pair)) if len(pair) == 2 and all(p in ranks for p in pair) else None
        if rank is None or rank < last:
            why = "does not join two tokens into a token" if rank is None else \
                f"makes token {rank}, after merge {n - 1} made token {last}: tiktoken needs ids in merge order"
            raise CheckpointError(f"{path}: tokenizer.ggml.merges[{n}] {m!r} {why}; {FIX}")
        listed.add(pair)
        last = rank
    missing = [p for p in merges_from_ranks(ranks) if p not in listed]
    if missing:
        raise CheckpointError(f"{path}: tokenizer.ggml.merges lacks {len(missing)} merges BPE needs, e.g. "
                              f"{missing[0]} (for the token {b''.join(missing[0])!r}); {FIX}")


def split_vocab(path, vocab):
    """(ranks {bytes: id} of the NORMAL tokens, specials {text: id} of all others)."""
    tokens = vocab["tokenizer.ggml.tokens"]
    types = vocab.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise CheckpointError(f"{path}: {len(tokens)} tokens but {len(types)} token types; {FIX}")
    spell = {c: b for b, c in bytes_to_unicode().items()}
    ranks, specials = {}, {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind != NORMAL:
            specials.setdefault(text, i)
            continue
        try:
            piece = bytes(spell[c] for c in text)
        except KeyError:
            raise CheckpointError(f"{path}: token {i} {text!r} is not spelled in GPT-2's byte alphabet: not a "
                                  f"byte-level BPE vocabulary; {FIX}") from None
        if ranks.setdefault(piece, i) != i:
            raise CheckpointError(f"{path}: tokens {ranks[piece]} and {i} are both {text!r}; {FIX}")
    return ranks, specials


class GGUFTokenizer(BPETokenizer):
    """A GGUF file's own byte-level BPE tokenizer, with helpers.tokenizer.Tokenizer's interface.

    `encode(text, bos=True)` starts with bos_id only when the file says so (`tokenizer.ggml.add_bos_token`):
    Llama 3 files do, SmolLM2's does not (its bos_id <|im_start|> opens chat turns, never plain text), so the
    default call gives the same ids as llama.cpp and as transformers' AutoTokenizer(..., gguf_file=...);
    `add_bos` says which. Special-token strings typed in text stay plain text. A byte the vocabulary has no
    token for (SmolLM2: control chars such as \\x04, lead bytes 0xF1-0xF2) is dropped, as transformers does.
    SmolLM2's "smollm" split cuts every digit out first, as llama.cpp and the model's own tokenizer.json do;
    transformers' GGUF loader (5.x) skips that step, so it can differ where whitespace comes right before a digit
    ("a  1" is ['a', '  ', '1'] here, ['a', ' ', ' ', '1'] there); tests/test_gguf_tokenizer.py checks both.
    """

    def __init__(self, path):
        self.path = Path(path)
        key = _stat(self.path)
        vocab = read_vocab(self.path)
        model, pre = vocab.get("tokenizer.ggml.model"), vocab.get("tokenizer.ggml.pre")
        if model != "gpt2":
            raise CheckpointError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2', as "
                                  "Llama 3 and SmolLM2 use) is supported, not sentencepiece ('llama') or others")
        if pre not in PRE_TOKENIZERS:
            raise CheckpointError(f"{path}: pre-tokenizer tokenizer.ggml.pre = {pre!r} is not supported; "
                                  f"supported: {', '.join(map(repr, PRE_TOKENIZERS))}")
        ranks, specials = split_vocab(self.path, vocab)
        _check_merges(*key)
        n_words = len(vocab["tokenizer.ggml.tokens"])
        # bytes without a token (SmolLM2 has none for 21, e.g. 0x04) get ranks past the vocabulary, so tiktoken
        # does not panic, and encode drops them, as transformers does; no token contains them, so no merge moves
        unknown = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
        ranks |= {b: n_words + len(specials) + k for k, b in enumerate(unknown)}
        self.build(self.path.name, PRE_TOKENIZERS[pre], ranks, specials, n_words)
        self.drops_unknown_bytes = bool(unknown)
        self.pre, self.chat_template = pre, vocab.get("tokenizer.chat_template")
        self.add_bos = bool(vocab.get("tokenizer.ggml.add_bos_token", True))
        self.bos_id = self._id(vocab, "bos", "<|begin_of_text|>")
        self.eos_id = self._id(vocab, "eos", "<|end_of_text|>")
        turn = [specials[n] for n in END_OF_TURN if n in specials]
        self.eot_id = self._id(vocab, "eot", None) if "tokenizer.ggml.eot_token_id" in vocab else \
            (turn[0] if turn else self.eos_id)
        self.stop_tokens = {self.eos_id, self.eot_id, *(specials[n] for n in ALSO_STOP if n in specials)}

    def _id(self, vocab, what, default_name):
        i = vocab.get(f"tokenizer.ggml.{what}_token_id", self.special_tokens.get(default_name))
        if i is None:
            raise CheckpointError(f"{self.path} names no {what} token (tokenizer.ggml.{what}_token_id); {FIX}")
        try:
            return self.check_id(i)
        except ValueError:
            raise CheckpointError(f"{self.path}: tokenizer.ggml.{what}_token_id = {i} is not one of its "
                                  f"{self.n_words} ids; {FIX}") from None
