"""Typed configs of the subgraph models (IGMC, MCCL and MCCL's ablations).

:class:`SubgraphModelConfig` holds what both models share: the R-GCN encoder,
the subgraph extraction caps the batchers read, the rating head, and (from
:class:`~cmcrec.config.TrainConfig`) the optimisation settings the trainer
reads. Every field is validated on construction; errors name the field and the
bad value. ``to_dict`` / ``from_dict`` round-trip through JSON and reject
unknown keys by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cmcrec.config import TrainConfig
from cmcrec.errors import ConfigError

__all__ = ["IGMCConfig", "MCCLConfig", "SubgraphModelConfig"]


def _require(cond: bool, field: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{field} must be {rule}, got {value!r}")


def _optional_cap(value: int | None) -> bool:
    return value is None or (isinstance(value, int) and value >= 1)


@dataclass
class SubgraphModelConfig(TrainConfig):
    """Fields shared by the enclosing-subgraph models.

    Attributes:
        hidden_channels: width of every R-GCN layer (DESIGN §1: 32).
        num_layers: R-GCN layers per encoder (4); a node's representation is
            all layers' outputs concatenated (``hidden_channels * num_layers``).
        num_bases: basis matrices of each layer's relation weights
            (``W_r = Σ_b a_rb V_b``); 4.
        hops: radius of the enclosing subgraph (1). Node labels: ``2 * (hops + 1)``.
        max_nodes_per_hop: cap on each hop's new users and new items while
            training (random sample); ``None`` keeps all. 100.
        eval_max_nodes_per_hop: the same cap at evaluation and prediction
            (deterministic choice); ``None`` keeps all. 200.
        select_eval_cap: after training, score the kept weights on the
            validation split with ``eval_max_nodes_per_hop``, twice it and no
            cap, and predict with the best
            (:func:`~cmcrec.training.selection.choose_eval_cap`): the saved
            config then holds the chosen cap, and the training summary's
            ``eval_cap`` the one training validated with and the three
            scores. ``False`` (the default) keeps ``eval_max_nodes_per_hop``.
        edge_dropout: share of (undirected) subgraph edges dropped at training
            time, both directions together; 0 disables. 0.2.
        head_hidden: hidden width of the rating head(s) (Linear → ReLU →
            Dropout → Linear). 128.
        dropout: dropout rate inside the rating head(s). 0.5.
        rank_weight: weight of the ranking-aware InfoNCE term (see
            :func:`~cmcrec.models.layers.ranking_info_nce`); 0 (the default)
            turns it off and no extra subgraphs are cut. With it on, each
            training target rated at least ``rank_threshold`` is contrasted
            against ``rank_negatives`` items its user has not rated, sampled
            uniformly; their subgraphs join the batch (so an epoch costs
            about ``1 + share_positive * rank_negatives`` times as much).
        rank_negatives: unrated items sampled per positive. 3.
        rank_threshold: lowest rating that counts as a positive; ``None``
            means three quarters up the scale (4 on 1–5, 3.875 on 0.5–5).
        rank_tau: temperature of the ranking term, applied to predictions
            rescaled to ``[0, 1]``. 0.1.
        output: how the rating head(s) map onto the scale: ``"sigmoid"``
            (squashed into the range; MCCL's head, DESIGN §1) or ``"linear"``
            (IGMC's head: affine, clamped into the range outside training).
            See :meth:`~cmcrec.models.base.RatingModel.to_scale`.
        mean_over: how each R-GCN layer averages a node's incoming messages.
            ``"node"`` (default): over all its ratings, ``Σ_r Σ_{j ∈ N_r(i)} W_r h_j / |N(i)|``,
            as PyG 1.x's ``RGCNConv`` aggregated over all of a node's edges at once
            (IGMC's README names PyG 1.4.2 as its tested version): a node sees the
            share of each rating level. ``"relation"``: per rating level, then
            summed over levels (PyG >= 2's ``RGCNConv``; what models saved before
            this field existed used): a node sees which levels it has but not how
            many of each.
    """

    SAVED_BEFORE: ClassVar[dict[str, Any]] = {"mean_over": "relation"}

    hidden_channels: int = 32
    num_layers: int = 4
    num_bases: int = 4
    hops: int = 1
    max_nodes_per_hop: int | None = 100
    eval_max_nodes_per_hop: int | None = 200
    select_eval_cap: bool = False
    edge_dropout: float = 0.2
    head_hidden: int = 128
    dropout: float = 0.5
    rank_weight: float = 0.0
    rank_negatives: int = 3
    rank_threshold: float | None = None
    rank_tau: float = 0.1
    output: str = "sigmoid"
    mean_over: str = "node"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.output in ("sigmoid", "linear"), "output", self.output, "'sigmoid' or 'linear'")
        _require(self.mean_over in ("relation", "node"), "mean_over", self.mean_over, "'relation' or 'node'")
        _require(self.hidden_channels >= 1, "hidden_channels", self.hidden_channels, ">= 1")
        _require(self.num_layers >= 1, "num_layers", self.num_layers, ">= 1")
        _require(self.num_bases >= 1, "num_bases", self.num_bases, ">= 1")
        _require(self.hops >= 1, "hops", self.hops, ">= 1")
        _require(_optional_cap(self.max_nodes_per_hop), "max_nodes_per_hop", self.max_nodes_per_hop, ">= 1 or null")
        _require(
            _optional_cap(self.eval_max_nodes_per_hop),
            "eval_max_nodes_per_hop",
            self.eval_max_nodes_per_hop,
            ">= 1 or null",
        )
        _require(0.0 <= self.edge_dropout < 1.0, "edge_dropout", self.edge_dropout, "in [0, 1)")
        _require(self.head_hidden >= 1, "head_hidden", self.head_hidden, ">= 1")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        _require(self.rank_weight >= 0, "rank_weight", self.rank_weight, ">= 0")
        _require(self.rank_negatives >= 1, "rank_negatives", self.rank_negatives, ">= 1")
        _require(self.rank_tau > 0, "rank_tau", self.rank_tau, "> 0")

    def positive_threshold(self, rating_min: float, rating_max: float) -> float:
        """The lowest rating the ranking term treats as a positive on this scale."""
        if self.rank_threshold is not None:
            return float(self.rank_threshold)
        return rating_min + 0.75 * (rating_max - rating_min)

    @property
    def num_labels(self) -> int:
        """Distinct node roles for ``hops`` hops: target user/item plus a user and item label per hop."""
        return 2 * (self.hops + 1)


@dataclass
class IGMCConfig(SubgraphModelConfig):
    """IGMC (Zhang & Chen, ICLR 2020): one R-GCN encoder, one head.

    Attributes:
        arr: weight of the adjacent rating regulariser
            ``Σ_layers Σ_r ||W_{r+1} − W_r||²_F`` (IGMC §4, "ARR"); 0.001.
    """

    arr: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.arr >= 0, "arr", self.arr, ">= 0")


@dataclass
class MCCLConfig(SubgraphModelConfig):
    """MCCL (Nemati & Haghir Chehreghani, 2025): denoised + variational views with InfoNCE.

    Ablations are flags on the same model: view 1 only (``use_view2=False,
    use_infonce=False``), view 2 only (``use_view1=False, use_infonce=False``),
    both views without the contrastive term (``use_infonce=False``).

    Attributes:
        tau: InfoNCE temperature (the paper's code: 0.5; the blog preferred 0.1).
        lambda_cl: weight of the InfoNCE term (users + items). 0.001.
        beta_kl: weight of view 2's KL(q(z) ‖ N(0, I)). 0.001.
        gamma_recon: weight of view 2's edge-rating reconstruction. 0.001.
        use_view1: build the denoised view (R-GCN with learned edge weights).
        use_view2: build the augmented variational view (edge dropout + Gaussian projection).
        use_infonce: add the contrastive term; needs both views.
        mask_repeated_targets: a user (item) that is the target of several
            subgraphs in one batch is not counted as a negative of itself:
            InfoNCE leaves those pairs out of its denominators, so only
            other users (items) are pushed apart. ``False`` (the reference
            code) treats every other subgraph as a negative.
        embedding_l2: weight of an L2 penalty on the target representations
            the heads read (mean over targets of their squared norm). 0.
        latent_channels: width of view 2's Gaussian latent ``z``. 64 (rather
            than the ``hidden_channels * num_layers`` = 128 of the encoder
            output: the Gaussian projection runs on every node and the
            reconstruction on every edge, so the width is paid per edge).
            When it differs from view 1's width, a linear projection maps view
            1's target representations to it for InfoNCE.
        scorer_hidden: hidden width of view 1's edge-scorer MLPs. 16; 0 makes each scorer
            linear, ``σ(a·h_src + b·h_dst + c)`` (one scalar per node, gathered per
            edge: much cheaper on large subgraphs, no src–dst interaction).
        scorer_edges: what view 1's scorers weight. ``"rating"`` (default): each
            rating once, from ``[h_user ‖ h_item]``, the weight shared by the
            rating's two message directions (DESIGN §1: an edge is a rating;
            half the scorer work). ``"directed"``: each direction on its own
            ``[h_src ‖ h_dst]`` (what models saved before this field existed used).
        recon_edges: ratings per batch over which view 2's reconstruction term
            is averaged: a uniform random sample (with replacement), so the
            term is an unbiased estimate of the mean over all the batch's
            ratings; ``None`` computes that mean exactly (also what happens when
            a batch has no more ratings than this). 1024 (the term is light,
            weight ``gamma_recon``; the exact one costs two latent gathers per
            rating).
        kl_nodes: nodes per batch over which view 2's KL term is averaged: a
            uniform random sample (with replacement), an unbiased estimate of
            the mean over all the batch's nodes; ``None`` for that mean exactly.
            2048 (with ``recon_edges`` sampled too, the Gaussian projection then
            runs on about a third of a batch's nodes at IGMC's settings).
    """

    SAVED_BEFORE: ClassVar[dict[str, Any]] = {**SubgraphModelConfig.SAVED_BEFORE, "scorer_edges": "directed"}

    tau: float = 0.5
    lambda_cl: float = 0.001
    beta_kl: float = 0.001
    gamma_recon: float = 0.001
    use_view1: bool = True
    use_view2: bool = True
    use_infonce: bool = True
    mask_repeated_targets: bool = False
    embedding_l2: float = 0.0
    latent_channels: int = 64
    scorer_hidden: int = 16
    scorer_edges: str = "rating"
    recon_edges: int | None = 1024
    kl_nodes: int | None = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.tau > 0, "tau", self.tau, "> 0")
        _require(self.lambda_cl >= 0, "lambda_cl", self.lambda_cl, ">= 0")
        _require(self.beta_kl >= 0, "beta_kl", self.beta_kl, ">= 0")
        _require(self.gamma_recon >= 0, "gamma_recon", self.gamma_recon, ">= 0")
        _require(self.embedding_l2 >= 0, "embedding_l2", self.embedding_l2, ">= 0")
        _require(self.latent_channels >= 1, "latent_channels", self.latent_channels, ">= 1")
        _require(self.scorer_hidden >= 0, "scorer_hidden", self.scorer_hidden, ">= 0 (0: linear scorer)")
        _require(self.scorer_edges in ("rating", "directed"), "scorer_edges", self.scorer_edges, "rating or directed")
        _require(_optional_cap(self.recon_edges), "recon_edges", self.recon_edges, ">= 1 or null")
        _require(_optional_cap(self.kl_nodes), "kl_nodes", self.kl_nodes, ">= 1 or null")
        if not (self.use_view1 or self.use_view2):
            raise ConfigError("use_view1 and use_view2 are both false: at least one view must be on")
        if self.use_infonce and not (self.use_view1 and self.use_view2):
            raise ConfigError(
                f"use_infonce=true needs both views, got use_view1={self.use_view1}, use_view2={self.use_view2}"
            )
