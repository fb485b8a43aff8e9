"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets: ``$CMCREC_SHARED_DATA``, else ``<repo>/../shared/data``.

    Tests that use it are skipped where the folder is absent.
    """
    env = os.environ.get("CMCREC_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (set CMCREC_SHARED_DATA)")
    return path
