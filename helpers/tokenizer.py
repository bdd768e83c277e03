"""The Llama 3 tokenizer: tiktoken BPE with 128,000 ranks and 256 special tokens; load_tokenizer picks it or,
for a GGUF file, the file's own tokenizer (helpers.gguf_tokenizer); llama3_gguf_vocab spells Llama 3's the
way a GGUF stores it."""
import base64
import functools
from pathlib import Path

from helpers.bpe import (MAX_ENCODE_CHARS, MAX_RUN_CHARS, PAT_STR, BPETokenizer, bytes_to_unicode,  # noqa: F401
                         merges_from_ranks, split_runs)  # re-exported: import them from here
from helpers.files import read_json
from helpers.gguf_tokenizer import GGUFTokenizer, count_gguf_tokens
from helpers.model_dir import default_tokenizer_path, tokenizer_source  # noqa: F401  (re-exported)
from helpers.params import CheckpointError

NUM_SPECIAL = 256
N_RANKS = 128_000           # BPE pieces in the Llama 3 tokenizer.model; the specials follow them


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


class Tokenizer(BPETokenizer):
    """encode/decode like Meta's llama3 Tokenizer (methods in helpers.bpe.BPETokenizer).

    Special-token strings inside user text (e.g. "<|eot_id|>") are encoded as plain text, never as
    the special id: only `bos`/`eos` (or `encode_special`) produce special ids, so text cannot forge a
    turn boundary.
    """

    def __init__(self, path, llama31=False):
        self.path = Path(path)
        ranks = load_ranks(self.path)
        self.n_base = len(ranks)
        specials = {name: self.n_base + i for i, name in enumerate(special_token_names(llama31))}
        self.build(self.path.name, PAT_STR, ranks, specials, self.n_base + len(specials))
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.stop_tokens = {self.eos_id, self.eot_id, self.special_tokens.get("<|eom_id|>", self.eot_id)}


def count_tokens(path):
    """Ids of a tokenizer file without building it: a GGUF's token count, or ranks + 256 specials of a
    tokenizer.model from its line count (no parsing)."""
    if Path(path).suffix == ".gguf":
        return count_gguf_tokens(path)
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) + NUM_SPECIAL


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
    """(tokenizer.model or .gguf path, llama31 names) for a model dir (helpers.model_dir.tokenizer_source), with an HF
    dir's tokenizer.json checked against the bundled file when that file stands in for it."""
    path, llama31, must_match = tokenizer_source(model_dir)
    if must_match is not None:
        llama31 = check_tokenizer_json(must_match, path)
    return path, llama31


def load_tokenizer(model_dir=None):
    """Tokenizer for a model dir: a GGUF file's own (helpers.gguf_tokenizer), else the dir's tokenizer.model if
    present, else the bundled Llama 3 file.

    Resolution of model_dir: argument > LLAMA3_DIR > the bundled model (as load_checkpoint).
    """
    path, llama31 = tokenizer_file(model_dir)
    if Path(path).suffix == ".gguf":
        return GGUFTokenizer(path)
    return Tokenizer(path, llama31=llama31)


def llama3_gguf_vocab(path=None, llama31=False):
    """Llama 3's tokenizer as a GGUF file stores it: (tokens, merges, token_types).

    tokens: the 128,000 pieces spelled in GPT-2's byte alphabet, then the 256 special names; merges: "left right"
    for each piece of 2+ bytes in rank order (the split BPE makes with the ranks below it); types: 1 NORMAL,
    3 CONTROL. path: a tokenizer.model (default: the bundled one).
    """
    ranks = load_ranks(path or default_tokenizer_path())
    spell = bytes_to_unicode()
    by_rank = sorted(ranks, key=ranks.get)
    tokens = ["".join(spell[b] for b in piece) for piece in by_rank] + special_token_names(llama31)
    merges = [" ".join("".join(spell[b] for b in part) for part in pair) for pair in merges_from_ranks(ranks)]
    return tokens, merges, [1] * len(by_rank) + [3] * NUM_SPECIAL
