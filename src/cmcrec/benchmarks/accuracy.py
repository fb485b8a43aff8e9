"""The accuracy table: test RMSE of every model on every dataset's standard split, over seeds.

Each (dataset, model, seed) run trains with selection on a validation share of
the training ratings and is scored once on the test split. Runs are appended to
the results file as they finish (atomically), and a rerun skips those already
there, so a long table can be built in pieces.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmcrec.benchmarks.common import (
    command_line,
    fit_or_load,
    load_results,
    machine,
    model_key,
    model_label,
    now,
    write_results,
)
from cmcrec.config import RunContext
from cmcrec.errors import ConfigError
from cmcrec.evaluation.metrics import mae, rmse
from cmcrec.models.presets import preset_overrides
from cmcrec.models.registry import get_model


def model_config(model: str, preset: str | None, epochs: int | None, extra: dict[str, Any] | None = None):
    """The config a study trains ``model`` with: preset, then ``extra`` overrides, then ``epochs``.

    Like a preset, ``epochs`` budgets the subgraph models only: id-based models
    (MF, bias) train in seconds with their own schedule and early stopping, and
    cutting them to a subgraph model's few epochs would make them a straw man.
    """
    spec = get_model(model)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    overrides = preset_overrides(preset, fields) if preset else {}
    overrides |= {k: v for k, v in (extra or {}).items() if k in fields}
    if epochs is not None and "max_nodes_per_hop" in fields:
        overrides["epochs"] = epochs
    return spec.make_config(overrides)


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, preset, epochs): mean ± std (sample std, ddof=1) of test RMSE over seeds.

    A run trained with ``--set`` overrides is its own model, labelled
    ``model (key=value, ...)`` (:func:`~cmcrec.benchmarks.common.model_label`);
    runs with another epoch budget (``--epochs``) are their own row.
    A row's ``command`` is the command its runs were made with (several, joined
    by `` ; ``, when the seeds were run in pieces).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], model_label(r), r.get("preset"), r["epochs"]), []).append(r)
    rows = []
    for (dataset, model, preset, epochs), rs in groups.items():
        values = np.array([r["rmse"] for r in rs])
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "preset": preset,
                "rmse_mean": float(values.mean()),
                "rmse_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "mae_mean": float(np.mean([r["mae"] for r in rs])),
                "seeds": sorted(r["seed"] for r in rs),
                "epochs": epochs,
                "best_epochs": [r["best_epoch"] for r in rs],
                "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                "max_nodes_per_hop": rs[0].get("max_nodes_per_hop"),
                "command": " ; ".join(dict.fromkeys(r["command"] for r in rs)),
            }
        )
    return rows


def run_accuracy(
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    data_dir: Path | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
    models_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    num_buckets: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and score every (dataset, model, seed); returns the results payload written to ``out``.

    With ``models_dir``, each trained model is saved there (and reused by other studies).
    ``overrides`` (the CLI's ``--set``) are applied after the preset to the models
    that have each key, recorded with each run (part of its resume key) and shown
    in its row's model label. ``num_buckets`` (``--num-buckets``) applies to the datasets
    whose scale is bucketed (yahoo_music); a count other than the dataset's default is
    recorded as the run's ``num_buckets`` and labelled like an override.
    """
    from cmcrec.data.datasets import DATASETS, load_split

    payload = load_results(out)
    runs: list[dict[str, Any]] = payload.get("runs", [])
    merges = payload.get("merges")
    done = {_key(r) for r in runs}
    command = command_line()
    for dataset in datasets:
        default_buckets = DATASETS[dataset].scale.num_buckets
        # None: the dataset's own scale (levels, or its default buckets), the runs made before the option.
        buckets = num_buckets if default_buckets is not None and num_buckets != default_buckets else None
        split = load_split(dataset, None, data_dir=data_dir, num_buckets=buckets)
        for model in models:
            config = model_config(model, preset, epochs, overrides)
            # The overrides this model's config took (model_config ignores keys it lacks), with the
            # values the config ended up with: `--set epochs=3 --epochs 5` trains 5, `lr=1` is `lr=1.0`.
            applied = {k: getattr(config, k) for k in overrides or {} if hasattr(config, k)}
            for seed in seeds:
                key = {
                    "dataset": dataset,
                    "model": model,
                    "seed": seed,
                    "preset": preset,
                    "overrides": applied,
                    "epochs": config.epochs,
                    "num_buckets": buckets,
                }
                if _key(key) in done:
                    continue
                t0 = time.perf_counter()
                context = RunContext(device=device, seed=seed, num_workers=num_workers, progress=False)
                artifact = model_key(split.name, model, applied, seed, preset, epochs, buckets)
                rec = fit_or_load(model, split.train, config, context, models_dir, artifact)
                pred = rec.predict_indices(split.test.user, split.test.item, num_workers=num_workers)
                run = {
                    "dataset": dataset,
                    "split": split.name,
                    "model": model,
                    "preset": preset,
                    "overrides": applied,
                    "seed": seed,
                    "rmse": rmse(pred, split.test.rating),
                    "mae": mae(pred, split.test.rating),
                    "best_epoch": rec.training["best_epoch"],
                    "best_valid_rmse": rec.training["best_valid_rmse"],
                    "epochs": config.epochs,
                    "epochs_run": len(rec.training["history"]),
                    "train_seconds": rec.training["seconds"],
                    "wall_seconds": time.perf_counter() - t0,
                    "max_nodes_per_hop": getattr(config, "max_nodes_per_hop", None),
                    "config": config.to_dict(),
                    "history": [
                        {k: h[k] for k in ("epoch", "train_loss", "valid_rmse", "seconds")}
                        for h in rec.training["history"]
                    ],
                    "command": command,
                    "date": now(),
                    "machine": machine(),  # the file's own `machine` is the last writer's
                }
                if buckets is not None:
                    run["num_buckets"] = buckets
                if "eval_cap" in rec.training:  # select_eval_cap: the cap chosen on validation, and its scores
                    run["eval_cap"] = rec.training["eval_cap"]
                runs.append(run)
                log(
                    f"{dataset:<12} {model_label(run):<10} seed {seed}: test RMSE {run['rmse']:.4f} "
                    f"(best epoch {run['best_epoch']}/{run['epochs_run']}, {run['wall_seconds']:.0f}s)"
                )
                payload = _payload(runs, merges)
                write_results(out, payload)
    if runs and payload.get("rows") != aggregate(runs):  # a file written by an older cmcrec: re-aggregate
        payload = _payload(runs, merges)
        write_results(out, payload)
    return payload


