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
