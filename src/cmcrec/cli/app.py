"""CLI verbs. Each is a typed function; Typer builds the parser and help from it."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from cmcrec.cli.bench import bench_app
from cmcrec.cli.options import (
    Candidates,
    Columns,
    DataDir,
    Device,
    Duplicates,
    NumBuckets,
    Sep,
    SetOpt,
    Workers,
    bucket_options,
    file_options,
    parse_set,
    read_config_json,
)
from cmcrec.config import RunContext
from cmcrec.data.ratings import Split
from cmcrec.data.splits import subsample
from cmcrec.errors import ConfigError

app = typer.Typer(
    help="cmcrec: Contrastive Matrix Completion recommender (MCCL, IGMC, MF baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
Dataset = Annotated[str, typer.Option("--dataset", "-d", help="Dataset name (see `cmcrec data list`) or a file.")]
SplitOpt = Annotated[
    str | None, typer.Option("--split", help="Split: a canonical one (u1..u5, ua, ub), 'random' or 'temporal'.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for splits, sampling and initialisation.")]
Ks = Annotated[str, typer.Option("--k", help="Comma-separated cut-offs for ranking metrics.")]
RankUsers = Annotated[
    int | None,
    typer.Option("--rank-users", help="Rank for a seeded sample of this many test users (RMSE uses all)."),
]


def _emit(obj: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    else:
        typer.echo(text if text is not None else json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _say(msg: str) -> None:
    """Human-facing progress lines go to stderr, so stdout stays machine-readable."""
    print(msg, file=sys.stderr, flush=True)


def _check_rank_users(n: int | None) -> None:
    if n is not None and n < 1:
        raise ConfigError(f"--rank-users must be >= 1, got {n}")


def _parse_ks(ks: str) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--k: expected comma-separated integers, got {ks!r}") from None
    if not out or min(out) < 1:
        raise ConfigError(f"--k: cut-offs must be >= 1, got {ks!r}")
    return out


def _context(seed: int, device: str, num_workers: int) -> RunContext:
    from cmcrec.training.distributed import init_from_env

    return init_from_env(RunContext(device=device, num_workers=num_workers, seed=seed))


# -- data ---------------------------------------------------------------------------------------------


@data_app.command("list")
def data_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List known datasets and whether each is available locally."""
    from cmcrec.data.datasets import list_datasets

    rows = list_datasets(data_dir)
    if as_json:
        _emit({"datasets": rows}, True)
        return
    for r in rows:
        mark = "available" if r.get("available") else "missing"
        typer.echo(f"{r['name']:<22} {mark:<10} {r.get('description', '')}")


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: ml-100k (the only one with a public download).")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Fetch a dataset into the data dir (checksum verified; nothing half-written on failure)."""
    from cmcrec.data.datasets import DATASETS, resolve_data_dir
    from cmcrec.data.download import download_ml100k

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if not DATASETS[name].downloadable:
        raise ConfigError(f"{name} has no public download; get it from {DATASETS[name].source}")
    folder = download_ml100k(resolve_data_dir(data_dir))
    _emit({"dataset": name, "path": str(folder)}, as_json, f"{name}: {folder}")


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="Dataset name or path to a ratings file.")],
    data_dir: DataDir = None,
    sep: Sep = None,
    duplicates: Duplicates = None,
    columns: Columns = None,
    num_buckets: NumBuckets = None,
    as_json: JsonFlag = False,
) -> None:
    """Summary statistics of a dataset or ratings file."""
    from cmcrec.data.datasets import load_ratings

    options = file_options(name, sep, duplicates, columns) | bucket_options(num_buckets, name)
    ratings = load_ratings(name, data_dir=data_dir, **options)
    info = ratings.info()
    _emit(info, as_json, "\n".join(f"{k:<26} {v}" for k, v in info.items()))


# -- train / evaluate ---------------------------------------------------------------------------------


def _load_split(dataset: str, split: str | None, data_dir: Path | None, seed: int, options: dict[str, Any]):
    from cmcrec.data.datasets import load_split

    return load_split(dataset, split=split, data_dir=data_dir, seed=seed, **options)


def _config_overrides(
    config_file: Path | None,
    epochs: int | None,
    preset: str | None,
    fields: set[str],
    set_pairs: list[str] | None = None,
    model: str = "",
) -> dict[str, Any]:
    from cmcrec.models.presets import preset_overrides

    overrides: dict[str, Any] = preset_overrides(preset, fields) if preset else {}
    if config_file is not None:
        overrides.update(read_config_json(config_file))
    sets = parse_set(set_pairs)
    unknown = sorted(set(sets) - fields)
    if unknown:
        raise ConfigError(
            f"--set: unknown field(s) {', '.join(unknown)} for {model or 'this model'}; "
            f"known: {', '.join(sorted(fields))}"
        )
    overrides.update(sets)
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {epochs}")
        overrides["epochs"] = epochs
    return overrides


