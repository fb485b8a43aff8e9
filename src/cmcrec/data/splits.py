"""Train/test splits of one :class:`~cmcrec.data.ratings.Ratings` table.

Canonical splits (MovieLens ``u1``..``ub``, the Monti et al. masks) come with
their files and are read by :mod:`cmcrec.data.loaders`. This module makes the
others: a seeded random holdout, a per-user temporal leave-last-out, and a
validation set carved from training rows (for choosing hyper-parameters and
epochs; the test split is never used for that).

Every function takes an explicit :class:`numpy.random.Generator`; none reads
global random state. Row order inside each part is the original table order.
"""

from __future__ import annotations

import numpy as np

from cmcrec.data.ratings import Ratings, Split
from cmcrec.errors import ConfigError, DataError

#: Split methods that work on any dataset.
SPLIT_METHODS = ("random", "temporal")


def _check_fraction(fraction: float, what: str) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"{what} must be strictly between 0 and 1, got {fraction!r}")


def _holdout_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(n,)`` mask with exactly ``round(n * fraction)`` True entries, chosen uniformly."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(n * fraction))]] = True
    return mask


def random_split(ratings: Ratings, test_fraction: float, rng: np.random.Generator, *, name: str | None = None) -> Split:
    """A uniformly random holdout of ``round(n * test_fraction)`` rows.

    Args:
        ratings: the table to split.
        test_fraction: share of rows held out, in (0, 1).
        rng: the random generator (the split depends only on it and ``len(ratings)``).
        name: split name; default ``"<ratings.name>/random"``.
    """
    _check_fraction(test_fraction, "test_fraction")
    name = name or f"{ratings.name}/random"
    test = _holdout_mask(len(ratings), test_fraction, rng)
    return Split(
        train=ratings.subset(~test, name=f"{name}/train"),
        test=ratings.subset(test, name=f"{name}/test"),
        name=name,
    )


def temporal_split(ratings: Ratings, *, name: str | None = None) -> Split:
    """Per-user leave-last-out: each user's latest rating is the test set.

    A user with a single rating keeps it in training (there would be nothing
    left to learn the user from). When several of a user's ratings share the
    latest timestamp, the one that comes last in the table is held out, so the
    split is deterministic.

    Raises:
        DataError: the table has no timestamps.
    """
    if ratings.timestamp is None:
        raise DataError(f"{ratings.name}: has no timestamps; a temporal split needs them", field="timestamp")
    name = name or f"{ratings.name}/temporal"
    rows = np.arange(len(ratings))
    # Sorted by user, then timestamp, then row: each user's last entry is the held-out one.
    order = np.lexsort((rows, ratings.timestamp, ratings.user))
    users = ratings.user[order]
    last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, dtype=bool)
    counts = ratings.user_counts()
    test = np.zeros(len(ratings), dtype=bool)
    held = order[last]
    test[held[counts[ratings.user[held]] > 1]] = True
    return Split(
        train=ratings.subset(~test, name=f"{name}/train"),
        test=ratings.subset(test, name=f"{name}/test"),
        name=name,
    )


def validation_split(train: Ratings, fraction: float, rng: np.random.Generator) -> tuple[Ratings, Ratings]:
    """Carve a random validation set out of training rows.

    Args:
        train: the training table (never the test table).
        fraction: share of training rows moved to validation, in (0, 1).
        rng: the random generator.

    Returns:
        ``(fit, validation)``: disjoint, together exactly the rows of ``train``,
        over the same vocabularies.
    """
    _check_fraction(fraction, "validation fraction")
    held = _holdout_mask(len(train), fraction, rng)
    return (
        train.subset(~held, name=f"{train.name}/fit"),
        train.subset(held, name=f"{train.name}/validation"),
    )


def make_split(
    ratings: Ratings,
    method: str,
    *,
    rng: np.random.Generator,
    test_fraction: float = 0.2,
    name: str | None = None,
) -> Split:
    """Split by method name: ``"random"`` (see :func:`random_split`) or ``"temporal"``."""
    if method == "random":
        return random_split(ratings, test_fraction, rng, name=name)
    if method == "temporal":
        return temporal_split(ratings, name=name)
    raise DataError(f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}", field="split")


def subsample(train: Ratings, n: int | None, seed: int = 0) -> Ratings:
    """A seeded sample of ``n`` training rows (row order kept); ``train`` itself when ``n`` is None or larger.

    The one sampler behind every ``--max-train-ratings`` flag, so the CLI and the studies train on the
    same rows for the same seed.
    """
    if n is None or n >= len(train):
        return train
    rows = np.sort(np.random.default_rng([seed, 202]).choice(len(train), size=n, replace=False))
    return train.subset(rows)
