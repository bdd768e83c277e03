"""Byte-level BPE on tiktoken, shared by the Llama 3 tokenizer (helpers.tokenizer) and the ones read from GGUF
files (helpers.gguf_tokenizer): the pre-split regexes, GPT-2's byte alphabet, ranks <-> merges, and the
encode/decode methods both expose.
"""
import operator
import re

import tiktoken

# the split regex from Meta's llama3 tokenizer: contractions, words, 1-3 digit numbers, punctuation, spaces
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2's regex run on the pieces left after cutting out every digit (SmolLM, StarCoder: llama.cpp's "\p{N}"
# split, then GPT-2's), folded into one regex: each digit is a piece, nothing else may hold one, and a
# whitespace run before a digit is whole (it ended its piece there)
DIGITS_THEN_GPT2 = (
    r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
)
MAX_ENCODE_CHARS = 400_000  # tiktoken panics on much longer inputs
MAX_RUN_CHARS = 25_000      # longer runs of (non-)whitespace are cut first: tiktoken is slow on them (as Meta does)


def bytes_to_unicode():
    """GPT-2's byte -> char map: tokenizer.json spells every token's bytes with printable chars."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    moved = [b for b in range(256) if b not in keep]  # control chars, space, ...: shifted past 255
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def split_runs(text, max_run=MAX_RUN_CHARS):
    """Meta's _split_whitespaces_or_nonwhitespaces: cut every run of more than max_run whitespace (or
    non-whitespace) chars after each max_run chars, so encode() gives Meta's ids on such text."""
    long = re.compile(rf"(?<!\s)\s{{{max_run + 1},}}|(?<!\S)\S{{{max_run + 1},}}")  # whole runs only (O(n))
    cuts = [m.start() + k for m in long.finditer(text) for k in range(max_run, m.end() - m.start(), max_run)]
    ends = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(ends, ends[1:])]


def bpe_parts(ranks, piece, below):
    """BPE on piece's bytes with the ranks < below only: merge the lowest-ranked adjacent pair until none is left."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        pairs = [(ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def merges_from_ranks(ranks):
    """[(left bytes, right bytes)] in rank order, so that BPE by this merges list gives tiktoken's ids.

    A piece's merge is the pair of parts that BPE with the ranks below it leaves. A few pieces (Llama 3 has some,
    e.g. b'.:.:') are no single merge of their bytes (BPE leaves 3+ parts); they get every split into two
    pieces instead, as transformers' tiktoken converter writes for all pieces.
    """
    out = []
    for piece, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = bpe_parts(ranks, piece, rank) if len(piece) > 1 else []
        if len(parts) == 2:
            out.append(tuple(parts))
        elif parts:
            splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
            out += sorted((p for p in splits if p[0] in ranks and p[1] in ranks),
                          key=lambda p: (ranks[p[0]], ranks[p[1]]))
    return out


class BPETokenizer:
    """tiktoken encode/decode with special tokens that text cannot produce.

    Special-token strings inside user text (e.g. "<|eot_id|>") are encoded as plain text, never as the special
    id: only `bos`/`eos` (or `encode_special`) produce special ids, so text cannot forge a turn boundary.
    Subclasses set name, bos_id, eos_id, eot_id, stop_tokens and call build().
    """
    add_bos = True               # what encode(text, bos=True) does: Llama 3 always starts with <|begin_of_text|>
    drops_unknown_bytes = False  # ids >= n_words stand for bytes without a token: encode leaves them out

    def build(self, name, pat_str, ranks, special_tokens, n_words):
        self.special_tokens = dict(special_tokens)
        self.model = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks,
                                       special_tokens=self.special_tokens)
        self.n_words = n_words

    def encode(self, text, bos=True, eos=False):
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = [self.bos_id] if bos and self.add_bos else []
        for i in range(0, len(text), MAX_ENCODE_CHARS):
            for part in split_runs(text[i:i + MAX_ENCODE_CHARS]):
                got = self.model.encode(part, disallowed_special=())
                ids += [i for i in got if i < self.n_words] if self.drops_unknown_bytes else got
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
