"""Id-based baselines: biased matrix factorisation and global mean + biases.

Biased MF (Koren, Bell & Volinsky, "Matrix Factorization Techniques for
Recommender Systems", 2009, eq. 4): ``r̂(u,i) = μ + b_u + b_i + p_u · q_i``,
fitted by minimising squared error plus ``reg · (b_u² + b_i² + |p_u|² + |q_i|²)``
over the rows of each batch (the same per-rating regularisation SGD-style
solvers such as Surprise's SVD apply). With ``factors = 0`` it is the
global-mean + user/item bias baseline.

Unlike the subgraph models these learn one vector per training id, so they are
transductive: a user absent from training gets the fold-in vector (see
:meth:`BiasedMF.fold_in`) or, failing that, the item-bias prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cmcrec.config import TrainConfig
from cmcrec.errors import ConfigError
from cmcrec.graph.batch import PairBatch
from cmcrec.models.base import ModelOutput, RatingModel


@dataclass
class MFConfig(TrainConfig):
    """Biased matrix factorisation.

    Attributes:
        factors: latent dimension; 0 gives the global-mean + biases baseline.
        reg: L2 weight on the factors of the users and items in each batch.
        reg_bias: L2 weight on their biases.
        init_std: standard deviation of the initial factors.

    Early stopping counts an epoch as better only when it lowers the validation
    RMSE by more than ``min_delta`` = 1e-4: once the step decay has shrunk the
    learning rate, MF keeps improving by millionths for dozens of epochs.
    """

    factors: int = 64
    reg: float = 0.1
    reg_bias: float = 0.01
    init_std: float = 0.01
    lr: float = 3e-3
    batch_size: int = 512
    epochs: int = 100
    lr_decay_factor: float = 0.7
    lr_decay_step: int = 2
    patience: int | None = 8
    min_delta: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factors < 0:
            raise ConfigError(f"factors must be >= 0, got {self.factors}")
        if self.reg < 0:
            raise ConfigError(f"reg must be >= 0, got {self.reg}")
        if self.reg_bias < 0:
            raise ConfigError(f"reg_bias must be >= 0, got {self.reg_bias}")
        if self.init_std < 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std}")


@dataclass
class BiasConfig(MFConfig):
    """Global mean + user and item biases (MF with no factors)."""

    factors: int = 0


class BiasedMF(RatingModel):
    """Biased matrix factorisation over user and item indices.

    Args:
        config: an :class:`MFConfig`.
        num_users: number of training users (rows of the embedding tables).
        num_items: number of training items.
        global_mean: mean training rating μ.
        rating_min: lowest rating; predictions are clamped into the scale at eval.
        rating_max: highest rating.
    """

    batch_kind = "pair"

    def __init__(
        self,
        config: MFConfig,
        num_users: int,
        num_items: int,
        global_mean: float,
        rating_min: float,
        rating_max: float,
    ) -> None:
        super().__init__(rating_min, rating_max)
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.factors = config.factors
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        if self.factors > 0:
            self.user_factors = nn.Embedding(num_users, self.factors)
            self.item_factors = nn.Embedding(num_items, self.factors)
        else:
            self.register_module("user_factors", None)
            self.register_module("item_factors", None)
        self.reset_parameters()

    @classmethod
    def build(cls, config: MFConfig, data) -> BiasedMF:
        """Instantiate for a :class:`cmcrec.models.registry.DataSpec`."""
        return cls(config, data.num_users, data.num_items, data.global_mean, data.rating_min, data.rating_max)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        if self.user_factors is not None:
            nn.init.normal_(self.user_factors.weight, std=self.config.init_std)
            nn.init.normal_(self.item_factors.weight, std=self.config.init_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_users={self.num_users}, num_items={self.num_items}, factors={self.factors})"

    def score(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(B,)`` for index pairs (not clamped)."""
        s = self.global_mean + self.user_bias(user).squeeze(-1) + self.item_bias(item).squeeze(-1)
        if self.user_factors is not None:
            s = s + (self.user_factors(user) * self.item_factors(item)).sum(-1)
        return s

    def score_all(self, user: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: ``(len(user), num_items)``."""
        s = self.global_mean + self.user_bias(user) + self.item_bias.weight.T  # (U, I)
        if self.user_factors is not None:
            s = s + self.user_factors(user) @ self.item_factors.weight.T
        return s

    def forward(self, batch: PairBatch) -> ModelOutput:
        raw = self.score(batch.user, batch.item)
        pred = raw if self.training else raw.clamp(self.rating_min, self.rating_max)
        return ModelOutput(prediction=pred)

    def loss(self, batch: PairBatch, output: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        mse = torch.nn.functional.mse_loss(output.prediction, batch.y)
        cfg = self.config
        penalty = cfg.reg_bias * (self.user_bias(batch.user).pow(2).sum() + self.item_bias(batch.item).pow(2).sum())
        if self.user_factors is not None:
            factors = self.user_factors(batch.user).pow(2).sum() + self.item_factors(batch.item).pow(2).sum()
            penalty = penalty + cfg.reg * factors
        loss = mse + penalty / batch.num_targets
        return loss, {"mse": float(mse.detach())}

    @torch.no_grad()
    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias and factors for a user not seen in training, from their ratings.

        Solves the regularised least-squares problem for the new user's bias and
        factor vector with the item parameters held fixed (one ridge regression,
        the usual "fold-in"; with ``reg=0`` the minimum-norm least-squares fit).

        Args:
            items: int64 ``(n,)`` item indices the new user rated.
            ratings: float ``(n,)`` their ratings.

        Returns:
            ``(bias, factors)``: a scalar tensor and a ``(factors,)`` tensor.
        """
        dev = self.global_mean.device
        items, ratings = items.to(dev), ratings.to(dev)
        resid = ratings.to(torch.float64) - self.global_mean.double() - self.item_bias(items).squeeze(-1).double()
        n = len(items)
        if self.user_factors is None:
            return resid.sum() / (n + self.config.reg_bias * n + 1e-9), torch.zeros(0, device=dev)
        q = self.item_factors(items).double()  # (n, F)
        design = torch.cat([torch.ones(n, 1, dtype=torch.float64, device=dev), q], dim=1)  # (n, 1 + F)
        if self.config.reg > 0:
            ridge = self.config.reg * max(n, 1) * torch.eye(1 + self.factors, dtype=torch.float64, device=dev)
            sol = torch.linalg.solve(design.T @ design + ridge, design.T @ resid)
        else:
            # No ridge: fewer ratings than unknowns (the usual cold start) leaves the normal
            # equations singular; the pseudo-inverse gives the minimum-norm least-squares fit.
            sol = torch.linalg.pinv(design) @ resid
        return sol[0].float(), sol[1:].float()
