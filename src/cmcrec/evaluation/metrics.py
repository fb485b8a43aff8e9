"""Accuracy, ranking and popularity metrics — pure NumPy, vectorised over users.

Conventions shared by every ranking metric here:

* ``topk`` is an ``(U, K)`` integer array of item indices, best first. ``-1``
  pads a list that has fewer than ``K`` candidates; a padded slot is a miss. An
  item may appear at most once per row.
* ``relevant`` gives the relevant items of the same ``U`` users, row for row:
  a SciPy sparse matrix with ``U`` rows whose *stored entries* are the relevant
  items (values are ignored, so an explicit ``0`` rating still counts), or a pair
  ``(indptr, indices)`` in CSR layout. Duplicates are ignored.
* Users with no relevant item have no defined recall or NDCG, so they are
  **excluded** from every per-user ranking metric (recall, precision, NDCG, MRR,
  hit) and from its average; ``per_user=True`` gives them ``NaN``. Averaging
  over no user at all raises :class:`ValueError`.
* Gains are binary. Discount at 0-based position ``j`` is ``1 / log2(j + 2)``.
* ``k`` defaults to ``K`` and must satisfy ``1 <= k <= K``; metrics "@k" look at
  the first ``k`` columns only.

Catalogue metrics (coverage, popularity, head share, Gini) count every
recommendation slot of every row given (padding ignored); they do not look at
relevance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

RelevantItems = sp.spmatrix | sp.sparray | tuple[np.ndarray, np.ndarray]

__all__ = [
    "average_popularity",
    "catalogue_coverage",
    "head_items",
    "head_share",
    "hit_at_k",
    "hit_matrix",
    "mae",
    "mrr_at_k",
    "ndcg_at_k",
    "popularity_gini",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "recommendation_counts",
    "rmse",
]


# ----------------------------------------------------------------------------- ratings


def _check_pairs(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predictions and true ratings differ in length ({p.size} vs {t.size})")
    if p.size == 0:
        raise ValueError("cannot compute an error over zero ratings")
    if not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"{bad} of {p.size} predictions are NaN or infinite")
    if not np.isfinite(t).all():
        raise ValueError("true ratings contain NaN or infinite values")
    return p, t


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error.

    Args:
        pred: ``(n,)`` predicted ratings.
        true: ``(n,)`` true ratings.

    Raises:
        ValueError: if the inputs are empty, differ in length, or contain NaN/inf.
    """
    p, t = _check_pairs(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error; same arguments and errors as :func:`rmse`."""
    p, t = _check_pairs(pred, true)
    return float(np.mean(np.abs(p - t)))


# ----------------------------------------------------------------------------- inputs


def _check_topk(topk: np.ndarray) -> np.ndarray:
    a = np.asarray(topk)
    if a.ndim != 2:
        raise ValueError(f"topk must be a 2-D (users, K) array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < -1:
        raise ValueError(f"topk holds item index {int(a.min())}; only -1 is allowed as padding")
    if a.shape[1] > 1:
        s = np.sort(a, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(f"topk row {row} recommends the same item more than once: {a[row].tolist()}")
    return a


def _check_k(k: int | None, width: int) -> int:
    if k is None:
        k = width
    if not isinstance(k, int | np.integer) or not 1 <= k <= width:
        raise ValueError(f"k must be an integer in [1, {width}] (the width of topk), got {k!r}")
    return int(k)


def _relevant_rows(relevant: RelevantItems, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and item indices of the relevant (user, item) entries."""
    if isinstance(relevant, tuple):
        if len(relevant) != 2:
            raise ValueError("relevant as a tuple must be (indptr, indices)")
        indptr = np.asarray(relevant[0], dtype=np.int64)
        indices = np.asarray(relevant[1], dtype=np.int64)
    elif sp.issparse(relevant):
        m = sp.csr_matrix(relevant)
        indptr = m.indptr.astype(np.int64)
        indices = m.indices.astype(np.int64)
    else:
        raise ValueError(f"relevant must be a sparse matrix or (indptr, indices), got {type(relevant)}")
    if indptr.shape != (num_rows + 1,):
        raise ValueError(f"relevant has {indptr.size - 1} rows, topk has {num_rows}")
    if indptr[0] != 0 or indptr[-1] != indices.size or (np.diff(indptr) < 0).any():
        raise ValueError("relevant indptr is not a valid CSR row pointer")
    if indices.size and indices.min() < 0:
        raise ValueError("relevant item indices must be non-negative")
    rows = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(indptr))
    return rows, indices


