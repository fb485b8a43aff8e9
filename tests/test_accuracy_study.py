"""The accuracy table's aggregation and the shared fit-or-reuse helper."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from synthetic import low_rank_split

from cmcrec.benchmarks.accuracy import aggregate, format_table, model_config
from cmcrec.benchmarks.common import fit_or_load
from cmcrec.config import RunContext
from cmcrec.models.registry import get_model
from cmcrec.training.trainer import Trainer


def _run(dataset, model, seed, rmse):
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "rmse": rmse,
        "mae": rmse / 2,
        "preset": "cpu",
        "epochs": 8,
        "best_epoch": 3,
        "train_seconds": 10.0,
        "max_nodes_per_hop": 40,
    }


def test_aggregate_mean_and_sample_std():
    runs = [_run("ml-100k", "mccl", s, v) for s, v in [(0, 0.90), (1, 0.92), (2, 0.94)]]
    runs.append(_run("ml-100k", "mf", 0, 0.925))
    for r in runs:
        r["command"] = "cmd a"
    runs[2]["command"] = "cmd b"  # seed 2 run later, by another command
    rows = {r["model"]: r for r in aggregate(runs)}
    assert rows["mccl"]["command"] == "cmd a ; cmd b" and rows["mf"]["command"] == "cmd a"
    # mean 0.92; sample std sqrt(((-0.02)^2 + 0 + 0.02^2) / 2) = 0.02
    assert rows["mccl"]["rmse_mean"] == pytest.approx(0.92)
    assert rows["mccl"]["rmse_std"] == pytest.approx(0.02)
    assert rows["mccl"]["seeds"] == [0, 1, 2]
    assert rows["mf"]["rmse_std"] == 0.0  # one seed: no spread to report
    assert "ml-100k" in format_table(list(rows.values()))


def test_table_names_a_preset_only_where_it_applied():
    """Presets budget the subgraph models; MF keeps its defaults, so its row shows no preset."""
    mccl = _run("ml-100k", "mccl", 0, 0.93)
    mf = _run("ml-100k", "mf", 0, 0.95) | {"max_nodes_per_hop": None}
    for r in (mccl, mf):
        r["command"] = "cmd"
    table = format_table(aggregate([mccl, mf])).splitlines()
    assert table[1].split()[:3] == ["ml-100k", "mccl", "cpu"]
    assert table[2].split()[:3] == ["ml-100k", "mf", "–"]


def test_aggregate_keeps_epoch_budgets_apart():
    runs = [_run("flixster", "mccl", s, 0.88) for s in (0, 1)]
    longer = [_run("flixster", "mccl", s, 0.87) for s in (0, 1)]
    for r in runs + longer:
        r["command"] = "cmd"
    for r in longer:
        r["epochs"] = 16  # the same model and preset, run again with --epochs 16
    rows = sorted(aggregate(runs + longer), key=lambda r: r["epochs"])
    assert [(r["epochs"], r["seeds"], r["rmse_mean"]) for r in rows] == [
        (8, [0, 1], pytest.approx(0.88)),
        (16, [0, 1], pytest.approx(0.87)),
    ]


def test_preset_applies_to_subgraph_models_only():
    assert model_config("igmc", "cpu", None).max_nodes_per_hop == 40
    assert model_config("mf", "cpu", None) == model_config("mf", None, None)
    assert model_config("mccl", "cpu", 2).epochs == 2


def test_fit_or_load_reuses_only_matching_models(tmp_path):
    split = low_rank_split(seed=6)
    config = model_config("mf", None, None, {"epochs": 2})
    ctx = RunContext(seed=0, progress=False)
    first = fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    again = fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    assert again.training["history"] == first.training["history"]
    # A different config is retrained, not silently reused.
    other = fit_or_load("mf", split.train, model_config("mf", None, None, {"epochs": 3}), ctx, tmp_path, "m")
    assert len(other.training["history"]) == 3


def test_fit_or_load_retrains_when_only_who_rated_what_changed(tmp_path, monkeypatch):
    """Same ratings in the same order, but given by other users: another training set, so a refit."""
    from cmcrec.recommender import Recommender

    split = low_rank_split(seed=6)
    config = model_config("mf", None, None, {"epochs": 2})
    ctx = RunContext(seed=0, progress=False)
    fits = []
    fit = Recommender.fit
    monkeypatch.setattr(Recommender, "fit", lambda *a, **k: fits.append(1) or fit(*a, **k))
    fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    assert len(fits) == 1  # the saved model (read back from disk) was reused
    relabel = np.roll(np.arange(len(split.train.users)), 1)  # user u's ratings now belong to u + 1
    moved = dataclasses.replace(split.train, user=relabel[split.train.user])
    fit_or_load("mf", moved, config, ctx, tmp_path, "m")
    assert len(fits) == 2


class _Killed(Exception):
    """Stands in for a session that ends mid-training."""


def _kill_after_epoch(monkeypatch, last: int):
    """Make training stop (as if killed) right after epoch ``last`` (1-based) is checkpointed."""
    save = Trainer.save_checkpoint

    def save_then_die(self, epoch):
        save(self, epoch)
        if epoch + 1 == last:
            raise _Killed

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)


def test_fit_or_load_resumes_a_killed_run_where_it_stopped(tmp_path, monkeypatch):
    split = low_rank_split(seed=6)
    config = model_config("mf", None, None, {"epochs": 5})
    ctx = RunContext(seed=0, progress=False)
    straight = fit_or_load("mf", split.train, config, ctx, None, "m")

    with monkeypatch.context() as m:
        _kill_after_epoch(m, 3)
        with pytest.raises(_Killed):
            fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    assert (tmp_path / "m.checkpoint" / "state.json").is_file()
    assert not (tmp_path / "m" / "manifest.json").exists()

    restored = []
    load = Trainer.load_checkpoint
    monkeypatch.setattr(Trainer, "load_checkpoint", lambda self, d: restored.append(d) or load(self, d))
    resumed = fit_or_load("mf", split.train, config, ctx, tmp_path, "m")
    assert restored == [tmp_path / "m.checkpoint"]
    assert [h["epoch"] for h in resumed.training["history"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [h["valid_rmse"] for h in resumed.training["history"]],
        [h["valid_rmse"] for h in straight.training["history"]],
        rtol=1e-6,
    )
    # The whole training's time, the restored epochs included.
    assert resumed.training["seconds"] >= sum(h["seconds"] for h in resumed.training["history"][:3])
    # Done: the model is saved and its checkpoint cleared.
    assert (tmp_path / "m" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_fit_or_load_never_resumes_another_configs_checkpoint(tmp_path, monkeypatch):
    split = low_rank_split(seed=6)
    ctx = RunContext(seed=0, progress=False)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            fit_or_load(
                "mf", split.train, model_config("mf", None, None, {"epochs": 4, "lr": 0.05}), ctx, tmp_path, "m"
            )
    restored = []
    monkeypatch.setattr(Trainer, "load_checkpoint", lambda self, d: restored.append(d))
    other = model_config("mf", None, None, {"epochs": 4, "lr": 0.02})
    rec = fit_or_load("mf", split.train, other, ctx, tmp_path, "m")
    assert restored == []
    assert [h["epoch"] for h in rec.training["history"]] == [1, 2, 3, 4]
    assert rec.config.lr == 0.02
    # Nor one written for other training data, under the same config.
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            fit_or_load("mf", split.train, model_config("mf", None, None, {"epochs": 3}), ctx, tmp_path, "n")
    fewer = split.train.subset(np.arange(len(split.train) - 1))
    fit_or_load("mf", fewer, model_config("mf", None, None, {"epochs": 3}), ctx, tmp_path, "n")
    assert restored == []


def test_epochs_override_budgets_subgraph_models_only():
    assert model_config("igmc", "cpu", 3).epochs == 3
    assert model_config("mccl", None, 5).epochs == 5
    assert model_config("mf", "cpu", 3).epochs == get_model("mf").make_config().epochs
    assert model_config("bias", None, 3).epochs == get_model("bias").make_config().epochs


def test_rerun_reaggregates_a_file_with_stale_rows(tmp_path):
    from cmcrec.benchmarks.accuracy import run_accuracy

    runs = [_run("ml-100k", "mccl", s, v) for s, v in [(0, 0.90), (1, 0.92)]]
    for r in runs:
        r["command"] = "cmd a"
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps({"rows": [{"model": "stale"}], "runs": runs}))
    payload = run_accuracy([], ["mccl"], [0, 1], out, log=lambda _: None)
    assert [r["model"] for r in payload["rows"]] == ["mccl"]
    assert json.loads(out.read_text())["rows"] == payload["rows"]


def test_runs_with_overrides_are_their_own_labelled_row():
    runs = [_run("ml-100k", "mccl", s, v) for s, v in [(0, 0.90), (1, 0.92)]]
    runs += [_run("ml-100k", "mccl", s, v) | {"overrides": {"ema_decay": 0.999}} for s, v in [(0, 0.80), (1, 0.84)]]
    for r in runs:
        r["command"] = "cmd"
    rows = {r["model"]: r for r in aggregate(runs)}
    assert set(rows) == {"mccl", "mccl (ema_decay=0.999)"}
    assert rows["mccl"]["rmse_mean"] == pytest.approx(0.91)
    assert rows["mccl (ema_decay=0.999)"]["rmse_mean"] == pytest.approx(0.82)
    # ... and the resume key tells them apart, so a rerun with --set does not skip the plain runs' seeds.
    from cmcrec.benchmarks.accuracy import _key

    assert _key(runs[0]) != _key(runs[2]) and _key(runs[0]) == _key(runs[0] | {"overrides": {}})


def test_overrides_apply_after_the_preset():
    assert model_config("mccl", "cpu", None, {"ema_decay": 0.99, "lr": 5e-4}).ema_decay == 0.99
    assert model_config("mccl", "cpu", None, {"lr": 5e-4}).lr == 5e-4  # the preset's 2e-3 is overridden


@pytest.mark.parametrize("command", ["accuracy", "blog"])
def test_unknown_override_key_is_a_clear_error(capsys, command, tmp_path):
    from cmcrec.cli import main

    code = main(
        ["benchmark", command, "--models", "mf,igmc", "--set", "ema_dcay=0.9", "--out", str(tmp_path / "o.json")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--set" in err and "ema_dcay" in err
    assert not (tmp_path / "o.json").exists()


def test_runs_differing_in_preset_or_epochs_are_different_runs_with_their_own_artifacts():
    from cmcrec.benchmarks.accuracy import _key
    from cmcrec.benchmarks.common import model_key

    run = _run("yahoo_music", "mccl", 0, 19.0) | {"preset": "cpu", "epochs": 8}
    assert _key(run) != _key(run | {"epochs": 12}) and _key(run) != _key(run | {"preset": "paper"})
    names = {
        model_key("yahoo_music/monti", "mccl", {}, 0),
        model_key("yahoo_music/monti", "mccl", {}, 0, "cpu"),
        model_key("yahoo_music/monti", "mccl", {}, 0, "paper"),
        model_key("yahoo_music/monti", "mccl", {}, 0, "paper", 12),
        model_key("yahoo_music/monti", "mccl", {"ema_decay": 0.999}, 0, "paper", 12),
    }
    assert len(names) == 5
    assert model_key("yahoo_music/monti", "mccl", {"ema_decay": 0.999}, 0, "paper", 12) == (
        "yahoo_music-monti-mccl-paper-e12-ema_decay0.999-s0"
    )


def test_merge_accuracy_gathers_runs_and_records_the_merge(tmp_path, capsys, monkeypatch):
    import sys

    from cmcrec.cli import main

    def write(path, runs):
        path.write_text(json.dumps({"rows": aggregate(runs), "runs": runs}))

    table, a, b = tmp_path / "accuracy.json", tmp_path / "a.json", tmp_path / "b.json"
    write(table, [_run("ml-100k", "mccl", 0, 0.90) | {"command": "cmcrec benchmark accuracy --seeds 0"}])
    write(a, [_run("ml-100k", "mccl", 1, 0.92) | {"command": "cmcrec benchmark accuracy --seeds 1 --out a.json"}])
    write(b, [_run("ml-100k", "mccl", 0, 0.99) | {"command": "other"}])  # the same run as one already there
    argv = ["benchmark", "merge-accuracy", str(a), str(b), "--out", str(table), "--json"]
    monkeypatch.setattr(sys, "argv", ["cmcrec", *argv])  # what the recorded command is read from
    assert main(argv) == 0
    saved = json.loads(table.read_text())
    assert sorted(r["seed"] for r in saved["runs"]) == [0, 1]
    (row,) = saved["rows"]
    assert row["rmse_mean"] == pytest.approx(0.91) and row["seeds"] == [0, 1]
    assert [(m["source"], m["added"], m["already_there"]) for m in saved["merges"]] == [(str(a), 1, 0), (str(b), 0, 1)]
    assert all(m["command"] == "cmcrec " + " ".join(argv) for m in saved["merges"])
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": [{"dataset": "ml-100k"}]}))
    assert main(["benchmark", "merge-accuracy", str(bad), "--out", str(table)]) == 2
    assert "run 0 has no 'model'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["/venv/bin/cmcrec", "benchmark", "accuracy", "--out", "a b.json"],
            "cmcrec benchmark accuracy --out 'a b.json'",
        ),
        (["benchmarks/serving.py", "--model", "m"], "python benchmarks/serving.py --model m"),
    ],
)
def test_command_line_records_a_runnable_command(monkeypatch, argv, expected):
    import sys

    from cmcrec.benchmarks.common import command_line

    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == expected


def test_runs_with_other_buckets_are_their_own_labelled_runs_and_artifacts():
    from cmcrec.benchmarks.accuracy import _key
    from cmcrec.benchmarks.common import model_key

    plain = [_run("yahoo_music", "igmc", s, v) for s, v in [(0, 19.0), (1, 19.2)]]
    fine = [_run("yahoo_music", "igmc", s, v) | {"num_buckets": 100} for s, v in [(0, 18.8), (1, 19.0)]]
    both = [r | {"overrides": {"ema_decay": 0.999}} for r in fine]
    for r in plain + fine + both:
        r["command"] = "cmd"
    rows = {r["model"]: r for r in aggregate(plain + fine + both)}
    assert set(rows) == {"igmc", "igmc (num_buckets=100)", "igmc (ema_decay=0.999, num_buckets=100)"}
    assert rows["igmc (num_buckets=100)"]["rmse_mean"] == pytest.approx(18.9)
    # A run from before the option (no field) is the same run as one at the dataset's default buckets.
    assert _key(plain[0]) == _key(plain[0] | {"num_buckets": None}) != _key(fine[0])
    # The reuse check compares ratings, not relation types: the artifact name must tell bucketings apart.
    assert model_key("yahoo_music/monti", "igmc", {}, 0, "cpu", None, 100) == "yahoo_music-monti-igmc-cpu-b100-s0"
    assert model_key("yahoo_music/monti", "igmc", {}, 0, "cpu") == "yahoo_music-monti-igmc-cpu-s0"


def test_num_buckets_reaches_the_bucketed_datasets_only(tmp_path, monkeypatch):
    """--num-buckets loads yahoo_music with that many relation types, leaves levelled datasets alone,
    and records the count only where it differs from the dataset's default."""
    import cmcrec.benchmarks.accuracy as acc
    import cmcrec.data.datasets as datasets

    seen = {}

    def fake_load_split(name, split=None, data_dir=None, num_buckets=None):
        seen[name] = num_buckets
        return low_rank_split(num_users=20, num_items=15, seed=1)

    monkeypatch.setattr(datasets, "load_split", fake_load_split)
    out = tmp_path / "acc.json"
    payload = acc.run_accuracy(["yahoo_music", "douban"], ["bias"], [0], out, num_buckets=20, log=lambda _: None)
    assert seen == {"yahoo_music": 20, "douban": None}
    assert {r["dataset"]: r.get("num_buckets") for r in payload["runs"]} == {"yahoo_music": 20, "douban": None}
    assert {r["model"] for r in payload["rows"]} == {"bias (num_buckets=20)", "bias"}
    assert all(r["machine"]["cores"] >= 1 for r in payload["runs"])  # each run names its machine
    seen.clear()
    acc.run_accuracy(["yahoo_music"], ["bias"], [0], out, num_buckets=10, log=lambda _: None)  # the default
    assert seen == {"yahoo_music": None}
    assert len(json.loads(out.read_text())["runs"]) == 3  # the default is its own run, not the 20-bucket one


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["benchmark", "accuracy", "--datasets", "ml-100k,douban", "--num-buckets", "20"], "--num-buckets"),
        (["benchmark", "accuracy", "--datasets", "yahoo_music", "--num-buckets", "1"], "--num-buckets must be >= 2"),
        (["train", "--model", "mf", "--dataset", "ml-100k", "--num-buckets", "5"], "ml-100k has levels"),
        (["data", "info", "douban", "--num-buckets", "5"], "douban has levels"),
    ],
)
def test_bad_num_buckets_exits_2_before_loading_data(capsys, tmp_path, argv, message):
    from cmcrec.cli import main

    code = main(
        [*argv, "--data-dir", str(tmp_path / "nowhere")]
        + (["--out", str(tmp_path / "o.json")] if argv[0] == "benchmark" else [])
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "o.json").exists()
