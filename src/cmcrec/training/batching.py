"""Batchers: turn target rows into model batches inside DataLoader workers.

A batcher is a plain picklable object called with the users, items and ratings
of a set of target rows. Training batchers sample with a NumPy generator derived
from ``(seed, epoch, rank, worker)``, so runs are reproducible and no two
workers or ranks draw the same stream; evaluation batchers (``seed=None``) are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from cmcrec.errors import ConfigError
from cmcrec.graph.batch import PairBatch, SubgraphBatch


class _SeededBatcher:
    def __init__(self, seed: int | None, rank: int = 0) -> None:
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch, so each epoch samples anew."""
        self.epoch = epoch

    def generator(self) -> np.random.Generator | None:
        if self.seed is None:
            return None
        info = get_worker_info()
        key = (self.seed, self.epoch, self.rank, 0 if info is None else info.id + 1)
        if key != self._rng_key:
            self._rng = np.random.default_rng(list(key))
            self._rng_key = key
        return self._rng


class PairBatcher(_SeededBatcher):
    """Index pairs as tensors, for id-based models."""

    def __init__(self, seed: int | None = None, rank: int = 0) -> None:
        super().__init__(seed, rank)

    def __call__(self, users: np.ndarray, items: np.ndarray, y: np.ndarray | None = None) -> PairBatch:
        y = np.full(len(users), np.nan, np.float32) if y is None else y
        return PairBatch(
            user=torch.from_numpy(np.asarray(users, dtype=np.int64)),
            item=torch.from_numpy(np.asarray(items, dtype=np.int64)),
            y=torch.from_numpy(np.asarray(y, dtype=np.float32)),
        )


def unrated_keys(graph) -> np.ndarray:
    """Per-rating keys that let :func:`sample_unrated` find the ``r``-th unrated item of a user.

    For user ``u``'s ascending rated items ``R_0 < R_1 < ...``, ``R_j - j`` counts
    the unrated items below ``R_j``; ``key_j = u * (I + 1) + R_j - j`` is then
    ascending over the whole CSR array.
    """
    degree = np.diff(graph.user_indptr)
    owner = np.repeat(np.arange(graph.num_users, dtype=np.int64), degree)
    rank_in_row = np.arange(graph.user_items.size, dtype=np.int64) - np.repeat(graph.user_indptr[:-1], degree)
    return owner * (graph.num_items + 1) + graph.user_items - rank_in_row


def sample_unrated(
    graph, users: np.ndarray, count: int, rng: np.random.Generator, keys: np.ndarray | None = None
) -> np.ndarray:
    """``count`` items per user drawn uniformly (with replacement) from the items that user has not rated.

    Exact, without rejection: draw ``r`` uniform below the user's number of
    unrated items, then the ``r``-th unrated item is ``r`` plus the number of
    rated items whose :func:`unrated_keys` entry is at most ``r`` (one
    ``searchsorted`` for the whole batch).

    Args:
        graph: the training :class:`~cmcrec.graph.csr.RatingGraph`.
        users: int64 ``(P,)``; each must have at least one unrated item.
        count: items per user ``m``.
        rng: the batcher's generator.
        keys: ``unrated_keys(graph)``, when the caller keeps it.

    Returns:
        int64 ``(P, m)``.
    """
    keys = unrated_keys(graph) if keys is None else keys
    owner = np.repeat(np.asarray(users, dtype=np.int64), count)
    unrated = graph.num_items - (graph.user_indptr[owner + 1] - graph.user_indptr[owner])
    if np.any(unrated <= 0):
        raise ValueError("sample_unrated: a user has rated every item")
    r = rng.integers(0, unrated)  # uniform in [0, unrated), per entry
    below = np.searchsorted(keys, owner * (graph.num_items + 1) + r, side="right") - graph.user_indptr[owner]
    return (r + below).reshape(-1, count)


