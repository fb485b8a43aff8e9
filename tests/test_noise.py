"""Noise injection: exact counts, untouched rows, valid levels, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import low_rank_ratings, low_rank_split

from cmcrec.data.noise import flip_ratings, inject_fake, noise_count
from cmcrec.errors import CmcrecError, ConfigError


def _keys(r):
    return r.user * r.num_items + r.item


@pytest.mark.parametrize("share", [0.05, 0.1, 0.3, 1.0])
def test_inject_fake_counts_and_untouched_rows(share):
    train = low_rank_ratings(density=0.3)
    noisy = inject_fake(train, share, np.random.default_rng(0))
    n, count = len(train), round(share * len(train))
    assert len(noisy) == n + count
    # The original rows come first, unchanged.
    np.testing.assert_array_equal(noisy.user[:n], train.user)
    np.testing.assert_array_equal(noisy.item[:n], train.item)
    np.testing.assert_array_equal(noisy.rating[:n], train.rating)
    np.testing.assert_array_equal(noisy.timestamp[:n], train.timestamp)
    # No pair is rated twice; every fake is on a pair that was unrated.
    keys = _keys(noisy)
    assert np.unique(keys).size == keys.size
    assert not np.isin(keys[n:], _keys(train)).any()
    # Levels of the scale, timestamps within the training range, same vocabularies.
    assert set(np.unique(noisy.rating[n:])) <= set(train.scale.levels)
    assert noisy.timestamp[n:].min() >= train.timestamp.min()
    assert noisy.timestamp[n:].max() <= train.timestamp.max()
    assert noisy.users == train.users and noisy.items == train.items


def test_inject_fake_avoids_given_pairs_and_uses_every_level():
    split = low_rank_split(density=0.3)
    noisy = inject_fake(split.train, 1.0, np.random.default_rng(1), avoid=split.test)
    fakes = _keys(noisy)[len(split.train) :]
    assert not np.isin(fakes, _keys(split.test)).any()
    assert set(np.unique(noisy.rating[len(split.train) :])) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_inject_fake_deterministic_and_share_zero():
    train = low_rank_ratings()
    a = inject_fake(train, 0.2, np.random.default_rng(7))
    b = inject_fake(train, 0.2, np.random.default_rng(7))
    c = inject_fake(train, 0.2, np.random.default_rng(8))
    for f in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.item, c.item) or not np.array_equal(a.user, c.user)
    zero = inject_fake(train, 0.0, np.random.default_rng(0))
    for f in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(zero, f), getattr(train, f))


def test_inject_fake_too_many_and_bad_share():
    train = low_rank_ratings(num_users=4, num_items=3, density=0.9)
    free = 12 - len(train)
    with pytest.raises(CmcrecError, match="unrated"):
        inject_fake(train, (free + 1) / len(train), np.random.default_rng(0))
    full = inject_fake(train, free / len(train), np.random.default_rng(0))
    assert len(full) == 12
    with pytest.raises(ConfigError, match="share"):
        inject_fake(train, -0.1, np.random.default_rng(0))


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 1.0])
def test_flip_ratings_counts_and_levels(share):
    train = low_rank_ratings()
    noisy = flip_ratings(train, share, np.random.default_rng(3))
    changed = noisy.rating != train.rating
    assert changed.sum() == round(share * len(train))
    # Only ratings change, always to another level of the scale.
    np.testing.assert_array_equal(noisy.user, train.user)
    np.testing.assert_array_equal(noisy.item, train.item)
    np.testing.assert_array_equal(noisy.timestamp, train.timestamp)
    assert set(np.unique(noisy.rating)) <= set(train.scale.levels)


def test_flip_ratings_deterministic_share_zero_and_uniform_other_level():
    train = low_rank_ratings()
    a = flip_ratings(train, 0.3, np.random.default_rng(5))
    b = flip_ratings(train, 0.3, np.random.default_rng(5))
    np.testing.assert_array_equal(a.rating, b.rating)
    np.testing.assert_array_equal(flip_ratings(train, 0.0, np.random.default_rng(0)).rating, train.rating)
    # Every level but the current one is reachable: flip one 3-star rating many times.
    one = train.subset(np.flatnonzero(train.rating == 3.0)[:1])
    seen = {float(flip_ratings(one, 1.0, np.random.default_rng(s)).rating[0]) for s in range(60)}
    assert seen == {1.0, 2.0, 4.0, 5.0}
    with pytest.raises(ConfigError, match="share"):
        flip_ratings(train, 1.5, np.random.default_rng(0))


def test_noise_count_rounds():
    assert noise_count(1000, 0.05) == 50
    assert noise_count(7, 0.5) == round(3.5)
    with pytest.raises(ConfigError):
        noise_count(10, float("nan"))
