"""Hyper-parameter sweeps (Optuna) and the τ-sensitivity study.

Selection uses validation only. :func:`run_sweep` receives the *training*
ratings and nothing else: each trial fits the model, whose trainer carves a
validation share off those ratings, and the trial's value is the model's best
validation RMSE. The test split cannot influence the choice because the
objective never sees it. :func:`evaluate_best` retrains the chosen config once
and scores it on the test split; its numbers are labelled as measured after
selection.

The study lives in SQLite (``sqlite:///PATH``) and is loaded if it exists, so
running the same command again adds trials to the same study.

:func:`run_tau_grid` trains MCCL at each temperature τ with everything else
fixed, over seeds, and records validation RMSE next to the test metrics
(reported, never used to choose).

Optuna is an optional dependency (``pip install -e '.[sweep]'``), imported
only when a sweep runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmcrec.benchmarks.accuracy import model_config
from cmcrec.benchmarks.common import command_line, load_results, machine, now, require_same_settings, write_results
from cmcrec.config import RunContext
from cmcrec.errors import ConfigError, TrainingDiverged
from cmcrec.models.registry import get_model

if TYPE_CHECKING:
    from cmcrec.data.ratings import Ratings, Split

__all__ = [
    "SEARCH_SPACE",
    "ParamSpace",
    "evaluate_best",
    "fit_trial",
    "import_optuna",
    "run_sweep",
    "run_tau_grid",
]

OBJECTIVE = "best validation RMSE (validation share carved from the training ratings; test split unused)"


@dataclass(frozen=True)
class ParamSpace:
    """The search range of one config field.

    Attributes:
        low: lower bound of a float range.
        high: upper bound of a float range.
        log: sample the float range log-uniformly.
        choices: the values of a categorical parameter (then ``low``/``high`` are unused).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"type": "categorical", "choices": list(self.choices)}
        return {"type": "log-uniform" if self.log else "uniform", "low": self.low, "high": self.high}


SEARCH_SPACE: dict[str, ParamSpace] = {
    "tau": ParamSpace(0.05, 1.0, log=True),
    "lambda_cl": ParamSpace(1e-4, 1e-1, log=True),
    # 1e-6 is the "almost none" end of the range; exact 0 is the config default, kept by leaving the field out.
    "weight_decay": ParamSpace(1e-6, 1e-2, log=True),
    "lr": ParamSpace(1e-4, 1e-2, log=True),
    "max_nodes_per_hop": ParamSpace(choices=(20, 50, 100, 200)),
}
DEFAULT_PARAMS = ("tau", "lambda_cl", "weight_decay", "lr", "max_nodes_per_hop")


def import_optuna():
    """Optuna, or a :class:`ConfigError` telling the user how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweeps need Optuna, an optional dependency: pip install -e '.[sweep]'") from None
    return optuna


def _config_fields(model: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_model(model).config_cls)}


def check_params(model: str, params: Sequence[str]) -> list[str]:
    """The searched parameter names, each known to the search space and a field of ``model``'s config."""
    params = list(params)
    if not params:
        raise ConfigError("--params: give at least one parameter to search")
    fields = _config_fields(model)
    for p in params:
        if p not in SEARCH_SPACE:
            raise ConfigError(f"--params: no search space for {p!r}; searchable: {', '.join(SEARCH_SPACE)}")
        if p not in fields:
            raise ConfigError(f"--params: {p!r} is not a config field of model {model!r}")
    if len(set(params)) != len(params):
        raise ConfigError(f"--params: repeated parameter in {','.join(params)}")
    return params


def fit_trial(
    model: str,
    train: Ratings,
    overrides: dict[str, Any],
    context: RunContext,
    *,
    preset: str | None = None,
    epochs: int | None = None,
):
    """Fit ``model`` on ``train`` with ``overrides`` (after the preset); returns the Recommender.

    The trainer carves its validation share off ``train``; this function has no
    other data, so whatever it returns was chosen without the test split.
    """
    from cmcrec.recommender import Recommender

    fields = _config_fields(model)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)} for model {model!r}")
    config = model_config(model, preset, epochs, overrides)
    if getattr(config, "eval_max_nodes_per_hop", None) is not None and "max_nodes_per_hop" in overrides:
        # Evaluation must see at least the neighbourhood training sampled from.
        cap = max(config.eval_max_nodes_per_hop, config.max_nodes_per_hop or 0)
        config = config.replace(eval_max_nodes_per_hop=cap)
    return Recommender.fit(model, train, config, context)


