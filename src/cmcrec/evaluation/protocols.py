"""Evaluation protocols: rating accuracy, full-catalogue ranking, sampled ranking.

Three questions, three functions (see ``shared/DESIGN.md`` §2):

* :func:`evaluate_ratings` — RMSE/MAE of predicted test ratings.
* :func:`evaluate_full_ranking` — our default ranking protocol. Every item a
  user has not rated in training is a candidate; a :class:`Ranker` returns the
  top-K lists and the metrics of :mod:`cmcrec.evaluation.metrics` are computed
  against the user's relevant test items.
* :func:`evaluate_sampled` — the MCCL paper's protocol: the held-out item is
  ranked among ``num_negatives`` sampled unrated items. Its keys all start with
  ``sampled_`` so they can never be mistaken for full-catalogue numbers.

Models plug in through two small protocols: a :class:`Ranker` (users → top-K
item indices) for full ranking and a :class:`Scorer` (users × candidate items →
scores) for the sampled protocol. :class:`ScoreMatrixRanker` turns any
"score every item" function into a ranker; :class:`PopularityRanker` is the
most-popular baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from cmcrec.data.ratings import Ratings, RatingScale
from cmcrec.errors import CmcrecError
from cmcrec.evaluation import metrics

__all__ = [
    "PopularityRanker",
    "Ranker",
    "ScoreMatrixRanker",
    "Scorer",
    "evaluate_full_ranking",
    "evaluate_ratings",
    "evaluate_sampled",
    "interaction_matrix",
    "relevance_threshold",
    "topk_from_scores",
]

# Ratings are stored as float32; compare against thresholds with this slack.
_RATING_EPS = 1e-4


@runtime_checkable
class Ranker(Protocol):
    """Anything that returns top-K lists for users.

    ``rank(users, k)`` returns an ``(len(users), k)`` int array of item indices,
    best first, padded with ``-1`` where fewer than ``k`` items are candidates.
    Items the user rated in training must already be excluded: the protocol
    checks and raises if one appears.
    """

    def rank(self, users: np.ndarray, k: int) -> np.ndarray: ...


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores given (user, candidate item) pairs.

    ``score(users, items)`` takes ``users`` ``(n,)`` and ``items`` ``(n, C)`` item
    indices and returns ``(n, C)`` float scores, higher = better. NaN scores are
    treated as ``-inf`` (ranked last).
    """

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------- helpers


def interaction_matrix(ratings: Ratings) -> sp.csr_matrix:
    """``(num_users, num_items)`` boolean CSR of which (user, item) pairs were rated.

    Built from the index arrays, not the rating values, so a rating of 0 on a
    0–10 scale still counts as rated.
    """
    m = sp.csr_matrix(
        (np.ones(len(ratings), dtype=bool), (ratings.user, ratings.item)),
        shape=(ratings.num_users, ratings.num_items),
    )
    m.sum_duplicates()
    return m


def relevance_threshold(scale: RatingScale) -> float:
    """The default rating at or above which a test item counts as relevant.

    The level nearest to 75% of the scale's range,
    ``scale.minimum + 0.75 * scale.span``; a value exactly half-way between two
    levels goes to the higher one. This gives 4 on 1–5, 4 on 0.5–5 (half stars),
    8 on 0–10 and 75 on 1–100. For a bucketed scale the levels are those the
    scale lists (``RatingScale.infer`` lists every integer of the range).
    """
    target = scale.minimum + 0.75 * scale.span
    levels = np.asarray(scale.levels, dtype=np.float64)
    dist = np.abs(levels - target)
    nearest = np.flatnonzero(dist <= dist.min() + 1e-9 * max(1.0, scale.span))
    return float(levels[nearest[-1]])


def _check_same_vocabularies(a: Ratings, b: Ratings, what: str) -> None:
    if a.users != b.users or a.items != b.items:
        raise CmcrecError(f"{what}: {a.name!r} and {b.name!r} must share user and item vocabularies")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise CmcrecError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------- top-K


