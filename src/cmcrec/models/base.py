"""What every rating model module shares.

A model module is tensors in, tensors out: ``forward(batch) -> ModelOutput`` and
``loss(batch, output) -> (loss, parts)``. It knows nothing about ids, files,
optimisers or devices; the trainer and the recommender own those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


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

    def to_scale(self, logits: torch.Tensor) -> torch.Tensor:
        """Map unbounded head outputs into the rating range with a sigmoid."""
        return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(logits)

    def forward(self, batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch, output: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss. Default: MSE between ``prediction`` and ``batch.y``."""
        mse = torch.nn.functional.mse_loss(output.prediction, batch.y)
        return mse, {"mse": float(mse.detach())}
