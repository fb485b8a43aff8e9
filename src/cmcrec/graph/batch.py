"""Batch containers passed from data loaders to models.

Two kinds of batch exist: :class:`PairBatch` (plain index pairs, for matrix
factorisation and other id-based models) and :class:`SubgraphBatch` (one
enclosing subgraph per target pair, stacked block-diagonally, for IGMC and
MCCL). Both are plain tensors so they pin, move to a device and cross
DataLoader worker boundaries cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


class _TensorBatch:
    def to(self, device: torch.device | str, non_blocking: bool = False):
        """A copy with every tensor moved to ``device``."""
        kwargs = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            kwargs[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return type(self)(**kwargs)

    def pin_memory(self):
        kwargs = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            kwargs[f.name] = v.pin_memory() if isinstance(v, torch.Tensor) else v
        return type(self)(**kwargs)


@dataclass
class PairBatch(_TensorBatch):
    """Target (user, item) pairs by index.

    Attributes:
        user: int64 ``(B,)`` user indices.
        item: int64 ``(B,)`` item indices.
        y: float32 ``(B,)`` target ratings on the dataset's scale (NaN if unknown).
    """

    user: torch.Tensor
    item: torch.Tensor
    y: torch.Tensor

    @property
    def num_targets(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_labelled(self) -> int:
        return int(self.y.shape[0])


@dataclass
class SubgraphBatch(_TensorBatch):
    """``B`` enclosing subgraphs stacked into one block-diagonal graph.

    Node ids are global within the batch: graph ``g`` owns a contiguous run of
    nodes. Inside each graph the target user comes first and the target item
    second, then neighbour users, then neighbour items (for ``h`` hops:
    hop-1 users, hop-1 items, hop-2 users, ...).

    Attributes:
        node_label: int64 ``(N,)`` role of each node. For 1 hop:
            0 target user, 1 target item, 2 neighbour user, 3 neighbour item;
            for ``h`` hops, users at hop ``k`` get ``2k`` and items ``2k+1``.
        edge_index: int64 ``(2, E)`` (source, destination) node ids; every
            rating appears in both directions, in a fixed layout the models
            rely on: the first ``E/2`` edges are the ratings as user → item,
            and edge ``e + E/2`` is edge ``e`` reversed. The target edge is absent.
        edge_type: int64 ``(E,)`` relation type (rating level index).
        edge_value: float32 ``(E,)`` the edge's rating normalised to ``[0, 1]``.
        node_graph: int64 ``(N,)`` graph index of each node (PyG's ``batch``).
        user_pos: int64 ``(B,)`` node id of each graph's target user.
        item_pos: int64 ``(B,)`` node id of each graph's target item.
        y: float32 ``(B_y,)`` target ratings on the dataset's scale (NaN if
            unknown) of the first ``B_y`` targets; ``B_y = B`` except in
            training batches with ranking negatives, whose extra targets
            (unrated pairs) come after the rated ones and have no rating.
        num_labels: number of distinct node labels (``2 * (hops + 1)``).
        rank_index: int64 ``(P, 1 + m)`` or ``None``: for the ranking-aware
            term, row ``p`` holds the target index of a highly rated pair
            (column 0) and of ``m`` pairs of the same user with items that
            user has not rated (columns ``1..m``, indices ``>= B_y``).
        target_user: int64 ``(B,)`` or ``None``: each graph's target user as
            an index of the graph it was cut from (extraction sets it; InfoNCE
            reads it to tell repeated targets apart, the layers never do).
        target_item: int64 ``(B,)`` or ``None``: the same for target items.
    """

    node_label: torch.Tensor
    edge_index: torch.Tensor
    edge_type: torch.Tensor
    edge_value: torch.Tensor
    node_graph: torch.Tensor
    user_pos: torch.Tensor
    item_pos: torch.Tensor
    y: torch.Tensor
    num_labels: int = 4
    rank_index: torch.Tensor | None = None
    target_user: torch.Tensor | None = None
    target_item: torch.Tensor | None = None

    @property
    def num_targets(self) -> int:
        return int(self.user_pos.shape[0])

    @property
    def num_labelled(self) -> int:
        """Targets with a training rating (the first ``num_labelled`` targets)."""
        return int(self.y.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.node_label.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_type.shape[0])

    @property
    def x(self) -> torch.Tensor:
        """One-hot node features ``(N, num_labels)``, float32."""
        return torch.nn.functional.one_hot(self.node_label, self.num_labels).to(torch.float32)
