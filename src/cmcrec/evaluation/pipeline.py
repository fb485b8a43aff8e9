"""Evaluate a fitted :class:`~cmcrec.recommender.Recommender` on a split: every protocol, one dict.

Used by ``cmcrec train``/``evaluate`` and the benchmarks, so every number the
project reports is computed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmcrec.data.ratings import Ratings, Split
from cmcrec.evaluation.protocols import evaluate_full_ranking, evaluate_ratings, evaluate_sampled


def last_rating_per_user(ratings: Ratings) -> Ratings:
    """Each user's latest rating (by timestamp; the later row wins ties)."""
    if ratings.timestamp is None:
        raise ValueError(f"{ratings.name}: the sampled protocol needs timestamps")
    order = np.lexsort((np.arange(len(ratings)), ratings.timestamp, ratings.user))
    users = ratings.user[order]
    last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, bool)
    return ratings.subset(np.sort(order[last]), name=f"{ratings.name}/last")


class RecommenderRanker:
    """A :class:`~cmcrec.evaluation.protocols.Ranker` over a fitted Recommender.

    Args:
        rec: the fitted recommender.
        candidates: items the candidate generator proposes for subgraph models (``None``: all).
    """

    def __init__(self, rec, candidates: int | None) -> None:
        self.rec, self.candidates = rec, candidates

    def __repr__(self) -> str:
        return f"RecommenderRanker(model={self.rec.model_name!r}, candidates={self.candidates})"

    def rank(self, users: np.ndarray, k: int) -> np.ndarray:
        return self.rec.rank(users, k, self.candidates)


class _Scorer:
    def __init__(self, rec) -> None:
        self.rec = rec

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        flat = self.rec.predict_indices(np.repeat(users, items.shape[1]), items.ravel())
        return flat.reshape(items.shape)


def evaluate_recommender(
    rec,
    data: Split,
    ks: tuple[int, ...] = (5, 10, 20),
    candidates: int | None = 200,
    sampled: bool = True,
    seed: int = 0,
    rank_users: int | None = None,
) -> dict[str, Any]:
    """RMSE/MAE, full-catalogue ranking (via ``rec.rank`` with ``candidates``) and, when the
    test ratings carry timestamps, the sampled 1 + 99 protocol (keys prefixed ``sampled_``).

    Args:
        rank_users: rank for a seeded random sample of this many test users only (RMSE/MAE
            always use every test rating); ``None`` ranks for all. Recorded in the result.
    """
    test = data.test
    result: dict[str, Any] = dict(evaluate_ratings(rec.predict_indices(test.user, test.item), test))
    users = np.unique(test.user)
    if rank_users is not None and rank_users < len(users):
        chosen = np.random.default_rng([seed, 17]).choice(users, size=rank_users, replace=False)
        test = test.subset(np.isin(test.user, chosen))
    result["rank_users"] = "all" if rank_users is None or rank_users >= len(users) else rank_users
    result |= evaluate_full_ranking(RecommenderRanker(rec, candidates), data.train, test, ks=ks)
    result["candidates"] = candidates if candidates is not None else "all"
    if sampled and test.timestamp is not None:
        last = last_rating_per_user(test)
        # Users who rated nearly the whole catalogue have no 99 unrated negatives; they sit this protocol out.
        rated = data.train.user_counts() + test.user_counts()
        last = last.subset(data.train.num_items - rated[last.user] >= 100)
        if len(last):
            sampled_metrics = evaluate_sampled(
                _Scorer(rec),
                data.train,
                last,
                num_negatives=99,
                rng=np.random.default_rng([seed, 99]),
                exclude=data.test,  # the user's other test items are rated, not negatives
            )
            result |= {
                ("sampled_num_users" if k == "num_users_evaluated" else k): v for k, v in sampled_metrics.items()
            }
    return result
