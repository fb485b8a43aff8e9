"""Noise injection into training ratings, for the robustness study (``shared/DESIGN.md`` §2).

Two kinds of noise, both pure functions of their inputs and an explicit
``numpy.random.Generator``:

* :func:`inject_fake` — ``round(share · n)`` *fake* ratings are appended: a
  uniformly random user and item among the (user, item) pairs not already rated
  (rejection sampling from the uniform grid, so every unrated pair is equally
  likely) and a uniformly random level of the rating scale.
* :func:`flip_ratings` — ``round(share · n)`` distinct existing ratings get a
  uniformly random *different* level; every other row is left exactly as it was.

Noise is meant for the *training* ratings only: the test split stays clean.
Pass the test ratings as ``avoid`` to :func:`inject_fake` so that no fake
rating lands on a held-out pair (which would otherwise put that pair in
training).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cmcrec.data.ratings import Ratings
from cmcrec.errors import CmcrecError, ConfigError

__all__ = ["flip_ratings", "inject_fake", "noise_count"]


def noise_count(n: int, share: float, name: str = "share") -> int:
    """``round(share · n)``, the number of ratings a noise share touches.

    Raises:
        ConfigError: ``share`` is negative or not finite.
    """
    if not np.isfinite(share) or share < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {share!r}")
    return int(round(share * n))


def _pair_keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    return user.astype(np.int64) * num_items + item.astype(np.int64)


def inject_fake(train: Ratings, share: float, rng: np.random.Generator, *, avoid: Ratings | None = None) -> Ratings:
    """``train`` plus ``round(share · len(train))`` fake ratings on unrated pairs.

    The rows of ``train`` come first, unchanged and in order; the fakes follow.
    Each fake has a user drawn uniformly from the user vocabulary, an item drawn
    uniformly from the item vocabulary, rejected while the pair is already rated
    in ``train``, in ``avoid``, or drawn earlier; and a level drawn uniformly from
    ``train.scale.levels``. When ``train`` has timestamps, each fake gets one drawn
    uniformly between the earliest and latest training timestamp.

    Args:
        train: the training ratings.
        share: fakes as a share of ``len(train)`` (``0`` returns ``train``'s rows unchanged).
        rng: the random generator.
        avoid: ratings whose pairs must not be used either (the test split).

    Returns:
        New :class:`Ratings` over the same vocabularies and scale.

    Raises:
        ConfigError: ``share`` is negative.
        CmcrecError: fewer unrated pairs than fakes requested, or ``avoid`` uses other vocabularies.
    """
    count = noise_count(len(train), share)
    num_users, num_items = train.num_users, train.num_items
    name = f"{train.name}+fake{share:g}"
    if count == 0:
        return replace(train, name=name)
    forbidden = _pair_keys(train.user, train.item, num_items)
    if avoid is not None:
        if avoid.users != train.users or avoid.items != train.items:
            raise CmcrecError(f"inject_fake: {avoid.name!r} must share {train.name!r}'s vocabularies")
        forbidden = np.concatenate([forbidden, _pair_keys(avoid.user, avoid.item, num_items)])
    forbidden = np.unique(forbidden)
    free = num_users * num_items - forbidden.size
    if count > free:
        raise CmcrecError(f"inject_fake: asked for {count} fake ratings but only {free} (user, item) pairs are unrated")

    picked = np.zeros(0, dtype=np.int64)
    while picked.size < count:
        need = count - picked.size
        draw = rng.integers(0, num_users * num_items, size=2 * need + 16, dtype=np.int64)
        draw = draw[~np.isin(draw, forbidden) & ~np.isin(draw, picked)]
        # Keep the first occurrence of each pair, in draw order.
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)]
        picked = np.concatenate([picked, draw[:need]])

    levels = np.asarray(train.scale.levels, dtype=np.float32)
    rating = levels[rng.integers(0, len(levels), size=count)]
    timestamp = None
    if train.timestamp is not None:
        lo, hi = (int(train.timestamp.min()), int(train.timestamp.max())) if len(train) else (0, 0)
        timestamp = np.concatenate([train.timestamp, rng.integers(lo, hi + 1, size=count, dtype=np.int64)])
    return replace(
        train,
        user=np.concatenate([train.user, picked // num_items]),
        item=np.concatenate([train.item, picked % num_items]),
        rating=np.concatenate([train.rating, rating]),
        timestamp=timestamp,
        name=name,
    )


def flip_ratings(train: Ratings, share: float, rng: np.random.Generator) -> Ratings:
    """``train`` with ``round(share · len(train))`` distinct ratings changed to another level.

    The rows to flip are drawn uniformly without replacement; each gets a level
    drawn uniformly from the scale's levels other than its current one (the
    nearest level, for bucketed scales). Users, items, timestamps and row order
    are unchanged, and so is every row not drawn.

    Args:
        train: the training ratings.
        share: flipped ratings as a share of ``len(train)``, in ``[0, 1]``.
        rng: the random generator.

    Raises:
        ConfigError: ``share`` is outside ``[0, 1]``.
    """
    count = noise_count(len(train), share)
    if share > 1:
        raise ConfigError(f"share must be <= 1 to flip existing ratings, got {share!r}")
    rating = train.rating.copy()
    if count:
        levels = np.asarray(train.scale.levels, dtype=np.float64)
        rows = rng.choice(len(train), size=count, replace=False)
        current = np.abs(rating[rows, None].astype(np.float64) - levels[None, :]).argmin(axis=1)
        # Adding 1..L-1 (mod L) to the current level index gives every other level with equal chance.
        offset = rng.integers(1, len(levels), size=count)
        rating[rows] = levels[(current + offset) % len(levels)].astype(np.float32)
    return replace(train, rating=rating, name=f"{train.name}+flip{share:g}")
