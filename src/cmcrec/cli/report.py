"""``cmcrec report`` and ``cmcrec sweep``: plots of the committed results, and hyper-parameter search.

Both are plain typed functions; ``cli/app.py`` registers them with
``app.command("report")(report_command)`` and ``app.command("sweep")(sweep_command)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cmcrec.cli.options import Columns, Duplicates, Sep, file_options, read_config_json
from cmcrec.errors import ConfigError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _floats(value: str, flag: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {value!r}") from None
    if not out:
        raise ConfigError(f"{flag}: give at least one value")
    return out


def _ints(value: str, flag: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {value!r}") from None
    if not out:
        raise ConfigError(f"{flag}: give at least one value")
    return out


def _fixed(config: Path | None) -> dict:
    if config is None:
        return {}
    return read_config_json(config)


def report_command(
    results: Annotated[
        Path, typer.Option("--results", help="Folder of results JSON files (accuracy.json, blog.json, ...).")
    ] = Path("benchmarks/results"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder (index.html + PNGs); replaced as a whole.")
    ] = Path("benchmarks/report"),
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "cmcrec results",
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Build an HTML report with PNG plots from whatever result files exist in --results."""
    from cmcrec.report import build_report

    result = build_report(results, out, title=title)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    typer.echo(f"wrote {result.index} ({len(result.figures)} figures)")
    for note in result.missing:
        typer.echo(f"  not shown: {note}")


