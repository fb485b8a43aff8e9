"""``cmcrec benchmark ...``: the studies behind the committed results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cmcrec.cli.options import Candidates, DataDir, Device, NumBuckets, Workers, bucket_options, parse_set
from cmcrec.errors import ConfigError

bench_app = typer.Typer(help="Run the studies that produce benchmarks/results/.", no_args_is_help=True)


def _csv(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{flag}: give at least one value")
    return items


def _ints(value: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value, flag)]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {value!r}") from None


def _check_overrides(overrides: dict, models: list[str], flag: str = "--set") -> None:
    """Every override key must be a setting of at least one of ``models`` (a typo would do nothing)."""
    import dataclasses

    from cmcrec.models.registry import get_model

    fields = set()
    for m in models:
        try:
            fields |= {f.name for f in dataclasses.fields(get_model(m).config_cls)}
        except ConfigError:  # not a registry model (the blog's popularity scorer): no settings
            continue
    for key in overrides:
        if key not in fields:
            raise ConfigError(f"{flag}: no model among {', '.join(models)} has a setting {key!r}")


# ----------------------------------------------------------------------------- shared options of the studies

StudyPreset = Annotated[str | None, typer.Option("--preset", help="Config preset: 'cpu' (laptop budget) or 'paper'.")]
StudyEpochs = Annotated[
    int | None,
    typer.Option("--epochs", help="Override the subgraph models' epochs (MF and bias keep their own schedule)."),
]
StudySeeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")]
StudyMaxTrain = Annotated[
    int | None,
    typer.Option("--max-train-ratings", help="Train on a seeded sample of this many training ratings (quick runs)."),
]
StudyModelsDir = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        help="Save trained models here and reuse ones trained with the same config and data; a run killed "
        "mid-training resumes there at its next epoch.",
    ),
]
StudyJson = Annotated[bool, typer.Option("--json", help="Print the aggregated rows as one JSON object.")]


@bench_app.command("accuracy")
def accuracy(
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated dataset names.")] = (
        "ml-100k,douban,flixster,yahoo_music"
    ),
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names.")] = (
        "mf,igmc,mccl,mccl-v1,mccl-v2,mccl-nocl"
    ),
    seeds: StudySeeds = "0,1,2",
    preset: StudyPreset = None,
    epochs: StudyEpochs = None,
    out: Annotated[Path, typer.Option("--out", help="Results JSON (runs already there are skipped).")] = Path(
        "benchmarks/results/accuracy.json"
    ),
    data_dir: DataDir = None,
    device: Device = "auto",
    num_workers: Workers = 0,
    models_dir: StudyModelsDir = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Config override KEY=VALUE for the models that have KEY (repeatable); recorded with each run "
            "and shown in its row's model label, e.g. --set ema_decay=0.999.",
        ),
    ] = None,
    num_buckets: NumBuckets = None,
    as_json: StudyJson = False,
) -> None:
    """Test RMSE (mean ± std over seeds) of each model on each dataset's standard split."""
    from cmcrec.benchmarks.accuracy import format_table, run_accuracy
    from cmcrec.data.datasets import DATASETS
    from cmcrec.models.registry import get_model

    ds = _csv(datasets, "--datasets")
    for d in ds:
        if d not in DATASETS:
            raise ConfigError(f"--datasets: unknown dataset {d!r}; known: {', '.join(DATASETS)}")
    ms = _csv(models, "--models")
    for m in ms:
        get_model(m)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    extra = parse_set(set_)
    _check_overrides(extra, ms)
    bucket_options(num_buckets)
    if num_buckets is not None and all(DATASETS[d].scale.num_buckets is None for d in ds):
        raise ConfigError(
            f"--num-buckets applies to datasets with a bucketed scale (yahoo_music); none among {', '.join(ds)}"
        )
    payload = run_accuracy(
        ds,
        ms,
        _ints(seeds, "--seeds"),
        out,
        data_dir=data_dir,
        preset=preset,
        epochs=epochs,
        device=device,
        num_workers=num_workers,
        models_dir=models_dir,
        overrides=extra or None,
        num_buckets=num_buckets,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    if as_json:
        print(json.dumps({"rows": payload.get("rows", [])}))
    else:
        typer.echo(format_table(payload.get("rows", [])))


@bench_app.command("merge-accuracy")
def merge_accuracy_command(
    sources: Annotated[list[Path], typer.Argument(help="Accuracy results files whose runs to add.")],
    out: Annotated[Path, typer.Option("--out", help="The accuracy results file to add them to.")] = Path(
        "benchmarks/results/accuracy.json"
    ),
    as_json: StudyJson = False,
) -> None:
    """Gather runs written to other files (--out of separate accuracy commands) into one table.

    Runs already there are kept; the merge and its command are recorded under "merges".
    """
    from cmcrec.benchmarks.accuracy import format_table, merge_accuracy

    payload = merge_accuracy(out, sources, log=_say)
    if as_json:
        print(json.dumps({"rows": payload.get("rows", [])}))
    else:
        typer.echo(format_table(payload.get("rows", [])))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_models(models: str, allowed_extra: tuple[str, ...] = ()) -> list[str]:
    from cmcrec.models.registry import get_model, model_names

    ms = _csv(models, "--models")
    for m in ms:
        if m in allowed_extra:
            continue
        try:
            get_model(m)
        except ConfigError:
            known = ", ".join([*model_names(), *allowed_extra])
            raise ConfigError(f"--models: unknown model {m!r}; known: {known}") from None
    return ms


def _check_common(
    dataset: str, preset: str | None, epochs: int | None, max_train_ratings: int | None, candidates: int
) -> None:
    from cmcrec.data.datasets import DATASETS
    from cmcrec.models.presets import PRESETS

    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if max_train_ratings is not None and max_train_ratings < 2:
        raise ConfigError(f"--max-train-ratings must be >= 2, got {max_train_ratings}")
    if candidates < 0:
        raise ConfigError(f"--candidates must be >= 0 (0 = all items), got {candidates}")


def _check_split_name(dataset: str, split: str | None) -> None:
    from cmcrec.data.datasets import DATASETS

    names = DATASETS[dataset].split_names
    if split is not None and split != "canonical" and split not in names:
        raise ConfigError(f"--split: unknown split {split!r} for {dataset}; choose one of {', '.join(names)}")


def _check_device(device: str) -> None:
    from cmcrec.training.trainer import resolve_device

    resolve_device(device)


def _emit_rows(payload: dict, as_json: bool, table) -> None:
    rows = payload.get("rows", [])
    if as_json:
        print(json.dumps({"rows": rows}))
    else:
        typer.echo(table(rows))


@bench_app.command("robustness")
def robustness(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name.")] = "ml-100k",
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the dataset's canonical one).")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names.")] = "mf,igmc,mccl",
    noise: Annotated[
        str, typer.Option("--noise", help="Comma-separated noise shares, in percent of the training ratings.")
    ] = "0,5,10,20,30",
    kinds: Annotated[
        str, typer.Option("--kinds", help="Noise kinds: fake (random ratings), flip (changed levels).")
    ] = ("fake,flip"),
    seeds: StudySeeds = "0",
    preset: StudyPreset = None,
    epochs: StudyEpochs = None,
    max_train_ratings: StudyMaxTrain = None,
    candidates: Candidates = 200,
    out: Annotated[Path, typer.Option("--out", help="Results JSON (runs already there are skipped).")] = Path(
        "benchmarks/results/robustness.json"
    ),
    data_dir: DataDir = None,
    device: Device = "auto",
    num_workers: Workers = 0,
    as_json: StudyJson = False,
) -> None:
    """Test RMSE and NDCG@10 of each model as fake or flipped ratings are added to the training data."""
    from cmcrec.benchmarks.robustness import check_noise_levels, format_table, run_robustness
    from cmcrec.data.datasets import load_split
    from cmcrec.data.ratings import Split
    from cmcrec.data.splits import subsample

    ms = _check_models(models)
    try:
        levels = [float(v) for v in _csv(noise, "--noise")]
    except ValueError:
        raise ConfigError(f"--noise: expected comma-separated percentages, got {noise!r}") from None
    ks = _csv(kinds, "--kinds")
    check_noise_levels(levels, ks)
    seed_list = _ints(seeds, "--seeds")
    _check_common(dataset, preset, epochs, max_train_ratings, candidates)
    _check_split_name(dataset, split)
    _check_device(device)
    data = load_split(dataset, split, data_dir=data_dir)
    data = Split(subsample(data.train, max_train_ratings), data.test, data.name)
    _say(f"robustness on {data.name}: {len(data.train):,} training ratings, {len(data.test):,} test ratings")
    payload = run_robustness(
        data,
        ms,
        levels,
        ks,
        seed_list,
        out,
        preset=preset,
        epochs=epochs,
        candidates=candidates or None,
        max_train_ratings=max_train_ratings,
        device=device,
        num_workers=num_workers,
        log=_say,
    )
    _emit_rows(payload, as_json, format_table)


@bench_app.command("cold-start")
def cold_start(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (ml-100k, movietweetings-100k, ...).")] = (
        "ml-100k"
    ),
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the dataset's canonical one).")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names.")] = "mf,igmc,mccl",
    studies: Annotated[
        str, typer.Option("--studies", help="bucket (activity buckets) and/or inductive (held-out users).")
    ] = "bucket,inductive",
    k: Annotated[str, typer.Option("--k", help="Numbers of ratings given per held-out user.")] = "1,3,5,10",
    holdout_fraction: Annotated[
        float, typer.Option("--holdout-fraction", help="Share of eligible users held out of training.")
    ] = 0.15,
    min_ratings: Annotated[
        int, typer.Option("--min-ratings", help="Fewest ratings (train + test) of a user who may be held out.")
    ] = 15,
    given: Annotated[
        str, typer.Option("--given", help="Which ratings a held-out user gives: earliest (by time) or random.")
    ] = "earliest",
    seeds: StudySeeds = "0",
    preset: StudyPreset = None,
    epochs: StudyEpochs = None,
    max_train_ratings: StudyMaxTrain = None,
    candidates: Candidates = 200,
    out: Annotated[Path, typer.Option("--out", help="Results JSON (runs already there are skipped).")] = Path(
        "benchmarks/results/cold_start.json"
    ),
    data_dir: DataDir = None,
    device: Device = "auto",
    num_workers: Workers = 0,
    as_json: StudyJson = False,
) -> None:
    """Metrics by user activity bucket, and for users held out of training (given k ratings, no retraining)."""
    from cmcrec.benchmarks.cold_start import check_options, format_table, run_cold_start
    from cmcrec.data.datasets import load_split

    ms = _check_models(models)
    study_list = _csv(studies, "--studies")
    k_list = _ints(k, "--k")
    check_options(study_list, k_list, holdout_fraction, min_ratings, given)
    seed_list = _ints(seeds, "--seeds")
    _check_common(dataset, preset, epochs, max_train_ratings, candidates)
    _check_split_name(dataset, split)
    _check_device(device)
    data = load_split(dataset, split, data_dir=data_dir)
    _say(f"cold start on {data.name}: {len(data.train):,} training ratings, {len(data.test):,} test ratings")
    payload = run_cold_start(
        data,
        ms,
        seed_list,
        out,
        studies=study_list,
        ks=k_list,
        holdout_fraction=holdout_fraction,
        min_ratings=min_ratings,
        given=given,
        candidates=candidates or None,
        preset=preset,
        epochs=epochs,
        max_train_ratings=max_train_ratings,
        device=device,
        num_workers=num_workers,
        log=_say,
    )
    _emit_rows(payload, as_json, format_table)