def _trial_row(trial: Any) -> dict[str, Any]:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "value": value,
        "params": dict(trial.params),
        "duration_s": duration,
        "start": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
    } | {k: v for k, v in trial.user_attrs.items() if k != "spec"}


def run_sweep(
    model: str,
    train: Ratings,
    *,
    trials: int,
    study_db: Path,
    study_name: str,
    params: Sequence[str] = DEFAULT_PARAMS,
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    context: RunContext | None = None,
    description: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``trials`` more Optuna trials minimising the best validation RMSE of ``model`` on ``train``.

    Args:
        model: registry name.
        train: the training ratings (the only data the objective sees).
        trials: trials to add to the study in this call.
        study_db: SQLite file of the study; created if missing, resumed if present.
        study_name: the study's name inside ``study_db``.
        params: config fields to search (names of :data:`SEARCH_SPACE`).
        fixed: config overrides held fixed in every trial (after the preset).
        preset: config preset applied first.
        epochs: override the config's epochs.
        context: device, workers and the seed every trial trains with.
        description: what the study is about (dataset, split...), stored in the study and checked on resume.
        log: receives one line per finished trial.

    Returns:
        The results payload: ``rows`` (one per trial of the whole study), ``best``, the search space,
        the objective, command, machine and date.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    optuna = import_optuna()
    params = check_params(model, params)
    fixed = dict(fixed or {})
    clash = sorted(set(fixed) & set(params))
    if clash:
        raise ConfigError(f"fixed overrides {', '.join(clash)} are also searched; drop them from one side")
    context = context or RunContext(progress=False)
    spec = {
        "model": model,
        "params": params,
        "fixed": fixed,
        "preset": preset,
        "epochs": epochs,
        "seed": context.seed,
        "num_train": len(train),
    } | dict(description or {})

    study_db = Path(study_db)
    study_db.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_db.resolve()}")
    # A resumed study must not replay the first run's random start-up points: seed by the trials already there.
    existing = _existing_trials(optuna, storage, study_name)
    sampler = optuna.samplers.TPESampler(
        seed=int(np.random.SeedSequence([context.seed, existing]).generate_state(1)[0])
    )
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="minimize", sampler=sampler, load_if_exists=True
    )
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec)
    elif stored != spec:
        diff = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
        raise ConfigError(
            f"--study-name {study_name!r} in {study_db} was created with different settings "
            f"({', '.join(f'{k}: {stored.get(k)!r} there, {spec.get(k)!r} now' for k in diff)}); "
            "use a new --study-name"
        )

    def objective(trial) -> float:
        overrides = fixed | {p: SEARCH_SPACE[p].suggest(trial, p) for p in params}
        rec = fit_trial(model, train, overrides, context, preset=preset, epochs=epochs)
        summary = rec.training
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        trial.set_user_attr("epochs_run", len(summary["history"]))
        trial.set_user_attr("train_seconds", summary["seconds"])
        return float(summary["best_valid_rmse"])

    def report(study, trial) -> None:
        value = "—" if trial.value is None else f"{trial.value:.4f}"
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        log(f"trial {trial.number:3d} {trial.state.name:<8} valid RMSE {value}  {shown}")

    # A diverging trial (say, the largest learning rate) is marked failed; the study goes on.
    study.optimize(objective, n_trials=trials, callbacks=[report], gc_after_trial=True, catch=(TrainingDiverged,))
    return sweep_payload(study, params, fixed, spec, str(study_db))


