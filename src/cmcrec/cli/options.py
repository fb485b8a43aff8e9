"""Options that several CLI verbs share (one help text each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cmcrec.errors import ConfigError

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder holding datasets (else $CMCREC_DATA_DIR, else the user cache)."),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Workers = Annotated[int, typer.Option("--num-workers", help="DataLoader workers extracting subgraphs.")]
Candidates = Annotated[
    int,
    typer.Option(
        "--candidates", help="Items the candidate generator proposes for subgraph models to re-rank (0 = all)."
    ),
]

Sep = Annotated[
    str | None,
    typer.Option("--sep", help="Field delimiter of a ratings file (default: sniffed; '\\t' or tab for a tab)."),
]
Duplicates = Annotated[
    str | None,
    typer.Option("--duplicates", help="Repeated (user, item) pairs in a ratings file: error (default), last or mean."),
]

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="A config field as KEY=VALUE (repeatable; the value parses as JSON: numbers, true/false, null), "
        "applied after --preset and --config.",
    ),
]

NumBuckets = Annotated[
    int | None,
    typer.Option(
        "--num-buckets",
        help="Relation types of a bucketed rating scale (yahoo_music's 1-100: 10 equal-width buckets by default, "
        "100 = one per value); for a ratings file, used if its scale is inferred with more than 11 levels.",
    ),
]


def bucket_options(num_buckets: int | None, dataset: str | None = None) -> dict[str, Any]:
    """The ``load_split`` option of ``--num-buckets``, checked before any data is read: at least 2, and
    for a named ``dataset`` only one whose scale is bucketed."""
    from cmcrec.data.datasets import DATASETS

    if num_buckets is None:
        return {}
    if num_buckets < 2:
        raise ConfigError(f"--num-buckets must be >= 2, got {num_buckets}")
    if dataset in DATASETS and DATASETS[dataset].scale.num_buckets is None:
        raise ConfigError(f"--num-buckets applies to a bucketed rating scale (yahoo_music); {dataset} has levels")
    return {"num_buckets": num_buckets}


Columns = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Columns of a ratings file: 'user=userId,item=movieId,rating=stars[,timestamp=ts]' "
        "(header names or 0-based positions).",
    ),
]


def parse_columns(value: str) -> dict[str, str | int]:
    """``'user=userId,item=2,...'`` → ``{"user": "userId", "item": 2, ...}`` (digits are positions)."""
    out: dict[str, str | int] = {}
    for part in (p.strip() for p in value.split(",")):
        key, eq, name = part.partition("=")
        key, name = key.strip(), name.strip()
        if not part or not eq or not key or not name:
            raise ConfigError(f"--columns: expected key=column pairs separated by commas, got {value!r}")
        if key in out:
            raise ConfigError(f"--columns: {key} is given twice")
        out[key] = int(name) if name.isascii() and name.isdigit() else name
    return out


def file_options(dataset: str, sep: str | None, duplicates: str | None, columns: str | None = None) -> dict[str, Any]:
    """``read_table`` options from --sep / --duplicates / --columns, checked before any data is read.

    They apply to ratings files only; given with a named dataset they are an error.
    """
    from cmcrec.data.datasets import DATASETS
    from cmcrec.data.loaders import DUPLICATE_POLICIES

    options: dict[str, Any] = {}
    if sep is not None:
        sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)  # a shell passes --sep '\t' as backslash-t
        if not sep:
            raise ConfigError("--sep must not be empty (give '\\t' or tab for a tab)")
        options["delimiter"] = sep
    if duplicates is not None:
        if duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"--duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
        options["duplicates"] = duplicates
    if columns is not None:
        options["columns"] = parse_columns(columns)
    if options and dataset in DATASETS:  # a folder named like a dataset is still the dataset
        flags = (("--sep", sep), ("--duplicates", duplicates), ("--columns", columns))
        given = [f for f, v in flags if v is not None]
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(f"{' and '.join(given)} {verb} to a ratings file, not to the dataset {dataset!r}")
    return options


def read_config_json(path: Path, flag: str = "--config") -> dict[str, Any]:
    """The JSON object in ``path``; any problem is a ConfigError naming the flag and the file."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{flag}: {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag}: {path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag}: {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{flag}: {path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag}: {path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{flag}: {path}: expected a JSON object of config fields")
    return loaded


def parse_set(pairs: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` strings → a dict; values parse as JSON (numbers, true/false, null), else stay strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
