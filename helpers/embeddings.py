"""What the embedding table means (notebook 17): cosine neighbours, analogy arithmetic, PCA by hand, how
and how neighbours settle during training (tied tables: helpers.state_dict.is_tied).

Every function takes a table [vocab, dim] (any float dtype; computed in float64) and token ids.
"""
import torch


def unit_rows(table):
    """rows scaled to length 1, in float64 (so printed cosines do not depend on the CPU's matmul kernel):
    cosine similarity is then a dot product."""
    t = table.double()
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def check_ids(table, ids):
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(ids) and (ids.min() < 0 or ids.max() >= table.shape[0]):
        bad = int(ids.max() if ids.max() >= table.shape[0] else ids.min())
        raise ValueError(f"token id {bad} is outside the table's {table.shape[0]} rows; was it made by another "
                         "tokenizer?")
    return ids


def neighbours(table, ids, k=5, among=None):
    """(ids [n, k], cosines [n, k]): the k rows most cosine-similar to each row of ids, itself excluded.
    among: only these ids may be neighbours (e.g. ids the model was trained on), else every row."""
    ids = check_ids(table, ids)
    pool = torch.arange(table.shape[0]) if among is None else check_ids(table, among)
    unit = unit_rows(table)
    sims = unit[ids] @ unit[pool].T                                        # [n, len(pool)]
    sims[pool[None, :] == ids[:, None]] = float("-inf")                    # a token is not its own neighbour
    cos, idx = sims.topk(k, dim=-1)
    return pool[idx], cos


def analogy(table, a, b, c, k=5, among=None):
    """(ids [k], cosines [k]) nearest to b - a + c ("a is to b as c is to ?"), a, b, c excluded."""
    a, b, c = check_ids(table, [a, b, c])
    unit = unit_rows(table)
    target = unit[b] - unit[a] + unit[c]                                   # [dim]
    pool = torch.arange(table.shape[0]) if among is None else check_ids(table, among)
    sims = unit[pool] @ (target / target.norm())                           # [len(pool)]
    sims[torch.isin(pool, torch.stack([a, b, c]))] = float("-inf")
    cos, idx = sims.topk(k)
    return pool[idx], cos


def rank_of(table, a, b, c, want, among=None):
    """1-based rank of want among the candidates for b - a + c (a, b, c excluded): 1 = the analogy works."""
    n = table.shape[0] if among is None else len(among)
    got, _ = analogy(table, a, b, c, k=n - 3, among=among)
    hit = (got == int(want)).nonzero()
    return int(hit[0, 0]) + 1 if len(hit) else None


def pca(x, k=2):
    """(coords [n, k], components [k, dim], explained variance ratio [k]) of the rows of x, by SVD of the
    centred rows: the right singular vectors are the directions of most variance."""
    x = x.double()
    centred = x - x.mean(dim=0, keepdim=True)                              # [n, dim]
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)              # s [min(n, dim)], vt [.., dim]
    var = s ** 2
    return centred @ vt[:k].T, vt[:k], var[:k] / var.sum()


def same_subspace(a, b):
    """largest |sin| of the principal angles between the row spaces of a [k, dim] and b [k, dim]: 0 = same."""
    qa, _ = torch.linalg.qr(a.double().T)                                  # [dim, k]
    qb, _ = torch.linalg.qr(b.double().T)
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)                   # cosines of the principal angles
    return float((1 - cos.min() ** 2).clamp_min(0).sqrt())


def overlap(a, b):
    """mean fraction of shared neighbours, row by row, of two neighbour lists [n, k] (order ignored)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"neighbour lists of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared")
    shared = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)]
    return sum(shared) / a.numel()


def single_token_ids(tokenizer, words):
    """{word: id} for the words that the tokenizer writes as one token (with the leading space)."""
    out = {}
    for w in words:
        ids = tokenizer.encode(" " + w, bos=False, eos=False)
        if len(ids) == 1:
            out[w] = ids[0]
    return out

