"""The ratings container: users × items × ratings, their vocabularies and scale.

A :class:`Ratings` holds one table of explicit ratings as parallel NumPy arrays of
*indices* (``user``, ``item``) into two :class:`Vocabulary` objects that map
external ids (always strings) to contiguous indices. A train and a test table
cut from one dataset share the same vocabularies, so an index means the same
user or item in both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cmcrec.errors import CmcrecError, ConfigError, DataError, UnknownIdError

_INTEGER_ID = re.compile(r"-?[0-9]+")  # ASCII only: "²".isdigit() is true but int("²") fails


class Vocabulary:
    """A bijection between external ids (strings) and indices ``0..n-1``.

    Args:
        ids: the ids, in index order. Must be unique.
        kind: ``"user"`` or ``"item"``; used in error messages.
    """

    def __init__(self, ids: Iterable[object], kind: str = "id") -> None:
        self._ids = np.asarray([str(i) for i in ids], dtype=object)
        self.kind = kind
        self._index = {v: i for i, v in enumerate(self._ids)}
        self._pd_index: pd.Index | None = None
        if len(self._index) != len(self._ids):
            raise DataError(f"duplicate {kind} ids in vocabulary")

    @classmethod
    def encode(cls, values: Sequence[object], kind: str = "id") -> tuple[Vocabulary, np.ndarray]:
        """Build a vocabulary from raw values and encode them.

        Ids are ordered numerically when they all look like integers (so
        MovieLens user "2" comes before "10"), else lexicographically.

        Returns:
            ``(vocabulary, codes)`` where ``codes`` is int64 of ``len(values)``.
        """
        strings = pd.Series(values).astype(str).to_numpy(dtype=object)
        codes, uniques = pd.factorize(strings, sort=True)
        if all(_INTEGER_ID.fullmatch(u) for u in uniques):
            order = np.asarray(sorted(range(len(uniques)), key=lambda j: (int(uniques[j]), uniques[j])))
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            uniques, codes = uniques[order], rank[codes]
        return cls(uniques, kind=kind), np.asarray(codes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return str(key) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> int:  # pragma: no cover - vocabularies are not dict keys
        return id(self)

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self.kind!r}, size={len(self)})"

    @property
    def ids(self) -> np.ndarray:
        """The ids in index order (object array of str)."""
        return self._ids

    def index(self, key: object) -> int:
        """Index of one id; raises :class:`UnknownIdError` if absent."""
        try:
            return self._index[str(key)]
        except KeyError:
            raise UnknownIdError(f"unknown {self.kind} id {str(key)!r}") from None

    def lookup(self, keys: Iterable[object], missing: int | None = None) -> np.ndarray:
        """Indices of many ids (int64).

        Args:
            keys: ids to look up.
            missing: value for absent ids; ``None`` raises :class:`UnknownIdError`.
        """
        strings = np.asarray([str(k) for k in keys], dtype=object)
        idx = self._pandas_index().get_indexer(strings).astype(np.int64)
        absent = idx < 0
        if absent.any():
            if missing is None:
                raise UnknownIdError(f"unknown {self.kind} id {strings[np.argmax(absent)]!r}")
            idx[absent] = missing
        return idx

    def _pandas_index(self) -> pd.Index:
        if self._pd_index is None:
            self._pd_index = pd.Index(self._ids)
        return self._pd_index

    def to_list(self) -> list[str]:
        return [str(i) for i in self._ids]


@dataclass(frozen=True)
class RatingScale:
    """The rating levels of a dataset and how they become relation types.

    Attributes:
        levels: the distinct allowed rating values, ascending (e.g. 1..5, or
            0.5..5 in half stars, or 0..10).
        num_buckets: if set, ratings are not required to be one of ``levels``;
            any value in ``[minimum, maximum]`` is allowed and its relation type
            is its bucket among ``num_buckets`` equal-width buckets over the
            range. Used for fine scales such as YahooMusic's 1–100, where one
            relation type per value would leave most types with few edges.
    """

    levels: tuple[float, ...]
    num_buckets: int | None = None

    def __post_init__(self) -> None:
        levels = tuple(float(v) for v in self.levels)
        if len(levels) < 2:
            raise ConfigError(f"a rating scale needs at least two levels, got {levels}")
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ConfigError(f"rating levels must be strictly ascending, got {levels}")
        if not all(np.isfinite(levels)):
            raise ConfigError(f"rating levels must be finite, got {levels}")
        if self.num_buckets is not None and self.num_buckets < 2:
            raise ConfigError(f"num_buckets must be >= 2, got {self.num_buckets}")
        object.__setattr__(self, "levels", levels)

    @classmethod
    def from_range(cls, minimum: float, maximum: float, step: float = 1.0) -> RatingScale:
        """Levels ``minimum, minimum+step, ..., maximum``."""
        n = int(round((maximum - minimum) / step)) + 1
        return cls(tuple(float(minimum + i * step) for i in range(n)))

    @classmethod
    def infer(cls, ratings: np.ndarray, max_levels: int = 11, num_buckets: int = 10) -> RatingScale:
        """The scale of observed ratings: their distinct values, or buckets if too many.

        Args:
            ratings: observed rating values.
            max_levels: more distinct values than this gives a bucketed scale
                over the observed integer range.
            num_buckets: number of buckets for a bucketed scale.
        """
        values = np.unique(np.asarray(ratings, dtype=np.float64))
        if len(values) < 2:
            raise DataError(f"cannot infer a rating scale from {len(values)} distinct value(s)")
        if len(values) <= max_levels:
            return cls(tuple(values))
        lo, hi = float(np.floor(values[0])), float(np.ceil(values[-1]))
        return cls.from_range(lo, hi).with_buckets(num_buckets)

    def with_buckets(self, num_buckets: int | None) -> RatingScale:
        return replace(self, num_buckets=num_buckets)

    @property
    def minimum(self) -> float:
        return self.levels[0]

    @property
    def maximum(self) -> float:
        return self.levels[-1]

    @property
    def levels_text(self) -> str:
        """The levels as people write them, for messages: ``"1, 2, 3, 4, 5"``."""
        return ", ".join(f"{v:g}" for v in self.levels)

    @property
    def span(self) -> float:
        return self.maximum - self.minimum

    @property
    def num_relations(self) -> int:
        """Number of edge types in the rating graph."""
        return self.num_buckets if self.num_buckets is not None else len(self.levels)

    def invalid(self, ratings: np.ndarray) -> np.ndarray:
        """Boolean mask of ratings that do not belong to this scale (NaN included)."""
        r = np.asarray(ratings, dtype=np.float64)
        bad = ~np.isfinite(r) | (r < self.minimum - 1e-6) | (r > self.maximum + 1e-6)
        if self.num_buckets is None:
            lv = np.asarray(self.levels)
            nearest = np.abs(r[:, None] - lv[None, :]).min(axis=1) if len(r) else np.zeros(0)
            bad |= ~(nearest <= 1e-6)
        return bad

    def relation_type(self, ratings: np.ndarray) -> np.ndarray:
        """Edge type of each rating, int64 in ``[0, num_relations)``."""
        r = np.asarray(ratings, dtype=np.float64)
        if self.num_buckets is None:
            lv = np.asarray(self.levels)
            # Nearest level: robust to float32 storage of half stars.
            pos = np.searchsorted(lv, r).clip(1, len(lv) - 1)
            left_closer = np.abs(r - lv[pos - 1]) <= np.abs(lv[pos] - r)
            return np.where(left_closer, pos - 1, pos).astype(np.int64)
        frac = (r - self.minimum) / self.span
        return np.clip((frac * self.num_buckets).astype(np.int64), 0, self.num_buckets - 1)

    def normalize(self, ratings: np.ndarray) -> np.ndarray:
        """Map ratings to ``[0, 1]``."""
        return (np.asarray(ratings, dtype=np.float64) - self.minimum) / self.span

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "num_buckets": self.num_buckets}

    @classmethod
    def from_dict(cls, d: Mapping) -> RatingScale:
        return cls(tuple(d["levels"]), d.get("num_buckets"))


@dataclass(eq=False)
class Ratings:
    """A table of explicit ratings over shared user and item vocabularies.

    Attributes:
        user: int64 ``(n,)`` user indices into ``users``.
        item: int64 ``(n,)`` item indices into ``items``.
        rating: float32 ``(n,)`` rating values on ``scale``.
        users: user vocabulary (may include users with no rating in this table).
        items: item vocabulary (same).
        scale: the rating scale.
        timestamp: optional int64 ``(n,)`` Unix seconds.
        item_titles: optional item id → title.
        item_genres: optional item id → tuple of genres.
        name: a short name for messages and results.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    users: Vocabulary
    items: Vocabulary
    scale: RatingScale
    timestamp: np.ndarray | None = None
    item_titles: dict[str, str] | None = field(default=None, repr=False)
    item_genres: dict[str, tuple[str, ...]] | None = field(default=None, repr=False)
    name: str = "ratings"

    def __post_init__(self) -> None:
        self.user = np.ascontiguousarray(self.user, dtype=np.int64)
        self.item = np.ascontiguousarray(self.item, dtype=np.int64)
        self.rating = np.ascontiguousarray(self.rating, dtype=np.float32)
        n = len(self.user)
        if len(self.item) != n or len(self.rating) != n:
            raise DataError(
                f"{self.name}: user, item and rating arrays differ in length "
                f"({n}, {len(self.item)}, {len(self.rating)})"
            )
        if self.timestamp is not None:
            self.timestamp = np.ascontiguousarray(self.timestamp, dtype=np.int64)
            if len(self.timestamp) != n:
                raise DataError(f"{self.name}: timestamp array has length {len(self.timestamp)}, expected {n}")
        if n:
            if self.user.min() < 0 or self.user.max() >= len(self.users):
                raise DataError(f"{self.name}: user index out of range [0, {len(self.users)})")
            if self.item.min() < 0 or self.item.max() >= len(self.items):
                raise DataError(f"{self.name}: item index out of range [0, {len(self.items)})")

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        return (
            f"Ratings(name={self.name!r}, num_users={self.num_users}, num_items={self.num_items}, "
            f"num_ratings={len(self)}, levels={self.scale.levels})"
        )

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def relation_type(self) -> np.ndarray:
        """Edge type of every rating (int64)."""
        return self.scale.relation_type(self.rating)

    def digest(self) -> str:
        """SHA-256 of the (user, item, rating) columns: tells two tables apart without storing them."""
        h = hashlib.sha256()
        for column in (self.user, self.item, self.rating):
            h.update(np.ascontiguousarray(column).tobytes())
        return h.hexdigest()

    def subset(self, index: np.ndarray, name: str | None = None) -> Ratings:
        """The rows selected by a boolean mask or integer index, same vocabularies."""
        index = np.asarray(index)
        return replace(
            self,
            user=self.user[index],
            item=self.item[index],
            rating=self.rating[index],
            timestamp=None if self.timestamp is None else self.timestamp[index],
            name=name or self.name,
        )

    def concat(self, other: Ratings, name: str | None = None) -> Ratings:
        """Rows of ``self`` then ``other``; both must share vocabularies and scale."""
        if other.users != self.users or other.items != self.items:
            raise CmcrecError("cannot concatenate ratings over different vocabularies")
        ts = None
        if self.timestamp is not None and other.timestamp is not None:
            ts = np.concatenate([self.timestamp, other.timestamp])
        return replace(
            self,
            user=np.concatenate([self.user, other.user]),
            item=np.concatenate([self.item, other.item]),
            rating=np.concatenate([self.rating, other.rating]),
            timestamp=ts,
            name=name or self.name,
        )

    def csr(self) -> sp.csr_matrix:
        """User × item matrix of ratings, CSR, float32, sorted indices."""
        m = sp.csr_matrix(
            (self.rating, (self.user, self.item)), shape=(self.num_users, self.num_items), dtype=np.float32
        )
        m.sort_indices()
        return m

    def csc(self) -> sp.csc_matrix:
        """User × item matrix of ratings, CSC (fast per-item access)."""
        m = self.csr().tocsc()
        m.sort_indices()
        return m

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.user, minlength=self.num_users)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.item, minlength=self.num_items)

    def title(self, item_id: str) -> str | None:
        return None if self.item_titles is None else self.item_titles.get(str(item_id))

    def info(self) -> dict:
        """Summary statistics as a JSON-ready dict."""
        n = len(self)
        uc = self.user_counts()
        rated_users = int((uc > 0).sum())
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_ratings": n,
            "density": n / max(1, self.num_users * self.num_items),
            "rating_levels": list(self.scale.levels),
            "num_buckets": self.scale.num_buckets,
            "num_relations": self.scale.num_relations,
            "rating_mean": float(self.rating.mean()) if n else None,
            "median_ratings_per_user": float(np.median(uc[uc > 0])) if rated_users else 0.0,
            "has_timestamps": self.timestamp is not None,
            "has_titles": self.item_titles is not None,
        }


@dataclass
class Split:
    """A train/test pair over the same vocabularies.

    Attributes:
        train: training ratings (what models see).
        test: held-out ratings (only for the final report; never for selection).
        name: e.g. ``"ml-100k/u1"``.
    """

    train: Ratings
    test: Ratings
    name: str = "split"

    def __post_init__(self) -> None:
        if self.train.users != self.test.users or self.train.items != self.test.items:
            raise CmcrecError(f"split {self.name!r}: train and test must share vocabularies")
