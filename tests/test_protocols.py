"""Protocols: top-K selection, full ranking and the sampled protocol on tiny exact examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary
from cmcrec.errors import CmcrecError
from cmcrec.evaluation import (
    PopularityRanker,
    Ranker,
    ScoreMatrixRanker,
    Scorer,
    evaluate_full_ranking,
    evaluate_ratings,
    evaluate_sampled,
    interaction_matrix,
    relevance_threshold,
    topk_from_scores,
)

FIVE_STARS = RatingScale.from_range(1, 5)


def make_ratings(rows, num_users, num_items, scale=FIVE_STARS, name="ratings"):
    """``rows`` = [(user, item, rating), ...] over vocabularies u0.., i0.."""
    users = Vocabulary([f"u{u}" for u in range(num_users)], "user")
    items = Vocabulary([f"i{i}" for i in range(num_items)], "item")
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return Ratings(arr[:, 0], arr[:, 1], arr[:, 2], users, items, scale, name=name)


# ----------------------------------------------------------------------------- relevance threshold


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (RatingScale.from_range(1, 5), 4.0),  # 1 + 0.75*4 = 4
        (RatingScale.from_range(0.5, 5, 0.5), 4.0),  # 0.5 + 0.75*4.5 = 3.875 → nearest half star 4.0
        (RatingScale.from_range(0, 10), 8.0),  # 0 + 0.75*10 = 7.5 → tie between 7 and 8 → upper, 8
        (RatingScale.from_range(1, 100).with_buckets(10), 75.0),  # 1 + 0.75*99 = 75.25 → 75
        (RatingScale.infer(np.arange(1, 101)), 75.0),  # the scale YahooMusic gets
    ],
)
def test_relevance_threshold(scale, expected):
    assert relevance_threshold(scale) == expected


# ----------------------------------------------------------------------------- topk_from_scores


def test_topk_ties_by_index_and_exclusion():
    scores = np.array(
        [
            [0.5, 0.9, 0.5, 0.1, 0.5],  # 0.9 first, then the three 0.5s by index: 0, 2, 4
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all tied → 0, 1, 2; item 0 excluded → 1, 2, 3
            [np.nan, 0.2, -np.inf, 0.3, 0.1],  # NaN and -inf never returned
        ]
    )
    exclude = sp.csr_matrix(np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]))
    assert topk_from_scores(scores, 3).tolist() == [[1, 0, 2], [0, 1, 2], [3, 1, 4]]
    assert topk_from_scores(scores, 3, exclude).tolist() == [[1, 0, 2], [1, 2, 3], [1, 4, -1]]
    assert topk_from_scores(scores, 4)[0].tolist() == [1, 0, 2, 4]
    # k beyond the catalogue pads with -1; the input is not modified
    before = scores.copy()
    assert topk_from_scores(scores, 7, exclude)[0].tolist() == [1, 0, 2, 4, 3, -1, -1]
    np.testing.assert_array_equal(scores, before)


def test_topk_excludes_explicit_zero_entries():
    # A stored 0 (a rating of 0 on a 0–10 scale) still excludes the item.
    exclude = sp.csr_matrix((np.array([0.0]), np.array([1]), np.array([0, 1])), shape=(1, 3))
    assert topk_from_scores(np.array([[0.1, 0.9, 0.5]]), 2, exclude).tolist() == [[2, 0]]


@pytest.mark.parametrize("seed", range(4))
def test_topk_matches_full_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(30, 25)).astype(np.float32)  # many ties
    exclude = sp.random(30, 25, density=0.3, format="csr", random_state=seed)
    ex = exclude.toarray() != 0
    got = topk_from_scores(scores, 6, exclude)
    for u in range(30):
        cand = [i for i in range(25) if not ex[u, i]]
        want = sorted(cand, key=lambda i: (-scores[u, i], i))[:6]
        want += [-1] * (6 - len(want))
        assert got[u].tolist() == want


# ----------------------------------------------------------------------------- rating protocol


def test_evaluate_ratings():
    test = make_ratings([(0, 0, 4), (1, 1, 4), (1, 2, 3)], 2, 3)
    out = evaluate_ratings(np.array([3.0, 4.0, 5.0]), test)
    # errors -1, 0, 2 → RMSE sqrt(5/3), MAE 1
    assert out == {"rmse": pytest.approx(math.sqrt(5 / 3)), "mae": pytest.approx(1.0), "num_ratings": 3}
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ratings(np.array([3.0, np.nan, 5.0]), test)


# ----------------------------------------------------------------------------- full ranking, hand-worked
#
# 3 users, 5 items, 1–5 stars → relevance threshold 4.
#   train: u0 rated i0 (5), i1 (3);  u1 rated i2 (4);  u2 rated i0 (2)
#          → training counts (popularity): i0 2, i1 1, i2 1, i3 0, i4 0
#   test:  u0: i2 (5), i3 (2), i4 (4) → relevant {2, 4}
#          u1: i0 (3)                → nothing relevant → not evaluated, ranker never asked
#          u2: i1 (4), i3 (5)        → relevant {1, 3}
#   fixed lists: u0 [4, 3, 2] → hits [1, 0, 1];  u2 [2, 1, 4] → hits [0, 1, 0]

TRAIN = make_ratings([(0, 0, 5), (0, 1, 3), (1, 2, 4), (2, 0, 2)], 3, 5, name="train")
TEST = make_ratings([(0, 2, 5), (0, 3, 2), (0, 4, 4), (1, 0, 3), (2, 1, 4), (2, 3, 5)], 3, 5, name="test")
D2 = 1 / math.log2(3)  # discount at position 1 (position 0: 1, position 2: 1/2)


class FixedRanker:
    def __init__(self, lists):
        self.lists = lists
        self.calls = []

    def rank(self, users, k):
        self.calls.append(users.tolist())
        return np.array([self.lists[int(u)][:k] for u in users], dtype=np.int64)


def test_full_ranking_hand_worked():
    ranker = FixedRanker({0: [4, 3, 2], 2: [2, 1, 4]})
    assert isinstance(ranker, Ranker)
    out = evaluate_full_ranking(ranker, TRAIN, TEST, ks=(1, 3))
    assert ranker.calls == [[0, 2]]
    expected = {
        "recall@1": (1 / 2 + 0) / 2,
        "recall@3": (2 / 2 + 1 / 2) / 2,
        "precision@1": (1 + 0) / 2,
        "precision@3": (2 / 3 + 1 / 3) / 2,
        "ndcg@1": (1 + 0) / 2,
        # u0: DCG 1 + 1/2, ideal 1 + D2;  u2: DCG D2, ideal 1 + D2
        "ndcg@3": ((1 + 0.5) / (1 + D2) + D2 / (1 + D2)) / 2,
        "mrr@1": (1 + 0) / 2,
        "mrr@3": (1 + 1 / 2) / 2,
        "hit@1": (1 + 0) / 2,
        "hit@3": (1 + 1) / 2,
        "coverage@1": 2 / 5,  # {4, 2}
        "coverage@3": 4 / 5,  # {1, 2, 3, 4}
        "avg_popularity@1": (0 + 1) / 2,  # items 4, 2
        "avg_popularity@3": (0 + 0 + 1 + 1 + 1 + 0) / 6,
        # head = ceil(0.1 * 5) = 1 item: i0, never recommended
        "head_share@1": 0.0,
        "head_share@3": 0.0,
        # @1 counts [0,0,1,0,1] sorted [0,0,0,1,1]: coefs -4 -2 0 2 4 → (2+4)/(5*2) = 0.6
        "gini@1": 0.6,
        # @3 counts [0,1,2,1,2] sorted [0,1,1,2,2]: (-2 + 0 + 4 + 8)/(5*6) = 1/3
        "gini@3": 1 / 3,
        "num_users_evaluated": 2,
        "relevance_threshold": 4.0,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key

    # Batching does not change anything; the ranker is called once per batch.
    ranker = FixedRanker({0: [4, 3, 2], 2: [2, 1, 4]})
    assert evaluate_full_ranking(ranker, TRAIN, TEST, ks=(1, 3), user_batch=1) == pytest.approx(out)
    assert ranker.calls == [[0], [2]]


def test_full_ranking_threshold_override_and_custom_popularity():
    # threshold 3: u1's i0 (3) is relevant now, but i0 is not in u1's training set; evaluated
    ranker = FixedRanker({0: [4, 3, 2], 1: [0, 1, 3], 2: [2, 1, 4]})
    out = evaluate_full_ranking(ranker, TRAIN, TEST, ks=(1,), threshold=3, item_popularity=np.array([0, 0, 0, 0, 10]))
    assert out["num_users_evaluated"] == 3
    assert out["relevance_threshold"] == 3.0
    assert out["hit@1"] == pytest.approx((1 + 1 + 0) / 3)  # u0 i4, u1 i0 hit; u2 i2 misses
    assert out["avg_popularity@1"] == pytest.approx(10 / 3)  # i4, i0, i2
    assert out["head_share@1"] == pytest.approx(1 / 3)  # head = {i4}


def test_full_ranking_rejects_leaky_ranker_and_empty_evaluation():
    with pytest.raises(ValueError, match="training item 0"):
        evaluate_full_ranking(FixedRanker({0: [0, 3, 2], 2: [2, 1, 4]}), TRAIN, TEST, ks=(3,))
    with pytest.raises(ValueError, match="shape"):
        evaluate_full_ranking(FixedRanker({0: [4, 3], 2: [2, 1]}), TRAIN, TEST, ks=(3,))
    with pytest.raises(CmcrecError, match="nothing to rank"):
        evaluate_full_ranking(FixedRanker({}), TRAIN, TEST, threshold=6)


def test_popularity_ranker_hand_worked_and_end_to_end():
    ranker = PopularityRanker(TRAIN)
    # global order by count, ties by index: i0 (2), i1 (1), i2 (1), i3 (0), i4 (0)
    assert ranker.rank(np.array([0, 1, 2]), 3).tolist() == [[2, 3, 4], [0, 1, 3], [1, 2, 3]]
    assert ranker.rank(np.array([0]), 5).tolist() == [[2, 3, 4, -1, -1]]  # only 3 unseen items
    out = evaluate_full_ranking(ranker, TRAIN, TEST, ks=(1,))
    # u0 [2] hits (relevant {2, 4}); u2 [1] hits (relevant {1, 3})
    assert out["hit@1"] == 1.0
    assert out["recall@1"] == pytest.approx(0.5)


def random_split(seed, num_users=60, num_items=40, density=0.2):
    rng = np.random.default_rng(seed)
    mask = rng.random((num_users, num_items)) < density
    u, i = np.nonzero(mask)
    r = rng.integers(1, 6, size=u.size)
    is_test = rng.random(u.size) < 0.3
    rows = np.stack([u, i, r], axis=1)
    return (
        make_ratings(rows[~is_test], num_users, num_items, name="train"),
        make_ratings(rows[is_test], num_users, num_items, name="test"),
        rng,
    )


def test_rankers_never_recommend_training_items():
    train, test, rng = random_split(0)
    seen = interaction_matrix(train).toarray()
    table = rng.normal(size=(train.num_users, train.num_items))
    rankers = [PopularityRanker(train), ScoreMatrixRanker(lambda users: table[users], train)]
    users = np.arange(train.num_users)
    for ranker in rankers:
        lists = ranker.rank(users, 20)
        assert lists.shape == (train.num_users, 20)
        for u in users:
            row = lists[u][lists[u] >= 0]
            assert not seen[u, row].any()
            assert len(set(row.tolist())) == row.size
            assert row.size == min(20, int((~seen[u]).sum()))
        out = evaluate_full_ranking(ranker, train, test, ks=(5, 10), user_batch=7)
        assert 0 < out["num_users_evaluated"] <= train.num_users
        assert 0.0 <= out["recall@5"] <= out["recall@10"] <= 1.0


def test_score_matrix_ranker_rejects_wrong_shape():
    ranker = ScoreMatrixRanker(lambda users: np.zeros((len(users), 3)), TRAIN)
    with pytest.raises(ValueError, match="shape"):
        ranker.rank(np.array([0]), 2)


# ----------------------------------------------------------------------------- sampled protocol


class TableScorer:
    """Scores from a (num_users, num_items) table; records what it was asked."""

    def __init__(self, table):
        self.table = table
        self.seen_items = []

    def score(self, users, items):
        self.seen_items.append(items.copy())
        return self.table[users[:, None], items]


def sampled_setup(seed=0, num_users=30, num_items=200):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        for i in rng.choice(num_items, size=rng.integers(1, 60), replace=False):
            rows.append((u, i, rng.integers(1, 6)))
    rows = np.array(rows)
    # Held out: each user's first row; the rest is training.
    first = np.unique(rows[:, 0], return_index=True)[1]
    is_held = np.zeros(len(rows), dtype=bool)
    is_held[first] = True
    train = make_ratings(rows[~is_held], num_users, num_items, name="train")
    heldout = make_ratings(rows[is_held], num_users, num_items, name="heldout")
    return train, heldout


def test_sampled_known_answers():
    train, heldout = sampled_setup()
    target = np.zeros((train.num_users, train.num_items))
    target[heldout.user, heldout.item] = 1.0

    oracle = TableScorer(target)  # held-out item scores 1, every negative 0
    assert isinstance(oracle, Scorer)
    out = evaluate_sampled(oracle, train, heldout, rng=np.random.default_rng(1), ks=(1, 10))
    assert out == {
        "sampled_ndcg@1": 1.0,
        "sampled_hr@1": 1.0,
        "sampled_ndcg@10": 1.0,
        "sampled_hr@10": 1.0,
        "sampled_mrr": 1.0,
        "num_users_evaluated": 30,
    }

    worst = TableScorer(-target)  # held-out item scores lowest: rank 100 of 100
    out = evaluate_sampled(worst, train, heldout, rng=np.random.default_rng(1))
    assert out["sampled_hr@10"] == 0.0
    assert out["sampled_ndcg@10"] == 0.0
    assert out["sampled_mrr"] == pytest.approx(1 / 100)


def test_sampled_ties():
    train, heldout = sampled_setup()
    constant = TableScorer(np.zeros((train.num_users, train.num_items)))
    # pessimistic: the held-out item goes after all 99 tied negatives → rank 100
    out = evaluate_sampled(constant, train, heldout, rng=np.random.default_rng(1))
    assert out["sampled_hr@10"] == 0.0
    assert out["sampled_mrr"] == pytest.approx(1 / 100)
    # expected: uniform over ranks 1..100 → HR@10 = 10/100, MRR = H_100 / 100,
    # NDCG@10 = (1/100) * sum_{r=1..10} 1/log2(r + 1)
    out = evaluate_sampled(constant, train, heldout, rng=np.random.default_rng(1), ties="expected")
    assert out["sampled_hr@10"] == pytest.approx(0.1)
    assert out["sampled_mrr"] == pytest.approx(sum(1 / r for r in range(1, 101)) / 100)
    assert out["sampled_ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 100)

    # Partial tie, worked by hand with 3 negatives: scores held-out 0.5, negatives 0.9, 0.5, 0.1
    # → 1 better, 1 tied. Pessimistic rank 3 (0-based 2); expected: rank 2 or 3, each 1/2.
    train1 = make_ratings([(0, 0, 5)], 1, 5)
    held1 = make_ratings([(0, 1, 5)], 1, 5)
    table = np.array([[0.0, 0.5, 0.9, 0.5, 0.1]])  # i1 held out; negatives are exactly i2, i3, i4
    pess = evaluate_sampled(TableScorer(table), train1, held1, 3, rng=np.random.default_rng(0), ks=(2, 3))
    assert pess["sampled_mrr"] == pytest.approx(1 / 3)
    assert pess["sampled_hr@2"] == 0.0
    assert pess["sampled_ndcg@3"] == pytest.approx(1 / math.log2(4))
    exp = evaluate_sampled(
        TableScorer(table), train1, held1, 3, rng=np.random.default_rng(0), ks=(2, 3), ties="expected"
    )
    assert exp["sampled_mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert exp["sampled_hr@2"] == pytest.approx(0.5)
    assert exp["sampled_ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)


def test_sampled_negatives_are_distinct_unrated_and_reproducible():
    train, heldout = sampled_setup(seed=3)
    rated = interaction_matrix(train).toarray() | interaction_matrix(heldout).toarray()
    scorer = TableScorer(np.zeros((train.num_users, train.num_items)))
    evaluate_sampled(scorer, train, heldout, rng=np.random.default_rng(7), user_batch=8)
    items = np.concatenate(scorer.seen_items)
    assert items.shape == (30, 100)
    np.testing.assert_array_equal(items[:, 0], heldout.item)
    for row, u in zip(items, heldout.user, strict=True):
        negatives = row[1:]
        assert len(set(negatives.tolist())) == 99
        assert not rated[u, negatives].any()
    again = TableScorer(scorer.table)
    evaluate_sampled(again, train, heldout, rng=np.random.default_rng(7), user_batch=8)
    np.testing.assert_array_equal(np.concatenate(again.seen_items), items)


def test_sampled_exhausts_small_catalogue():
    # u0 rated 2 of 6 items; held out 1 → exactly 3 unrated items → all three must be drawn.
    train = make_ratings([(0, 0, 5), (0, 5, 1)], 1, 6)
    held = make_ratings([(0, 2, 4)], 1, 6)
    scorer = TableScorer(np.zeros((1, 6)))
    evaluate_sampled(scorer, train, held, 3, rng=np.random.default_rng(0))
    assert sorted(scorer.seen_items[0][0, 1:].tolist()) == [1, 3, 4]
    with pytest.raises(CmcrecError, match="only 3 unrated items"):
        evaluate_sampled(scorer, train, held, 4, rng=np.random.default_rng(0))


def test_sampled_never_draws_excluded_items():
    # u0 rated items 0 and 5 in training and 2 (held out) and 3 in the test split: with item 3 excluded
    # the only unrated items are 1 and 4, so both are drawn and 3 never is.
    train = make_ratings([(0, 0, 5), (0, 5, 1)], 1, 6)
    test = make_ratings([(0, 2, 4), (0, 3, 5)], 1, 6, name="test")
    held = make_ratings([(0, 2, 4)], 1, 6)
    for seed in range(5):
        scorer = TableScorer(np.zeros((1, 6)))
        evaluate_sampled(scorer, train, held, 2, rng=np.random.default_rng(seed), exclude=test)
        assert sorted(scorer.seen_items[0][0, 1:].tolist()) == [1, 4]
    with pytest.raises(CmcrecError, match="only 2 unrated items"):
        evaluate_sampled(scorer, train, held, 3, rng=np.random.default_rng(0), exclude=test)


def test_evaluate_recommender_sampled_negatives_skip_other_test_items():
    """The pipeline holds out each user's last test rating; the user's other test items are rated,
    so they are never drawn among its 99 negatives."""
    from dataclasses import replace

    from cmcrec.data.ratings import Split
    from cmcrec.evaluation.pipeline import evaluate_recommender

    num_items = 120
    train = make_ratings([(0, i, 3) for i in range(0, 5)] + [(1, i, 4) for i in range(5, 9)], 2, num_items)
    test_rows = [(0, 10 + i, 5) for i in range(6)] + [(1, 20 + i, 5) for i in range(4)]
    test = make_ratings(test_rows, 2, num_items, name="test")
    test = replace(test, timestamp=np.arange(len(test), dtype=np.int64))
    rated = interaction_matrix(train).toarray() | interaction_matrix(test).toarray()

    class Fake:
        seen: list = []

        def predict_indices(self, users, items):
            self.seen.append((np.asarray(users).copy(), np.asarray(items).copy()))
            return np.zeros(len(users))

        def rank(self, users, k, candidates):
            return np.tile(np.arange(50, 50 + k), (len(users), 1))

    rec = Fake()
    out = evaluate_recommender(rec, Split(train, test), ks=(10,))
    assert out["sampled_num_users"] == 2
    users, items = rec.seen[-1]  # the sampled protocol's call: 2 users x 100 candidates
    assert len(users) == 200
    negatives = np.ones(200, dtype=bool)
    negatives[::100] = False  # each user's held-out item comes first
    assert not rated[users[negatives], items[negatives]].any()


def test_sampled_rejects_bad_heldout():
    train = make_ratings([(0, 0, 5), (1, 1, 4)], 2, 6)
    with pytest.raises(CmcrecError, match="exactly one held-out item"):
        evaluate_sampled(
            TableScorer(np.zeros((2, 6))),
            train,
            make_ratings([(0, 2, 4), (0, 3, 4)], 2, 6),
            2,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(CmcrecError, match="also in"):
        evaluate_sampled(
            TableScorer(np.zeros((2, 6))),
            train,
            make_ratings([(1, 1, 4)], 2, 6),
            2,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(CmcrecError, match="ties"):
        evaluate_sampled(
            TableScorer(np.zeros((2, 6))),
            train,
            make_ratings([(1, 2, 4)], 2, 6),
            2,
            rng=np.random.default_rng(0),
            ties="optimistic",
        )
