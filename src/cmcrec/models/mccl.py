"""MCCL: contrastive matrix completion with a denoised and an augmented graph view.

Nemati & Haghir Chehreghani, "Contrastive Matrix Completion with Denoising and
Augmented Graph Views for Robust Recommendation", arXiv 2506.10658, 2025.
See ``DESIGN.md`` §1 for the method in our words.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmcrec.graph.batch import SubgraphBatch
from cmcrec.models.base import ModelOutput, RatingModel
from cmcrec.models.configs import MCCLConfig
from cmcrec.models.layers import RelationalGraph, RGCNStack, info_nce, mlp_head

__all__ = ["MCCL", "variational_terms"]

# exp(10) is already a huge standard deviation; the clamp only stops overflow early in training.
_MAX_LOGSTD = 10.0


class GaussianProjection(nn.Module):
    """Two MLPs giving ``μ`` and ``log σ`` of a diagonal Gaussian per node.

    Args:
        in_channels: width of the encoder output.
        latent_channels: width of ``z``.
    """

    def __init__(self, in_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.mu = nn.Sequential(
            nn.Linear(in_channels, latent_channels), nn.ReLU(), nn.Linear(latent_channels, latent_channels)
        )
        self.logstd = nn.Sequential(
            nn.Linear(in_channels, latent_channels), nn.ReLU(), nn.Linear(latent_channels, latent_channels)
        )

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ)``, each ``(N, latent_channels)``."""
        return self.mu(h), self.logstd(h).clamp(max=_MAX_LOGSTD)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.latent_channels})"


def _uniform_sample(size: int, count: int | None, device, generator: torch.Generator | None) -> torch.Tensor | None:
    """``count`` indices drawn uniformly with replacement from ``[0, size)``; ``None`` for "all of them"."""
    if count is None or size <= count:
        return None
    return torch.randint(size, (count,), generator=generator, device=device)


