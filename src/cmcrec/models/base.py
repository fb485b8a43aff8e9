"""What every rating model module shares.

A model module is tensors in, tensors out: ``forward(batch) -> ModelOutput`` and
``loss(batch, output) -> (loss, parts)``. It knows nothing about ids, files,
optimisers or devices; the trainer and the recommender own those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cmcrec.models.layers import ranking_info_nce


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        prediction: ``(B,)`` predicted ratings on the dataset's scale.
        extras: named tensors a model's own loss needs (other heads, KL terms, ...).
    """

    prediction: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class RatingModel(nn.Module):
    """Base class of rating-model modules.

    Subclasses set ``batch_kind`` to ``"pair"`` (consumes :class:`PairBatch`) or
    ``"subgraph"`` (consumes :class:`SubgraphBatch`), implement :meth:`forward`
    and, if their loss is more than MSE on ``prediction``, :meth:`loss`.

    Args:
        rating_min: lowest rating of the scale; predictions are mapped into
            ``[rating_min, rating_max]``.
        rating_max: highest rating of the scale.
    """

    batch_kind: str = "pair"

    def __init__(self, rating_min: float, rating_max: float) -> None:
        super().__init__()
        if not rating_max > rating_min:
            raise ValueError(f"rating_max ({rating_max}) must exceed rating_min ({rating_min})")
        self.rating_min = float(rating_min)
        self.rating_max = float(rating_max)

    #: How :meth:`to_scale` maps head outputs: ``"sigmoid"`` or ``"linear"`` (set from a model's config).
    output: str = "sigmoid"

    def to_scale(self, logits: torch.Tensor) -> torch.Tensor:
        """Map unbounded head outputs onto the rating scale.

        ``"sigmoid"``: ``r_min + (r_max − r_min) · σ(logit)``, always inside the
        range. ``"linear"`` (IGMC's head): ``mid + half_range · logit``, an
        affine map that only fixes the unit, so a zero logit is the middle of
        the scale on any scale; clamped into the range outside training (a
        prediction beyond the scale is never better than its end).
        """
        if self.output == "linear":
            half = 0.5 * (self.rating_max - self.rating_min)
            out = self.rating_min + half + half * logits
            return out if self.training else out.clamp(self.rating_min, self.rating_max)
        return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(logits)

    def forward(self, batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def labelled_mse(self, prediction: torch.Tensor, batch) -> torch.Tensor:
        """MSE over the batch's rated targets (the first ``batch.num_labelled``;
        ranking negatives that follow them have no rating)."""
        return torch.nn.functional.mse_loss(prediction[: batch.num_labelled].float(), batch.y.float())

    def ranking_term(self, prediction: torch.Tensor, batch, tau: float) -> torch.Tensor | None:
        """The ranking-aware InfoNCE over ``batch.rank_index`` (``None`` when the batch has none).

        Scores are the predictions rescaled to ``[0, 1]``, so ``tau`` means the
        same on every rating scale.
        """
        rank_index = getattr(batch, "rank_index", None)
        if rank_index is None:
            return None
        score = (prediction.float() - self.rating_min) / (self.rating_max - self.rating_min)
        return ranking_info_nce(score, rank_index, tau)

    def loss(self, batch, output: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss. Default: MSE between ``prediction`` and ``batch.y``."""
        mse = self.labelled_mse(output.prediction, batch)
        return mse, {"mse": float(mse.detach())}
