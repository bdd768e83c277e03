"""Two attention heads worth finding, measured one way by the trainer, the model card and notebook 10.

previous-token head: the mass each query puts on the token just before it (viz.head_stats "prev"), on text.
induction head: on n random common words and the same n words again (after <bos> where the tokenizer starts
text with one: Llama 3's does, SmolLM2's does not), the mass each query of the second copy puts on the token
that followed its first occurrence (viz.induction_stat). Together they continue repeated text: the
previous-token head writes "what came before me" into each position, the induction head finds the earlier
position whose predecessor matches the current token and copies what sits there.
"""
import torch

from helpers.viz.data import collect, head_stats, induction_stat

# the 200 most frequent words of the training plays that are one token each (with their leading space) in
# the Llama 3 tokenizer, most frequent first (SmolLM2's too); tests check each is still one token
COMMON_WORDS = (
    "the and you that not with his for your this have him will thou thy her but all thee shall are our what good "
    "from love lord would more was she their now they man them sir here hath well know did come one then there "
    "say like may make let should than upon were must had see which out such can when yet too heart some these "
    "mine how give father speak time take much think most king tell never hand where death men life hear art "
    "fair great true own sweet day made again very night eyes honour away cannot any blood other world son name "
    "mad been look done fear old down who leave thus noble ever lady before nor two call brother comes could "
    "heaven way pray poor better head part both being into many myself still hast dead bear might find live "
    "nothing word best master wife house soul every stand eye off die little grace dear those long first face "
    "friends against friend tongue keep gone lie show himself words woman put till set place peace young gentle "
    "none full wrong mother therefore fool forth else though daughter answer hold said once mind rest").split()


def word_id(tokenizer, word):
    ids = tokenizer.encode(" " + word, bos=False)
    if len(ids) != 1:
        raise ValueError(f"' {word}' is {len(ids)} tokens {ids} in this tokenizer, not one; "
                         "induction_probe needs one-token words (as in Llama 3's and SmolLM2's tokenizers)")
    return ids[0]


def induction_probe(tokenizer, n=50, seed=0):
    """what the tokenizer puts before text (encode's bos: Llama 3's <|begin_of_text|>, nothing for SmolLM2) +
    n distinct random words of COMMON_WORDS + the same n again: 2n + 1 ids after a BOS, 2n without."""
    if not 2 <= n <= len(COMMON_WORDS):
        raise ValueError(f"n={n}: pick 2 <= n <= {len(COMMON_WORDS)} words")
    pick = torch.randperm(len(COMMON_WORDS), generator=torch.Generator().manual_seed(seed))[:n]
    ids = [word_id(tokenizer, COMMON_WORDS[i]) for i in pick.tolist()]
    return tokenizer.encode("", bos=True) + ids + ids


def induction_scores(weights, args, tokenizer, n=50, seeds=(0, 1, 2, 3)):
    """induction mass of every head [n_layers, n_heads], averaged over one probe per seed."""
    out = []
    for s in seeds:
        ids = induction_probe(tokenizer, n, s)
        out.append(induction_stat(collect(weights, args, ids)["attn"], ids))
    return torch.stack(out).mean(0)


def prev_scores(weights, args, ids):
    """previous-token mass of every head [n_layers, n_heads] on one run of ids (e.g. held-out text)."""
    return head_stats(collect(weights, args, ids)["attn"])["prev"]


def best(scores):
    """(layer, head, value) of the largest entry of a [n_layers, n_heads] score table."""
    i = int(scores.argmax())
    return i // scores.shape[1], i % scores.shape[1], float(scores.flatten()[i])