def sweep_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (mccl, igmc, mf, ...).")] = "mccl",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name or ratings file.")] = "ml-100k",
    split: Annotated[str | None, typer.Option("--split", help="Split: u1..u5, ua, ub, random, temporal.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Optuna trials to add to the study in this run.")] = 20,
    study_db: Annotated[
        Path, typer.Option("--study-db", help="SQLite file of the study (created, or resumed if present).")
    ] = Path("runs/sweep.sqlite"),
    study_name: Annotated[
        str | None, typer.Option("--study-name", help="Study name inside --study-db (default: MODEL-DATASET-SPLIT).")
    ] = None,
    params: Annotated[
        str,
        typer.Option("--params", help="Comma-separated config fields to search (each must be in the search space)."),
    ] = "tau,lambda_cl,weight_decay,lr,max_nodes_per_hop",
    tau_grid: Annotated[
        str | None,
        typer.Option("--tau-grid", help="τ-sensitivity mode: train at each τ (e.g. 0.07,0.1,0.2,0.5,1.0) instead."),
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="--tau-grid: comma-separated seeds.")] = "0",
    preset: Annotated[str | None, typer.Option("--preset", help="Config preset applied first (cpu, paper).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the config's epochs.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON file of config fields held fixed in every run.")
    ] = None,
    max_train_ratings: Annotated[
        int | None, typer.Option("--max-train-ratings", help="Train on a seeded sample of this many ratings.")
    ] = None,
    test_best: Annotated[
        bool,
        typer.Option("--test-best", help="After the sweep, retrain the best config once and report its test metrics."),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Results JSON (default benchmarks/results/sweep_NAME.json, or tau.json)."),
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", help="Re-ranked candidates for test ranking (0 = all).")
    ] = 200,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder holding datasets.")] = None,
    sep: Sep = None,
    duplicates: Duplicates = None,
    columns: Columns = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the sample and every trial.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    num_workers: Annotated[int, typer.Option("--num-workers", help="DataLoader workers.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Tune hyper-parameters with Optuna on validation RMSE, or measure sensitivity to τ (--tau-grid).

    Every trial is scored by its best validation RMSE on a share carved from the training ratings;
    the test split is never read while choosing.
    --test-best scores the chosen config on the test split once, labelled as measured after selection.
    The study lives in --study-db, so running the same command again adds trials to it.
    """
    from cmcrec.benchmarks import sweep as sw
    from cmcrec.benchmarks.common import write_results
    from cmcrec.config import RunContext
    from cmcrec.data.datasets import load_split
    from cmcrec.data.ratings import Split
    from cmcrec.data.splits import subsample
    from cmcrec.models.registry import get_model
    from cmcrec.training.trainer import resolve_device

    # Every flag is checked before any data is read or training starts.
    get_model(model)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if max_train_ratings is not None and max_train_ratings < 2:
        raise ConfigError(f"--max-train-ratings must be >= 2, got {max_train_ratings}")
    resolve_device(device)
    if candidates < 0:
        raise ConfigError(f"--candidates must be >= 0 (0 = all items), got {candidates}")
    options = file_options(dataset, sep, duplicates, columns)
    fixed = _fixed(config)
    context = RunContext(device=device, num_workers=num_workers, seed=seed, progress=False)
    taus = _floats(tau_grid, "--tau-grid") if tau_grid is not None else None
    seed_list = _ints(seeds, "--seeds")
    if taus is None:
        sw.import_optuna()
        param_list = sw.check_params(model, [p.strip() for p in params.split(",") if p.strip()])

    loaded = load_split(dataset, split=split, data_dir=data_dir, seed=seed, **options)
    train = subsample(loaded.train, max_train_ratings, seed)
    about = {"dataset": dataset, "split": loaded.name, "max_train_ratings": max_train_ratings}

    def with_test() -> Split:
        # Built only where test metrics are reported: the τ grid, and --test-best after selection.
        return Split(train, loaded.test, loaded.name)

    if taus is not None:
        target = out or Path("benchmarks/results/tau.json")
        payload = sw.run_tau_grid(
            with_test(),
            taus,
            seed_list,
            target,
            model=model,
            fixed=fixed,
            preset=preset,
            epochs=epochs,
            context=context,
            candidates=candidates or None,
            description=about,
            log=_say,
        )
        summary = payload.get("summary", [])
        if as_json:
            sys.stdout.write(json.dumps({"out": str(target), "summary": summary}) + "\n")
            return
        typer.echo(f"{'tau':>6}  {'valid RMSE':>10}  {'test RMSE':>9}  {'Recall@10':>9}  {'cov@10':>6}")
        for r in summary:
            typer.echo(
                f"{r['tau']:>6g}  {r['valid_rmse_mean']:>10.4f}  {r['rmse_mean']:>9.4f}  "
                f"{r['recall@10_mean']:>9.4f}  {r['coverage@10_mean']:>6.3f}"
            )
        typer.echo(f"wrote {target} (choose τ by validation RMSE; the test columns are for reporting)")
        return

    name = study_name or f"{model}-{loaded.name}".replace("/", "-")
    target = out or Path(f"benchmarks/results/sweep_{name}.json")
    payload = sw.run_sweep(
        model,
        train,  # the objective gets the training ratings only
        trials=trials,
        study_db=study_db,
        study_name=name,
        params=param_list,
        fixed=fixed,
        preset=preset,
        epochs=epochs,
        context=context,
        description=about,
        log=_say,
    )
    if test_best and payload["best"] is not None:
        _say("retraining the best configuration once to measure it on the test split")
        payload["test_best"] = sw.evaluate_best(
            model,
            with_test(),
            payload["best"]["params"],
            fixed=fixed,
            preset=preset,
            epochs=epochs,
            context=context,
            candidates=candidates or None,
        )
    write_results(target, payload)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "out": str(target),
                    "best": payload["best"],
                    **({"test_best": payload["test_best"]} if "test_best" in payload else {}),
                }
            )
            + "\n"
        )
        return
    best = payload["best"]
    complete = sum(r["state"] == "COMPLETE" for r in payload["rows"])
    typer.echo(f"study {name!r}: {len(payload['rows'])} trials ({complete} complete) in {study_db}")
    if best is not None:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        typer.echo(f"best trial {best['trial']}: validation RMSE {best['value']:.4f}  {shown}")
    if "test_best" in payload:
        tb = payload["test_best"]
        typer.echo(
            f"test (measured after selection): RMSE {tb['rmse']:.4f}  Recall@10 {tb['recall@10']:.4f}  "
            f"coverage@10 {tb['coverage@10']:.3f}"
        )
    typer.echo(f"wrote {target}")