@bench_app.command("blog")
def blog(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name.")] = "ml-100k",
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the dataset's canonical one).")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names, plus 'popularity'.")] = (
        "mf,mccl,igmc,mccl-v1,mccl-v2,mccl-nocl,popularity"
    ),
    seeds: StudySeeds = "0",
    preset: StudyPreset = None,
    epochs: StudyEpochs = None,
    max_train_ratings: StudyMaxTrain = None,
    candidates: Candidates = 200,
    out: Annotated[Path, typer.Option("--out", help="Blog table JSON (runs already there are skipped).")] = Path(
        "benchmarks/results/blog.json"
    ),
    popularity_out: Annotated[
        Path, typer.Option("--popularity-out", help="Popularity profile JSON of the top-10 lists.")
    ] = Path("benchmarks/results/popularity.json"),
    data_dir: DataDir = None,
    device: Device = "auto",
    num_workers: Workers = 0,
    models_dir: StudyModelsDir = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Config override KEY=VALUE for the models that have KEY (repeatable); recorded with each run "
            "and shown in its row's model label, e.g. --set rank_weight=0.3.",
        ),
    ] = None,
    as_json: StudyJson = False,
) -> None:
    """RMSE, Recall/NDCG@10, coverage and popularity bias of every model on one split (the blog's table)."""
    from cmcrec.benchmarks.blog import POPULARITY, format_table, run_blog
    from cmcrec.data.datasets import load_split
    from cmcrec.data.ratings import Split
    from cmcrec.data.splits import subsample

    ms = _check_models(models, allowed_extra=(POPULARITY,))
    seed_list = _ints(seeds, "--seeds")
    extra = parse_set(set_)
    _check_overrides(extra, ms)
    _check_common(dataset, preset, epochs, max_train_ratings, candidates)
    _check_split_name(dataset, split)
    _check_device(device)
    data = load_split(dataset, split, data_dir=data_dir)
    data = Split(subsample(data.train, max_train_ratings), data.test, data.name)
    _say(f"blog table on {data.name}: {len(data.train):,} training ratings, {len(data.test):,} test ratings")
    payload = run_blog(
        data,
        ms,
        seed_list,
        out,
        popularity_out,
        candidates=candidates or None,
        preset=preset,
        epochs=epochs,
        max_train_ratings=max_train_ratings,
        overrides=extra or None,
        device=device,
        num_workers=num_workers,
        models_dir=models_dir,
        log=_say,
    )
    _emit_rows(payload, as_json, format_table)
