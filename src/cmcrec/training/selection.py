"""Settings chosen on the validation split after training (never on the test split).

The evaluation cap (``eval_max_nodes_per_hop``) decides how much of a popular
user's or item's neighbourhood a prediction sees. Training samples at most
``max_nodes_per_hop`` neighbours; at prediction time a larger cap gives the
model more context at more cost. Which cap predicts best is an empirical
question, answered per model on the validation ratings it was selected with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["choose_eval_cap", "eval_cap_candidates"]


def eval_cap_candidates(cap: int | None) -> tuple[int | None, ...]:
    """The caps :func:`choose_eval_cap` compares: the configured one, twice it, and none (every
    neighbour). A model configured without a cap has nothing to choose."""
    return (None,) if cap is None else (cap, 2 * cap, None)


def choose_eval_cap(cap: int | None, valid_rmse: Callable[[int | None], float]) -> dict[str, Any]:
    """Score each of :func:`eval_cap_candidates` with ``valid_rmse`` and keep the lowest.

    Args:
        cap: the ``eval_max_nodes_per_hop`` training validated with.
        valid_rmse: validation RMSE of the trained model when predictions use a given cap.

    Returns:
        ``{"trained_with": cap, "chosen": best, "valid_rmse": [{"eval_max_nodes_per_hop": c,
        "valid_rmse": r}, ...]}``. Of equal scores the first (the smaller, cheaper cap) wins;
        a non-finite score is recorded as ``None`` (plain JSON) and never chosen (all
        non-finite: ``cap`` is kept).
    """
    scores = []
    for c in eval_cap_candidates(cap):
        r = float(valid_rmse(c))
        scores.append({"eval_max_nodes_per_hop": c, "valid_rmse": r if math.isfinite(r) else None})
    finite = [s for s in scores if s["valid_rmse"] is not None]
    chosen = min(finite, key=lambda s: s["valid_rmse"])["eval_max_nodes_per_hop"] if finite else cap
    return {"trained_with": cap, "chosen": chosen, "valid_rmse": scores}
