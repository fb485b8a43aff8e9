"""Sweeps: Optuna on validation RMSE, resumable SQLite studies, test split untouched; the τ grid."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from synthetic import low_rank_split  # noqa: E402

from cmcrec.benchmarks import sweep  # noqa: E402
from cmcrec.config import RunContext  # noqa: E402
from cmcrec.errors import ConfigError  # noqa: E402

FAST = {"epochs": 2, "factors": 4, "batch_size": 64, "patience": None}
CPU = RunContext(device="cpu", seed=0, progress=False)


def _quiet(_: str) -> None:
    pass


def test_sweep_resumes_and_scores_best_validation_rmse(tmp_path):
    train = low_rank_split().train
    kwargs = dict(
        trials=2,
        study_db=tmp_path / "db" / "sweep.sqlite",
        study_name="mf-test",
        params=["lr", "weight_decay"],
        fixed=FAST,
        context=CPU,
        log=_quiet,
    )
    first = sweep.run_sweep("mf", train, **kwargs)
    assert [r["trial"] for r in first["rows"]] == [0, 1]
    assert all(r["state"] == "COMPLETE" and r["duration_s"] > 0 for r in first["rows"])
    assert set(first["search_space"]) == {"lr", "weight_decay"}
    assert {"command", "machine", "date", "objective"} <= set(first)

    second = sweep.run_sweep("mf", train, **kwargs | {"trials": 1})
    assert [r["trial"] for r in second["rows"]] == [0, 1, 2]  # same study, one trial more
    assert second["rows"][:2] == first["rows"]
    assert second["rows"][2]["params"] not in [r["params"] for r in first["rows"]]

    best = second["best"]
    assert best["value"] == min(r["value"] for r in second["rows"])
    # The objective is the trained model's best validation RMSE: retraining the best trial reproduces it.
    rec = sweep.fit_trial("mf", train, FAST | best["params"], CPU)
    assert rec.training["best_valid_rmse"] == pytest.approx(best["value"], rel=1e-6)


def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from cmcrec.errors import TrainingDiverged

    train = low_rank_split().train
    real, calls = sweep.fit_trial, []

    def first_diverges(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDiverged("validation RMSE was never finite")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "fit_trial", first_diverges)
    out = sweep.run_sweep(
        "mf",
        train,
        trials=2,
        study_db=tmp_path / "s.sqlite",
        study_name="d",
        params=["lr"],
        fixed=FAST,
        context=CPU,
        log=_quiet,
    )
    assert [r["state"] for r in out["rows"]] == ["FAIL", "COMPLETE"]
    assert out["best"]["trial"] == 1


def test_resuming_with_other_settings_is_refused(tmp_path):
    train = low_rank_split().train
    common = dict(study_db=tmp_path / "s.sqlite", study_name="s", fixed=FAST, context=CPU, log=_quiet, trials=1)
    sweep.run_sweep("mf", train, params=["lr"], **common)
    with pytest.raises(ConfigError, match="different settings.*params"):
        sweep.run_sweep("mf", train, params=["weight_decay"], **common)


class _Poison:
    """A test split that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the sweep read the test split (.{name})")


def test_cli_sweep_never_reads_the_test_split(tmp_path, monkeypatch, capsys):
    from cmcrec.cli.report import sweep_command
    from cmcrec.data import datasets

    split = low_rank_split()
    monkeypatch.setattr(
        datasets, "load_split", lambda *a, **k: SimpleNamespace(train=split.train, test=_Poison(), name="syn/x")
    )
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "sweep.json"
    sweep_command(
        model="mf",
        dataset="synthetic",
        trials=2,
        study_db=tmp_path / "s.sqlite",
        study_name="cli",
        params="lr,weight_decay",
        config=config,
        out=out,
        device="cpu",
        as_json=True,
    )
    printed = json.loads(capsys.readouterr().out)
    payload = json.loads(out.read_text())
    assert printed["best"] == payload["best"] and len(payload["rows"]) == 2
    assert payload["study"]["split"] == "syn/x" and "test_best" not in payload


def test_evaluate_best_reports_test_metrics_after_selection():
    split = low_rank_split()
    result = sweep.evaluate_best("mf", split, {"lr": 0.01}, fixed=FAST, context=CPU)
    assert "after" in result["note"] and result["params"] == {"lr": 0.01}
    assert {"rmse", "recall@10", "coverage@10", "best_valid_rmse"} <= set(result)


def test_bad_params_and_missing_optuna(monkeypatch):
    with pytest.raises(ConfigError, match="'tau' is not a config field of model 'mf'"):
        sweep.check_params("mf", ["tau"])
    with pytest.raises(ConfigError, match="no search space for 'factors'"):
        sweep.check_params("mf", ["factors"])
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[sweep\]'"):
        sweep.import_optuna()


def test_tau_grid_records_validation_and_test(tmp_path):
    tiny = {
        "epochs": 1,
        "hidden_channels": 4,
        "num_layers": 1,
        "num_bases": 2,
        "head_hidden": 8,
        "latent_channels": 4,
        "scorer_hidden": 4,
        "max_nodes_per_hop": 4,
        "eval_max_nodes_per_hop": 4,
        "batch_size": 64,
    }
    out = tmp_path / "tau.json"
    split = low_rank_split(num_users=20, num_items=15)
    payload = sweep.run_tau_grid(split, [0.1, 0.5], [0], out, fixed=tiny, context=CPU, candidates=None, log=_quiet)
    assert [(r["tau"], r["seed"]) for r in payload["rows"]] == [(0.1, 0), (0.5, 0)]
    for r in payload["rows"]:
        assert {"valid_rmse", "rmse", "recall@10", "coverage@10"} <= set(r) and r["config"]["tau"] == r["tau"]
    assert [s["tau"] for s in payload["summary"]] == [0.1, 0.5]
    # A rerun skips the runs already in the file.
    again = sweep.run_tau_grid(split, [0.1, 0.5], [0], out, fixed=tiny, context=CPU, candidates=None, log=_quiet)
    assert again["rows"] == payload["rows"]
    # Another study (here: another dataset) does not reuse these rows or add to them.
    other = json.loads(out.read_text())
    other["study"]["dataset"] = "douban"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="dataset 'douban' there, 'ml-100k' now"):
        sweep.run_tau_grid(
            split,
            [0.1],
            [0],
            tmp_path / "other.json",
            fixed=tiny,
            context=CPU,
            candidates=None,
            log=_quiet,
            description={"dataset": "ml-100k"},
        )
    with pytest.raises(ConfigError, match="no temperature"):
        sweep.run_tau_grid(split, [0.1], [0], out, model="mf")
