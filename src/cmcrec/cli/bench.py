"""``cmcrec benchmark ...``: the studies behind the committed results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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


@bench_app.command("accuracy")
def accuracy(
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated dataset names.")] = (
        "ml-100k,douban,flixster,yahoo_music"
    ),
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names.")] = (
        "mf,igmc,mccl,mccl-v1,mccl-v2,mccl-nocl"
    ),
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    preset: Annotated[str | None, typer.Option("--preset", help="Config preset (cpu, paper).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override epochs.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Results JSON (runs already there are skipped).")] = Path(
        "benchmarks/results/accuracy.json"
    ),
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    num_workers: Annotated[int, typer.Option("--num-workers")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregated rows as one JSON object.")] = False,
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
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    if as_json:
        print(json.dumps({"rows": payload.get("rows", [])}))
    else:
        typer.echo(format_table(payload.get("rows", [])))
