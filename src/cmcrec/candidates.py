"""Candidate generation: a cheap first stage before an expensive scorer re-ranks.

Subgraph models cost one forward pass per (user, item), far too slow to score a
whole catalogue per request. :class:`ItemKNNCandidates` proposes the items most
similar (cosine over the training rating matrix) to what the user rated; it needs
no training and works as well for a user given as a bag of ratings as for one
in the training data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cmcrec.data.ratings import Ratings


class ItemKNNCandidates:
    """Item-neighbourhood candidate generator.

    Score of item ``j`` for a user = Σ over the user's rated items ``i`` of
    ``sim(i, j) · w(r_ui)``, with ``sim`` the cosine similarity of item columns
    of the (mean-centred-per-user, then shifted positive) rating matrix, keeping
    each item's ``neighbours`` most similar items, and ``w(r) = 1 + normalised
    rating`` so liked items pull harder. Ties and empty histories fall back to
    item popularity.

    Args:
        train: the training ratings.
        neighbours: similar items kept per item.
    """

    def __init__(self, train: Ratings, neighbours: int = 100) -> None:
        self.num_items = train.num_items
        self.scale = train.scale
        x = sp.csr_matrix(
            (np.ones(len(train), np.float32), (train.user, train.item)), shape=(train.num_users, train.num_items)
        )
        co = (x.T @ x).tocsr().astype(np.float32)  # (I, I) co-rating counts
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        sim = sp.diags(inv) @ co @ sp.diags(inv)
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity = _keep_top(sim.tocsr(), neighbours)
        pop = train.item_counts().astype(np.float64)
        # A tiny popularity prior breaks ties and fills lists for users with few ratings.
        self.prior = (pop / max(pop.max(), 1.0) * 1e-6).astype(np.float64)

    def scores(self, items: list[np.ndarray], ratings: list[np.ndarray]) -> np.ndarray:
        """Dense ``(U, num_items)`` candidate scores for U histories."""
        rows = np.repeat(np.arange(len(items)), [len(i) for i in items])
        cols = np.concatenate(items) if items else np.zeros(0, np.int64)
        vals = 1.0 + self.scale.normalize(np.concatenate(ratings)) if items else np.zeros(0)
        h = sp.csr_matrix((vals, (rows, cols)), shape=(len(items), self.num_items))
        return np.asarray((h @ self.similarity).todense()) + self.prior[None, :]

    def candidates(
        self, items: list[np.ndarray], ratings: list[np.ndarray], n: int, exclude: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """Top-``n`` candidate item indices ``(U, n')`` with ``n' = min(n, num_items)``, excluded items removed."""
        s = self.scores(items, ratings)
        for u, ex in enumerate(exclude if exclude is not None else items):
            s[u, ex] = -np.inf
        n = min(n, self.num_items)
        part = np.argpartition(-s, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        top[np.take_along_axis(s, top, axis=1) == -np.inf] = -1
        return top


def _keep_top(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row."""
    m = m.tocsr()
    indptr, indices, data = m.indptr, m.indices, m.data
    keep = np.zeros(len(data), dtype=bool)
    lengths = np.diff(indptr)
    for r in np.nonzero(lengths > k)[0]:
        seg = slice(indptr[r], indptr[r + 1])
        top = np.argpartition(-data[seg], k - 1)[:k]
        keep[indptr[r] + top] = True
    short = np.repeat(lengths <= k, lengths)
    keep |= short
    rows = np.repeat(np.arange(m.shape[0]), lengths)[keep]
    return sp.csr_matrix((data[keep], (rows, indices[keep])), shape=m.shape)
