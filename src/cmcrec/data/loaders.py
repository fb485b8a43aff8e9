"""Readers that turn rating files into :class:`~cmcrec.data.ratings.Ratings`.

Every reader validates what it reads and raises :class:`~cmcrec.errors.DataError`
naming the file and the 1-based line (as a person counts lines, header
included) or the field at fault. Text is parsed with pandas' C engine; only when
it fails does a slow line-by-line pass run, to say *which* line is bad.

Readers:

- :func:`read_table` — any delimited text file (CSV, TSV, ``::``, custom) or
  Parquet file, with a column mapping and a duplicate policy.
- :func:`read_movielens_100k`, :func:`read_movielens_100k_split` — MovieLens
  100K (``u.data``, ``u.item``, ``u.genre``, ``uN.base``/``uN.test``).
- :func:`read_monti_mat` — the Douban / Flixster / YahooMusic ``.mat`` files
  of Monti et al. (MATLAB v7.3, i.e. HDF5).
- :func:`read_movietweetings` — MovieTweetings ``ratings.dat`` / ``movies.dat``.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cmcrec.data.ratings import Ratings, RatingScale, Split, Vocabulary
from cmcrec.errors import ConfigError, DataError

PathArg = str | PathLike[str]
DuplicatePolicy = Literal["error", "last", "mean"]

#: The rating columns a table maps; ``timestamp`` is optional.
COLUMN_KEYS = ("user", "item", "rating", "timestamp")
#: Header names recognised when no column mapping is given (case-insensitive).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "user id", "uid"),
    "item": ("item", "item_id", "itemid", "item id", "movie", "movie_id", "movieid", "iid"),
    "rating": ("rating", "ratings", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "rating_timestamp"),
}
#: Delimiters tried, in this order, when none is given and the suffix says nothing.
CANDIDATE_DELIMITERS = ("::", "\t", ",", ";", "|")
DUPLICATE_POLICIES = ("error", "last", "mean")

ML100K_SCALE = RatingScale.from_range(1, 5)
MOVIETWEETINGS_SCALE = RatingScale.from_range(0, 10)
ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


# --------------------------------------------------------------------------- raw columns


@dataclass
class _RawTable:
    """Parsed but not yet encoded columns, with where each row came from.

    Attributes:
        user, item: object arrays of str ids.
        rating: float64 values.
        timestamp: int64 seconds, or None.
        path: source file.
        lines: 1-based line number of each row in a text file; None for rows of
            a Parquet file (then rows are named ``row N``).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    path: str
    lines: np.ndarray | None

    def __len__(self) -> int:
        return len(self.user)

    def fail(self, row: int, message: str, field: str | None = None) -> DataError:
        """A DataError located at one row of this table."""
        if self.lines is None:
            return DataError(f"row {row + 1}: {message}", path=self.path, field=field)
        return DataError(message, path=self.path, line=int(self.lines[row]), field=field)

    def where(self, row: int) -> str:
        return f"row {row + 1}" if self.lines is None else f"line {int(self.lines[row])}"


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError("no such file", path=path)
    if path.is_dir():
        raise DataError("is a directory, expected a file", path=path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot decompress gzip file: {e}", path=path) from None
    return path.read_bytes()


def _delimiter_name(d: str) -> str:
    return {"\t": "'\\t' (tab)", " ": "' ' (space)"}.get(d, repr(d))


def _guess_delimiter(path: Path, first_line: str) -> str | None:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return ","
    if suffixes and suffixes[-1] == ".tsv":
        return "\t"
    for d in CANDIDATE_DELIMITERS:
        if d in first_line:
            return d
    return None


def _split_line(line: str, delimiter: str) -> list[str]:
    if delimiter == "," or delimiter == ";":
        return next(csv.reader([line], delimiter=delimiter), [])
    return line.split(delimiter)


def _text_lines(data: bytes, encoding: str) -> list[str]:
    return data.decode(encoding, errors="replace").splitlines()


def _locate_field_count_error(path: Path, data: bytes, encoding: str, delimiter: str) -> DataError:
    """Slow pass: find the first line whose number of fields differs from the first line's."""
    expected = None
    expected_line = None
    for number, line in enumerate(_text_lines(data, encoding), start=1):
        if not line.strip():
            continue
        n = len(_split_line(line, delimiter))
        if expected is None:
            expected, expected_line = n, number
        elif n != expected:
            return DataError(
                f"has {n} field(s) separated by {_delimiter_name(delimiter)}, but line {expected_line} has {expected}",
                path=path,
                line=number,
            )
    return DataError(f"cannot parse the file with delimiter {_delimiter_name(delimiter)}", path=path)


def _locate_decode_error(path: Path, data: bytes, encoding: str) -> DataError:
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError as e:
            return DataError(
                f"is not valid {encoding} text ({e.reason} at byte {e.start}); pass encoding=...",
                path=path,
                line=number,
            )
    return DataError(f"is not valid {encoding} text; pass encoding=...", path=path)


def _resolve_columns(
    columns: Mapping[str, str | int] | None,
    header_names: list[str] | None,
    num_fields: int,
    path: Path,
    header_line: int | None,
) -> dict[str, int]:
    """Map ``user/item/rating[/timestamp]`` to field positions."""
    if columns is not None:
        unknown = set(columns) - set(COLUMN_KEYS)
        if unknown:
            raise ConfigError(f"unknown column key(s) {sorted(unknown)}; the mapping takes {', '.join(COLUMN_KEYS)}")
        missing = [k for k in ("user", "item", "rating") if k not in columns]
        if missing:
            raise ConfigError(f"column mapping is missing {missing}; it needs user, item and rating")
    positions: dict[str, int] = {}
    if header_names is not None:
        lowered = [h.strip().lower() for h in header_names]
        for key in COLUMN_KEYS:
            if columns is not None:
                if key not in columns:
                    continue
                wanted = columns[key]
                if isinstance(wanted, int):
                    positions[key] = wanted
                    continue
                if wanted in header_names:
                    positions[key] = header_names.index(wanted)
                    continue
                raise DataError(
                    f"header has no column {wanted!r} (for {key}); columns are: "
                    + ", ".join(repr(h) for h in header_names),
                    path=path,
                    line=header_line,
                    field=str(wanted),
                )
            found = [j for j, h in enumerate(lowered) if h in COLUMN_ALIASES[key]]
            if found:
                positions[key] = found[0]
            elif key != "timestamp":
                raise DataError(
                    f"header has no {key} column (looked for {', '.join(COLUMN_ALIASES[key])}); "
                    f"columns are: {', '.join(repr(h) for h in header_names)}; pass columns={{...}} (CLI: --columns)",
                    path=path,
                    line=header_line,
                    field=key,
                )
    elif columns is not None:
        for key, wanted in columns.items():
            if not isinstance(wanted, int):
                raise ConfigError(
                    f"column {key}={wanted!r} is a name but the file is read without a header; "
                    "pass header=True or give field positions (0-based)"
                )
            positions[key] = wanted
    else:
        positions = {"user": 0, "item": 1, "rating": 2}
        if num_fields >= 4:
            positions["timestamp"] = 3
    return positions


def _looks_like_header(first_line: str, delimiter: str, columns: Mapping[str, str | int] | None) -> bool:
    """A first line whose rating field is not a number names the columns (``user,item,rating``)."""
    fields = _split_line(first_line, delimiter)
    pos = 2 if columns is None else columns.get("rating", 2)
    if not isinstance(pos, int) or pos >= len(fields):
        return False
    try:
        float(fields[pos])
    except ValueError:
        return True
    return False


def _parse_text(
    path: Path,
    columns: Mapping[str, str | int] | None,
    delimiter: str | None,
    header: bool | None,
    encoding: str,
) -> _RawTable:
    if delimiter is not None and not delimiter:
        raise ConfigError("delimiter must not be empty")
    data = _read_bytes(path)
    text_head = data[:65536].decode(encoding, errors="replace").splitlines()
    first = next(((n, s) for n, s in enumerate(text_head, start=1) if s.strip()), None)
    if first is None:
        raise DataError("file is empty" if not data.strip() else "has no non-blank line in its first 64 KiB", path=path)
    first_number, first_line = first
    given = delimiter
    if delimiter is None:
        delimiter = _guess_delimiter(path, first_line)
        if delimiter is None:
            raise DataError(
                "has one field per line: found none of the delimiters "
                f"{', '.join(_delimiter_name(d) for d in CANDIDATE_DELIMITERS)}; pass delimiter=... (CLI: --sep)",
                path=path,
                line=first_number,
            )
    if header is None:
        header = (columns is not None and any(isinstance(v, str) for v in columns.values())) or _looks_like_header(
            first_line, delimiter, columns
        )

    sep = delimiter
    quoting = csv.QUOTE_MINIMAL if delimiter in (",", ";") else csv.QUOTE_NONE
    if len(delimiter) > 1:
        # The C engine only splits on one character: swap a multi-character
        # delimiter for the ASCII unit separator, which text never contains.
        if b"\x1f" in data:
            raise DataError("contains byte 0x1f; cannot use a multi-character delimiter", path=path)
        data = data.replace(delimiter.encode(encoding), b"\x1f")
        sep = "\x1f"
    try:
        df = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            header=None,
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,
            engine="c",
            encoding=encoding,
            quoting=quoting,
        )
    except pd.errors.ParserError:
        raw = data if len(delimiter) == 1 else data.replace(b"\x1f", delimiter.encode(encoding))
        raise _locate_field_count_error(path, raw, encoding, delimiter) from None
    except UnicodeDecodeError:
        raise _locate_decode_error(path, data, encoding) from None

    # Row r of df is line r + 1 of the file: blank lines were kept as empty rows.
    blank = (df == "").all(axis=1).to_numpy().copy()
    lines = np.arange(1, len(df) + 1, dtype=np.int64)
    header_names = None
    header_line = None
    if header:
        first = int(np.argmin(blank))
        header_line = first + 1
        header_names = [str(h).strip() for h in df.iloc[first].tolist()]
        blank[: first + 1] = True
    df = df.loc[~blank]
    lines = lines[~blank]
    num_fields = df.shape[1]
    if len(df) == 0:
        raise DataError("has a header but no data rows" if header else "file is empty", path=path)

    if num_fields == 1:
        others = [d for d in CANDIDATE_DELIMITERS if d != delimiter and d in first_line]
        hint = (
            f"; it looks {_delimiter_name(others[0])}-separated: pass delimiter={others[0]!r} (CLI: --sep)"
            if others
            else "; pass the file's delimiter"
        )
        said = "given" if given is not None else "guessed"
        raise DataError(
            f"has one field per line when split on the {said} delimiter {_delimiter_name(delimiter)}{hint}",
            path=path,
            line=int(lines[0]),
        )

    positions = _resolve_columns(columns, header_names, num_fields, path, header_line)
    needed = max(positions.values()) + 1
    if needed > num_fields:
        raise DataError(
            f"has {num_fields} fields but the column mapping needs {needed} (delimiter {_delimiter_name(delimiter)})",
            path=path,
            line=int(lines[0]),
        )

    cols = {k: df.iloc[:, j].str.strip() for k, j in positions.items()}
    for key, col in cols.items():
        empty = (col == "").to_numpy()
        if empty.any():
            row = int(np.argmax(empty))
            line = int(lines[row])
            text = _text_lines(data, encoding)[line - 1]
            n = len(_split_line(text, sep))
            if n < num_fields:
                raise DataError(
                    f"has {n} field(s), expected {num_fields} (delimiter {_delimiter_name(delimiter)})",
                    path=path,
                    line=line,
                )
            hint = ""
            if key == "timestamp" and positions[key] == num_fields - 1 and text.rstrip().endswith(delimiter):
                hint = (
                    f" (the line ends with the delimiter {_delimiter_name(delimiter)}: "
                    "a trailing one makes an empty last field)"
                )
            raise DataError(f"empty {key} field{hint}", path=path, line=line, field=key)

    rating = _parse_ratings(cols["rating"], path, lines)
    timestamp = None
    if "timestamp" in cols:
        timestamp = _parse_timestamps(cols["timestamp"], path, lines)
    return _RawTable(
        user=cols["user"].to_numpy(dtype=object),
        item=cols["item"].to_numpy(dtype=object),
        rating=rating,
        timestamp=timestamp,
        path=str(path),
        lines=lines,
    )


