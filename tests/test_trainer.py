"""The generic trainer: determinism, checkpoint/resume, validation selection, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import low_rank_split

from cmcrec.config import RunContext
from cmcrec.errors import ArtifactError, ConfigError
from cmcrec.models.registry import DataSpec, get_model
from cmcrec.recommender import Recommender
from cmcrec.training.averaging import WeightAverage, average_decay
from cmcrec.training.batching import PairBatcher
from cmcrec.training.trainer import Trainer, epoch_batches, flush_subnormals_, ordered_batches, resolve_device

CFG = {"epochs": 6, "factors": 4, "lr": 0.02, "batch_size": 32, "patience": None}


def _fit(tmp=None, resume=False, epochs=6, seed=0):
    split = low_rank_split(seed=1)
    return Recommender.fit(
        "mf",
        split.train,
        CFG | {"epochs": epochs},
        RunContext(seed=seed, progress=False),
        checkpoint_dir=tmp,
        resume=resume,
    ), split


def test_same_seed_same_model():
    a, split = _fit()
    b, _ = _fit()
    np.testing.assert_array_equal(
        a.predict_indices(split.test.user, split.test.item), b.predict_indices(split.test.user, split.test.item)
    )
    c, _ = _fit(seed=1)
    assert not np.array_equal(
        a.predict_indices(split.test.user, split.test.item), c.predict_indices(split.test.user, split.test.item)
    )


def test_resume_equals_uninterrupted(tmp_path):
    """3 epochs, stop, resume to 6 == 6 epochs straight (weights, history, best epoch)."""
    full, split = _fit()
    ckpt = tmp_path / "ckpt"
    _fit(ckpt, epochs=3)
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "state.safetensors"]
    resumed, _ = _fit(ckpt, resume=True, epochs=6)
    assert [h["epoch"] for h in resumed.training["history"]] == [1, 2, 3, 4, 5, 6]
    assert resumed.training["best_epoch"] == full.training["best_epoch"]
    np.testing.assert_allclose(
        [h["valid_rmse"] for h in resumed.training["history"]],
        [h["valid_rmse"] for h in full.training["history"]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        resumed.predict_indices(split.test.user, split.test.item),
        full.predict_indices(split.test.user, split.test.item),
        rtol=1e-6,
    )


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(ArtifactError, match="no checkpoint"):
        _fit(tmp_path / "missing", resume=True)


def test_best_epoch_is_lowest_validation_rmse():
    rec, _ = _fit(epochs=8)
    hist = rec.training["history"]
    best = min(range(len(hist)), key=lambda i: hist[i]["valid_rmse"])
    assert rec.training["best_epoch"] == best + 1


def test_early_stopping_stops():
    split = low_rank_split(seed=1)
    # A learning rate this high diverges, so validation stops improving quickly.
    rec = Recommender.fit("mf", split.train, CFG | {"epochs": 50, "patience": 2, "lr": 2.0})
    assert rec.training["stopped_early"]
    assert len(rec.training["history"]) < 50


@pytest.mark.parametrize(
    ("min_delta", "epochs_run", "best_epoch"),
    [(0.0, 7, 5), (1e-3, 4, 4), (0.2, 3, 3)],
)
def test_min_delta_counts_only_real_improvements(min_delta, epochs_run, best_epoch):
    # Scripted validation RMSEs: a real gain, then gains of 1e-4 per epoch, then nothing.
    script = iter([1.0, 0.9, 0.8999, 0.8998, 0.8997, 0.8997, 0.8997, 0.8997])
    split = low_rank_split(seed=1)
    spec = get_model("mf")
    config = spec.make_config(CFG | {"epochs": 8, "patience": 2, "min_delta": min_delta})
    trainer = Trainer(spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False))
    trainer.evaluate = lambda valid, batcher: (lambda r: (r, r * r))(next(script))
    batcher = PairBatcher(seed=0)
    result = trainer.fit(split.train, split.test, batcher, PairBatcher())
    # Patience 2. min_delta 0: every tiny gain counts (best epoch 5, stop after 7). 1e-3: the
    # last counted gain is epoch 2 (0.9 → 0.8999 is only 1e-4 better), stop after 4, yet the
    # kept epoch is the lowest RMSE so far (epoch 4). 0.2: not even epoch 2 counts; stop after 3.
    assert len(result.history) == epochs_run
    assert result.best_epoch == best_epoch


def test_min_delta_patience_survives_resume(tmp_path):
    # Straight: stops after epoch 4 (see above). Resumed from the checkpoint of epoch 2 (an epoch that
    # improved), it must stop after epoch 4 too: the checkpoint holds patience as of that epoch.
    values = [1.0, 0.9, 0.8999, 0.8998, 0.8997, 0.8997, 0.8997, 0.8997]
    split = low_rank_split(seed=1)
    spec = get_model("mf")

    def trainer(epochs, script):
        config = spec.make_config(CFG | {"epochs": epochs, "patience": 2, "min_delta": 1e-3})
        t = Trainer(
            spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False), tmp_path
        )
        t.evaluate = lambda valid, batcher: (lambda r: (r, r * r))(next(script))
        return t

    first = trainer(2, iter(values))
    first.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    resumed = trainer(8, iter(values[2:]))
    resumed.load_checkpoint(tmp_path)
    result = resumed.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    assert len(result.history) == 4 and result.stopped_early


def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path):
    values = [1.0, 0.9, 0.8999, 0.8998, 0.8997, 0.8997, 0.8997, 0.8997]
    split = low_rank_split(seed=1)
    spec = get_model("mf")
    config = spec.make_config(CFG | {"epochs": 8, "patience": 2, "min_delta": 1e-3})

    def trainer(script):
        t = Trainer(
            spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False), tmp_path
        )
        t.evaluate = lambda valid, batcher: (lambda r: (r, r * r))(next(script))
        return t

    first = trainer(iter(values)).fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    assert len(first.history) == 4 and first.stopped_early  # its last checkpoint is epoch 4's
    again = trainer(iter(values[4:]))
    again.load_checkpoint(tmp_path)
    result = again.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    assert len(result.history) == 4 and result.stopped_early and result.best_epoch == first.best_epoch


def test_patience_counts_epochs_without_improvement_and_divergence_is_an_error():
    from cmcrec.errors import TrainingDiverged

    split = low_rank_split(seed=1)
    spec = get_model("mf")
    config = spec.make_config(CFG | {"epochs": 8, "patience": 3})
    trainer = Trainer(spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False))
    trainer.evaluate = lambda valid, batcher: (float("nan"), float("nan"))
    with pytest.raises(TrainingDiverged, match="never finite in 3 epoch"):  # patience 3: three epochs, not two
        trainer.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0.05}, "lr: checkpoint 0.02, now 0.05"),
        ({"seed": 1}, "seed: checkpoint 0, now 1"),
        ({"max_train": 150}, "other training ratings"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, change, message):
    split = low_rank_split(seed=1)
    train = split.train
    Recommender.fit("mf", train, CFG | {"epochs": 2}, RunContext(progress=False), checkpoint_dir=tmp_path)
    if "max_train" in change:
        train = train.subset(np.arange(change["max_train"]))
    config = CFG | {"epochs": 4} | {k: v for k, v in change.items() if k == "lr"}
    with pytest.raises(ArtifactError, match=f"belongs to another run.*{message}"):
        Recommender.fit(
            "mf", train, config, RunContext(seed=change.get("seed", 0), progress=False), tmp_path, resume=True
        )


def test_too_few_ratings_for_a_validation_split_is_an_error():
    from cmcrec.errors import CmcrecError

    split = low_rank_split(seed=1)
    with pytest.raises(CmcrecError, match="leaves 10 to fit and 0 to validate"):
        Recommender.fit("mf", split.train.subset(np.arange(10)), CFG, RunContext(progress=False))


def test_epoch_batches_partition_and_ranks():
    whole = np.concatenate(epoch_batches(103, 10, seed=3, epoch=1))
    assert sorted(whole) == list(range(103))
    assert not np.array_equal(whole, np.concatenate(epoch_batches(103, 10, seed=3, epoch=2)))
    shares = [np.concatenate(epoch_batches(103, 10, 3, 1, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 52
    # Fewer rows than half the ranks: the permutation repeats, every rank still gets a row.
    tiny = [np.concatenate(epoch_batches(3, 128, 0, 0, rank=r, world_size=8)) for r in range(8)]
    assert [len(t) for t in tiny] == [1] * 8 and set(np.concatenate(tiny).tolist()) == {0, 1, 2}
    assert set(shares[0]) | set(shares[1]) == set(range(103))
    rows = [np.concatenate(ordered_batches(103, 7, rank=r, world_size=3)) for r in range(3)]
    assert sorted(np.concatenate(rows)) == list(range(103))


def test_validation_never_uses_test():
    """The trainer sees only the training ratings: fitting-share + validation == train."""
    rec, split = _fit()
    assert rec.training["num_train"] + rec.training["num_valid"] == len(split.train)


def test_device_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_trainer_loss_decreases():
    split = low_rank_split(seed=2)
    spec = get_model("mf")
    cfg = spec.make_config(CFG | {"epochs": 5})
    torch.manual_seed(0)
    module = spec.build(cfg, DataSpec.from_ratings(split.train))
    result = Trainer(module, cfg, RunContext(progress=False)).fit(
        split.train, split.test, PairBatcher(0), PairBatcher(None)
    )
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < losses[0]


def test_weight_average_matches_hand_computation():
    # decay 0.5; warm-up decays min(0.5, (1 + t) / (10 + t)) are 0.1, 0.1818..., then 0.25, ...
    w = torch.nn.Parameter(torch.tensor([2.0]))
    module = torch.nn.Module()
    module.w = w
    avg = WeightAverage(module, 0.5)
    expected = 2.0
    for t, value in enumerate([4.0, 0.0, 8.0, 1.0, -3.0, 5.0, 2.0, 7.0, 1.0, 1.0, 6.0]):
        with torch.no_grad():
            w.fill_(value)
        avg.update()
        d = min(0.5, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
        assert avg.average[0].item() == pytest.approx(expected, rel=1e-6)
    assert average_decay(0.5, 0) == pytest.approx(0.1) and average_decay(0.5, 100) == 0.5
    with avg.swapped():
        assert w.item() == pytest.approx(expected, rel=1e-6)
    assert w.item() == 6.0  # the live weight is back


def test_weight_average_is_validated_selected_and_kept():
    split = low_rank_split(seed=1)
    spec = get_model("mf")
    config = spec.make_config(CFG | {"epochs": 4, "ema_decay": 0.9})
    trainer = Trainer(spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False))
    seen = []
    evaluate = trainer.evaluate

    def spy(valid, batcher):
        seen.append([p.detach().clone() for p in trainer.model.parameters()])
        return evaluate(valid, batcher)

    trainer.evaluate = spy
    result = trainer.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    # Every validation saw the average, which differs from the live weights after the last step.
    assert trainer.average.updates == 4 * len(epoch_batches(len(split.train), 32, 0, 0))
    last = seen[-1]
    for p, a in zip(last, trainer.average.average, strict=True):
        torch.testing.assert_close(p, a)
    # The kept model is the average of the best epoch: re-validating it gives the recorded RMSE.
    rmse, _ = evaluate(split.test, PairBatcher())
    assert rmse == pytest.approx(result.best_valid_rmse, rel=1e-6)
    best = seen[result.best_epoch - 1]
    for p, a in zip(trainer.model.parameters(), best, strict=True):
        torch.testing.assert_close(p.detach(), a)


def test_weight_average_resume_equals_uninterrupted(tmp_path):
    cfg = CFG | {"ema_decay": 0.95}

    def fit(epochs, ckpt=None, resume=False):
        split = low_rank_split(seed=1)
        rec = Recommender.fit(
            "mf", split.train, cfg | {"epochs": epochs}, RunContext(progress=False), checkpoint_dir=ckpt, resume=resume
        )
        return rec.predict_indices(split.test.user, split.test.item), rec.training

    full, full_log = fit(5)
    fit(2, tmp_path / "ckpt")
    resumed, resumed_log = fit(5, tmp_path / "ckpt", resume=True)
    np.testing.assert_allclose(resumed, full, rtol=1e-6)
    assert resumed_log["best_epoch"] == full_log["best_epoch"]
    # Epochs 3-5 are validated with the average restored from the checkpoint, whatever the best epoch.
    np.testing.assert_allclose(
        [h["valid_rmse"] for h in resumed_log["history"]], [h["valid_rmse"] for h in full_log["history"]], rtol=1e-6
    )
    # A checkpoint of an averaged run cannot silently continue without averaging.
    with pytest.raises(ArtifactError, match="ema_decay"):
        split = low_rank_split(seed=1)
        Recommender.fit(
            "mf",
            split.train,
            CFG | {"epochs": 4},
            RunContext(progress=False),
            checkpoint_dir=tmp_path / "ckpt",
            resume=True,
        )


def test_ema_decay_out_of_range_names_the_field():
    with pytest.raises(ConfigError, match="ema_decay"):
        get_model("mf").make_config(CFG | {"ema_decay": 1.0})


def test_flush_subnormals_zeroes_exactly_the_subnormal_values():
    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float32, about 1.2e-38
    x = torch.tensor([1e-40, -1e-44, tiny, -tiny, 0.0, 1.0, -3e-30, 2.5e-38])
    y = torch.tensor([1e-310, -1e-300, 1e-40], dtype=torch.float64)  # float64's own range
    flush_subnormals_([x, y])
    assert x.tolist() == [0.0, 0.0, tiny, -tiny, 0.0, 1.0, pytest.approx(-3e-30), pytest.approx(2.5e-38)]
    assert y.tolist() == [0.0, -1e-300, 1e-40]


def test_cpu_training_flushes_weights_moments_and_average_every_few_steps(monkeypatch):
    """Why the trainer flushes: see flush_subnormals_ (subnormal floats slow x86 arithmetic many times)."""
    from cmcrec.training import trainer as trainer_module

    split = low_rank_split(seed=1)
    spec = get_model("mf")
    config = spec.make_config(CFG | {"epochs": 2, "batch_size": 20, "weight_decay": 1e-3, "ema_decay": 0.9})
    trainer = Trainer(spec.build(config, DataSpec.from_ratings(split.train)), config, RunContext(progress=False))
    calls = []
    monkeypatch.setattr(
        trainer_module, "flush_subnormals_", lambda tensors: calls.append({t.data_ptr() for t in tensors})
    )
    trainer.fit(split.train, split.test, PairBatcher(seed=0), PairBatcher())
    steps_per_epoch = len(epoch_batches(len(split.train), config.batch_size, 0, 0, 0, 1))
    # Counted per epoch (a resumed run flushes at the same steps), at steps 16 and 26 (the epoch's last) of
    # each: 4 calls; a count over the whole run would flush at 16, 26, 32, 48 and 52: 5.
    assert steps_per_epoch == 26 and trainer_module.SUBNORMAL_FLUSH_STEPS == 16
    assert len(calls) == 4
    params = list(trainer.model.parameters())
    moments = [s[k] for s in trainer.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    expected = {t.data_ptr() for t in params + moments + trainer.average.average}
    assert len(moments) == 2 * len(params) and all(c == expected for c in calls)


@pytest.mark.parametrize("find_unused", [False, True])
def test_fit_wraps_the_module_for_its_own_length_with_the_trainers_ddp_options(monkeypatch, find_unused):
    """``fit`` asks for the DDP wrapper (a no-op in one process) with the trainer's
    ``find_unused_parameters``, and the trainer keeps no wrapper afterwards."""
    from cmcrec.training import distributed as dist_utils

    calls = []
    real = dist_utils.wrap_model

    def spy(model, device, context, **kwargs):
        calls.append(kwargs)
        return real(model, device, context, **kwargs)

    monkeypatch.setattr(dist_utils, "wrap_model", spy)
    split = low_rank_split(seed=2)
    spec = get_model("mf")
    cfg = spec.make_config(CFG | {"epochs": 1})
    module = spec.build(cfg, DataSpec.from_ratings(split.train))
    trainer = Trainer(module, cfg, RunContext(progress=False), find_unused_parameters=find_unused)
    assert calls == []  # building the trainer wraps nothing
    trainer.fit(split.train, split.test, PairBatcher(0), PairBatcher(None))
    assert calls == [{"find_unused_parameters": find_unused}]
    assert not hasattr(trainer, "engine")
