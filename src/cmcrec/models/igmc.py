"""IGMC: inductive matrix completion from enclosing subgraphs.

Zhang & Chen, "Inductive Matrix Completion Based on Graph Neural Networks",
ICLR 2020. One R-GCN encoder over the one-hot node roles of each target pair's
enclosing subgraph; the target user's and item's concatenated layer outputs go
through an MLP head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmcrec.graph.batch import SubgraphBatch
from cmcrec.models.base import ModelOutput, RatingModel
from cmcrec.models.configs import IGMCConfig
from cmcrec.models.layers import RelationalGraph, RGCNStack, mlp_head

__all__ = ["IGMC"]


class IGMC(RatingModel):
    r"""IGMC (Zhang & Chen, ICLR 2020, eq. 2-6).

    .. math::
        h^{l+1}_i = \tanh\Big(W^l_0 h^l_i + \sum_r \sum_{j \in N_r(i)} \tfrac{1}{|N_r(i)|} W^l_r h^l_j\Big),
        \quad g = [h^{1:L}_u \,\|\, h^{1:L}_v],
        \quad \hat r = r_{\min} + (r_{\max} - r_{\min})\,\sigma(w^\top \mathrm{ReLU}(W g))

    Loss (eq. 7-8): ``MSE + arr · Σ_layers Σ_r ||W_{r+1} − W_r||²_F`` (adjacent
    rating regularisation; relation ``r`` is the ``r``-th rating level).

    Edge dropout (``config.edge_dropout``) drops undirected edges, both
    directions together, at training time only (on the sorted operator, see
    :meth:`RelationalGraph.dropout_undirected`). The batch must use the
    :func:`~cmcrec.graph.subgraph.extract_subgraphs` edge layout (edge
    ``e + E/2`` is edge ``e`` reversed). Unlike the paper's head, the
    output is squashed into the rating range (``RatingModel.to_scale``).

    Args:
        config: an :class:`IGMCConfig`.
        num_relations: rating levels (edge types).
        num_labels: node roles (``2 * (hops + 1)``).
        rating_min: lowest rating.
        rating_max: highest rating.
    """

    batch_kind = "subgraph"

    def __init__(
        self, config: IGMCConfig, num_relations: int, num_labels: int, rating_min: float, rating_max: float
    ) -> None:
        super().__init__(rating_min, rating_max)
        self.config = config
        self.output = config.output
        self.num_relations = num_relations
        self.num_labels = num_labels
        self.encoder = RGCNStack(num_labels, config.hidden_channels, config.num_layers, num_relations, config.num_bases)
        self.head = mlp_head(2 * self.encoder.out_channels, config.head_hidden, config.dropout)

    @classmethod
    def build(cls, config: IGMCConfig, data) -> IGMC:
        """Instantiate for a :class:`cmcrec.models.registry.DataSpec`."""
        return cls(config, data.num_relations, config.num_labels, data.rating_min, data.rating_max)

    def reset_parameters(self) -> None:
        for conv in self.encoder.convs:
            conv.reset_parameters()
        for layer in self.head:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    def forward(self, batch: SubgraphBatch) -> ModelOutput:
        edge_index, edge_type = batch.edge_index, batch.edge_type
        graph = RelationalGraph.build(
            edge_index, edge_type, batch.num_nodes, self.num_relations, paired=True, mean_over=self.config.mean_over
        )
        if self.training and self.config.edge_dropout > 0:
            graph = graph.dropout_undirected(self.config.edge_dropout)
        x = F.one_hot(batch.node_label, self.num_labels).to(torch.float32)  # (N, L)
        targets = torch.cat([batch.user_pos, batch.item_pos])  # (2B,)
        h = self.encoder(x, edge_index, edge_type, graph, nodes=targets)  # (2B, layers * C)
        b = batch.num_targets
        rep = torch.cat([h[:b], h[b:]], dim=-1)  # (B, 2 * layers * C): [h_user ‖ h_item]
        return ModelOutput(prediction=self.to_scale(self.head(rep).squeeze(-1)))

    def arr_penalty(self) -> torch.Tensor:
        """``Σ_layers Σ_r ||W_{r+1} − W_r||²_F`` over the relation weights."""
        total = 0.0
        for conv in self.encoder.convs:
            w = conv.relation_weight()  # (R, C_in, C_out)
            total = total + (w[1:] - w[:-1]).pow(2).sum()
        return total

    def loss(self, batch: SubgraphBatch, output: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """``MSE + arr · ARR + rank_weight · ranking``; parts ``mse``, ``arr``, ``rank`` (those that apply)."""
        c = self.config
        mse = self.labelled_mse(output.prediction, batch)
        total, parts = mse, {"mse": float(mse.detach())}
        if c.arr > 0 and self.num_relations > 1:
            arr = self.arr_penalty()
            parts["arr"] = float(arr.detach())
            total = total + c.arr * arr
        rank = self.ranking_term(output.prediction, batch, c.rank_tau)
        if rank is not None:
            parts["rank"] = float(rank.detach())
            total = total + c.rank_weight * rank
        return total, parts

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}(num_relations={self.num_relations}, num_labels={self.num_labels}, "
            f"hidden_channels={c.hidden_channels}, num_layers={c.num_layers})"
        )
