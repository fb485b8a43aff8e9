"""The training rating graph as compressed sparse arrays.

A :class:`RatingGraph` stores every training rating twice: once in user→item
CSR order (``user_indptr``/``user_items``/...) and once in item→user CSC order
(``item_indptr``/``item_users``/...), each neighbour list sorted by index.
Subgraph extraction (:mod:`cmcrec.graph.subgraph`) reads only these arrays, so
the graph is cheap to pickle into DataLoader workers and holds no Python
objects per node or edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmcrec.data.ratings import Ratings
from cmcrec.errors import CmcrecError


def _as_index_array(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise CmcrecError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise CmcrecError(f"{name} must hold integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _check_range(a: np.ndarray, upper: int, name: str) -> None:
    if a.size and (a.min() < 0 or a.max() >= upper):
        bad = a[(a < 0) | (a >= upper)][0]
        raise CmcrecError(f"{name} {int(bad)} out of range [0, {upper})")


@dataclass(frozen=True, eq=False)
class RatingGraph:
    """A bipartite graph of typed, valued ratings in CSR (by user) and CSC (by item) form.

    Build one with :meth:`from_ratings` or :meth:`from_arrays`; the arrays are
    not meant to be assembled by hand.

    Attributes:
        num_users: number of user nodes ``U`` (users may have no edges).
        num_items: number of item nodes ``I`` (items may have no edges).
        num_relations: number of edge types ``R``.
        user_indptr: int64 ``(U + 1,)``; user ``u``'s ratings are
            ``user_indptr[u]:user_indptr[u + 1]``.
        user_items: int64 ``(E,)`` rated item of each rating, ascending within a user.
        user_types: int64 ``(E,)`` relation type (rating level index) in ``[0, R)``.
        user_values: float32 ``(E,)`` rating normalised to ``[0, 1]``.
        item_indptr: int64 ``(I + 1,)``; the item-side twin of ``user_indptr``.
        item_users: int64 ``(E,)`` rating user, ascending within an item.
        item_types: int64 ``(E,)``.
        item_values: float32 ``(E,)``.
    """

    num_users: int
    num_items: int
    num_relations: int
    user_indptr: np.ndarray
    user_items: np.ndarray
    user_types: np.ndarray
    user_values: np.ndarray
    item_indptr: np.ndarray
    item_users: np.ndarray
    item_types: np.ndarray
    item_values: np.ndarray
    # user * num_items + item of every rating, in CSR order (so ascending):
    # one searchsorted finds any (user, item) rating.
    _user_item_key: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        users = np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.user_indptr))
        object.__setattr__(self, "_user_item_key", users * self.num_items + self.user_items)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_ratings(cls, ratings: Ratings) -> RatingGraph:
        """The graph of a ratings table: types from ``scale.relation_type``,
        values from ``scale.normalize``; every vocabulary entry is a node."""
        return cls.from_arrays(
            ratings.user,
            ratings.item,
            ratings.scale.relation_type(ratings.rating),
            ratings.scale.normalize(ratings.rating),
            num_users=ratings.num_users,
            num_items=ratings.num_items,
            num_relations=ratings.scale.num_relations,
        )

    @classmethod
    def from_arrays(
        cls,
        user: np.ndarray,
        item: np.ndarray,
        edge_type: np.ndarray,
        edge_value: np.ndarray,
        num_users: int,
        num_items: int,
        num_relations: int,
    ) -> RatingGraph:
        """A graph from parallel edge arrays (one entry per rating).

        Args:
            user: ``(E,)`` user index of each rating, in ``[0, num_users)``.
            item: ``(E,)`` item index, in ``[0, num_items)``.
            edge_type: ``(E,)`` relation type, in ``[0, num_relations)``.
            edge_value: ``(E,)`` normalised rating, in ``[0, 1]``.
            num_users: number of user nodes.
            num_items: number of item nodes.
            num_relations: number of relation types.

        Raises:
            CmcrecError: (a ``ValueError``) on unequal lengths, out-of-range
                values, or a (user, item) pair rated twice.
        """
        num_users, num_items, num_relations = int(num_users), int(num_items), int(num_relations)
        if num_users < 0 or num_items < 0 or num_relations < 1:
            raise CmcrecError(
                f"need num_users >= 0, num_items >= 0, num_relations >= 1; "
                f"got {num_users}, {num_items}, {num_relations}"
            )
        user = _as_index_array(user, "user")
        item = _as_index_array(item, "item")
        edge_type = _as_index_array(edge_type, "edge_type")
        edge_value = np.asarray(edge_value, dtype=np.float64)
        n = len(user)
        if not (len(item) == len(edge_type) == len(edge_value) == n) or edge_value.ndim != 1:
            raise CmcrecError(
                f"user, item, edge_type and edge_value differ in length "
                f"({n}, {len(item)}, {len(edge_type)}, {len(edge_value)})"
            )
        _check_range(user, num_users, "user index")
        _check_range(item, num_items, "item index")
        _check_range(edge_type, num_relations, "edge type")
        if n and not np.all((edge_value >= 0.0) & (edge_value <= 1.0)):
            bad = edge_value[~((edge_value >= 0.0) & (edge_value <= 1.0))][0]
            raise CmcrecError(f"edge value {bad} outside [0, 1] (values must be normalised ratings)")

        by_user = np.lexsort((item, user))
        key = user[by_user] * num_items + item[by_user]
        dup = np.flatnonzero(key[1:] == key[:-1])
        if dup.size:
            j = by_user[dup[0]]
            raise CmcrecError(f"user {int(user[j])} rated item {int(item[j])} more than once")
        by_item = np.lexsort((user, item))
        value32 = edge_value.astype(np.float32)
        return cls(
            num_users=num_users,
            num_items=num_items,
            num_relations=num_relations,
            user_indptr=_indptr(user, num_users),
            user_items=item[by_user],
            user_types=edge_type[by_user],
            user_values=value32[by_user],
            item_indptr=_indptr(item, num_items),
            item_users=user[by_item],
            item_types=edge_type[by_item],
            item_values=value32[by_item],
        )

    def with_new_user(
        self, items: np.ndarray, edge_types: np.ndarray, edge_values: np.ndarray
    ) -> tuple[RatingGraph, int]:
        """This graph plus one new user with the given ratings.

        The new user gets index ``num_users`` (so existing indices keep their
        meaning), and its subgraphs can be extracted at once: this is how a user
        unseen at training time is scored without retraining. Costs ``O(E)``.

        Args:
            items: ``(k,)`` distinct items the new user rated (``k`` may be 0).
            edge_types: ``(k,)`` relation types of those ratings.
            edge_values: ``(k,)`` normalised ratings in ``[0, 1]``.

        Returns:
            ``(graph, new_user_index)``.
        """
        items = _as_index_array(items, "items")
        edge_types = _as_index_array(edge_types, "edge_types")
        edge_values = np.asarray(edge_values, dtype=np.float64)
        if not (len(items) == len(edge_types) == len(edge_values)) or edge_values.ndim != 1:
            raise CmcrecError(
                f"items, edge_types and edge_values differ in length "
                f"({len(items)}, {len(edge_types)}, {len(edge_values)})"
            )
        _check_range(items, self.num_items, "item index")
        _check_range(edge_types, self.num_relations, "edge type")
        if len(edge_values) and not np.all((edge_values >= 0.0) & (edge_values <= 1.0)):
            raise CmcrecError("edge values of the new user must be normalised ratings in [0, 1]")
        order = np.argsort(items, kind="stable")
        items, edge_types = items[order], edge_types[order]
        values32 = edge_values[order].astype(np.float32)
        if np.any(items[1:] == items[:-1]):
            raise CmcrecError(f"the new user rates item {int(items[1:][items[1:] == items[:-1]][0])} twice")

        new_user = self.num_users
        # The new user has the largest index, so it goes last in each item's list.
        at = self.item_indptr[items + 1]
        item_indptr = self.item_indptr + np.searchsorted(items, np.arange(self.num_items + 1), side="left")
        graph = RatingGraph(
            num_users=self.num_users + 1,
            num_items=self.num_items,
            num_relations=self.num_relations,
            user_indptr=np.append(self.user_indptr, self.user_indptr[-1] + len(items)),
            user_items=np.concatenate([self.user_items, items]),
            user_types=np.concatenate([self.user_types, edge_types]),
            user_values=np.concatenate([self.user_values, values32]),
            item_indptr=item_indptr,
            item_users=np.insert(self.item_users, at, new_user),
            item_types=np.insert(self.item_types, at, edge_types),
            item_values=np.insert(self.item_values, at, values32),
        )
        return graph, new_user

    # ---------------------------------------------------------------- queries
    @property
    def num_edges(self) -> int:
        """Number of ratings (each counted once)."""
        return int(self.user_items.shape[0])

    def user_degree(self) -> np.ndarray:
        """int64 ``(U,)`` number of ratings of each user."""
        return np.diff(self.user_indptr)

    def item_degree(self) -> np.ndarray:
        """int64 ``(I,)`` number of ratings of each item."""
        return np.diff(self.item_indptr)

    def edge_position(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Position of each (user, item) rating in the CSR arrays, ``-1`` where unrated.

        Args:
            users: int ``(B,)`` user indices (in range).
            items: int ``(B,)`` item indices (in range).

        Returns:
            int64 ``(B,)``; e.g. ``user_types[p]`` is the type of a found rating.
        """
        key = np.asarray(users, dtype=np.int64) * self.num_items + np.asarray(items, dtype=np.int64)
        pos = np.searchsorted(self._user_item_key, key)
        found = pos < len(self._user_item_key)
        found[found] = self._user_item_key[pos[found]] == key[found]
        return np.where(found, pos, -1)

    def user_tensors(self) -> tuple:
        """The user-side CSR arrays as torch tensors, built once and cached:
        ``(indptr int64, items int32 (int64 past 2**31 items), types int64, values float32)`` (CPU; the
        int64 and float32 ones share memory with the NumPy arrays)."""
        cached = self.__dict__.get("_user_tensors")
        if cached is None:
            import torch

            cached = (
                torch.from_numpy(self.user_indptr),
                torch.from_numpy(self.user_items.astype(np.int32 if self.num_items < 2**31 else np.int64)),
                torch.from_numpy(self.user_types),
                torch.from_numpy(self.user_values),
            )
            object.__setattr__(self, "_user_tensors", cached)
        return cached

    def __getstate__(self) -> dict:
        # The tensor views of user_tensors() are rebuilt on first use: a pickled graph (spawned
        # DataLoader workers) carries the NumPy arrays only.
        return {k: v for k, v in self.__dict__.items() if k != "_user_tensors"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"RatingGraph(num_users={self.num_users}, num_items={self.num_items}, "
            f"num_relations={self.num_relations}, num_edges={self.num_edges})"
        )


def _indptr(index: np.ndarray, n: int) -> np.ndarray:
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=indptr[1:])
    return indptr
