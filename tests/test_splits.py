"""Splits are exact: no row lost or duplicated, disjoint, deterministic given a seed."""

from __future__ import annotations

import numpy as np
import pytest

from cmcrec.data import Ratings, RatingScale, Vocabulary, random_split, temporal_split, validation_split
from cmcrec.data.splits import make_split
from cmcrec.errors import ConfigError, DataError


def table(n_users: int = 20, n_items: int = 15, seed: int = 0) -> Ratings:
    rng = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.4]
    user = np.array([p[0] for p in pairs])
    item = np.array([p[1] for p in pairs])
    return Ratings(
        user=user,
        item=item,
        rating=rng.integers(1, 6, len(pairs)),
        users=Vocabulary(range(n_users), "user"),
        items=Vocabulary(range(n_items), "item"),
        scale=RatingScale.from_range(1, 5),
        timestamp=rng.integers(0, 50, len(pairs)),  # many ties on purpose
        name="t",
    )


def keys(r: Ratings) -> list[tuple[int, int, float, int]]:
    return sorted(zip(r.user.tolist(), r.item.tolist(), r.rating.tolist(), r.timestamp.tolist(), strict=True))


def assert_partition(whole: Ratings, a: Ratings, b: Ratings) -> None:
    assert len(a) + len(b) == len(whole)
    assert keys(a) + keys(b) != [] and sorted(keys(a) + keys(b)) == keys(whole)
    pa = set(zip(a.user.tolist(), a.item.tolist(), strict=True))
    pb = set(zip(b.user.tolist(), b.item.tolist(), strict=True))
    assert not pa & pb
    assert a.users == whole.users and b.items == whole.items


def test_random_split_is_an_exact_partition():
    r = table()
    s = random_split(r, 0.25, np.random.default_rng(1))
    assert_partition(r, s.train, s.test)
    assert len(s.test) == round(len(r) * 0.25)


def test_random_split_is_deterministic_given_the_generator():
    r = table()
    a = random_split(r, 0.2, np.random.default_rng(7))
    b = random_split(r, 0.2, np.random.default_rng(7))
    c = random_split(r, 0.2, np.random.default_rng(8))
    assert keys(a.test) == keys(b.test)
    assert keys(a.test) != keys(c.test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_must_be_inside_zero_one(fraction):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        random_split(table(), fraction, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        validation_split(table(), fraction, np.random.default_rng(0))


def test_temporal_split_holds_out_each_users_latest():
    r = table()
    s = temporal_split(r)
    assert_partition(r, s.train, s.test)
    counts = r.user_counts()
    assert sorted(s.test.user.tolist()) == sorted(np.flatnonzero(counts > 1).tolist())
    for u in range(r.num_users):
        mine = r.timestamp[r.user == u]
        held = s.test.timestamp[s.test.user == u]
        if counts[u] > 1:
            assert held.tolist() == [mine.max()]


def test_temporal_split_ties_and_single_ratings():
    r = Ratings(
        user=[0, 0, 0, 1, 2, 2],
        item=[0, 1, 2, 0, 1, 2],
        rating=[1, 2, 3, 4, 5, 1],
        users=Vocabulary(["a", "b", "c"]),
        items=Vocabulary(["x", "y", "z"]),
        scale=RatingScale.from_range(1, 5),
        timestamp=[5, 9, 9, 1, 3, 2],
    )
    s = temporal_split(r)
    # User a: items y and z tie at 9 -> the later row (z) is held out. User b has one
    # rating and keeps it. User c: item y (ts 3) is latest.
    assert sorted(zip(s.test.user.tolist(), s.test.item.tolist(), strict=True)) == [(0, 2), (2, 1)]
    assert 1 in s.train.user.tolist()
    assert keys(temporal_split(r).test) == keys(s.test)


def test_temporal_split_needs_timestamps():
    r = table()
    r.timestamp = None
    with pytest.raises(DataError, match="timestamps"):
        temporal_split(r)


def test_validation_split_carves_from_train_only():
    r = table()
    s = random_split(r, 0.2, np.random.default_rng(0))
    fit, val = validation_split(s.train, 0.1, np.random.default_rng(0))
    assert_partition(s.train, fit, val)
    assert len(val) == round(len(s.train) * 0.1)
    test_pairs = set(zip(s.test.user.tolist(), s.test.item.tolist(), strict=True))
    assert not test_pairs & set(zip(val.user.tolist(), val.item.tolist(), strict=True))
    fit2, val2 = validation_split(s.train, 0.1, np.random.default_rng(0))
    assert keys(val2) == keys(val)


def test_make_split_rejects_unknown_method():
    with pytest.raises(DataError, match="unknown split method 'k-fold'"):
        make_split(table(), "k-fold", rng=np.random.default_rng(0))
