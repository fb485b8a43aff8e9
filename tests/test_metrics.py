"""Metrics: a hand-worked example with the arithmetic written out, and a slow oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from cmcrec.evaluation import metrics as M

# ----------------------------------------------------------------------------- rating errors


def test_rmse_mae_hand_worked():
    pred = np.array([3.0, 4.0, 5.0])
    true = np.array([4.0, 4.0, 3.0])
    # errors: -1, 0, +2 → squared 1, 0, 4 → MSE 5/3; absolute 1, 0, 2 → MAE 3/3
    assert M.rmse(pred, true) == pytest.approx(math.sqrt(5 / 3))
    assert M.mae(pred, true) == pytest.approx(1.0)


@pytest.mark.parametrize("fn", [M.rmse, M.mae])
def test_rating_errors_reject_bad_input(fn):
    with pytest.raises(ValueError, match="zero ratings"):
        fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="differ in length"):
        fn(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


# ----------------------------------------------------------------------------- the hand-worked example
#
# 4 users, 8 items, K = 3.
#
#   user  top-3          relevant     hits (by position)   |rel|
#   u0    [0, 1, 2]      {1, 4}       [0, 1, 0]            2
#   u1    [3, 4, 5]      {0}          [0, 0, 0]            1
#   u2    [5, 0, -1]     {0, 2, 5}    [1, 1, 0]  (padded)  3
#   u3    [2, 3, 4]      {}           —  excluded from every per-user ranking metric
#
# so every ranking average below is over 3 users (u0, u1, u2).

TOPK = np.array([[0, 1, 2], [3, 4, 5], [5, 0, -1], [2, 3, 4]])
RELEVANT = [[1, 4], [0], [0, 2, 5], []]
NUM_ITEMS = 8
D1 = 1.0  # discount at position 0: 1 / log2(2)
D2 = 1.0 / math.log2(3)  # position 1: 0.6309
D3 = 0.5  # position 2: 1 / log2(4)


def relevant_csr(rows=RELEVANT, num_items=NUM_ITEMS):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return sp.csr_matrix((np.ones(indices.size, dtype=bool), indices, indptr), shape=(len(rows), num_items))


def test_hit_matrix_hand_worked():
    expected = [[0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert M.hit_matrix(TOPK, relevant_csr()).astype(int).tolist() == expected


def test_recall_hand_worked():
    # @3: u0 1/2, u1 0/1, u2 2/3 → (1/2 + 0 + 2/3) / 3 = 7/18
    assert M.recall_at_k(TOPK, relevant_csr()) == pytest.approx(7 / 18)
    # @1: u0 0, u1 0, u2 1/3 → 1/9
    assert M.recall_at_k(TOPK, relevant_csr(), 1) == pytest.approx(1 / 9)


def test_precision_hand_worked():
    # @3: 1/3, 0/3, 2/3 (the padded slot is a miss; the denominator stays 3) → 1/3
    assert M.precision_at_k(TOPK, relevant_csr(), 3) == pytest.approx(1 / 3)
    # @1: 0, 0, 1 → 1/3
    assert M.precision_at_k(TOPK, relevant_csr(), 1) == pytest.approx(1 / 3)


def test_ndcg_hand_worked():
    # u0: DCG = D2; ideal over min(2, 3) = 2 hits = D1 + D2
    # u1: DCG = 0
    # u2: DCG = D1 + D2; ideal over min(3, 3) = 3 hits = D1 + D2 + D3
    u0 = D2 / (D1 + D2)  # 0.3869
    u2 = (D1 + D2) / (D1 + D2 + D3)  # 0.7654
    assert M.ndcg_at_k(TOPK, relevant_csr()) == pytest.approx((u0 + 0 + u2) / 3)
    # @1: ideal = D1 for everyone; only u2 hits at position 0 → 1/3
    assert M.ndcg_at_k(TOPK, relevant_csr(), 1) == pytest.approx(1 / 3)


def test_mrr_hand_worked():
    # @3: first hit at rank 2 for u0 → 1/2; none for u1 → 0; rank 1 for u2 → 1 → (1/2 + 0 + 1)/3
    assert M.mrr_at_k(TOPK, relevant_csr()) == pytest.approx(0.5)
    # @1: u0's first hit (rank 2) is cut off → 0; u2 → 1 → 1/3
    assert M.mrr_at_k(TOPK, relevant_csr(), 1) == pytest.approx(1 / 3)


def test_hit_hand_worked():
    # @3: 1, 0, 1 → 2/3; @1: 0, 0, 1 → 1/3
    assert M.hit_at_k(TOPK, relevant_csr()) == pytest.approx(2 / 3)
    assert M.hit_at_k(TOPK, relevant_csr(), 1) == pytest.approx(1 / 3)


def test_per_user_values_and_exclusion():
    values = M.recall_at_k(TOPK, relevant_csr(), per_user=True)
    assert values[:3] == pytest.approx([0.5, 0.0, 2 / 3])
    assert np.isnan(values[3])  # u3 has no relevant item


def test_ranking_metrics_matches_single_functions_and_indptr_input():
    rel = relevant_csr()
    out = M.ranking_metrics(TOPK, (rel.indptr, rel.indices), ks=(1, 3))
    assert set(out) == {f"{m}@{k}" for m in M.RANKING_METRICS for k in (1, 3)}
    assert out["recall@3"] == pytest.approx(7 / 18)
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["mrr@3"] == pytest.approx(0.5)
    assert out["hit@1"] == pytest.approx(1 / 3)


def test_relevant_values_are_ignored_only_structure_counts():
    # An explicit stored 0 (e.g. a rating of 0 on a 0–10 scale) is still an entry.
    rel = sp.csr_matrix((np.array([0.0]), np.array([5]), np.array([0, 1])), shape=(1, 8))
    assert M.hit_at_k(np.array([[5, 1, 2]]), rel) == 1.0


def test_catalogue_coverage_hand_worked():
    # all four lists, @3: items {0,1,2,3,4,5} → 6 of 8
    assert M.catalogue_coverage(TOPK, NUM_ITEMS) == pytest.approx(6 / 8)
    # @1: first column {0, 3, 5, 2} → 4 of 8
    assert M.catalogue_coverage(TOPK, NUM_ITEMS, 1) == pytest.approx(4 / 8)


POP = np.array([10, 5, 0, 3, 1, 2, 7, 4])  # training ratings per item; total 32


def test_average_popularity_hand_worked():
    # 11 filled slots: u0 10+5+0=15, u1 3+1+2=6, u2 2+10=12, u3 0+3+1=4 → 37 / 11
    assert M.average_popularity(TOPK, POP) == pytest.approx(37 / 11)
    # normalised: a share of the 32 training ratings → 37 / 11 / 32
    assert M.average_popularity(TOPK, POP, normalize=True) == pytest.approx(37 / 11 / 32)
    # @1: items 0, 3, 5, 2 → (10 + 3 + 2 + 0) / 4
    assert M.average_popularity(TOPK, POP, 1) == pytest.approx(15 / 4)


def test_head_share_hand_worked():
    # head_fraction 0.25 → ceil(2) = 2 head items: item 0 (10) and item 6 (7).
    assert M.head_items(POP, 0.25).tolist() == [0, 6]
    # item 0 fills 2 of the 11 slots (u0, u2); item 6 none → 2/11
    assert M.head_share(TOPK, POP, head_fraction=0.25) == pytest.approx(2 / 11)
    # ties in popularity go to the lower index
    assert M.head_items(np.array([1, 3, 3, 0]), 0.25).tolist() == [1]


def test_popularity_gini_hand_worked():
    # recommendation counts per item: 0:2 1:1 2:2 3:2 4:2 5:2 6:0 7:0 (sum 11)
    # sorted: [0, 0, 1, 2, 2, 2, 2, 2]; coefficients 2i-n-1 for i=1..8: -7 -5 -3 -1 1 3 5 7
    # numerator: 1*(-3) + 2*(-1+1+3+5+7) = 27 ; denominator n*sum = 8*11 = 88
    assert M.popularity_gini(TOPK, NUM_ITEMS) == pytest.approx(27 / 88)
    assert M.popularity_gini(np.array([[0, 1], [1, 0]]), 2) == pytest.approx(0.0)


def test_input_validation():
    rel = relevant_csr()
    with pytest.raises(ValueError, match="same item"):
        M.recall_at_k(np.array([[1, 1, 2], [0, 2, 3], [0, 1, 2], [3, 4, 5]]), rel)
    with pytest.raises(ValueError, match="k must be"):
        M.recall_at_k(TOPK, rel, 4)
    with pytest.raises(ValueError, match="rows"):
        M.recall_at_k(TOPK[:2], rel)
    with pytest.raises(ValueError, match="no user has a relevant item"):
        M.recall_at_k(TOPK, relevant_csr([[], [], [], []]))
    with pytest.raises(ValueError, match="catalogue has"):
        M.catalogue_coverage(TOPK, 5)
    with pytest.raises(ValueError, match="integer"):
        M.recall_at_k(TOPK.astype(float), rel)


# ----------------------------------------------------------------------------- oracle cross-check


def slow_metrics(topk, relevant_rows, k, num_items, pop):
    """The obvious per-user loop: the oracle the vectorised code must match."""
    per = {m: [] for m in M.RANKING_METRICS}
    for row, rel in zip(topk, relevant_rows, strict=True):
        rel = set(rel)
        if not rel:
            continue
        lst = [i for i in row[:k]]
        hits = [i >= 0 and i in rel for i in lst]
        per["recall"].append(sum(hits) / len(rel))
        per["precision"].append(sum(hits) / k)
        per["hit"].append(float(any(hits)))
        per["mrr"].append(next((1 / (j + 1) for j, h in enumerate(hits) if h), 0.0))
        dcg = sum(1 / math.log2(j + 2) for j, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
        per["ndcg"].append(dcg / idcg)
    out = {f"{m}@{k}": float(np.mean(v)) for m, v in per.items()}
    recs = [i for row in topk for i in row[:k] if i >= 0]
    out["coverage"] = len(set(recs)) / num_items
    out["avg_pop"] = float(np.mean([pop[i] for i in recs]))
    counts = np.array([recs.count(i) for i in range(num_items)], dtype=float)
    mad = np.abs(counts[:, None] - counts[None, :]).sum()  # Gini as mean absolute difference
    out["gini"] = mad / (2 * num_items**2 * counts.mean())
    return out


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_metrics_match_slow_loop(seed):
    rng = np.random.default_rng(seed)
    num_users, num_items, K = 40, 30, 8
    topk = np.full((num_users, K), -1)
    for u in range(num_users):
        n = rng.integers(0, K + 1)  # some lists shorter than K (padded)
        topk[u, :n] = rng.choice(num_items, size=n, replace=False)
    topk[0] = rng.choice(num_items, size=K, replace=False)  # at least one recommendation
    relevant_rows = [list(rng.choice(num_items, size=rng.integers(0, 6), replace=False)) for _ in range(num_users)]
    relevant_rows[0] = [int(topk[0, 0])]  # at least one user with a relevant item
    rel = relevant_csr(relevant_rows, num_items)
    pop = rng.integers(0, 50, size=num_items)
    for k in (1, 3, K):
        want = slow_metrics(topk, relevant_rows, k, num_items, pop)
        got = M.ranking_metrics(topk, rel, ks=(k,))
        for key, value in got.items():
            assert value == pytest.approx(want[key]), key
        assert M.catalogue_coverage(topk, num_items, k) == pytest.approx(want["coverage"])
        assert M.average_popularity(topk, pop, k) == pytest.approx(want["avg_pop"])
        assert M.popularity_gini(topk, num_items, k) == pytest.approx(want["gini"])
