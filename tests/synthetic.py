"""Small synthetic rating data for fast tests (no files needed)."""

from __future__ import annotations

import numpy as np

from cmcrec.data.ratings import Ratings, RatingScale, Split, Vocabulary


def low_rank_ratings(
    num_users: int = 40, num_items: int = 30, density: float = 0.5, seed: int = 0, rank: int = 2
) -> Ratings:
    """Ratings on a 1–5 scale from a rank-``rank`` model plus noise, with titles and genres."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(num_users, rank))
    q = rng.normal(size=(num_items, rank))
    bias = rng.normal(scale=0.8, size=(num_users, 1)) + rng.normal(scale=0.8, size=(1, num_items))
    scores = bias + p @ q.T + rng.normal(scale=0.3, size=(num_users, num_items))
    levels = np.clip(np.round(3 + 1.2 * scores / scores.std()), 1, 5)
    mask = rng.random((num_users, num_items)) < density
    mask[np.arange(num_users), rng.integers(0, num_items, num_users)] = True  # every user rates something
    user, item = np.nonzero(mask)
    users = Vocabulary([f"u{i}" for i in range(num_users)], "user")
    items = Vocabulary([f"i{j}" for j in range(num_items)], "item")
    return Ratings(
        user=user,
        item=item,
        rating=levels[user, item],
        users=users,
        items=items,
        scale=RatingScale.from_range(1, 5),
        timestamp=rng.integers(1_000_000, 2_000_000, len(user)),
        item_titles={f"i{j}": f"Item {j}" for j in range(num_items)},
        item_genres={f"i{j}": ("Drama",) if j % 2 else ("Comedy", "Drama") for j in range(num_items)},
        name="synthetic",
    )


def low_rank_split(seed: int = 0, test_fraction: float = 0.2, **kwargs) -> Split:
    ratings = low_rank_ratings(seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 1)
    test = rng.random(len(ratings)) < test_fraction
    return Split(ratings.subset(~test, "synthetic/train"), ratings.subset(test, "synthetic/test"), "synthetic")