def fit_model(
    model: str,
    dataset: str,
    split: str | None,
    data_dir: Path | None,
    seed: int,
    device: str,
    num_workers: int,
    epochs: int | None,
    max_train_ratings: int | None,
    config_file: Path | None,
    preset: str | None,
    out: Path | None,
    resume: bool,
    quiet: bool,
    table_options: dict[str, Any] | None = None,
    set_pairs: list[str] | None = None,
):
    """Load data, train, return (recommender, split). ``table_options`` read a ratings file;
    ``set_pairs`` are ``--set KEY=VALUE`` config fields."""
    from cmcrec.models.registry import get_model
    from cmcrec.recommender import Recommender
    from cmcrec.training.trainer import resolve_device

    # Every flag is checked before any data is read or any training starts.
    spec = get_model(model)
    context = _context(seed, device, num_workers)
    resolve_device(context.device)
    if max_train_ratings is not None and max_train_ratings < 2:
        raise ConfigError(f"--max-train-ratings must be >= 2, got {max_train_ratings}")
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    overrides = _config_overrides(config_file, epochs, preset, fields, set_pairs, model)
    config = spec.make_config(overrides, source="--config/--set" if set_pairs else "--config")
    data = _load_split(dataset, split, data_dir, seed, table_options or {})
    train = subsample(data.train, max_train_ratings, seed)
    if train is not data.train:
        # The model's training data is the sample: evaluation excludes (and counts as seen) only those ratings.
        data = Split(train, data.test, name=f"{data.name}[{len(train)}]")
    checkpoint_dir = None if out is None else out.with_name(out.name + ".checkpoint")

    def log(r):
        if not quiet:
            _say(
                f"epoch {r.epoch:3d}  loss {r.train_loss:.4f}  valid RMSE {r.valid_rmse:.4f}  "
                f"{r.subgraphs_per_s:,.0f} targets/s  {r.seconds:.1f}s"
            )

    if not quiet and context.is_main:
        _say(
            f"training {model} on {data.name}: {len(train):,} ratings "
            f"({train.num_users:,} users × {train.num_items:,} items), device {context.device}"
        )
    rec = Recommender.fit(model, train, config, context, checkpoint_dir=checkpoint_dir, resume=resume, log=log)
    choice = rec.training.get("eval_cap")
    if choice and not quiet and context.is_main:
        scores = ", ".join(
            f"{c['eval_max_nodes_per_hop'] or 'all'}: {c['valid_rmse']:.4f}"
            if c["valid_rmse"] is not None
            else f"{c['eval_max_nodes_per_hop'] or 'all'}: n/a"
            for c in choice["valid_rmse"]
        )
        _say(f"evaluation cap chosen on validation: {choice['chosen'] or 'all'} neighbours per hop ({scores})")
    if out is not None and context.is_main:
        rec.save(out)
        if not quiet:
            _say(f"saved {out}")
    return rec, data, context