def _key(run: dict[str, Any]) -> tuple:
    """What makes two runs the same run: a study skips a run whose key it already holds."""
    overrides = json.dumps(run.get("overrides") or {}, sort_keys=True)
    return (
        run["dataset"],
        run["model"],
        run["seed"],
        run.get("preset"),
        overrides,
        run.get("epochs"),
        run.get("num_buckets"),
    )


def _payload(runs: list[dict[str, Any]], merges: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    payload = {
        "description": "Test RMSE on each dataset's standard split; epoch chosen on a validation "
        "share of the training ratings; single models (no checkpoint ensembling). Each run records the "
        "command that trained it; `merges` records the commands that gathered runs from other files.",
        "rows": aggregate(runs),
        "runs": runs,
        "machine": machine(),
        "date": now(),
    }
    if merges:
        payload["merges"] = merges
    return payload


_RUN_FIELDS = ("dataset", "model", "seed", "rmse", "mae", "epochs", "best_epoch", "train_seconds", "command")


def merge_accuracy(out: Path, sources: Sequence[Path], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Add the runs of other accuracy results files to ``out`` (runs ``out`` already holds are kept).

    Long runs are often written to a file of their own (``--out /tmp/x.json``) and gathered
    later; this records each gathering, with its command, under ``merges``, so the file says
    how it was put together. Rows are re-aggregated.

    Raises:
        ConfigError: a source is missing, is not an accuracy results file, or has a run
            without one of the fields every run records.
    """
    payload = load_results(out)
    runs: list[dict[str, Any]] = payload.get("runs", [])
    merges: list[dict[str, Any]] = list(payload.get("merges") or [])
    have = {_key(r) for r in runs}
    command = command_line()
    for src in sources:
        if not Path(src).is_file():
            raise ConfigError(f"{src}: no such results file")
        try:
            data = json.loads(Path(src).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{src}: not a JSON results file ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise ConfigError(f"{src}: not an accuracy results file (no 'runs' list)")
        added = kept = 0
        for i, run in enumerate(data["runs"]):
            missing = [f for f in _RUN_FIELDS if not isinstance(run, dict) or f not in run]
            if missing:
                raise ConfigError(f"{src}: run {i} has no {missing[0]!r}; not a cmcrec accuracy run")
            if _key(run) in have:
                kept += 1
                continue
            runs.append(run)
            have.add(_key(run))
            added += 1
        merges.append({"source": str(src), "added": added, "already_there": kept, "command": command, "date": now()})
        log(f"{src}: {added} run(s) added, {kept} already in {out}")
    payload = _payload(runs, merges)
    write_results(out, payload)
    return payload


def shown_preset(row: dict[str, Any]) -> str | None:
    """The preset a row was trained with, or None where it did not apply.

    Presets budget the subgraph models only (rows with ``max_nodes_per_hop``); MF and the
    bias baseline keep their defaults, so naming a preset beside them would mislead.
    """
    return row.get("preset") if row.get("max_nodes_per_hop") is not None else None


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    w = max([10, *(len(r["model"]) for r in rows)])  # labels with --set overrides are longer
    lines = [
        f"{'dataset':<12} {'model':<{w}} {'preset':<7} {'RMSE mean ± std':<18} {'seeds':<9} {'epochs':>6} {'s/run':>7}"
    ]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["rmse_mean"])):
        lines.append(
            f"{r['dataset']:<12} {r['model']:<{w}} {shown_preset(r) or '–':<7} "
            f"{r['rmse_mean']:.4f} ± {r['rmse_std']:.4f}    {len(r['seeds']):<9} {r['epochs']:>6} "
            f"{r['train_seconds_mean']:>7.0f}"
        )
    return "\n".join(lines)
