"""Batchers: turn target rows into model batches inside DataLoader workers.

A batcher is a plain picklable object called with the users, items and ratings
of a set of target rows. Training batchers sample with a NumPy generator derived
from ``(seed, epoch, rank, worker)``, so runs are reproducible and no two
workers or ranks draw the same stream; evaluation batchers (``seed=None``) are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

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


class SubgraphBatcher(_SeededBatcher):
    """Enclosing subgraphs of the target pairs in a training graph.

    Args:
        graph: a :class:`cmcrec.graph.csr.RatingGraph` (training edges only).
        max_nodes_per_hop: cap on each hop's new user and item sets.
        hops: neighbourhood radius.
        seed: sampling seed; ``None`` for the deterministic evaluation choice.
    """

    def __init__(self, graph, max_nodes_per_hop: int | None, hops: int = 1, seed: int | None = None, rank: int = 0):
        super().__init__(seed, rank)
        self.graph = graph
        self.max_nodes_per_hop = max_nodes_per_hop
        self.hops = hops

    def __call__(self, users: np.ndarray, items: np.ndarray, y: np.ndarray | None = None) -> SubgraphBatch:
        from cmcrec.graph.subgraph import extract_subgraphs

        return extract_subgraphs(
            self.graph,
            np.asarray(users, dtype=np.int64),
            np.asarray(items, dtype=np.int64),
            max_nodes_per_hop=self.max_nodes_per_hop,
            hops=self.hops,
            rng=self.generator(),
            y=None if y is None else np.asarray(y, dtype=np.float32),
        )


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


def make_batcher(batch_kind: str, config, graph, *, train: bool, seed: int, rank: int = 0):
    """The batcher a model's ``batch_kind`` needs: sampling when ``train``, deterministic otherwise.

    Args:
        batch_kind: ``"pair"`` or ``"subgraph"`` (a module's ``batch_kind``).
        config: the model config (subgraph models read ``max_nodes_per_hop``,
            ``eval_max_nodes_per_hop`` and ``hops``).
        graph: the :class:`~cmcrec.graph.csr.RatingGraph` subgraphs are cut from.
        train: sample neighbours (training) or choose them deterministically.
        seed: the run's seed.
        rank: the process's rank under torchrun.
    """
    factories = {
        "pair": lambda: PairBatcher(seed if train else None, rank),
        "subgraph": lambda: SubgraphBatcher(
            graph,
            config.max_nodes_per_hop if train else config.eval_max_nodes_per_hop,
            config.hops,
            seed if train else None,
            rank,
        ),
    }
    if batch_kind not in factories:
        raise ValueError(f"unknown batch kind {batch_kind!r}")
    return factories[batch_kind]()
