"""The Llama 3 tokenizer: tiktoken BPE with 128,000 ranks and 256 special tokens."""
import base64
import functools
import operator
import re
from pathlib import Path

import tiktoken

from helpers.files import read_json
from helpers.model_dir import default_tokenizer_path, tokenizer_source  # noqa: F401  (re-exported)
from helpers.params import CheckpointError

# the split regex from Meta's llama3 tokenizer: contractions, words, 1-3 digit numbers, punctuation, spaces
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
N_RANKS = 128_000           # BPE pieces in the Llama 3 tokenizer.model; the specials follow them
MAX_ENCODE_CHARS = 400_000  # tiktoken panics on much longer inputs
MAX_RUN_CHARS = 25_000      # longer runs of (non-)whitespace are cut first: tiktoken is slow on them (as Meta does)


def special_token_names(llama31=False):
    """The 256 special-token names in id order (128000 + index).

    Meta-Llama-3 (3.0) names; Llama 3.1+ gave four reserved slots new names.
    """
    names = ["<|begin_of_text|>", "<|end_of_text|>",
             "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
             "<|start_header_id|>", "<|end_header_id|>",
             "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, NUM_SPECIAL - 5)]
    if llama31:
        names[4], names[5], names[8], names[10] = (
            "<|finetune_right_pad_id|>", "<|step_id|>", "<|eom_id|>", "<|python_tag|>")
    return names


def load_ranks(path):
    """tokenizer.model: one 'base64(bytes) rank' pair per line -> {bytes: rank}, ranks exactly 0..127999."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: this looks like a sentencepiece model (Llama 2); Llama 3 "
                         "uses a tiktoken tokenizer.model (one 'base64 rank' per line)") from None
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            piece, rank = line.split()
            piece, rank = base64.b64decode(piece, validate=True), int(rank)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'base64 rank', got {line[:60]!r}; "
                             "is this a tiktoken tokenizer.model (Llama 3), not sentencepiece (Llama 2)?") from None
        if piece in ranks:
            raise ValueError(f"{path}:{n}: piece {piece!r} appears twice (ranks {ranks[piece]} and {rank}); "
                             "the file is damaged: download it again")
        ranks[piece] = rank
    if not ranks:
        raise ValueError(f"{path} is empty: a Llama 3 tokenizer.model has {N_RANKS:,} 'base64 rank' lines; "
                         "download it again or use the bundled one")
    if len(ranks) != N_RANKS:
        raise ValueError(f"{path} holds {len(ranks):,} ranks; the Llama 3 tokenizer has exactly {N_RANKS:,} "
                         "(a truncated or foreign file?): download it again or use the bundled one")
    values = sorted(ranks.values())
    if values != list(range(N_RANKS)):
        i = next(i for i, r in enumerate(values) if r != i)
        why = f"rank {i} is missing" if values[i] > i else f"rank {values[i]} is repeated or negative"
        raise ValueError(f"{path}: ranks must be 0..{N_RANKS - 1}, each once, but {why}; "
                         "the file is damaged: download it again")
    return ranks


def split_runs(text, max_run=MAX_RUN_CHARS):
    """Meta's _split_whitespaces_or_nonwhitespaces: cut every run of more than max_run whitespace (or
    non-whitespace) chars after each max_run chars, so encode() gives Meta's ids on such text."""
    long = re.compile(rf"(?<!\s)\s{{{max_run + 1},}}|(?<!\S)\S{{{max_run + 1},}}")  # whole runs only (O(n))
    cuts = [m.start() + k for m in long.finditer(text) for k in range(max_run, m.end() - m.start(), max_run)]
    ends = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(ends, ends[1:])]


