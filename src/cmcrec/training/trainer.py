"""One trainer for every model.

The trainer owns the optimiser, the learning-rate schedule, the epoch loop,
validation-based selection of the best epoch, checkpoints and resume; a model
contributes only ``forward`` and ``loss``. It is dropped after training (the
:class:`~cmcrec.recommender.Recommender` keeps the module).

Selection uses a validation split carved from the training ratings, never the
test split. Under ``torchrun`` the same loop runs in every process: each rank
takes its own share of every epoch's shuffled rows, gradients are averaged by
DistributedDataParallel, validation sums are all-reduced, and rank 0 alone
writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmcrec.artifacts import atomic_directory, load_state, save_state
from cmcrec.config import RunContext, TrainConfig
from cmcrec.data.ratings import Ratings
from cmcrec.errors import ArtifactError, ConfigError, TrainingDiverged
from cmcrec.models.base import RatingModel
from cmcrec.training import distributed as dist_utils
from cmcrec.training.allocator import tune_cpu_allocator
from cmcrec.training.averaging import WeightAverage
from cmcrec.training.batching import TargetRows, identity_collate

# On CPU, every this many optimiser steps, values below float's normal range are set to 0 (flush_subnormals_).
SUBNORMAL_FLUSH_STEPS = 16


def flush_subnormals_(tensors: list[torch.Tensor]) -> None:
    """Set the subnormal values of ``tensors`` (``0 < |x| < finfo.tiny``: 1.2e-38 in float32) to 0, in place.

    Why: x86 CPUs handle arithmetic on subnormal floats in microcode, many times slower. Under
    weight decay, weights that get little or no gradient from the data (seen in the first layers of
    the rating heads and in the edge scorers, as from dead ReLU units) decay towards zero and stay
    in that range, with Adam's first moment beside them: MCCL on Flixster with ``weight_decay=1e-3``
    went from 9 to 38 s an epoch within 20 epochs, about 7,000 weights and 8,500 moment values
    subnormal at epoch 12 (counted by hand). No prediction depends on a weight that small.
    ``torch.set_flush_denormal`` does this in hardware, but for the calling thread only: the
    OpenMP threads that run most of a step keep the slow mode.
    """
    for t in tensors:
        t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0.0)


#: Config fields a resumed run may change: they decide only when training stops.
RESUMABLE_FIELDS = ("epochs", "patience", "min_delta")
#: Config fields that act once training has ended (on the kept weights): no part of what a
#: training run, its checkpoints or its saved weights are.
POST_TRAINING_FIELDS = ("select_eval_cap",)


def training_settings(config: TrainConfig | dict) -> dict:
    """``config`` (or its dict) less :data:`POST_TRAINING_FIELDS`: what the trained weights depend on."""
    fields = config if isinstance(config, dict) else asdict(config)
    return {k: v for k, v in fields.items() if k not in POST_TRAINING_FIELDS}


def comparable_saved_config(saved: dict, now: dict, config_cls: type[TrainConfig] | None) -> dict:
    """A config dict written with a checkpoint, made comparable with ``now`` (this run's
    :func:`training_settings`): post-training fields dropped, and, with ``config_cls``, each field
    added since counted as what it meant then (:meth:`~cmcrec.config.ConfigBase.fill_added_fields`)."""
    saved = training_settings(saved)
    return saved if config_cls is None else config_cls.fill_added_fields(saved, now)


def run_identity(config: TrainConfig, seed: int, train: Ratings, valid: Ratings) -> str:
    """What a checkpoint belongs to, as JSON: the config (less :data:`RESUMABLE_FIELDS` and
    :data:`POST_TRAINING_FIELDS`), the seed and digests of the fit and validation ratings."""
    fields = {k: v for k, v in training_settings(config).items() if k not in RESUMABLE_FIELDS}
    return json.dumps(
        {"config": fields, "seed": seed, "fit_ratings": train.digest(), "valid_ratings": valid.digest()},
        sort_keys=True,
        default=str,
    )


def _comparable(saved: str, now: str, config_cls: type[TrainConfig] | None) -> tuple[dict, dict]:
    a, b = json.loads(saved), json.loads(now)
    b["config"] = training_settings(b["config"])
    a["config"] = comparable_saved_config(a["config"], b["config"], config_cls)
    return a, b


def same_run(saved: str, now: str, config_cls: type[TrainConfig] | None = None) -> bool:
    """Whether two :func:`run_identity` strings name the same run. With ``config_cls``, a config
    field added after the checkpoint was written counts as what it meant then
    (:meth:`~cmcrec.config.ConfigBase.fill_added_fields`), so adding a field does not orphan the
    checkpoints of runs already under way."""
    a, b = _comparable(saved, now, config_cls)
    return a == b


def identity_difference(saved: str, now: str, config_cls: type[TrainConfig] | None = None) -> str:
    """The first few differences between two :func:`run_identity` strings, in words."""
    a, b = _comparable(saved, now, config_cls)
    out = [
        f"{k}: checkpoint {a['config'].get(k)!r}, now {b['config'].get(k)!r}"
        for k in sorted(set(a["config"]) | set(b["config"]))
        if a["config"].get(k) != b["config"].get(k)
    ]
    if a["seed"] != b["seed"]:
        out.append(f"seed: checkpoint {a['seed']}, now {b['seed']}")
    for key, what in (("fit_ratings", "training"), ("valid_ratings", "validation")):
        if a[key] != b[key]:
            out.append(f"other {what} ratings (dataset, split, seed, --max-train-ratings or valid_fraction)")
    return "; ".join(out[:4]) + ("; ..." if len(out) > 4 else "")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """This rank's shuffled batches of row indices for one epoch.

    Every rank draws the same permutation (seeded by ``(seed, epoch)``), pads it
    to a multiple of ``world_size`` by wrapping around (as
    ``DistributedSampler`` does) and takes every ``world_size``-th row, so the
    ranks' shares are disjoint up to the padding and equally long.
    """
    g = np.random.default_rng([seed, epoch, 7919])
    perm = g.permutation(n)
    if world_size > 1:
        total = math.ceil(n / world_size) * world_size
        # np.resize repeats the permutation as often as needed (more than once when n < world_size / 2).
        perm = np.resize(perm, total)[rank::world_size]
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


def ordered_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Unshuffled batches for evaluation; each rank a disjoint contiguous share, no padding."""
    bounds = np.linspace(0, n, world_size + 1).astype(np.int64)
    rows = np.arange(bounds[rank], bounds[rank + 1])
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """The trainer's Adam, with the fused kernel on CPU and CUDA: one pass per parameter instead
    of a chain of ops (on MCCL's 69 parameter tensors a step takes 0.4 ms on 2 CPU cores
    instead of 1.7; timed by hand)."""
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def batch_loader(dataset: TargetRows, batches: list[np.ndarray], num_workers: int, pin: bool = False) -> DataLoader:
    """The batches of ``batches`` (lists of rows), built by ``num_workers`` DataLoader worker
    processes, or in the calling thread with ``num_workers=0``.

    (A thread building batches ahead was tried for ``num_workers=0`` and was slower on two
    CPU cores: IGMC 866-880 against 954-1,000 subgraphs/s in alternating runs made by hand.)
    """
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        collate_fn=identity_collate,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=4 if num_workers > 0 else None,
    )