def topk_from_scores(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Top-``k`` item indices of every row of a score matrix.

    Args:
        scores: ``(U, I)`` scores, higher = better. Not modified.
        k: list length (``>= 1``).
        exclude: optional ``(U, I)`` sparse matrix; every *stored* entry (whatever
            its value) removes that item from that row's candidates — normally
            the user's training items.

    Returns:
        ``(U, k)`` int64 item indices, best first. Equal scores are ordered by
        ascending item index, so the result is deterministic. Excluded items and
        items scored NaN or ``-inf`` are never returned; rows with fewer than
        ``k`` remaining candidates are padded with ``-1``.
    """
    s = np.array(scores, dtype=np.result_type(np.asarray(scores).dtype, np.float32), copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D (users, items) array, got shape {s.shape}")
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    num_rows, num_items = s.shape
    s[np.isnan(s)] = -np.inf
    if exclude is not None:
        ex = sp.csr_matrix(exclude)
        if ex.shape != s.shape:
            raise ValueError(f"exclude has shape {ex.shape}, scores have shape {s.shape}")
        rows = np.repeat(np.arange(num_rows), np.diff(ex.indptr))
        s[rows, ex.indices] = -np.inf
    out = np.full((num_rows, k), -1, dtype=np.int64)
    if num_rows == 0 or num_items == 0:
        return out
    kk = min(int(k), num_items)
    # The kk-th best score of every row; argpartition only orders around it.
    part = np.argpartition(-s, kk - 1, axis=1)[:, kk - 1]
    kth = s[np.arange(num_rows), part][:, None]  # (U, 1)
    above = s > kth
    tied = s == kth
    # Fill the slots left after the strictly better items with the tied items of
    # lowest index: this is what makes the choice deterministic.
    room = kk - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= room))
    take &= s > -np.inf
    r, c = np.nonzero(take)  # row-major: each row's items in ascending index order
    pos = np.cumsum(take, axis=1)[r, c] - 1
    out[r, pos] = c
    # Sort only the selected top part: by score descending, then by item index.
    valid = out >= 0
    top_scores = np.where(valid, s[np.arange(num_rows)[:, None], np.maximum(out, 0)], -np.inf)
    index_key = np.where(valid, out, np.iinfo(np.int64).max)
    order = np.lexsort((index_key, -top_scores), axis=-1)
    return np.take_along_axis(out, order, axis=1)


class ScoreMatrixRanker:
    """A :class:`Ranker` from a function that scores every item for some users.

    Args:
        score_fn: ``score_fn(users) -> (len(users), num_items)`` scores (NumPy or
            a torch tensor), higher = better.
        train: the training ratings; each user's training items are excluded.
    """

    def __init__(self, score_fn: Callable[[np.ndarray], np.ndarray], train: Ratings) -> None:
        self.score_fn = score_fn
        self.num_items = train.num_items
        self._seen = interaction_matrix(train)

    def __repr__(self) -> str:
        return f"ScoreMatrixRanker(score_fn={self.score_fn!r}, num_items={self.num_items})"

    def rank(self, users: np.ndarray, k: int) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        scores = _to_numpy(self.score_fn(users))
        if scores.shape != (len(users), self.num_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected ({len(users)}, {self.num_items})")
        return topk_from_scores(scores, k, exclude=self._seen[users])


class PopularityRanker:
    """Most-popular baseline: items by training rating count, the user's own excluded.

    Equal counts are ordered by item index. Unseen users get the global list.

    Args:
        train: the training ratings.
    """

    def __init__(self, train: Ratings) -> None:
        self.num_items = train.num_items
        self.item_counts = train.item_counts()
        self._order = np.lexsort((np.arange(self.num_items), -self.item_counts)).astype(np.int64)
        self._seen = interaction_matrix(train)

    def __repr__(self) -> str:
        return f"PopularityRanker(num_items={self.num_items})"

    def rank(self, users: np.ndarray, k: int) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        seen = self._seen[users]
        n_seen = np.diff(seen.indptr)
        # At most n_seen of the global prefix can be excluded, so a prefix of
        # length k + max(n_seen) always holds the k best unseen items.
        width = min(self.num_items, int(k) + int(n_seen.max(initial=0)))
        cand = np.broadcast_to(self._order[:width], (len(users), width))
        keep = ~metrics.hit_matrix(cand, seen)
        pos = np.cumsum(keep, axis=1) - 1
        keep &= pos < k
        out = np.full((len(users), int(k)), -1, dtype=np.int64)
        r, c = np.nonzero(keep)
        out[r, pos[r, c]] = cand[r, c]
        return out


# ----------------------------------------------------------------------------- protocols


def evaluate_ratings(pred: np.ndarray, test: Ratings) -> dict[str, float]:
    """RMSE and MAE of ``pred`` against ``test.rating``, on the dataset's own scale.

    Args:
        pred: ``(len(test),)`` predicted ratings, row for row with ``test``.

    Returns:
        ``{"rmse": ..., "mae": ..., "num_ratings": ...}``.
    """
    pred = _to_numpy(pred)
    return {
        "rmse": metrics.rmse(pred, test.rating),
        "mae": metrics.mae(pred, test.rating),
        "num_ratings": len(test),
    }


def _check_lists(lists: np.ndarray, num_users: int, k: int, num_items: int, ranker: Ranker) -> np.ndarray:
    lists = _to_numpy(lists)
    if lists.shape != (num_users, k):
        raise ValueError(f"{ranker!r}.rank returned shape {lists.shape}, expected ({num_users}, {k})")
    if lists.size and not np.issubdtype(lists.dtype, np.integer):
        raise ValueError(f"{ranker!r}.rank returned dtype {lists.dtype}, expected integer item indices")
    lists = lists.astype(np.int64, copy=False)
    if lists.size and (lists.min() < -1 or lists.max() >= num_items):
        raise ValueError(f"{ranker!r}.rank returned item indices outside [-1, {num_items})")
    return lists


def evaluate_full_ranking(
    ranker: Ranker,
    train: Ratings,
    test: Ratings,
    ks: Sequence[int] = (5, 10, 20),
    threshold: float | None = None,
    user_batch: int = 256,
    item_popularity: np.ndarray | None = None,
    head_fraction: float = 0.1,
) -> dict[str, float]:
    """Full-catalogue top-K evaluation.

    A test user is evaluated if at least one of their test items is *relevant*:
    rated at or above ``threshold`` and not rated by them in training (an item
    the ranker must exclude can never be hit, so counting it would only lower
    recall). Users without a relevant item are skipped — the ranker is not
    called for them and they are not in ``num_users_evaluated``. Each evaluated
    user's list ranks every item they did not rate in training; the ranker is
    called once per batch of ``user_batch`` users with ``k = max(ks)``.

    Args:
        ranker: the model under test (see :class:`Ranker`).
        train: the training ratings (defines the excluded items).
        test: the test ratings, over the same vocabularies.
        ks: cutoffs.
        threshold: relevance threshold; default :func:`relevance_threshold` of
            ``test.scale`` (4 on 1–5, 8 on 0–10).
        user_batch: users per ``ranker.rank`` call.
        item_popularity: ``(num_items,)`` popularity for the popularity-bias
            metrics; default the number of training ratings of each item.
        head_fraction: share of most-popular items that form the head for
            ``head_share@k`` (see :func:`metrics.head_items`).

    Returns:
        For each ``k``: ``recall@k``, ``precision@k``, ``ndcg@k``, ``mrr@k``
        (first relevant item within the top-k, else 0), ``hit@k`` (means over
        evaluated users); ``coverage@k`` (share of *all* catalogue items in at
        least one list), ``avg_popularity@k`` (mean popularity of recommended
        items), ``head_share@k`` and ``gini@k`` (see
        :func:`metrics.popularity_gini`); plus ``num_users_evaluated`` and
        ``relevance_threshold``.

    Raises:
        CmcrecError: on mismatched vocabularies, bad ``ks`` or no evaluable user.
        ValueError: if the ranker returns a malformed list or a training item.
    """
    _check_same_vocabularies(train, test, "evaluate_full_ranking")
    ks = _check_ks(ks)
    if user_batch < 1:
        raise CmcrecError(f"user_batch must be positive, got {user_batch}")
    num_items = train.num_items
    thr = relevance_threshold(test.scale) if threshold is None else float(threshold)
    pop = train.item_counts() if item_popularity is None else np.asarray(item_popularity)
    pop = metrics._check_popularity(pop)
    if pop.size != num_items:
        raise CmcrecError(f"item_popularity has {pop.size} entries, the catalogue has {num_items} items")

    seen = interaction_matrix(train)
    train_keys = np.unique(_pair_keys(train.user, train.item, num_items))
    is_relevant = (test.rating >= thr - _RATING_EPS) & ~np.isin(_pair_keys(test.user, test.item, num_items), train_keys)
    relevant = interaction_matrix(test.subset(is_relevant))
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if users.size == 0:
        raise CmcrecError(f"no test user of {test.name!r} has an unseen test item rated >= {thr}; nothing to rank")

    kmax = ks[-1]
    per_user: dict[str, list[np.ndarray]] = {}
    counts = {k: np.zeros(num_items, dtype=np.int64) for k in ks}
    for start in range(0, users.size, user_batch):
        batch = users[start : start + user_batch]
        lists = _check_lists(ranker.rank(batch, kmax), batch.size, kmax, num_items, ranker)
        leaked = metrics.hit_matrix(lists, seen[batch])
        if leaked.any():
            row = int(np.flatnonzero(leaked.any(axis=1))[0])
            raise ValueError(
                f"{ranker!r} recommended training item {int(lists[row][leaked[row]][0])} "
                f"to user {int(batch[row])}; rankers must exclude training items"
            )
        for key, value in metrics.ranking_metrics(lists, relevant[batch], ks, per_user=True).items():
            per_user.setdefault(key, []).append(value)
        for k in ks:
            counts[k] += metrics.recommendation_counts(lists, num_items, k)

    head = metrics.head_items(pop, head_fraction)
    result: dict[str, float] = {}
    for k in ks:
        for name in metrics.RANKING_METRICS:
            result[f"{name}@{k}"] = float(np.concatenate(per_user[f"{name}@{k}"]).mean())
        result[f"coverage@{k}"] = metrics._coverage_from_counts(counts[k])
        result[f"avg_popularity@{k}"] = metrics._mean_popularity_from_counts(counts[k], pop, False)
        result[f"head_share@{k}"] = metrics._head_share_from_counts(counts[k], head)
        result[f"gini@{k}"] = metrics._gini_from_counts(counts[k])
    result["num_users_evaluated"] = int(users.size)
    result["relevance_threshold"] = thr
    return result


def _pair_keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    return user.astype(np.int64) * num_items + item.astype(np.int64)


def _sample_negatives(
    forbidden: np.ndarray, users: np.ndarray, num_items: int, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """``(len(users), num_negatives)`` distinct items per user, none of them forbidden.

    Rejection sampling in rounds, vectorised over users: each round draws a block
    of uniform items for every unfinished user, drops forbidden pairs and repeats,
    and keeps the first ``num_negatives`` distinct survivors in draw order — a
    uniform sample without replacement from the allowed items. The caller must
    have checked that every user has enough allowed items.

    Args:
        forbidden: sorted unique ``user * num_items + item`` keys never to draw.
    """
    n, m = users.size, num_negatives
    picks = np.full((n, m), -1, dtype=np.int64)
    filled = np.zeros(n, dtype=np.int64)
    for _ in range(100_000):
        rows = np.flatnonzero(filled < m)
        if rows.size == 0:
            return picks
        draw = rng.integers(0, num_items, size=(rows.size, 2 * m + 8), dtype=np.int64)
        keys = _pair_keys(users[rows][:, None], draw, num_items)
        pos = np.searchsorted(forbidden, keys).clip(0, max(forbidden.size - 1, 0))
        bad = forbidden[pos] == keys if forbidden.size else np.zeros(draw.shape, dtype=bool)
        combined = np.concatenate([picks[rows], np.where(bad, -1, draw)], axis=1)
        # Mark repeats of an earlier column (stable sort keeps the first occurrence first).
        order = np.argsort(combined, axis=1, kind="stable")
        ordered = np.take_along_axis(combined, order, axis=1)
        repeat_sorted = np.zeros(combined.shape, dtype=bool)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        repeat = np.empty_like(repeat_sorted)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        keep = (combined >= 0) & ~repeat
        rank = np.cumsum(keep, axis=1)
        keep &= rank <= m
        new = np.full((rows.size, m), -1, dtype=np.int64)
        r, c = np.nonzero(keep)
        new[r, rank[r, c] - 1] = combined[r, c]
        picks[rows] = new
        filled[rows] = keep.sum(axis=1)
    raise AssertionError("negative sampling did not converge")  # pragma: no cover


_TIES = ("pessimistic", "expected")


def evaluate_sampled(
    scorer: Scorer,
    train: Ratings,
    heldout: Ratings,
    num_negatives: int = 99,
    *,
    rng: np.random.Generator,
    ks: Sequence[int] = (10,),
    ties: str = "pessimistic",
    user_batch: int = 1024,
    exclude: Ratings | None = None,
) -> dict[str, float]:
    """The sampled (1 + ``num_negatives``) ranking protocol of the MCCL paper.

    Every row of ``heldout`` is one user's held-out positive — the caller passes
    one item per user, normally the user's last rating by timestamp; its rating
    value is ignored (every held-out item counts as relevant). For each, we
    draw ``num_negatives`` *distinct* items, uniformly, among the items the user
    rated in none of ``train``, ``heldout`` and ``exclude``, score the held-out item
    (column 0) and its negatives with ``scorer``, and find the held-out item's
    0-based rank ``r`` among the ``1 + num_negatives`` candidates.

    Ties (negatives scored exactly like the held-out item; NaN counts as
    ``-inf``) are resolved by ``ties``:

    * ``"pessimistic"`` (default): the held-out item goes after every tied
      negative. A constant scorer scores as badly as possible, so ties can never
      flatter a model.
    * ``"expected"``: the metric's expectation when the tied candidates are put
      in uniformly random order (a constant scorer gets the chance level,
      e.g. HR@10 = 10 / 100).

    Args:
        scorer: the model under test (see :class:`Scorer`).
        train: the training ratings.
        heldout: one rating per user, same vocabularies as ``train``.
        num_negatives: sampled negatives per user.
        rng: the generator that draws the negatives.
        ks: cutoffs for NDCG and HR.
        ties: ``"pessimistic"`` or ``"expected"``.
        user_batch: users per ``scorer.score`` call.
        exclude: more ratings whose items are never drawn as a user's negatives,
            e.g. the rest of the test split when ``heldout`` is each user's last
            test rating (an item the user rated is not an unrated negative).

    Returns:
        ``sampled_ndcg@k`` and ``sampled_hr@k`` for each ``k`` (``1/log2(r + 2)``
        and ``1`` if ``r < k``, else 0), ``sampled_mrr`` (``1 / (r + 1)`` over the
        whole candidate list, no cutoff), all averaged over users, and
        ``num_users_evaluated``.

    Raises:
        CmcrecError: a user appears twice in ``heldout``, a held-out pair is also
            in ``train``, or a user has fewer than ``num_negatives`` unrated items.
    """
    _check_same_vocabularies(train, heldout, "evaluate_sampled")
    if exclude is not None:
        _check_same_vocabularies(train, exclude, "evaluate_sampled")
    ks = _check_ks(ks)
    if ties not in _TIES:
        raise CmcrecError(f"ties must be one of {_TIES}, got {ties!r}")
    if not isinstance(num_negatives, int | np.integer) or num_negatives < 0:
        raise CmcrecError(f"num_negatives must be a non-negative integer, got {num_negatives!r}")
    if user_batch < 1:
        raise CmcrecError(f"user_batch must be positive, got {user_batch}")
    if len(heldout) == 0:
        raise CmcrecError(f"{heldout.name!r} is empty; nothing to evaluate")
    users, items = heldout.user, heldout.item
    uniq, counts = np.unique(users, return_counts=True)
    if (counts > 1).any():
        u = uniq[counts > 1][0]
        raise CmcrecError(
            f"user {heldout.users.ids[u]!r} has {counts[counts > 1][0]} rows in {heldout.name!r}; "
            "the sampled protocol takes exactly one held-out item per user"
        )
    num_items = train.num_items
    train_keys = np.unique(_pair_keys(train.user, train.item, num_items))
    held_keys = _pair_keys(users, items, num_items)
    leaked = np.isin(held_keys, train_keys)
    if leaked.any():
        j = int(np.flatnonzero(leaked)[0])
        raise CmcrecError(
            f"held-out pair (user {heldout.users.ids[users[j]]!r}, item {heldout.items.ids[items[j]]!r}) "
            f"is also in {train.name!r}"
        )
    forbidden = np.union1d(train_keys, held_keys)
    if exclude is not None:
        forbidden = np.union1d(forbidden, _pair_keys(exclude.user, exclude.item, num_items))
    rated = np.bincount(forbidden // num_items, minlength=train.num_users)[users]
    short = num_items - rated < num_negatives
    if short.any():
        j = int(np.flatnonzero(short)[0])
        raise CmcrecError(
            f"user {heldout.users.ids[users[j]]!r} has only {num_items - rated[j]} unrated items, "
            f"fewer than num_negatives={num_negatives}"
        )

    negatives = _sample_negatives(forbidden, users, num_items, int(num_negatives), rng)
    candidates = np.concatenate([items[:, None], negatives], axis=1)  # (n, 1 + m), positive first
    scores = np.empty(candidates.shape, dtype=np.float64)
    for start in range(0, users.size, user_batch):
        sl = slice(start, start + user_batch)
        out = _to_numpy(scorer.score(users[sl], candidates[sl]))
        if out.shape != candidates[sl].shape:
            raise ValueError(f"{scorer!r}.score returned shape {out.shape}, expected {candidates[sl].shape}")
        scores[sl] = out
    scores[np.isnan(scores)] = -np.inf
    pos, neg = scores[:, :1], scores[:, 1:]
    better = (neg > pos).sum(axis=1)
    tied = (neg == pos).sum(axis=1)

    # Possible 0-based ranks of the held-out item and their probabilities.
    if ties == "pessimistic":
        rank = (better + tied)[:, None].astype(np.float64)  # (n, 1)
        weight = np.ones_like(rank)
    else:
        offset = np.arange(candidates.shape[1])
        rank = (better[:, None] + offset[None, :]).astype(np.float64)  # (n, 1 + m)
        weight = (offset[None, :] <= tied[:, None]) / (tied[:, None] + 1.0)

    result: dict[str, float] = {}
    for k in ks:
        in_top = rank < k
        gain = np.where(in_top, 1.0 / np.log2(rank + 2.0), 0.0)
        result[f"sampled_ndcg@{k}"] = float((weight * gain).sum(axis=1).mean())
        result[f"sampled_hr@{k}"] = float((weight * in_top).sum(axis=1).mean())
    result["sampled_mrr"] = float((weight / (rank + 1.0)).sum(axis=1).mean())
    result["num_users_evaluated"] = int(users.size)
    return result