class Tokenizer:
    """encode/decode like Meta's llama3 Tokenizer.

    Special-token strings inside user text (e.g. "<|eot_id|>") are encoded as plain text, never as
    the special id: only `bos`/`eos` (or `encode_special`) produce special ids, so text cannot forge a
    turn boundary.
    """

    def __init__(self, path, llama31=False):
        self.path = Path(path)
        ranks = load_ranks(self.path)
        self.n_base = len(ranks)
        self.special_tokens = {name: self.n_base + i for i, name in enumerate(special_token_names(llama31))}
        self.model = tiktoken.Encoding(name=self.path.name, pat_str=PAT_STR,
                                       mergeable_ranks=ranks, special_tokens=self.special_tokens)
        self.n_words = self.n_base + len(self.special_tokens)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.stop_tokens = {self.eos_id, self.eot_id, self.special_tokens.get("<|eom_id|>", self.eot_id)}

    def encode(self, text, bos=True, eos=False):
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        for i in range(0, len(text), MAX_ENCODE_CHARS):
            for part in split_runs(text[i:i + MAX_ENCODE_CHARS]):
                ids += self.model.encode(part, disallowed_special=())
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_special(self, name):
        """The id of one special token by name, e.g. '<|eot_id|>'."""
        if name not in self.special_tokens:
            raise KeyError(f"{name!r} is not a special token of {self.path}")
        return self.special_tokens[name]

    def check_id(self, i):
        """i as an int in 0..n_words-1, else a ValueError naming it."""
        try:
            n = None if isinstance(i, bool) else operator.index(i)   # ints, numpy ints, 0-d integer tensors
        except TypeError:
            n = None
        if n is None or not 0 <= n < self.n_words:
            raise ValueError(f"token id {i!r:.40} is not in this tokenizer's vocabulary (integers "
                             f"0..{self.n_words - 1}); was it made by another tokenizer or model?")
        return n

    def decode(self, ids):
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"decode() takes a list of token ids, got {type(ids).__name__} {ids!r:.60}")
        return self.model.decode([self.check_id(i) for i in ids])

    def piece_bytes(self, i):
        return self.model.decode_single_token_bytes(self.check_id(i))

    def piece(self, i):
        """One token as text; bytes that are not valid UTF-8 on their own show as \\xNN."""
        return self.piece_bytes(i).decode("utf-8", errors="backslashreplace")

    def pieces(self, ids):
        return [self.piece(i) for i in ids]


def count_tokens(path):
    """ranks + 256 specials of a tokenizer.model, from its line count (no parsing)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) + NUM_SPECIAL


def bytes_to_unicode():
    """GPT-2's byte -> char map: tokenizer.json spells every token's bytes with printable chars."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    moved = [b for b in range(256) if b not in keep]  # control chars, space, ...: shifted past 255
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def check_tokenizer_json(path, tokenizer_model):
    """Does an HF tokenizer.json equal the tiktoken tokenizer.model? -> llama31 naming; CheckpointError if not.
    Each version of the file is checked once per process (load_checkpoint and load_tokenizer both ask)."""
    st = Path(path).stat()
    return _check_tokenizer_json(str(path), st.st_mtime_ns, st.st_size, str(tokenizer_model))


@functools.lru_cache(maxsize=8)
def _check_tokenizer_json(path, _mtime, _size, tokenizer_model):
    data = read_json(path, "the tokenizer")
    vocab = (data.get("model") or {}).get("vocab")

    def fail(why):
        raise CheckpointError(f"{path} does not match the Llama 3 tokenizer {tokenizer_model}: {why}. This "
                              "model uses another tokenizer: put its tiktoken tokenizer.model in "
                              f"{Path(path).parent / 'original'}/ (Llama 3 downloads ship one there)")
    if not isinstance(vocab, dict):
        fail("no BPE model.vocab")
    ranks = load_ranks(tokenizer_model)
    if len(vocab) != len(ranks):
        fail(f"{len(vocab)} vocab entries, expected {len(ranks)}")
    spell = bytes_to_unicode()
    for b, rank in ranks.items():  # every entry: cheap, and a sample could miss a retrained merge
        s = "".join(spell[c] for c in b)
        if vocab.get(s) != rank:
            fail(f"token {s!r} has id {vocab.get(s)}, Llama 3 has {rank}")
    added = {t.get("id"): t.get("content") for t in data.get("added_tokens", [])}
    got = [added.get(len(ranks) + i) for i in range(NUM_SPECIAL)]
    for llama31 in (False, True):
        if got == special_token_names(llama31):
            return llama31
    want = special_token_names(got[10] == "<|python_tag|>")
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    fail(f"special token id {len(ranks) + i} is {got[i]!r}, Llama 3 has {want[i]!r}")


def tokenizer_file(model_dir=None):
    """(tokenizer.model path, llama31 names) for a model dir (helpers.model_dir.tokenizer_source), with an HF
    dir's tokenizer.json checked against the bundled file when that file stands in for it."""
    path, llama31, must_match = tokenizer_source(model_dir)
    if must_match is not None:
        llama31 = check_tokenizer_json(must_match, path)
    return path, llama31


def load_tokenizer(model_dir=None):
    """Tokenizer for a model dir: its own tokenizer.model if present, else the bundled Llama 3 file.

    Resolution of model_dir: argument > LLAMA3_DIR > the bundled model (as load_checkpoint).
    """
    path, llama31 = tokenizer_file(model_dir)
    return Tokenizer(path, llama31=llama31)
