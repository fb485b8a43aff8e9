"""Candidate generation: a cheap first stage before an expensive scorer re-ranks.

Subgraph models cost one forward pass per (user, item), far too slow to score a
whole catalogue per request. :class:`ItemKNNCandidates` proposes the items most
similar (cosine over the training rating matrix) to what the user rated; it needs
no training and works as well for a user given as a bag of ratings as for one
in the training data.

Everything a request needs is precomputed at construction: the item–item
similarity as CSR and the popularity order. A request multiplies the (sparse)
history by the similarity — a gather of the rated items' neighbour rows — and
sorts only the items that gather touches, so its cost grows with the history
and the neighbour lists, not with the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from cmcrec.data.ratings import Ratings


class ItemKNNCandidates:
    """Item-neighbourhood candidate generator.

    Score of item ``j`` for a user = Σ over the user's rated items ``i`` of
    ``sim(i, j) · w(r_ui)``, with ``sim`` the cosine similarity of the item
    columns of the binary (rated / not rated) training matrix, keeping each
    item's ``neighbours`` most similar items, and ``w(r) = 1 + normalised
    rating`` so liked items pull harder.

    Candidates are ordered by that score, best first; equal scores by
    popularity (training ratings, more first), then by item index. Items with
    no score — none of their neighbours was rated, or the history is empty —
    follow every scored item, in the same popularity order.

    Args:
        train: the training ratings.
        neighbours: similar items kept per item.

    Attributes:
        similarity: float32 CSR ``(I, I)``, row ``i`` holding item ``i``'s kept neighbours.
        popularity: int64 ``(I,)`` training ratings per item.
        popular_order: int64 ``(I,)`` item indices by popularity (then index).
    """

    def __init__(self, train: Ratings, neighbours: int = 100) -> None:
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.num_items = train.num_items
        self.neighbours = neighbours
        self.scale = train.scale
        x = sp.csr_matrix(
            (np.ones(len(train), np.float32), (train.user, train.item)), shape=(train.num_users, train.num_items)
        )
        co = (x.T @ x).tocsr().astype(np.float32)  # (I, I) co-rating counts
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        sim = (sp.diags(inv) @ co @ sp.diags(inv)).tocsr()
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity = _keep_top(sim, neighbours)
        self.popularity = train.item_counts().astype(np.int64)
        self.popular_order = np.lexsort((np.arange(self.num_items), -self.popularity))
        # rank of each item in popular_order: the tie-break key, smaller first
        self._popular_rank = np.empty(self.num_items, np.int64)
        self._popular_rank[self.popular_order] = np.arange(self.num_items)

    def scores(self, items: Sequence[np.ndarray], ratings: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Sparse ``(U, num_items)`` neighbourhood scores of U histories (absent = no score).

        Args:
            items: U arrays of rated item indices.
            ratings: U arrays of the matching ratings, on the training scale.
        """
        lengths = [len(i) for i in items]
        rows = np.repeat(np.arange(len(items)), lengths)
        if sum(lengths):
            cols = np.concatenate(items).astype(np.int64)
            vals = 1.0 + self.scale.normalize(np.concatenate(ratings)).astype(np.float32)
        else:
            cols, vals = np.zeros(0, np.int64), np.zeros(0, np.float32)
        h = sp.csr_matrix((vals, (rows, cols)), shape=(len(items), self.num_items))
        return (h @ self.similarity).tocsr()

    def candidates(
        self,
        items: Sequence[np.ndarray],
        ratings: Sequence[np.ndarray],
        n: int,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Top-``n`` candidate item indices, best first.

        Args:
            items: U arrays of rated item indices (the histories).
            ratings: U arrays of the matching ratings.
            n: candidates per history.
            exclude: U arrays of items never to propose; default the histories themselves.

        Returns:
            int64 ``(U, min(n, num_items))``, ``-1`` padded when fewer items remain.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        num_users = len(items)
        exclude = items if exclude is None else exclude
        width = min(n, self.num_items)
        out = np.full((num_users, width), -1, np.int64)
        if num_users == 0:
            return out
        s = self.scores(items, ratings)
        row = np.repeat(np.arange(num_users), np.diff(s.indptr))
        col, val = s.indices.astype(np.int64), s.data
        ex_key = np.unique(
            np.concatenate([u * self.num_items + np.asarray(e, np.int64) for u, e in enumerate(exclude)])
        )
        keep = (val > 0) & ~_in_sorted(row * self.num_items + col, ex_key)
        row, col, val = row[keep], col[keep], val[keep]
        # Sort scored items by (row, score desc, popularity rank); keep each row's first `width`.
        order = np.lexsort((self._popular_rank[col], -val, row))
        row, col = row[order], col[order]
        start = np.searchsorted(row, np.arange(num_users))
        pos = np.arange(len(row)) - start[row]
        head = pos < width
        out[row[head], pos[head]] = col[head]
        counts = np.bincount(row[head], minlength=num_users)
        # Short lists are filled with the most popular items not yet excluded or proposed.
        for u in np.nonzero(counts < width)[0]:
            taken = np.zeros(self.num_items, bool)
            taken[np.asarray(exclude[u], np.int64)] = True
            taken[out[u, : counts[u]]] = True
            fill = self.popular_order[~taken[self.popular_order]][: width - counts[u]]
            out[u, counts[u] : counts[u] + len(fill)] = fill
        return out


def _in_sorted(keys: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` occur in the sorted array ``ref``."""
    if len(ref) == 0:
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(ref, keys), len(ref) - 1)
    return ref[pos] == keys


def _keep_top(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row (equal values: smaller column first)."""
    m = m.tocsr()
    indptr, indices, data = m.indptr, m.indices, m.data
    keep = np.zeros(len(data), dtype=bool)
    lengths = np.diff(indptr)
    for r in np.nonzero(lengths > k)[0]:
        seg = slice(indptr[r], indptr[r + 1])
        top = np.lexsort((indices[seg], -data[seg]))[:k]
        keep[indptr[r] + top] = True
    short = np.repeat(lengths <= k, lengths)
    keep |= short
    rows = np.repeat(np.arange(m.shape[0]), lengths)[keep]
    return sp.csr_matrix((data[keep], (rows, indices[keep])), shape=m.shape)
