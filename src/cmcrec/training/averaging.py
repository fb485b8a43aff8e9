"""An exponential moving average of a model's weights (Polyak averaging), kept beside training.

The averaged weights are what gets validated, selected and saved; the optimiser
keeps stepping the live weights. Averaging irons out the step-to-step jitter of
the last epochs of Adam, which on the subgraph models moves validation RMSE by
about 0.01 from one epoch to the next. It is still one model (one set of
weights), not a checkpoint ensemble. Same idea as TensorFlow's
``ExponentialMovingAverage`` (whose warm-up this uses) and timm's ``ModelEmaV2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["WeightAverage", "average_decay"]


def average_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates + 1``: ``min(decay, (1 + t) / (10 + t))`` with ``t = updates``.

    The warm-up lets the first steps count more, so the average leaves the
    random initialisation behind within tens of steps, not ``1 / (1 - decay)``.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """``avg ← d · avg + (1 − d) · w`` over a module's floating-point parameters after every step.

    Buffers are not averaged: the module's own (live) buffers are used.

    Args:
        module: the module being trained (under DDP, the unwrapped one).
        decay: the long-run ``d`` in ``(0, 1)``; see :func:`average_decay` for the warm-up.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.module = module
        self.decay = decay
        self.updates = 0
        self._params = [p for p in module.parameters() if p.is_floating_point()]
        self.average = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the module's current weights in (call after ``optimizer.step()``)."""
        d = average_decay(self.decay, self.updates)
        live = [p.detach() for p in self._params]
        torch._foreach_lerp_(self.average, live, 1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Run the block with the averaged weights in the module, then put the live ones back."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self._params]
            for p, a in zip(self._params, self.average, strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self._params, live, strict=True):
                    p.copy_(w)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": list(self.average)}

    def load_state_dict(self, state: dict) -> None:
        average = state["average"]
        shapes = [tuple(p.shape) for p in self._params]
        if [tuple(a.shape) for a in average] != shapes:
            raise ValueError("weight average does not match this model's parameters")
        with torch.no_grad():
            for a, saved in zip(self.average, average, strict=True):
                a.copy_(saved)
        self.updates = int(state["updates"])