@torch.no_grad()
def predict_rows(
    model: RatingModel,
    batcher: Callable,
    users: np.ndarray,
    items: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> np.ndarray:
    """Predictions ``(n,)`` for target pairs, in eval mode, in order."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = np.empty(len(users), dtype=np.float32)
    if len(users) == 0:
        return out
    ds = TargetRows(users, items, None, batcher)
    batches = ordered_batches(len(users), batch_size)
    pos = 0
    for batch in batch_loader(ds, batches, num_workers, device.type == "cuda"):
        pred = model(batch.to(device, non_blocking=True)).prediction.float().cpu().numpy()
        out[pos : pos + len(pred)] = pred
        pos += len(pred)
    model.train(was_training)
    return out


def validation_error(
    model: RatingModel,
    batcher: Callable,
    valid: Ratings,
    batch_size: int,
    device: torch.device | str,
    context: RunContext,
) -> tuple[float, float]:
    """Validation ``(rmse, mse)``: each rank predicts its share of ``valid``, and the squared errors
    and counts are summed over ranks before dividing (never a mean of means), so every rank gets
    the same figures."""
    batches = ordered_batches(len(valid), batch_size, context.rank, context.world_size)
    rows = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    pred = predict_rows(
        model,
        batcher,
        valid.user[rows],
        valid.item[rows],
        batch_size=batch_size,
        device=device,
        num_workers=context.num_workers,
    )
    sq = float(((pred.astype(np.float64) - valid.rating[rows]) ** 2).sum())
    sq, count = dist_utils.all_reduce_sums([sq, float(len(rows))], torch.device(device), context)
    mse = sq / max(count, 1.0)
    return math.sqrt(mse), mse


@dataclass
class EpochRecord:
    """One epoch of training history (written to the artifact for training curves)."""

    epoch: int
    train_loss: float
    valid_rmse: float
    valid_loss: float
    lr: float
    seconds: float
    subgraphs_per_s: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    history: list[EpochRecord]
    best_epoch: int
    best_valid_rmse: float
    stopped_early: bool
    seconds: float

    def to_dict(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_valid_rmse": self.best_valid_rmse,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "history": [asdict(h) for h in self.history],
        }


class Trainer:
    """Fits one model module.

    Args:
        model: the module to train (moved to the run's device).
        config: optimisation settings (:class:`TrainConfig` or a subclass).
        context: device, workers, seed, rank.
        checkpoint_dir: where to write the per-epoch checkpoint (rank 0 only);
            ``None`` keeps everything in memory.
        find_unused_parameters: under torchrun, let DDP skip parameters that get
            no gradient in a step (see :func:`cmcrec.training.distributed.wrap_model`);
            every shipped model leaves it off.
    """

    def __init__(
        self,
        model: RatingModel,
        config: TrainConfig,
        context: RunContext | None = None,
        checkpoint_dir: str | Path | None = None,
        *,
        find_unused_parameters: bool = False,
    ) -> None:
        self.context = context or RunContext()
        self.config = config
        self.find_unused_parameters = find_unused_parameters
        self.device = resolve_device(self.context.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.model = model.to(self.device)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        dist_utils.broadcast_module_(self.model, self.device, self.context)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.lr_decay_step, gamma=config.lr_decay_factor
        )
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.history: list[EpochRecord] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1
        self.best_valid_rmse = math.inf
        # Early stopping's reference: the last epoch that improved by more than min_delta (0: none yet).
        self.patience_epoch = 0
        self.patience_rmse = math.inf
        self.start_epoch = 0
        self._identity: str | None = None  # what run this is (config, seed, data); saved in checkpoints
        self._restored_identity: str | None = None
        self._checkpoint_source: Path | None = None

    # -- checkpoints -----------------------------------------------------------------------------------

    def _checkpoint_state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_valid_rmse": self.best_valid_rmse,
            "patience_epoch": self.patience_epoch,
            "patience_rmse": self.patience_rmse,
            "history": [asdict(h) for h in self.history],
            "torch_rng": torch.get_rng_state(),
            "average": None if self.average is None else self.average.state_dict(),
            "identity": self._identity,
        }

    def save_checkpoint(self, epoch: int) -> None:
        if self.checkpoint_dir is None:
            return
        ctx = self.context
        # Under DDP every rank joins the gather (each keeps its own dropout stream); rank 0 writes.
        rng_ranks = (
            dist_utils.all_gather_tensors(torch.get_rng_state(), self.device, ctx) if ctx.world_size > 1 else None
        )
        if ctx.is_main:
            state = self._checkpoint_state(epoch)
            if rng_ranks is not None:
                state["torch_rng_ranks"] = rng_ranks
            with atomic_directory(self.checkpoint_dir) as tmp:
                save_state(tmp, "state", state)
        if ctx.world_size > 1:
            # No rank runs ahead of a checkpoint that is still being written.
            dist_utils.barrier(self.device)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore model, optimiser, schedule, history and RNG to continue after a saved epoch."""
        state = load_state(directory, "state")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ArtifactError(f"{directory}: checkpoint does not match this model ({e})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if (state.get("average") is None) != (self.average is None):
            raise ArtifactError(
                f"{directory}: checkpoint was written with a different ema_decay setting (on/off) than this run"
            )
        if self.average is not None:
            try:
                self.average.load_state_dict(state["average"])
            except ValueError as e:
                raise ArtifactError(f"{directory}: {e}") from None
        self.best_state = state["best_state"]
        self.best_epoch = state["best_epoch"]
        self.best_valid_rmse = state["best_valid_rmse"]
        self.patience_epoch = state.get("patience_epoch", self.best_epoch)
        self.patience_rmse = state.get("patience_rmse", self.best_valid_rmse)
        self.history = [EpochRecord(**h) for h in state["history"]]
        self.start_epoch = state["epoch"] + 1
        self._restored_identity = state.get("identity")  # None: written before identities were kept
        self._checkpoint_source = Path(directory)
        ctx = self.context
        rng_ranks = state.get("torch_rng_ranks")
        if ctx.world_size == 1:
            torch.set_rng_state(state["torch_rng"])
        elif rng_ranks is not None and len(rng_ranks) == ctx.world_size:
            torch.set_rng_state(rng_ranks[ctx.rank])
        elif ctx.is_main:
            torch.set_rng_state(state["torch_rng"])
        else:
            # Written by a different number of processes: the other ranks start fresh, distinct streams.
            torch.manual_seed(dist_utils.rank_seed(ctx.seed, self.start_epoch, ctx.rank))

    # -- the loop --------------------------------------------------------------------------------------

    def _progress(self) -> bool:
        if not self.context.is_main:
            return False
        if self.context.progress is None:
            return sys.stderr.isatty()
        return self.context.progress

    def evaluate(self, valid: Ratings, batcher: Callable) -> tuple[float, float]:
        """Validation ``(rmse, mse)`` of the model as it stands (:func:`validation_error`)."""
        return validation_error(self.model, batcher, valid, self.config.batch_size * 2, self.device, self.context)

    def _float_state(self) -> list[torch.Tensor]:
        """Every float tensor that training updates: weights, optimiser moments, averaged weights."""
        tensors = [p.data for p in self.model.parameters() if p.is_floating_point()]
        for state in self.optimizer.state.values():
            tensors += [v for k, v in state.items() if k != "step" and torch.is_tensor(v) and v.is_floating_point()]
        if self.average is not None:
            tensors += self.average.average
        return tensors

    def fit(
        self,
        train: Ratings,
        valid: Ratings,
        train_batcher: Callable,
        valid_batcher: Callable,
        log: Callable[[EpochRecord], None] | None = None,
    ) -> TrainResult:
        """Train, selecting the epoch with the lowest validation RMSE; the model ends with its weights."""
        ctx, cfg = self.context, self.config
        self._identity = run_identity(cfg, ctx.seed, train, valid)
        if self._restored_identity is not None and not same_run(self._restored_identity, self._identity, type(cfg)):
            raise ArtifactError(
                f"{self._checkpoint_source}: the checkpoint belongs to another run "
                f"({identity_difference(self._restored_identity, self._identity, type(cfg))}); "
                "resume with the settings it was written with, or start afresh"
            )
        if self.start_epoch == 0:
            torch.manual_seed(ctx.seed * 1000 + ctx.rank)
        ds = TargetRows(train.user, train.item, train.rating, train_batcher)
        t_start = time.perf_counter()
        restored_seconds = sum(h.seconds for h in self.history)
        stopped_early = False
        amp = ctx.bf16 and self.device.type == "cuda"
        flush = self.device.type == "cpu"  # GPUs compute on subnormals at full speed

        # DDP-wrapped for this call only: a wrapper kept on the trainer outlived the process group in a
        # trainer built just to evaluate, and its reducer, freed at interpreter exit, aborted gloo now and
        # then ("terminate called without an active exception"). Unreachable once fit returns.
        engine = dist_utils.wrap_model(self.model, self.device, ctx, find_unused_parameters=self.find_unused_parameters)

        def patience_spent(epochs_done: int) -> bool:
            return cfg.patience is not None and epochs_done - self.patience_epoch >= cfg.patience

        for epoch in range(self.start_epoch, cfg.epochs):
            if epoch > 0 and patience_spent(epoch):
                stopped_early = True  # a resumed run that had already stopped early stays stopped
                break
            if hasattr(train_batcher, "set_epoch"):
                train_batcher.set_epoch(epoch)
            batches = epoch_batches(len(train), cfg.batch_size, ctx.seed, epoch, ctx.rank, ctx.world_size)
            self.model.train()
            t0 = time.perf_counter()
            total, seen, cut = 0.0, 0, 0
            parts_sum: dict[str, float] = {}
            bar = tqdm(
                batch_loader(ds, batches, ctx.num_workers, self.device.type == "cuda"),
                total=len(batches),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not self._progress(),
                leave=False,
                dynamic_ncols=True,
            )
            for step, batch in enumerate(bar, 1):
                batch = batch.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                    output = engine(batch)
                    loss, parts = self.model.loss(batch, output)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if self.average is not None:
                    self.average.update()
                # Counted within the epoch, so a run resumed at an epoch boundary flushes at the same steps;
                # the last step flushes too, so epochs shorter than SUBNORMAL_FLUSH_STEPS are covered.
                if flush and (step % SUBNORMAL_FLUSH_STEPS == 0 or step == len(batches)):
                    flush_subnormals_(self._float_state())
                b = batch.num_labelled  # rated targets weight the loss; ranking negatives only add subgraphs
                total += float(loss.detach()) * b
                seen += b
                cut += batch.num_targets
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * b
                bar.set_postfix(loss=f"{total / seen:.4f}")
            train_seconds = time.perf_counter() - t0
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            total, seen, cut = dist_utils.all_reduce_sums([total, float(seen), float(cut)], self.device, ctx)
            # Validated, selected and kept: the averaged weights when averaging, else the live ones.
            with contextlib.nullcontext() if self.average is None else self.average.swapped():
                valid_rmse, valid_mse = self.evaluate(valid, valid_batcher)
                if valid_rmse < self.best_valid_rmse:
                    self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            record = EpochRecord(
                epoch=epoch + 1,
                train_loss=total / max(seen, 1),
                valid_rmse=valid_rmse,
                valid_loss=valid_mse,
                lr=lr,
                seconds=time.perf_counter() - t0,
                subgraphs_per_s=cut / max(train_seconds, 1e-9),
                parts={k: v / max(seen, 1) for k, v in parts_sum.items()},
            )
            self.history.append(record)
            if valid_rmse < self.best_valid_rmse:
                self.best_valid_rmse = valid_rmse
                self.best_epoch = epoch + 1
            # Before the checkpoint, so a resumed run counts patience from the same epoch.
            if valid_rmse < self.patience_rmse - cfg.min_delta:
                self.patience_rmse = valid_rmse
                self.patience_epoch = epoch + 1
            if log is not None and ctx.is_main:
                log(record)
            self.save_checkpoint(epoch)
            if patience_spent(epoch + 1):
                stopped_early = True
                break
        if self.best_state is None:
            raise TrainingDiverged(
                f"validation RMSE was never finite in {len(self.history)} epoch(s) (last: "
                f"{self.history[-1].valid_rmse if self.history else 'none'}): training diverged; "
                "try a lower lr or grad_clip"
            )
        self.model.load_state_dict(self.best_state)
        return TrainResult(
            history=self.history,
            best_epoch=self.best_epoch,
            best_valid_rmse=self.best_valid_rmse,
            stopped_early=stopped_early,
            # A resumed run counts the epochs it restored too: the time the whole training took.
            seconds=time.perf_counter() - t_start + restored_seconds,
        )
