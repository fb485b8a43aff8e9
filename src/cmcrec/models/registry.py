"""Model registry: names → config class, module class and preset overrides.

The trainer, recommender, CLI and benchmarks look models up here; nothing
branches on a model's name. Ablations are presets: the same module class with
different config defaults (``mccl-v1`` is MCCL with view 2 and InfoNCE off).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmcrec.config import TrainConfig
from cmcrec.data.ratings import Ratings
from cmcrec.errors import ConfigError
from cmcrec.models.base import RatingModel


@dataclass(frozen=True)
class DataSpec:
    """What a module needs to know about the data it is built for.

    Attributes:
        num_users: users in the vocabulary (rows of id-based tables).
        num_items: items in the vocabulary.
        num_relations: edge types (rating levels or buckets).
        rating_min: lowest rating of the scale.
        rating_max: highest rating.
        global_mean: mean training rating.
    """

    num_users: int
    num_items: int
    num_relations: int
    rating_min: float
    rating_max: float
    global_mean: float

    @classmethod
    def from_ratings(cls, train: Ratings) -> DataSpec:
        return cls(
            num_users=train.num_users,
            num_items=train.num_items,
            num_relations=train.scale.num_relations,
            rating_min=train.scale.minimum,
            rating_max=train.scale.maximum,
            global_mean=float(np.mean(train.rating)) if len(train) else float(np.mean(train.scale.levels)),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: registry key (CLI ``--model``).
        description: one line for ``--help`` and reports.
        config_path: ``"module:Class"`` of its config dataclass.
        module_path: ``"module:Class"`` of its ``nn.Module``.
        defaults: config overrides that define this preset.
    """

    name: str
    description: str
    config_path: str
    module_path: str
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def config_cls(self) -> type[TrainConfig]:
        return _load(self.config_path)

    @property
    def module_cls(self) -> type[RatingModel]:
        return _load(self.module_path)

    def make_config(self, overrides: dict[str, Any] | None = None, source: str = "config") -> TrainConfig:
        """The preset's config with ``overrides`` applied (validated, unknown keys rejected)."""
        return self.config_cls.from_dict({**self.defaults, **(overrides or {})}, source=source)

    def build(self, config: TrainConfig, data: DataSpec) -> RatingModel:
        """Instantiate the module for this data."""
        return self.module_cls.build(config, data)


_MODELS = {
    s.name: s
    for s in [
        ModelSpec(
            "mf",
            "biased matrix factorisation (SVD-style), L2, early stopping",
            "cmcrec.models.mf:MFConfig",
            "cmcrec.models.mf:BiasedMF",
        ),
        ModelSpec(
            "bias", "global mean + user and item biases", "cmcrec.models.mf:BiasConfig", "cmcrec.models.mf:BiasedMF"
        ),
        ModelSpec(
            "igmc",
            "IGMC: one R-GCN view over enclosing subgraphs (Zhang & Chen 2020)",
            "cmcrec.models.configs:IGMCConfig",
            "cmcrec.models.igmc:IGMC",
        ),
        ModelSpec(
            "mccl",
            "MCCL: denoised + variational views with InfoNCE (Nemati & Haghir Chehreghani 2025)",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
        ),
        ModelSpec(
            "mccl-v1",
            "MCCL ablation: view 1 (denoised) only",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
            {"use_view2": False, "use_infonce": False},
        ),
        ModelSpec(
            "mccl-v2",
            "MCCL ablation: view 2 (variational) only",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
            {"use_view1": False, "use_infonce": False},
        ),
        ModelSpec(
            "mccl-nocl",
            "MCCL ablation: both views, no InfoNCE",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
            {"use_infonce": False},
        ),
        ModelSpec(
            "mccl-lin",
            "MCCL with linear edge scorers in view 1 (faster; scorer_hidden=0)",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
            {"scorer_hidden": 0},
        ),
        ModelSpec(
            "mccl-rank",
            "MCCL + ranking-aware InfoNCE (highly rated items vs sampled unrated ones)",
            "cmcrec.models.configs:MCCLConfig",
            "cmcrec.models.mccl:MCCL",
            {"rank_weight": 1.0},
        ),
    ]
}


def model_names() -> list[str]:
    return list(_MODELS)


def get_model(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}") from None
