"""Embedding-table tools against independent computations (F.cosine_similarity, numpy's eigh, pca_lowrank)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import embeddings as E


@pytest.fixture
def table():
    return torch.randn(50, 12, generator=torch.Generator().manual_seed(0))


def test_neighbours_are_the_most_cosine_similar_rows(table):
    ids, cos = E.neighbours(table, [3, 7], k=4)
    for row, i in enumerate((3, 7)):
        sims = F.cosine_similarity(table[i][None].double(), table.double(), dim=-1)
        sims[i] = -2
        want = sims.topk(4)
        assert ids[row].tolist() == want.indices.tolist()
        torch.testing.assert_close(cos[row], want.values)
    among = torch.arange(10, 20)
    ids, _ = E.neighbours(table, [12], k=3, among=among)
    assert set(ids[0].tolist()) <= set(among.tolist()) - {12}


def test_analogy_finds_a_planted_answer(table):
    t = table.clone()
    t[40] = E.unit_rows(t)[2] - E.unit_rows(t)[1] + E.unit_rows(t)[5]     # 1 : 2 :: 5 : 40, exactly
    ids, cos = E.analogy(t, 1, 2, 5, k=3)
    assert ids[0] == 40 and cos[0] > 0.9999 and not {1, 2, 5} & set(ids.tolist())
    assert E.rank_of(t, 1, 2, 5, 40) == 1 and E.rank_of(t, 1, 2, 5, ids[2]) == 3


def test_pca_by_svd_matches_numpy_and_pca_lowrank(table):
    coords, comps, ratio = E.pca(table, k=3)
    x = table.double().numpy()
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    top = evals[::-1][:3]
    np.testing.assert_allclose(ratio.numpy(), top / evals.sum(), rtol=1e-4)
    _, _, v = torch.pca_lowrank(table, q=12, center=True, niter=4)  # randomized: q = all columns
    v = v[:, :3]
    assert E.same_subspace(comps, v.T) < 1e-3
    assert E.same_subspace(comps, torch.from_numpy(evecs[:, ::-1][:, :3].T.copy()).float()) < 1e-3
    other = torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    assert E.same_subspace(comps, other) > 0.1                          # the check can fail
    torch.testing.assert_close(coords, (table.double() - table.double().mean(0)) @ comps.T)


def test_overlap():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert E.overlap(a, a) == 1.0
    assert E.overlap(a, a + 10) == 0.0
    assert E.overlap(a, torch.tensor([[3, 2, 9], [9, 9, 9]])) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="shapes"):
        E.overlap(a, a[:, :2])


def test_ids_outside_the_table_are_one_clear_error(table):
    with pytest.raises(ValueError, match="token id 50 is outside the table's 50 rows"):
        E.neighbours(table, [50])
    with pytest.raises(ValueError, match="token id -1"):
        E.analogy(table, -1, 2, 3)