def _located(path: Path, lines: np.ndarray | None, row: int, message: str, field: str) -> DataError:
    if lines is None:
        return DataError(f"row {row + 1}: {message}", path=path, field=field)
    return DataError(message, path=path, line=int(lines[row]), field=field)


def _parse_ratings(col: pd.Series, path: Path, lines: np.ndarray | None, field: str = "rating") -> np.ndarray:
    """Ratings as float64; the first non-numeric, NaN or infinite value is an error."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            message = "rating is NaN (missing)" if np.isnan(values[row]) else f"rating {values[row]} is not finite"
            raise _located(path, lines, row, message, field)
        return values
    text = col.astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raw = text.iloc[row]
        if raw.lower() in ("nan", "na", "n/a", "null", "none", "<na>"):
            message = f"rating is NaN ({raw!r}); every row needs a rating"
        elif np.isinf(values[row]):
            message = f"rating {raw!r} is not finite"
        else:
            message = f"rating {raw!r} is not a number"
        raise _located(path, lines, row, message, field)
    return values


def _parse_timestamps(col: pd.Series, path: Path, lines: np.ndarray | None, field: str = "timestamp") -> np.ndarray:
    """Timestamps as int64 Unix seconds.

    Integers are Unix seconds; datetimes, and text columns whose values are all
    ISO 8601 dates (``2013-01-01``, ``2013-01-01T10:00:00``), are converted (a
    date without a time zone is taken as UTC). Fractions and gaps are errors.
    """
    if col.isna().any():
        row = int(np.argmax(col.isna().to_numpy()))
        raise _located(path, lines, row, "timestamp is missing", field)
    if pd.api.types.is_datetime64_any_dtype(col):
        return _datetimes_to_seconds(col)
    if pd.api.types.is_integer_dtype(col):
        return col.to_numpy(dtype=np.int64)
    text = col.astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (np.floor(values) != values)
    if not bad.any():
        return pd.to_numeric(text).to_numpy(dtype=np.int64)
    if np.isnan(values).all():  # no number at all: perhaps dates
        dates = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        if not dates.isna().any():
            return _datetimes_to_seconds(dates)
        bad = dates.isna().to_numpy()
    row = int(np.argmax(bad))
    raise _located(
        path,
        lines,
        row,
        f"timestamp {text.iloc[row]!r} is neither an integer (Unix seconds) nor an ISO 8601 date",
        field,
    )


def _datetimes_to_seconds(col: pd.Series) -> np.ndarray:
    if getattr(col.dt, "tz", None) is not None:
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    return col.astype("datetime64[s]").astype("int64").to_numpy(dtype=np.int64)


def _parse_parquet(path: Path, columns: Mapping[str, str | int] | None) -> _RawTable:
    if not path.exists():
        raise DataError("no such file", path=path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise DataError(f"cannot read Parquet file: {e}", path=path) from None
    names = [str(c) for c in df.columns]
    if columns is not None:
        unknown = set(columns) - set(COLUMN_KEYS)
        if unknown:
            raise ConfigError(f"unknown column key(s) {sorted(unknown)}; the mapping takes {COLUMN_KEYS}")
        missing_keys = [k for k in ("user", "item", "rating") if k not in columns]
        if missing_keys:
            raise ConfigError(f"column mapping is missing {missing_keys}; it needs user, item and rating")
    chosen: dict[str, str] = {}
    for key in COLUMN_KEYS:
        if columns is not None:
            if key not in columns:
                continue
            wanted = columns[key]
            if isinstance(wanted, int):
                if not 0 <= wanted < len(names):
                    raise DataError(f"has {len(names)} columns, no column {wanted}", path=path, field=key)
                chosen[key] = names[wanted]
            elif str(wanted) in names:
                chosen[key] = str(wanted)
            else:
                raise DataError(
                    f"has no column {wanted!r} (for {key}); columns are: {', '.join(map(repr, names))}",
                    path=path,
                    field=str(wanted),
                )
        else:
            found = [n for n in names if n.strip().lower() in COLUMN_ALIASES[key]]
            if found:
                chosen[key] = found[0]
            elif key != "timestamp":
                raise DataError(
                    f"has no {key} column (looked for {', '.join(COLUMN_ALIASES[key])}); "
                    f"columns are: {', '.join(map(repr, names))}; pass columns={{...}} (CLI: --columns)",
                    path=path,
                    field=key,
                )
    df = df.rename(columns={c: str(c) for c in df.columns})
    if len(df) == 0:
        raise DataError("has no rows", path=path)
    ids = {}
    for key in ("user", "item"):
        col = df[chosen[key]]
        isna = col.isna().to_numpy()
        if isna.any():
            raise _located(path, None, int(np.argmax(isna)), f"{key} id is missing", chosen[key])
        if pd.api.types.is_float_dtype(col):
            v = col.to_numpy(dtype=np.float64)
            if np.all(v == np.floor(v)):
                col = col.astype(np.int64)
        ids[key] = col.astype(str).str.strip().to_numpy(dtype=object)
    rating = _parse_ratings(df[chosen["rating"]], path, None, chosen["rating"])
    timestamp = None
    if "timestamp" in chosen:
        timestamp = _parse_timestamps(df[chosen["timestamp"]], path, None, chosen["timestamp"])
    return _RawTable(ids["user"], ids["item"], rating, timestamp, str(path), None)


# --------------------------------------------------------------------------- encoding


def _check_scale(raw: _RawTable, scale: RatingScale) -> None:
    bad = scale.invalid(raw.rating)
    if bad.any():
        row = int(np.argmax(bad))
        value = raw.rating[row]
        shown = int(value) if float(value).is_integer() else value
        if scale.num_buckets is not None or not (scale.minimum <= value <= scale.maximum):
            where = f"outside the rating scale {scale.minimum:g}..{scale.maximum:g}"
        else:
            where = f"not a level of the rating scale ({scale.levels_text})"
        raise raw.fail(row, f"rating {shown} is {where}", field="rating")


def _encode(
    raw: _RawTable, vocab: Vocabulary | None, values: np.ndarray, kind: str, source: str | None
) -> tuple[Vocabulary, np.ndarray]:
    if vocab is None:
        return Vocabulary.encode(values, kind=kind)
    codes = vocab.lookup(values, missing=-1)
    unknown = codes < 0
    if unknown.any():
        row = int(np.argmax(unknown))
        known = f" (known {kind}s come from {source})" if source else ""
        raise raw.fail(row, f"{kind} {values[row]!r} is not in the dataset{known}", field=kind)
    return vocab, codes


def _resolve_duplicates(
    raw: _RawTable, user: np.ndarray, item: np.ndarray, num_items: int, policy: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Rows to keep (file order), plus merged ratings/timestamps for ``"mean"``.

    Returns:
        ``(keep, rating, timestamp)``; ``rating``/``timestamp`` are None when the
        kept rows' own values stand.
    """
    key = user * np.int64(num_items) + item
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    same = sorted_key[1:] == sorted_key[:-1]
    if not same.any():
        return np.arange(len(key)), None, None
    if policy == "error":
        # Of all repeated pairs, report the one whose repeat comes first in the file.
        firsts, seconds = order[:-1][same], order[1:][same]
        j = int(np.argmin(seconds))
        first, second = int(firsts[j]), int(seconds[j])
        raise raw.fail(
            second,
            f"duplicate rating for user {raw.user[second]!r} and item {raw.item[second]!r}: "
            f"also on {raw.where(first)}; pass duplicates='last' or 'mean' to merge them (CLI: --duplicates)",
        )
    if policy == "last":
        rows = np.arange(len(key))
        ts = raw.timestamp if raw.timestamp is not None else rows
        # Latest timestamp wins; equal timestamps fall back to file order.
        by = np.lexsort((rows, ts, key))
        k = key[by]
        last = np.r_[k[1:] != k[:-1], True]
        return np.sort(by[last]), None, None
    # policy == "mean"
    uniq, first_row, inverse = np.unique(key, return_index=True, return_inverse=True)
    counts = np.bincount(inverse)
    mean = np.bincount(inverse, weights=raw.rating) / counts
    order_out = np.argsort(first_row, kind="stable")
    ts = None
    if raw.timestamp is not None:
        latest = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, inverse, raw.timestamp)
        ts = latest[order_out]
    return first_row[order_out], mean[order_out], ts