def variational_terms(
    gauss: GaussianProjection,
    h: torch.Tensor,
    targets: torch.Tensor,
    edge_index: torch.Tensor,
    edge_value: torch.Tensor,
    recon_edges: int | None,
    kl_nodes: int | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""View 2's training-mode terms from its encoder output ``h`` ``(N, C)``.

    * ``z`` of the ``targets`` (``(T,)`` node ids): ``z = μ + ε ⊙ σ``.
    * ``KL(q(z) ‖ N(0, I))``: the per-node sum over latent dimensions, averaged
      over all ``N`` nodes (``kl_nodes=None``) or over ``kl_nodes`` nodes drawn
      uniformly with replacement (an unbiased estimate of that average).
    * Reconstruction ``mean (σ(z_src · z_dst) − edge_value)²`` over the ratings
      (the first half of the edges of the
      :func:`~cmcrec.graph.subgraph.extract_subgraphs` layout, which holds every
      rating once; edge ``e + E/2`` is its reverse, with the same dot product and
      value), or over ``recon_edges`` ratings drawn uniformly with replacement.

    The Gaussian projection runs only on the rows these terms read (targets,
    the sampled ratings' endpoints, the sampled nodes) when they are fewer than
    ``N``; otherwise on every node once, read by index. Every row draws its own
    ``ε``: a node read twice gets two independent samples, which leaves each
    term's expectation unchanged.

    Returns:
        ``(z_targets (T, D), kl, recon)``.
    """
    n = h.shape[0]
    half = edge_index.shape[1] // 2
    src, dst, value = edge_index[0, :half], edge_index[1, :half], edge_value[:half]
    pick = _uniform_sample(half, recon_edges, h.device, generator)
    if pick is not None:
        src, dst, value = src.index_select(0, pick), dst.index_select(0, pick), value.index_select(0, pick)
    kl_rows = _uniform_sample(n, kl_nodes, h.device, generator)
    if kl_rows is None:
        kl_rows = torch.arange(n, device=h.device)
    rows = torch.cat([targets, src, dst, kl_rows])
    if rows.numel() < n:
        mu, logstd = gauss(h.index_select(0, rows))  # (M, D) each
    else:
        mu, logstd = (t.index_select(0, rows) for t in gauss(h))
    std = logstd.exp()
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    t, r = targets.numel(), src.numel()
    z = mu[: t + 2 * r] + noise[: t + 2 * r] * std[: t + 2 * r]
    dot = (z[t : t + r] * z[t + r :]).sum(-1)  # (R,)
    # A batch whose subgraphs have no edge at all (each pair's only rating was the removed target) has
    # nothing to reconstruct: 0, not the NaN of a mean over nothing.
    recon = F.mse_loss(torch.sigmoid(dot), value.to(dot.dtype)) if r else dot.sum()
    m, ls, sd = mu[t + 2 * r :], logstd[t + 2 * r :], std[t + 2 * r :]
    kl = -0.5 * (1 + 2 * ls - m.pow(2) - sd * sd).sum(-1).mean()
    return z[:t], kl, recon


class MCCL(RatingModel):
    r"""MCCL (Nemati & Haghir Chehreghani, arXiv 2506.10658, 2025).

    Two encoders over the same enclosing subgraph (one-hot node roles in):

    * **View 1, denoised**: an R-GCN stack where, after layer ``l``, an edge
      scorer gives ``w_e = s_e / mean_{e' ∈ g} s_{e'}``,
      ``s_e = σ(MLP([h^l_u ‖ h^l_v]))`` for the rating ``e = (u, v)`` (both its
      directions carry it; ``scorer_edges="directed"`` scores each direction
      on ``[h_src ‖ h_dst]`` instead), and layer ``l + 1`` multiplies each
      message by ``w_e``. Target representation ``h1 = [h^{1:L}_u ‖ h^{1:L}_v]``.
    * **View 2, augmented**: an R-GCN stack on the subgraph with edge dropout,
      then ``μ = MLP_μ(h)``, ``log σ = MLP_σ(h)``, ``z = μ + ε ⊙ σ`` (``z = μ``
      in eval mode). Target representation ``h2 = [z_u ‖ z_v]``.

    Heads: ``r̂_1 = f_1(h1)``, ``r̂_2 = f_2(h2)``, ``r̂ = f_c([h1 ‖ h2])``, each
    squashed into the rating range; the prediction is ``r̂`` (or the single
    active view's head in an ablation). Training objective (the paper's total
    loss, DESIGN §1)::

        L = MSE(r̂) + MSE(r̂_1) + MSE(r̂_2)
            + λ_cl · [InfoNCE_τ(P h1_u, z_u) + InfoNCE_τ(P h1_v, z_v)]
            + β · KL(q(z) ‖ N(0, I)) + γ · recon + embedding_l2 · mean ||h||²

    where ``P`` projects view 1 to the latent width (identity when equal),
    InfoNCE is symmetric with in-batch negatives (:func:`info_nce`), KL is the
    per-node sum over latent dimensions averaged over nodes, and ``recon`` is
    ``mean_e (σ(z_src · z_dst) − edge_value_e)²`` over the ratings of the
    undropped subgraphs (:func:`variational_terms`). Both are exact with
    ``config.kl_nodes=None`` and ``config.recon_edges=None``; by default they
    are unbiased estimates from a uniform sample of nodes and of ratings per
    batch, so the Gaussian projection runs on a few thousand rows rather than
    on every node of the batch (on every node it took about a fifth of a
    one-core MCCL step at IGMC's settings).
    Terms of a disabled view are left out. The KL, reconstruction, InfoNCE and
    L2 terms are computed in training mode only. With ranking negatives in the
    batch (``rank_weight > 0``), InfoNCE and L2 run over the rated targets only,
    while KL and reconstruction cover every node and edge of the batch,
    negatives' subgraphs included (both are unsupervised).

    Speed (CPU): both views share one sorted :class:`RelationalGraph`; view
    2's edge dropout zeroes operator values instead of re-sorting
    (:meth:`RelationalGraph.dropout_undirected`); view 1's last layer is
    computed for the target nodes only (the only rows its readout reads). The
    batch must use the :func:`~cmcrec.graph.subgraph.extract_subgraphs` edge
    layout (edge ``e + E/2`` is edge ``e`` reversed).

    Args:
        config: an :class:`MCCLConfig`.
        num_relations: rating levels (edge types).
        num_labels: node roles (``2 * (hops + 1)``).
        rating_min: lowest rating.
        rating_max: highest rating.
    """

    batch_kind = "subgraph"

    def __init__(
        self, config: MCCLConfig, num_relations: int, num_labels: int, rating_min: float, rating_max: float
    ) -> None:
        super().__init__(rating_min, rating_max)
        self.config = config
        self.output = config.output
        self.num_relations = num_relations
        self.num_labels = num_labels
        c = config
        width = c.hidden_channels * c.num_layers
        # Only the modules of active views exist, so DDP never sees unused parameters.
        self.view1 = self.view2 = self.gauss = self.head1 = self.head2 = self.head = self.cl_proj = None
        if c.use_view1:
            self.view1 = RGCNStack(
                num_labels,
                c.hidden_channels,
                c.num_layers,
                num_relations,
                c.num_bases,
                scorer_hidden=c.scorer_hidden,
                scorer_per_rating=c.scorer_edges == "rating",
            )
            self.head1 = mlp_head(2 * width, c.head_hidden, c.dropout)
        if c.use_view2:
            self.view2 = RGCNStack(num_labels, c.hidden_channels, c.num_layers, num_relations, c.num_bases)
            self.gauss = GaussianProjection(width, c.latent_channels)
            self.head2 = mlp_head(2 * c.latent_channels, c.head_hidden, c.dropout)
        if c.use_view1 and c.use_view2:
            self.head = mlp_head(2 * width + 2 * c.latent_channels, c.head_hidden, c.dropout)
            if c.use_infonce and width != c.latent_channels:
                self.cl_proj = nn.Linear(width, c.latent_channels)

    @classmethod
    def build(cls, config: MCCLConfig, data) -> MCCL:
        """Instantiate for a :class:`cmcrec.models.registry.DataSpec`."""
        return cls(config, data.num_relations, config.num_labels, data.rating_min, data.rating_max)

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.cl_proj is None else self.cl_proj(h)

    def forward(self, batch: SubgraphBatch) -> ModelOutput:
        """Predictions ``(B,)``; in training mode ``extras`` carries the other heads and loss terms."""
        c = self.config
        n, b = batch.num_nodes, batch.num_targets
        user, item = batch.user_pos, batch.item_pos
        edge_index, edge_type = batch.edge_index, batch.edge_type
        x = F.one_hot(batch.node_label, self.num_labels).to(torch.float32)  # (N, labels)
        full = RelationalGraph.build(edge_index, edge_type, n, self.num_relations, paired=True, mean_over=c.mean_over)
        extras: dict[str, torch.Tensor] = {}
        reps = []
        logits = []
        targets = torch.cat([user, item])  # (2B,)

        if self.view1 is not None:
            h1 = self.view1(x, edge_index, edge_type, full, batch.node_graph, b, nodes=targets)  # (2B, L*C)
            r1 = torch.cat([h1[:b], h1[b:]], dim=-1)  # (B, 2*L*C)
            reps.append(r1)
            logits.append(self.head1(r1).squeeze(-1))

        if self.view2 is not None:
            if self.training:
                g2 = full.dropout_undirected(c.edge_dropout) if c.edge_dropout > 0 else full
                h2 = self.view2(x, edge_index, edge_type, g2)  # (N, L*C)
                z, extras["kl"], extras["recon"] = variational_terms(
                    self.gauss, h2, targets, edge_index, batch.edge_value, c.recon_edges, c.kl_nodes
                )
                r2 = torch.cat([z[:b], z[b:]], dim=-1)  # (B, 2*D)
            else:
                # z = μ, and only the targets' μ is read: the last layer and the projection run on them alone.
                mu = self.gauss.mu(self.view2(x, edge_index, edge_type, full, nodes=targets))  # (2B, D)
                r2 = torch.cat([mu[:b], mu[b:]], dim=-1)  # (B, 2*D)
            reps.append(r2)
            logits.append(self.head2(r2).squeeze(-1))

        if len(reps) == 2:
            extras["prediction_v1"] = self.to_scale(logits[0])
            extras["prediction_v2"] = self.to_scale(logits[1])
            logit = self.head(torch.cat(reps, dim=-1)).squeeze(-1)
            if self.training and c.use_infonce:
                # Over the rated targets only: ranking negatives repeat a positive's user, and two
                # subgraphs of one user must not be each other's in-batch negatives.
                nl = batch.num_labelled
                a, z2 = r1[:nl], r2[:nl]
                w = a.shape[1] // 2
                d = c.latent_channels
                users = items = None
                if c.mask_repeated_targets:
                    if batch.target_user is None or batch.target_item is None:
                        raise ValueError("mask_repeated_targets needs batches that carry target_user and target_item")
                    users, items = batch.target_user[:nl], batch.target_item[:nl]
                extras["infonce"] = info_nce(self._project(a[:, :w]), z2[:, :d], c.tau, users) + info_nce(
                    self._project(a[:, w:]), z2[:, d:], c.tau, items
                )
        else:
            logit = logits[0]
        if self.training and c.embedding_l2 > 0:
            extras["emb_l2"] = sum(r[: batch.num_labelled].pow(2).sum(-1).mean() for r in reps)
        return ModelOutput(prediction=self.to_scale(logit), extras=extras)

    def loss(self, batch: SubgraphBatch, output: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the class docstring, plus ``rank_weight`` times the
        ranking-aware term when the batch carries ranking negatives; parts
        ``mse``, ``mse_v1``, ``mse_v2``, ``rank``, ``infonce``, ``kl``,
        ``recon``, ``emb_l2`` (those that apply)."""
        c = self.config
        ex = output.extras
        terms = {"mse": (1.0, self.labelled_mse(output.prediction, batch))}
        if "prediction_v1" in ex:
            terms["mse_v1"] = (1.0, self.labelled_mse(ex["prediction_v1"], batch))
            terms["mse_v2"] = (1.0, self.labelled_mse(ex["prediction_v2"], batch))
        rank = self.ranking_term(output.prediction, batch, c.rank_tau)
        if rank is not None:
            terms["rank"] = (c.rank_weight, rank)
        for name, weight in (
            ("infonce", c.lambda_cl),
            ("kl", c.beta_kl),
            ("recon", c.gamma_recon),
            ("emb_l2", c.embedding_l2),
        ):
            if name in ex:
                terms[name] = (weight, ex[name])
        total = sum(w * v for w, v in terms.values())
        return total, {k: float(v.detach()) for k, (_, v) in terms.items()}

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}(num_relations={self.num_relations}, num_labels={self.num_labels}, "
            f"hidden_channels={c.hidden_channels}, num_layers={c.num_layers}, latent_channels={c.latent_channels}, "
            f"use_view1={c.use_view1}, use_view2={c.use_view2}, use_infonce={c.use_infonce})"
        )
