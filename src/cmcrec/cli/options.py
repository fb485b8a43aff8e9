"""Options that several CLI verbs share (one help text each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
