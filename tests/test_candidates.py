"""ItemKNNCandidates: exact answers on a hand-drawn matrix, and a slow obvious oracle."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import low_rank_ratings

from cmcrec.candidates import ItemKNNCandidates
from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary


def ratings_of(pairs: list[tuple[int, int, float]], num_users: int, num_items: int) -> Ratings:
    user, item, rating = (np.array(c) for c in zip(*pairs, strict=True))
    return Ratings(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        rating=rating.astype(np.float32),
        users=Vocabulary([f"u{u}" for u in range(num_users)], "user"),
        items=Vocabulary([f"i{i}" for i in range(num_items)], "item"),
        scale=RatingScale.from_range(1, 5),
    )


# u0: i0 i1 / u1: i0 i1 i2 / u2: i2 i3 / u3: i3 ; i4 is never rated.
# Rating counts (popularity) [2, 2, 2, 2, 0]; co-ratings (0,1)=2, (0,2)=(1,2)=(2,3)=1, so
# cosine sim(0,1) = 2/√(2·2) = 1 and sim(0,2) = sim(1,2) = sim(2,3) = 1/2.
HAND = ratings_of(
    [(0, 0, 5), (0, 1, 3), (1, 0, 4), (1, 1, 4), (1, 2, 2), (2, 2, 5), (2, 3, 1), (3, 3, 3)],
    num_users=4,
    num_items=5,
)


def one(gen: ItemKNNCandidates, items, ratings, n, exclude=None) -> list[int]:
    ex = None if exclude is None else [np.array(exclude, np.int64)]
    return gen.candidates([np.array(items, np.int64)], [np.array(ratings, np.float32)], n, exclude=ex)[0].tolist()


def test_hand_similarity():
    sim = ItemKNNCandidates(HAND).similarity.toarray()
    expected = np.zeros((5, 5))
    expected[0, 1] = expected[1, 0] = 1.0
    for i, j in [(0, 2), (1, 2), (2, 3)]:
        expected[i, j] = expected[j, i] = 0.5
    np.testing.assert_allclose(sim, expected, rtol=1e-6)


def test_hand_candidates():
    gen = ItemKNNCandidates(HAND)
    # Rated i0 with 5 (weight 1 + 1 = 2): i1 scores 2, i2 scores 1; i3 and i4 are unscored,
    # so they follow in popularity order (i3 rated twice, i4 never).
    assert one(gen, [0], [5], 3) == [1, 2, 3]
    # Fewer items than asked: padded with -1, never more than the catalogue wide.
    assert one(gen, [0], [5], 10) == [1, 2, 3, 4, -1]
    # Rated i3 with 1 (weight 1): i2 scores 1/2, the rest by popularity then index.
    assert one(gen, [3], [1], 4) == [2, 0, 1, 4]


def test_hand_neighbour_cap_breaks_ties_by_index():
    gen = ItemKNNCandidates(HAND, neighbours=1)
    # Row i2 has three neighbours at 1/2; the one kept is the smallest index, i0.
    np.testing.assert_allclose(gen.similarity.toarray()[2], [0.5, 0, 0, 0, 0], rtol=1e-6)
    assert one(gen, [2], [1], 2) == [0, 1]


def test_excluded_items_never_returned():
    gen = ItemKNNCandidates(HAND)
    assert one(gen, [0], [5], 5, exclude=[0, 1, 3]) == [2, 4, -1, -1, -1]
    # exclude replaces the history as the excluded set: a rated item may come back.
    assert one(gen, [0], [5], 2, exclude=[]) == [1, 2]
    assert one(gen, [0], [5], 5, exclude=[]) == [1, 2, 0, 3, 4]


def test_empty_history_falls_back_to_popularity():
    ratings = ratings_of([(0, 2, 4), (1, 2, 4), (2, 2, 1), (0, 4, 3), (1, 4, 2), (2, 0, 5)], 3, 5)
    gen = ItemKNNCandidates(ratings)
    assert one(gen, [], [], 5) == [2, 4, 0, 1, 3]
    assert one(gen, [], [], 3, exclude=[4]) == [2, 0, 1]


def test_batch_rows_are_independent():
    gen = ItemKNNCandidates(HAND)
    hist = [np.array([0]), np.array([], np.int64), np.array([3, 2])]
    rats = [np.array([5.0]), np.array([]), np.array([1.0, 4.0])]
    batch = gen.candidates(hist, rats, 3)
    for row in range(3):
        np.testing.assert_array_equal(batch[row], gen.candidates([hist[row]], [rats[row]], 3)[0])


def oracle_candidates(train: Ratings, items, ratings, n: int, neighbours: int, exclude) -> list[int]:
    """Dense cosine similarity, per-row top neighbours and a full sort, with plain loops."""
    num_items = train.num_items
    x = np.zeros((train.num_users, num_items))
    x[train.user, train.item] = 1.0
    sim = np.zeros((num_items, num_items))
    for i in range(num_items):
        for j in range(num_items):
            ni, nj = x[:, i].sum(), x[:, j].sum()
            if i != j and ni > 0 and nj > 0:
                sim[i, j] = (x[:, i] * x[:, j]).sum() / np.sqrt(ni * nj)
    for i in range(num_items):
        nonzero = [j for j in range(num_items) if sim[i, j] > 0]
        kept = sorted(nonzero, key=lambda j: (-sim[i, j], j))[:neighbours]
        for j in nonzero:
            if j not in kept:
                sim[i, j] = 0.0
    score = np.zeros(num_items)
    for i, r in zip(items, ratings, strict=True):
        score += sim[i] * (1.0 + (r - train.scale.minimum) / train.scale.span)
    pop = x.sum(axis=0)
    allowed = [j for j in range(num_items) if j not in set(exclude)]
    ranked = sorted(allowed, key=lambda j: (-score[j], -pop[j], j))[:n]
    return ranked + [-1] * (min(n, num_items) - len(ranked))


@pytest.mark.parametrize("neighbours", [2, 5, 100])
def test_matches_slow_oracle(neighbours):
    train = low_rank_ratings(num_users=12, num_items=15, density=0.3, seed=4)
    gen = ItemKNNCandidates(train, neighbours=neighbours)
    rng = np.random.default_rng(0)
    for _ in range(6):
        items = rng.choice(train.num_items, size=int(rng.integers(0, 5)), replace=False)
        ratings = rng.integers(1, 6, size=len(items)).astype(np.float32)
        exclude = np.union1d(items, rng.choice(train.num_items, size=2, replace=False))
        for n in (1, 4, 15, 20):
            got = gen.candidates([items], [ratings], n, exclude=[exclude])[0].tolist()
            assert got == oracle_candidates(train, items, ratings, n, neighbours, exclude), (items, ratings, n)


def test_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        ItemKNNCandidates(HAND).candidates([np.array([0])], [np.array([5.0])], 0)