def _hits_and_counts(topk: np.ndarray, relevant: RelevantItems) -> tuple[np.ndarray, np.ndarray]:
    topk = _check_topk(topk)
    num_rows = topk.shape[0]
    rows, items = _relevant_rows(relevant, num_rows)
    width = int(max(items.max(initial=-1), topk.max(initial=-1)) + 1)
    # One sorted key per relevant (row, item): membership is a binary search.
    keys = np.unique(rows * width + items)
    num_relevant = np.bincount(keys // max(width, 1), minlength=num_rows).astype(np.int64)
    if keys.size == 0:
        return np.zeros(topk.shape, dtype=bool), num_relevant
    query = np.arange(num_rows, dtype=np.int64)[:, None] * width + topk
    pos = np.searchsorted(keys, query).clip(0, keys.size - 1)
    hits = (topk >= 0) & (keys[pos] == query)
    return hits, num_relevant


def hit_matrix(topk: np.ndarray, relevant: RelevantItems) -> np.ndarray:
    """``(U, K)`` booleans: is ``topk[u, j]`` one of user ``u``'s relevant items."""
    return _hits_and_counts(topk, relevant)[0]


# ----------------------------------------------------------------------------- per-user ranking


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def _per_user(name: str, hits: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user value of one metric at cutoff ``k``; NaN where a user has no relevant item."""
    h = hits[:, :k]
    n_hit = h.sum(axis=1).astype(np.float64)
    has_rel = num_relevant > 0
    if name == "recall":
        value = n_hit / np.maximum(num_relevant, 1)
    elif name == "precision":
        value = n_hit / k
    elif name == "hit":
        value = (n_hit > 0).astype(np.float64)
    elif name == "mrr":
        first = np.argmax(h, axis=1)  # first True; 0 when none, masked below
        value = np.where(h.any(axis=1), 1.0 / (first + 1.0), 0.0)
    elif name == "ndcg":
        disc = _discounts(k)
        dcg = h @ disc
        ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(num_relevant, k)]
        value = dcg / np.where(ideal > 0, ideal, 1.0)
    else:  # pragma: no cover - internal names only
        raise AssertionError(name)
    return np.where(has_rel, value, np.nan)


def _reduce(values: np.ndarray, per_user: bool) -> float | np.ndarray:
    if per_user:
        return values
    valid = ~np.isnan(values)
    if not valid.any():
        raise ValueError("no user has a relevant item; the ranking metric is undefined")
    return float(values[valid].mean())


def _single(name: str, topk, relevant, k, per_user):
    hits, num_relevant = _hits_and_counts(topk, relevant)
    return _reduce(_per_user(name, hits, num_relevant, _check_k(k, hits.shape[1])), per_user)


def recall_at_k(
    topk: np.ndarray, relevant: RelevantItems, k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Recall@k: ``|relevant ∩ top-k| / |relevant|``, averaged over users with a relevant item.

    The denominator is ``|relevant|`` (not ``min(|relevant|, k)``), so a user with
    more than ``k`` relevant items cannot reach 1.

    Args:
        topk: ``(U, K)`` item indices, best first, ``-1`` padding.
        relevant: relevant items per user (see module docstring).
        k: cutoff, ``1 <= k <= K``; default ``K``.
        per_user: return the ``(U,)`` per-user values (NaN for users without a
            relevant item) instead of their mean.
    """
    return _single("recall", topk, relevant, k, per_user)


def precision_at_k(
    topk: np.ndarray, relevant: RelevantItems, k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Precision@k: ``|relevant ∩ top-k| / k`` (padded slots count as misses).

    Arguments as in :func:`recall_at_k`; users without a relevant item are excluded.
    """
    return _single("precision", topk, relevant, k, per_user)


def ndcg_at_k(
    topk: np.ndarray, relevant: RelevantItems, k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """NDCG@k with binary gains and a ``log2`` discount.

    ``DCG = sum_j hit_j / log2(j + 2)`` over the first ``k`` positions (0-based
    ``j``); the ideal DCG puts ``min(|relevant|, k)`` hits first. Arguments as in
    :func:`recall_at_k`; users without a relevant item are excluded.
    """
    return _single("ndcg", topk, relevant, k, per_user)


def mrr_at_k(
    topk: np.ndarray, relevant: RelevantItems, k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """MRR@k: reciprocal 1-based rank of the first relevant item *within the top-k*.

    A user whose first relevant item is not in the first ``k`` positions scores 0
    (the list is cut at ``k``; ranks beyond it are never looked at). Arguments as in
    :func:`recall_at_k`; users without a relevant item are excluded.
    """
    return _single("mrr", topk, relevant, k, per_user)


def hit_at_k(
    topk: np.ndarray, relevant: RelevantItems, k: int | None = None, *, per_user: bool = False
) -> float | np.ndarray:
    """Hit@k: 1 if any relevant item is in the top-k, else 0; averaged like :func:`recall_at_k`."""
    return _single("hit", topk, relevant, k, per_user)


RANKING_METRICS = ("recall", "precision", "ndcg", "mrr", "hit")


def ranking_metrics(
    topk: np.ndarray, relevant: RelevantItems, ks: Iterable[int], *, per_user: bool = False
) -> dict[str, float | np.ndarray]:
    """Every per-user ranking metric at every cutoff, computing the hits once.

    Args:
        topk: ``(U, K)`` item indices, best first, ``-1`` padding.
        relevant: relevant items per user (see module docstring).
        ks: cutoffs, each in ``[1, K]``.
        per_user: as in :func:`recall_at_k`.

    Returns:
        ``{"recall@10": ..., "precision@10": ..., "ndcg@10": ..., "mrr@10": ...,
        "hit@10": ..., ...}`` for every ``k`` in ``ks``.
    """
    hits, num_relevant = _hits_and_counts(topk, relevant)
    out: dict[str, float | np.ndarray] = {}
    for k in ks:
        k = _check_k(k, hits.shape[1])
        for name in RANKING_METRICS:
            out[f"{name}@{k}"] = _reduce(_per_user(name, hits, num_relevant, k), per_user)
    return out


# ----------------------------------------------------------------------------- catalogue / popularity


def recommendation_counts(topk: np.ndarray, num_items: int, k: int | None = None) -> np.ndarray:
    """``(num_items,)`` int64: how many of the lists' first ``k`` slots hold each item."""
    topk = _check_topk(topk)
    k = _check_k(k, topk.shape[1]) if topk.shape[1] else 0
    items = topk[:, :k]
    items = items[items >= 0]
    if items.size and items.max() >= num_items:
        raise ValueError(f"topk holds item index {int(items.max())}, catalogue has {num_items} items")
    return np.bincount(items, minlength=num_items).astype(np.int64)


def _check_popularity(item_popularity: np.ndarray) -> np.ndarray:
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or pop.size == 0:
        raise ValueError(f"item_popularity must be a non-empty 1-D array, got shape {pop.shape}")
    if not np.isfinite(pop).all() or (pop < 0).any():
        raise ValueError("item_popularity must be finite and non-negative")
    return pop


def _coverage_from_counts(counts: np.ndarray) -> float:
    return float((counts > 0).mean()) if counts.size else 0.0


def _mean_popularity_from_counts(counts: np.ndarray, pop: np.ndarray, normalize: bool) -> float:
    total = counts.sum()
    if total == 0:
        return math.nan
    value = float(counts @ pop / total)
    if normalize:
        value /= max(float(pop.sum()), 1e-300)
    return value


def head_items(item_popularity: np.ndarray, head_fraction: float = 0.1) -> np.ndarray:
    """Indices of the ``ceil(head_fraction * num_items)`` most popular items.

    Ties in popularity go to the lower item index, so the head is deterministic.
    """
    pop = _check_popularity(item_popularity)
    if not 0 < head_fraction <= 1:
        raise ValueError(f"head_fraction must be in (0, 1], got {head_fraction}")
    size = math.ceil(head_fraction * pop.size)
    order = np.lexsort((np.arange(pop.size), -pop))
    return np.sort(order[:size])


def _head_share_from_counts(counts: np.ndarray, head: np.ndarray) -> float:
    total = counts.sum()
    return float(counts[head].sum() / total) if total else math.nan


def _gini_from_counts(counts: np.ndarray) -> float:
    c = np.sort(counts.astype(np.float64))
    n, total = c.size, c.sum()
    if n == 0 or total == 0:
        return math.nan
    coef = 2.0 * np.arange(1, n + 1) - n - 1
    return float(coef @ c / (n * total))


def catalogue_coverage(topk: np.ndarray, num_items: int, k: int | None = None) -> float:
    """Share of the whole catalogue (``num_items``) that appears in at least one top-k list."""
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    return _coverage_from_counts(recommendation_counts(topk, num_items, k))


def average_popularity(
    topk: np.ndarray, item_popularity: np.ndarray, k: int | None = None, *, normalize: bool = False
) -> float:
    """Mean training popularity of the recommended items.

    The mean runs over all recommendation slots (padding ignored); when every
    list is full this equals the per-user average (ARP).

    Args:
        topk: ``(U, K)`` item indices, ``-1`` padding.
        item_popularity: ``(num_items,)`` training popularity, normally the
            number of training ratings of each item.
        k: cutoff; default ``K``.
        normalize: divide by ``item_popularity.sum()``, i.e. report the mean
            *share of all training ratings* held by a recommended item, which is
            comparable across datasets.

    Returns:
        The mean, or NaN if no slot holds an item.
    """
    pop = _check_popularity(item_popularity)
    return _mean_popularity_from_counts(recommendation_counts(topk, pop.size, k), pop, normalize)


def head_share(
    topk: np.ndarray, item_popularity: np.ndarray, k: int | None = None, head_fraction: float = 0.1
) -> float:
    """Share of recommendation slots that go to the head (see :func:`head_items`).

    A popularity-bias measure: the most-popular baseline scores near 1 on most
    datasets, a uniformly random recommender about ``head_fraction``.
    """
    pop = _check_popularity(item_popularity)
    counts = recommendation_counts(topk, pop.size, k)
    return _head_share_from_counts(counts, head_items(pop, head_fraction))


def popularity_gini(topk: np.ndarray, num_items: int, k: int | None = None) -> float:
    """Gini index of how often each catalogue item is recommended.

    With ``c`` the per-item recommendation counts over all ``num_items`` items
    (never-recommended items count as 0) sorted ascending and ``i = 1..n``:
    ``G = sum_i (2i - n - 1) c_i / (n * sum_i c_i)``. 0 means every item is
    recommended equally often; values near 1 mean recommendations concentrate
    on a few items (usually the popular ones). NaN if no slot holds an item.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    return _gini_from_counts(recommendation_counts(topk, num_items, k))
