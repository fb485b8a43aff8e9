"""Typed configuration: hyper-parameters apart from run context.

Every model config is a dataclass deriving from :class:`TrainConfig` (the fields
the one generic trainer reads). Configs validate on construction, round-trip
through JSON, and reject unknown keys by name. :class:`RunContext` holds what is
*not* a hyper-parameter (device, workers, seed, output directory, rank), so an
artifact's config says how a model was trained, not where.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cmcrec.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """JSON round trip and field-named validation errors for config dataclasses.

    ``SAVED_BEFORE`` maps fields added after artifact format 1 whose default
    changed behaviour to the value that reproduces what older saved models did;
    :meth:`from_saved` fills them in when a saved config lacks them.
    """

    SAVED_BEFORE: typing.ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        """Build from a dict; unknown keys and wrong types raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected an object of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints[k], f"{source}: field {k!r}") for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_saved(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        """:meth:`from_dict` for a config read back from a saved model: missing fields that
        changed behaviour since take the value older models were trained with (``SAVED_BEFORE``)."""
        if isinstance(data, dict):
            data = {**cls.SAVED_BEFORE, **data}
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        return cls.from_dict(data, source=str(path))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def fill_added_fields(cls, saved: dict[str, Any], fields: typing.Iterable[str]) -> dict[str, Any]:
        """``saved`` (a config dict written earlier) with each of ``fields`` it lacks set to what it
        meant then: its ``SAVED_BEFORE`` value, else its default. A checkpoint written before a
        field existed then compares equal to a run that sets the field to that value, and only to
        such a run (JSON-compatible values only)."""
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING
        }
        out = dict(saved)
        for name in fields:
            if name not in out and name in defaults:
                out[name] = cls.SAVED_BEFORE.get(name, defaults[name])
        return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a JSON value against a simple type hint (int, float, bool, str, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {hint}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _check(cond: bool, field: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{field} must be {rule}, got {value!r}")


@dataclass
class TrainConfig(ConfigBase):
    """Optimisation settings the generic trainer reads; every model config extends it.

    Attributes:
        lr: Adam learning rate.
        lr_decay_factor: multiply the learning rate by this every ``lr_decay_step`` epochs.
        lr_decay_step: epochs between learning-rate decays.
        batch_size: target ratings per optimisation step.
        epochs: maximum number of epochs.
        weight_decay: Adam weight decay (L2 on all parameters).
        grad_clip: clip the global gradient norm to this value; ``None`` disables.
        patience: stop after this many epochs without a better validation RMSE;
            ``None`` trains all ``epochs`` (the best epoch is still the one kept).
        min_delta: for ``patience`` only, an epoch counts as better when it lowers
            the validation RMSE by more than this (the best epoch kept is still
            the lowest RMSE, by any margin). 0.
        valid_fraction: share of training ratings carved off for validation
            (epoch selection and early stopping). Never the test split.
        ema_decay: keep an exponential moving average of the weights with this
            decay per step (:class:`~cmcrec.training.averaging.WeightAverage`);
            validation, epoch selection and the saved model then use the
            averaged weights. 0 disables (the default).
    """

    lr: float = 1e-3
    lr_decay_factor: float = 0.9
    lr_decay_step: int = 10
    batch_size: int = 128
    epochs: int = 60
    weight_decay: float = 0.0
    grad_clip: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    valid_fraction: float = 0.05
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 < self.lr_decay_factor <= 1, "lr_decay_factor", self.lr_decay_factor, "in (0, 1]")
        _check(self.lr_decay_step >= 1, "lr_decay_step", self.lr_decay_step, ">= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "> 0 or null")
        _check(self.patience is None or self.patience >= 1, "patience", self.patience, ">= 1 or null")
        _check(self.min_delta >= 0, "min_delta", self.min_delta, ">= 0")
        _check(0 < self.valid_fraction < 1, "valid_fraction", self.valid_fraction, "in (0, 1)")
        _check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "in [0, 1) (0: off)")


@dataclass
class RunContext:
    """Where and how a run executes — never part of a model's hyper-parameters.

    Attributes:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        num_workers: DataLoader worker processes for batch building (subgraph extraction).
        seed: the one seed every generator of the run derives from.
        bf16: bfloat16 autocast on CUDA.
        progress: show progress bars (``None``: only when stderr is a terminal).
        rank: this process's rank under ``torchrun`` (0 when not distributed).
        world_size: number of processes.
    """

    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    bf16: bool = False
    progress: bool | None = None
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, "--num-workers", self.num_workers, ">= 0")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0