class SubgraphBatcher(_SeededBatcher):
    """Enclosing subgraphs of the target pairs in a training graph.

    Args:
        graph: a :class:`cmcrec.graph.csr.RatingGraph` (training edges only).
        max_nodes_per_hop: cap on each hop's new user and item sets.
        hops: neighbourhood radius.
        seed: sampling seed; ``None`` for the deterministic evaluation choice.
        rank: the process's rank under torchrun.
        rank_negatives: for the ranking-aware term (training only): unrated
            items drawn (:func:`sample_unrated`) per target rated at least
            ``rank_threshold`` whose user has an unrated item left; their
            pairs' subgraphs follow the rated targets in the batch and
            ``SubgraphBatch.rank_index`` groups them. 0 adds none.
        rank_threshold: lowest rating that counts as a positive.
    """

    def __init__(
        self,
        graph,
        max_nodes_per_hop: int | None,
        hops: int = 1,
        seed: int | None = None,
        rank: int = 0,
        rank_negatives: int = 0,
        rank_threshold: float | None = None,
    ):
        super().__init__(seed, rank)
        if rank_negatives and (seed is None or rank_threshold is None):
            raise ValueError("rank_negatives needs a training batcher (a seed) and a rank_threshold")
        self.graph = graph
        self.max_nodes_per_hop = max_nodes_per_hop
        self.hops = hops
        self.rank_negatives = rank_negatives
        self.rank_threshold = rank_threshold
        self._unrated_keys = unrated_keys(graph) if rank_negatives else None
        # Extraction's compiled scan, loaded here in the process that starts the DataLoader workers:
        # forked workers inherit it rather than each loading the build again every epoch.
        from cmcrec.models.kernels import cpu_kernels

        cpu_kernels()

    def __call__(self, users: np.ndarray, items: np.ndarray, y: np.ndarray | None = None) -> SubgraphBatch:
        from cmcrec.graph.subgraph import extract_subgraphs

        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        y = None if y is None else np.asarray(y, dtype=np.float32)
        rng = self.generator()
        rank_index, y_all = None, y
        if self.rank_negatives and y is not None:
            b, m = len(users), self.rank_negatives
            g = self.graph
            degree = g.user_indptr[users + 1] - g.user_indptr[users]
            # A user who rated every item has nothing to rank below the positive.
            positive = np.flatnonzero((y >= self.rank_threshold) & (degree < g.num_items))  # (P,)
            negatives = sample_unrated(g, users[positive], m, rng, self._unrated_keys)  # (P, m)
            rank_index = np.concatenate(
                [positive[:, None], b + np.arange(positive.size * m, dtype=np.int64).reshape(-1, m)], axis=1
            )
            users = np.concatenate([users, np.repeat(users[positive], m)])
            items = np.concatenate([items, negatives.reshape(-1)])
            y_all = np.concatenate([y, np.full(negatives.size, np.nan, np.float32)])  # negatives have no rating
        batch = extract_subgraphs(
            self.graph, users, items, max_nodes_per_hop=self.max_nodes_per_hop, hops=self.hops, rng=rng, y=y_all
        )
        if rank_index is None:
            return batch
        return replace(batch, y=batch.y[: len(y)].clone(), rank_index=torch.from_numpy(rank_index))


class TargetRows(Dataset):
    """A map-style dataset indexed by *lists* of rows, so the DataLoader's batch
    sampler hands whole batches to the batcher (one call per batch, in workers).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, y: np.ndarray | None, batcher: Callable) -> None:
        self.users = np.asarray(users, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        self.y = None if y is None else np.asarray(y, dtype=np.float32)
        self.batcher = batcher

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        return self.batcher(self.users[rows], self.items[rows], None if self.y is None else self.y[rows])


def identity_collate(batch):
    """The dataset already returns a batch; module-level so workers can pickle it."""
    return batch


def make_batcher(
    batch_kind: str,
    config,
    graph,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    rating_range: tuple[float, float] | None = None,
):
    """The batcher a model's ``batch_kind`` needs: sampling when ``train``, deterministic otherwise.

    Args:
        batch_kind: ``"pair"`` or ``"subgraph"`` (a module's ``batch_kind``).
        config: the model config (subgraph models read ``max_nodes_per_hop``,
            ``eval_max_nodes_per_hop`` and ``hops``).
        graph: the :class:`~cmcrec.graph.csr.RatingGraph` subgraphs are cut from.
        train: sample neighbours (training) or choose them deterministically.
        seed: the run's seed.
        rank: the process's rank under torchrun.
        rating_range: ``(min, max)`` of the rating scale; needed when the
            config turns the ranking-aware term on (``rank_weight > 0``), to
            place its positive threshold.
    """
    rank_negatives, rank_threshold = 0, None
    if train and getattr(config, "rank_weight", 0) > 0:
        if rating_range is None:
            raise ValueError("rank_weight > 0 needs the rating_range to place the positive threshold")
        rank_negatives = config.rank_negatives
        rank_threshold = config.positive_threshold(*rating_range)
        lo, hi = rating_range
        if not lo < rank_threshold <= hi:
            raise ConfigError(
                f"rank_threshold must lie in ({lo}, {hi}] (the rating scale) so that some ratings are "
                f"positives and some are not, got {rank_threshold!r}"
            )
    factories = {
        "pair": lambda: PairBatcher(seed if train else None, rank),
        "subgraph": lambda: SubgraphBatcher(
            graph,
            config.max_nodes_per_hop if train else config.eval_max_nodes_per_hop,
            config.hops,
            seed if train else None,
            rank,
            rank_negatives,
            rank_threshold,
        ),
    }
    if batch_kind not in factories:
        raise ValueError(f"unknown batch kind {batch_kind!r}")
    return factories[batch_kind]()


def fit_batchers(batch_kind: str, config, graph, data, *, seed: int, rank: int = 0) -> tuple:
    """The ``(train, valid)`` batchers :meth:`Trainer.fit` takes, for data described by ``data``
    (a :class:`~cmcrec.models.registry.DataSpec`: its rating range places the ranking term's threshold)."""
    rating_range = (data.rating_min, data.rating_max)
    train = make_batcher(batch_kind, config, graph, train=True, seed=seed, rank=rank, rating_range=rating_range)
    return train, make_batcher(batch_kind, config, graph, train=False, seed=seed)