def _to_ratings(
    raw: _RawTable,
    *,
    scale: RatingScale | None,
    duplicates: str,
    name: str,
    users: Vocabulary | None = None,
    items: Vocabulary | None = None,
    vocab_source: str | None = None,
    num_buckets: int = 10,
) -> Ratings:
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    if len(raw) == 0:
        raise DataError("has no ratings", path=raw.path)
    if scale is not None:
        _check_scale(raw, scale)
    else:
        try:
            scale = RatingScale.infer(raw.rating, num_buckets=num_buckets)
        except DataError as e:
            raise DataError(f"{e}; pass scale=RatingScale(...)", path=raw.path, field="rating") from None
    users, user = _encode(raw, users, raw.user, "user", vocab_source)
    items, item = _encode(raw, items, raw.item, "item", vocab_source)
    keep, merged_rating, merged_ts = _resolve_duplicates(raw, user, item, len(items), duplicates)
    rating = raw.rating[keep] if merged_rating is None else merged_rating
    if merged_ts is not None:
        timestamp = merged_ts
    else:
        timestamp = None if raw.timestamp is None else raw.timestamp[keep]
    return Ratings(
        user=user[keep],
        item=item[keep],
        rating=rating,
        users=users,
        items=items,
        scale=scale,
        timestamp=timestamp,
        name=name,
    )