@app.command()
def train(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model name: mf, bias, igmc, mccl, mccl-v1, ...")
    ] = "mccl",
    dataset: Dataset = "movietweetings-100k",
    split: SplitOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the config's epochs.")] = None,
    max_train_ratings: Annotated[
        int | None, typer.Option("--max-train-ratings", help="Train on a seeded sample of this many ratings.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the model artifact here.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON file of config fields.")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Config preset: 'cpu' (laptop budget) or 'paper'.")
    ] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.checkpoint.")] = False,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Report test metrics after training.")
    ] = True,
    candidates: Candidates = 200,
    rank_users: RankUsers = None,
    k: Ks = "10",
    data_dir: DataDir = None,
    sep: Sep = None,
    duplicates: Duplicates = None,
    columns: Columns = None,
    num_buckets: NumBuckets = None,
    seed: Seed = 0,
    device: Device = "auto",
    num_workers: Workers = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train a model, save it with --out, and report test metrics."""
    if resume and out is None:
        raise ConfigError("--resume needs --out (the checkpoint lives beside it)")
    options = file_options(dataset, sep, duplicates, columns) | bucket_options(num_buckets, dataset)
    ks = _parse_ks(k)
    _check_rank_users(rank_users)
    from cmcrec.evaluation.pipeline import evaluate_recommender

    rec, data, context = fit_model(
        model,
        dataset,
        split,
        data_dir,
        seed,
        device,
        num_workers,
        epochs,
        max_train_ratings,
        config,
        preset,
        out,
        resume,
        quiet=False,
        table_options=options,
        set_pairs=set_,
    )
    from cmcrec.training.distributed import shutdown

    if not context.is_main:
        shutdown()
        return
    result: dict[str, Any] = {
        "model": model,
        "dataset": data.name,
        "best_epoch": rec.training.get("best_epoch"),
        "best_valid_rmse": rec.training.get("best_valid_rmse"),
        "train_seconds": rec.training.get("seconds"),
        "out": str(out) if out is not None else None,
    }
    if "eval_cap" in rec.training:
        result["eval_max_nodes_per_hop"] = rec.training["eval_cap"]["chosen"]
    if evaluate:
        result |= evaluate_recommender(rec, data, ks, candidates or None, rank_users=rank_users)
    shutdown()
    _emit(result, as_json, _format_metrics(result))


def _format_metrics(result: dict) -> str:
    lines = []
    for key, v in result.items():
        if isinstance(v, float):
            v = f"{v:.4f}" if math.isfinite(v) else str(v)
        lines.append(f"{key:<24} {v}")
    return "\n".join(lines)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="A model directory, or a model name to train first.")],
    dataset: Dataset = "movietweetings-100k",
    split: SplitOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="When training: override epochs.")] = None,
    max_train_ratings: Annotated[int | None, typer.Option("--max-train-ratings")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="When training: JSON config file.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="When training: config preset.")] = None,
    set_: SetOpt = None,
    candidates: Candidates = 200,
    rank_users: RankUsers = None,
    k: Ks = "5,10,20",
    data_dir: DataDir = None,
    sep: Sep = None,
    duplicates: Duplicates = None,
    columns: Columns = None,
    num_buckets: NumBuckets = None,
    seed: Seed = 0,
    device: Device = "auto",
    num_workers: Workers = 0,
    as_json: JsonFlag = False,
) -> None:
    """Test-split metrics: RMSE, MAE, full-catalogue ranking, coverage, popularity, sampled ranking."""
    from cmcrec.evaluation.pipeline import evaluate_recommender
    from cmcrec.recommender import Recommender

    options = file_options(dataset, sep, duplicates, columns) | bucket_options(num_buckets, dataset)
    ks = _parse_ks(k)
    _check_rank_users(rank_users)
    path = Path(model)
    if path.is_dir():
        rec = Recommender.load(path, device="cpu" if device == "auto" else device)
        data = _load_split(dataset, split, data_dir, seed, options)
        if data.train.users != rec.users or data.train.items != rec.items:
            raise ConfigError(
                f"--model {model}: its users and items do not match those of {data.name} "
                f"(--dataset {dataset}{'' if split is None else f' --split {split}'}); "
                "give the dataset and split it was trained on"
            )
        # Score against what the model was trained on (it may be a --max-train-ratings sample).
        data = Split(rec.train, data.test, name=data.name)
        model_name = rec.model_name
    else:
        rec, data, context = fit_model(
            model,
            dataset,
            split,
            data_dir,
            seed,
            device,
            num_workers,
            epochs,
            max_train_ratings,
            config,
            preset,
            None,
            False,
            quiet=as_json,
            table_options=options,
            set_pairs=set_,
        )
        if not context.is_main:  # under torchrun only rank 0 evaluates and prints
            from cmcrec.training.distributed import shutdown

            shutdown()
            return
        model_name = model
    result = {"model": model_name, "dataset": data.name} | evaluate_recommender(
        rec, data, ks, candidates or None, rank_users=rank_users
    )
    _emit(result, as_json, _format_metrics(result))
    from cmcrec.training.distributed import shutdown

    shutdown()


def _parse_ratings_flag(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        item, eq, value = part.rpartition("=")
        if not eq or not item:
            raise ConfigError(f"--ratings: expected item=rating pairs separated by commas, got {part!r}")
        try:
            out[item.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--ratings: rating for item {item.strip()!r} is not a number: {value!r}") from None
    if not out:
        raise ConfigError("--ratings: give at least one item=rating pair")
    return out


@app.command()
def recommend(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory written by `cmcrec train --out`.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="A training user id.")] = None,
    ratings: Annotated[
        str | None, typer.Option("--ratings", help="A new user's ratings: 'item=rating,item=rating,...'.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Number of items.")] = 10,
    candidates: Candidates = 200,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Allow items the user already rated.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Top-K items for a training user (--user) or for a new user from a few ratings (--ratings)."""
    from cmcrec.recommender import Recommender

    if (user is None) == (ratings is None):
        raise ConfigError("give exactly one of --user or --ratings")
    if k < 1 or k > 1000:
        raise ConfigError(f"-k must be in 1..1000, got {k}")
    rec = Recommender.load(model)
    if user is not None:
        recs = rec.recommend(user, k=k, exclude_seen=not include_seen, candidates=candidates or None)
        who: dict[str, Any] = {"user": user}
    else:
        recs = rec.recommend_for_ratings(_parse_ratings_flag(ratings or ""), k=k, candidates=candidates or None)
        who = {"new_user": True}
    payload = who | {"items": [r.to_dict() for r in recs]}
    lines = [f"{'rank':>4}  {'item':<12} {'score':>6}  title"]
    for i, r in enumerate(recs, 1):
        lines.append(f"{i:>4}  {r.item:<12} {r.score:6.3f}  {r.title or ''}")
    _emit(payload, as_json, "\n".join(lines))


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory.")],
    host: Annotated[str, typer.Option("--host", help="Bind address (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
) -> None:
    """Serve a model over HTTP (FastAPI + uvicorn); OpenAPI docs at /docs."""
    import uvicorn

    from cmcrec.service.app import create_app

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    uvicorn.run(create_app(model), host=host, port=port, log_level="info")


app.add_typer(bench_app, name="benchmark")


def _register_studies() -> None:
    from cmcrec.cli.report import report_command, sweep_command

    app.command("report")(report_command)
    app.command("sweep")(sweep_command)


_register_studies()