def _existing_trials(optuna, storage, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sweep_payload(study: Any, params: Sequence[str], fixed: dict[str, Any], spec: dict, storage: str) -> dict:
    """The results JSON of a study: every trial, the best one, the search space and provenance."""
    rows = [_trial_row(t) for t in study.trials]
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = min(complete, key=lambda r: r["value"]) if complete else None
    return {
        "description": "Hyper-parameter sweep; every trial is scored by its best validation RMSE.",
        "study": {"name": study.study_name, "storage": storage, "direction": "minimize"} | spec,
        "objective": OBJECTIVE,
        "search_space": {p: SEARCH_SPACE[p].describe() for p in params},
        "fixed": fixed,
        "rows": rows,
        "best": None if best is None else {"trial": best["trial"], "value": best["value"], "params": best["params"]},
        "command": command_line(),
        "machine": machine(),
        "date": now(),
    }


def evaluate_best(
    model: str,
    data: Split,
    best_params: dict[str, Any],
    *,
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    context: RunContext | None = None,
    candidates: int | None = 200,
) -> dict[str, Any]:
    """Retrain the selected config once on ``data.train`` and score it on ``data.test``.

    This is the only place a sweep touches the test split, after selection is over.
    """
    from cmcrec.evaluation.pipeline import evaluate_recommender

    context = context or RunContext(progress=False)
    rec = fit_trial(model, data.train, dict(fixed or {}) | best_params, context, preset=preset, epochs=epochs)
    metrics = evaluate_recommender(rec, data, ks=(10,), candidates=candidates, sampled=False)
    return {
        "note": "measured on the test split once, after the parameters were selected on validation",
        "params": best_params,
        "seed": context.seed,
        "best_valid_rmse": rec.training["best_valid_rmse"],
        "best_epoch": rec.training["best_epoch"],
    } | {k: metrics[k] for k in ("rmse", "mae", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10")}


# -- τ sensitivity ---------------------------------------------------------------------------------


def _summarise_tau(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_tau: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        by_tau.setdefault(r["tau"], []).append(r)
    out = []
    for tau in sorted(by_tau):
        rs = by_tau[tau]
        row: dict[str, Any] = {"tau": tau, "seeds": sorted(r["seed"] for r in rs)}
        for key in ("valid_rmse", "rmse", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10"):
            values = np.array([r[key] for r in rs], dtype=float)
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(row)
    return out


def run_tau_grid(
    data: Split,
    taus: Sequence[float],
    seeds: Sequence[int],
    out: Path,
    *,
    model: str = "mccl",
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    context: RunContext | None = None,
    candidates: int | None = 200,
    description: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` at each τ (all else fixed) for each seed; record validation and test metrics.

    Rows already in ``out`` (same τ and seed) are kept and skipped, and the file is
    rewritten atomically after every run, so an interrupted grid resumes.

    Returns:
        The payload written to ``out``: ``rows`` (one per τ and seed), ``summary``
        (mean ± std per τ), command, machine and date.
    """
    from cmcrec.evaluation.pipeline import evaluate_recommender

    if "tau" not in _config_fields(model):
        raise ConfigError(f"--tau-grid: model {model!r} has no temperature τ; use an MCCL model")
    if not taus or min(taus) <= 0:
        raise ConfigError(f"--tau-grid: temperatures must be > 0, got {list(taus)}")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    fixed = {k: v for k, v in (fixed or {}).items() if k != "tau"}
    context = context or RunContext(progress=False)
    payload = load_results(Path(out))
    runs: list[dict[str, Any]] = payload.get("rows", [])
    study = {"model": model, "fixed": fixed, "preset": preset, "epochs": epochs, "candidates": candidates} | dict(
        description or {}
    )
    if isinstance(payload.get("study"), dict):  # (τ, seed) rows are reused only from the same study
        require_same_settings([payload["study"]], study, Path(out))
    done = {(r["tau"], r["seed"]) for r in runs}
    command = command_line()
    for tau in taus:
        for seed in seeds:
            if (float(tau), seed) in done:
                continue
            t0 = time.perf_counter()
            ctx = dataclasses.replace(context, seed=seed)
            rec = fit_trial(model, data.train, fixed | {"tau": float(tau)}, ctx, preset=preset, epochs=epochs)
            metrics = evaluate_recommender(rec, data, ks=(10,), candidates=candidates, sampled=False)
            run = {
                "tau": float(tau),
                "seed": seed,
                "model": model,
                "valid_rmse": rec.training["best_valid_rmse"],
                "best_epoch": rec.training["best_epoch"],
                "epochs_run": len(rec.training["history"]),
                "train_seconds": rec.training["seconds"],
                "wall_seconds": time.perf_counter() - t0,
                "config": rec.config.to_dict(),
                "command": command,
                "date": now(),
            } | {k: metrics[k] for k in ("rmse", "mae", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10")}
            runs.append(run)
            log(
                f"tau {tau:<6g} seed {seed}: valid RMSE {run['valid_rmse']:.4f}  test RMSE {run['rmse']:.4f}  "
                f"Recall@10 {run['recall@10']:.4f}  coverage@10 {run['coverage@10']:.3f}"
            )
            payload = {
                "description": "Sensitivity to the InfoNCE temperature τ, other parameters fixed. Validation RMSE "
                "is what a selection would use; the test metrics are reported, never used to choose τ.",
                "study": study,
                "rows": runs,
                "summary": _summarise_tau(runs),
                "command": command,
                "machine": machine(),
                "date": now(),
            }
            write_results(Path(out), payload)
    return payload