# --------------------------------------------------------------------------- public readers


def read_table(
    path: PathArg,
    *,
    columns: Mapping[str, str | int] | None = None,
    delimiter: str | None = None,
    header: bool | None = None,
    scale: RatingScale | None = None,
    duplicates: DuplicatePolicy = "error",
    encoding: str = "utf-8",
    num_buckets: int = 10,
    name: str | None = None,
) -> Ratings:
    """Read a delimited text file or a Parquet file of ratings.

    Args:
        path: the file. ``.parquet``/``.pq`` is read as Parquet; anything else as
            delimited text (``.gz`` is decompressed).
        columns: which field holds ``user``, ``item``, ``rating`` and, optionally,
            ``timestamp``: header names (``{"user": "userId", ...}``) or 0-based
            positions. Default: with a header, columns whose names look like
            those keys (``user``/``user_id``/``userId``, ``item``/``movieId``, ...);
            without one, positions 0, 1, 2 and 3 (if present).
        delimiter: field separator, any string (``","``, ``"\\t"``, ``"::"``).
            Default: from the suffix (``.csv``, ``.tsv``) or the first of ``::``,
            tab, ``,``, ``;``, ``|`` found in the first line.
        header: whether the first non-blank line names the columns. Default:
            True when ``columns`` maps to names; otherwise detected from that
            line (a header when its rating field is not a number).
        scale: the rating scale; every rating must lie on it. Default: inferred
            from the data with :meth:`RatingScale.infer`.
        duplicates: what to do with a repeated (user, item) pair: ``"error"``
            (default) raises naming both lines; ``"last"`` keeps the latest by
            timestamp (file order without timestamps, or on ties); ``"mean"``
            averages the ratings (the result may fall between levels; its
            relation type is the nearest level) and keeps the latest timestamp.
        encoding: text encoding.
        num_buckets: buckets used if the inferred scale has too many levels.
        name: name of the result; default the file name.

    Returns:
        The ratings, ids as strings, over vocabularies of the ids present.

    Raises:
        DataError: the file is missing, empty or malformed; the message names
            the file and the 1-based line (Parquet: the row and column). Line
            numbers assume no quoted field spans several lines.
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        raw = _parse_parquet(path, columns)
    else:
        raw = _parse_text(path, columns, delimiter, header, encoding)
    return _to_ratings(raw, scale=scale, duplicates=duplicates, name=name or path.name, num_buckets=num_buckets)


def _ml100k_table(path: Path) -> _RawTable:
    return _parse_text(path, {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, "\t", False, "latin-1")


def _read_ml100k_items(directory: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    genre_path = directory / "u.genre"
    genres: dict[int, str] = {}
    for number, line in enumerate(_read_bytes(genre_path).decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise DataError("expected 'genre|index'", path=genre_path, line=number)
        genres[int(parts[1])] = parts[0]
    names = [genres[i] for i in sorted(genres)]
    item_path = directory / "u.item"
    titles: dict[str, str] = {}
    item_genres: dict[str, tuple[str, ...]] = {}
    expected = 5 + len(names)
    for number, line in enumerate(_read_bytes(item_path).decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != expected:
            raise DataError(
                f"has {len(parts)} fields separated by '|', expected {expected}", path=item_path, line=number
            )
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError("genre flags must be 0 or 1", path=item_path, line=number)
        item_id = parts[0].strip()
        titles[item_id] = parts[1]
        item_genres[item_id] = tuple(g for g, f in zip(names, flags, strict=True) if f == "1")
    return titles, item_genres


def read_movielens_100k(directory: PathArg, *, name: str = "ml-100k") -> Ratings:
    """All 100,000 ratings of MovieLens 100K, with titles and genres.

    Args:
        directory: the unpacked ``ml-100k/`` folder (``u.data``, ``u.item``, ``u.genre``).
    """
    directory = Path(directory)
    raw = _ml100k_table(directory / "u.data")
    ratings = _to_ratings(raw, scale=ML100K_SCALE, duplicates="error", name=name)
    ratings.item_titles, ratings.item_genres = _read_ml100k_items(directory)
    return ratings


def read_movielens_100k_split(directory: PathArg, split: str = "u1", *, name: str = "ml-100k") -> Split:
    """One of the canonical MovieLens 100K splits (``u1``..``u5``, ``ua``, ``ub``).

    Train and test come from ``<split>.base`` and ``<split>.test``; both share the
    vocabularies of the full ``u.data`` (943 users, 1682 items), so users or items
    absent from one side keep their index.
    """
    if split not in ML100K_SPLITS:
        raise DataError(
            f"unknown MovieLens 100K split {split!r}; choose one of {', '.join(ML100K_SPLITS)}",
            field="split",
        )
    directory = Path(directory)
    full = read_movielens_100k(directory, name=name)
    parts = []
    for suffix in ("base", "test"):
        raw = _ml100k_table(directory / f"{split}.{suffix}")
        parts.append(
            _to_ratings(
                raw,
                scale=ML100K_SCALE,
                duplicates="error",
                name=f"{name}/{split}/{'train' if suffix == 'base' else 'test'}",
                users=full.users,
                items=full.items,
                vocab_source=str(directory / "u.data"),
            )
        )
    for part in parts:
        part.item_titles, part.item_genres = full.item_titles, full.item_genres
    return Split(train=parts[0], test=parts[1], name=f"{name}/{split}")


def read_monti_mat(path: PathArg, *, scale: RatingScale, name: str | None = None, split_name: str = "monti") -> Split:
    """A Douban / Flixster / YahooMusic matrix of Monti et al. (2017) as a train/test split.

    The file is MATLAB v7.3 (HDF5) with the rating matrix ``M`` and the 0/1 masks
    ``Otraining`` and ``Otest``. MATLAB stores arrays column-major, so h5py sees
    them transposed; they are transposed back so rows are users. Ratings are the
    entries of ``M`` where a mask is 1 (``M`` holds 0 where unobserved). User and
    item ids are the 0-based row and column indices, as strings.

    Args:
        path: the ``training_test_dataset.mat`` file.
        scale: the dataset's rating scale (every observed rating must lie on it).
        name: name of the result; default the parent folder's name.
        split_name: name of the split.
    """
    import h5py

    path = Path(path)
    name = name or path.parent.name
    if not path.exists():
        raise DataError("no such file", path=path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"is not a MATLAB v7.3 (HDF5) file: {e}", path=path) from None
    with f:
        arrays = {}
        for key in ("M", "Otraining", "Otest"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"has no {key!r} matrix (keys: {', '.join(sorted(f.keys()))})", path=path, field=key)
            arrays[key] = np.asarray(f[key], dtype=np.float64).T
    shape = arrays["M"].shape
    for key in ("Otraining", "Otest"):
        if arrays[key].shape != shape or len(shape) != 2:
            raise DataError(f"has shape {arrays[key].shape}, but M has {shape}", path=path, field=key)
    users = Vocabulary(range(shape[0]), kind="user")
    items = Vocabulary(range(shape[1]), kind="item")
    parts = []
    for key, part in (("Otraining", "train"), ("Otest", "test")):
        u, i = np.nonzero(arrays[key])
        values = arrays["M"][u, i]
        bad = scale.invalid(values)
        if bad.any():
            j = int(np.argmax(bad))
            raise DataError(
                f"M[{u[j]}, {i[j]}] = {values[j]:g} is observed in {key} but is outside the rating scale "
                f"{scale.minimum:g}..{scale.maximum:g}",
                path=path,
                field="M",
            )
        parts.append(Ratings(u, i, values, users, items, scale, name=f"{name}/{split_name}/{part}"))
    return Split(train=parts[0], test=parts[1], name=f"{name}/{split_name}")


def _read_movietweetings_movies(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise _locate_decode_error(path, _read_bytes(path), "utf-8") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 3:
            raise DataError(
                f"has {len(parts)} field(s) separated by '::', expected 3 (id::title (year)::genre|genre)",
                path=path,
                line=number,
            )
        movie_id, genre_text = parts[0].strip(), parts[-1].strip()
        titles[movie_id] = "::".join(parts[1:-1])
        genres[movie_id] = tuple(g for g in genre_text.split("|") if g)
    return titles, genres


def read_movietweetings(
    ratings_path: PathArg, movies_path: PathArg | None = None, *, name: str = "movietweetings"
) -> Ratings:
    """MovieTweetings ratings (``user::item::rating::timestamp``, ratings 0..10).

    Item ids are IMDb numbers kept as strings with their leading zeros
    (``"0110912"``). Titles and genres come from ``movies.dat``
    (``id::title (year)::genre|genre``, UTF-8) when given. Either file may be gzip.
    """
    raw = _parse_text(Path(ratings_path), {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, "::", False, "utf-8")
    ratings = _to_ratings(raw, scale=MOVIETWEETINGS_SCALE, duplicates="error", name=name)
    if movies_path is not None:
        ratings.item_titles, ratings.item_genres = _read_movietweetings_movies(Path(movies_path))
    return ratings
