"""Errors raised to callers.

Every error that a user can cause (a bad file, flag, request field or artifact)
is a :class:`CmcrecError`. Its message names where the bad value came from, so
the CLI can print it on one line and exit with status 2, and the HTTP service
can answer 4xx with it. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

from os import PathLike


class CmcrecError(ValueError):
    """Base class for errors caused by input the caller controls."""


class DataError(CmcrecError):
    """A data file or in-memory table is malformed.

    Args:
        message: what is wrong, in plain words.
        path: the file it came from, if any.
        line: 1-based line number in that file, if known.
        field: column or field name, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path if line is None else f"{self.path}:{line}")
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(CmcrecError):
    """A configuration value or command-line flag is invalid."""


class TrainingDiverged(CmcrecError):
    """Validation RMSE was never finite: the settings make training diverge (too high a learning rate)."""


class ArtifactError(CmcrecError):
    """A saved model directory is missing, damaged, or from an unknown version."""


class UnknownIdError(CmcrecError, KeyError):
    """A user or item id is not in the model's vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""
