"""Download MovieLens 100K from GroupLens, verified by SHA-256.

MovieLens' licence forbids redistributing it, so cmcrec never ships it: it reads
it from a data directory, and this module fetches the official zip into one.
The archive is streamed to a temporary file beside the target while its SHA-256
is computed; only a matching archive is extracted (into a temporary folder) and
then moved into place with one rename. A failure at any step leaves the data
directory as it was.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from os import PathLike
from pathlib import Path, PurePosixPath

from cmcrec.errors import ConfigError, DataError

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# SHA-256 (and size, 4,924,029 bytes) of the official archive as recorded by
# TensorFlow Datasets in tensorflow/datasets,
# tensorflow_datasets/url_checksums/movielens.txt.
OFFICIAL_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"

_CHUNK = 1 << 16


def _check_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ConfigError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def _fetch(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the hex SHA-256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            missing = getattr(response, "length", None)  # bytes the server promised but never sent
            if missing:
                raise DataError(f"download cut short: the connection closed {missing:,} bytes early", path=url)
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        # HTTPException covers a connection cut mid-body (IncompleteRead), which is not an OSError.
        raise DataError(f"download failed: {e or repr(e)}", path=url) from None
    return digest.hexdigest()


def _safe_members(archive: zipfile.ZipFile, url: str) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    for m in members:
        p = PurePosixPath(m.filename)
        if p.is_absolute() or ".." in p.parts:
            raise DataError(f"archive member {m.filename!r} would escape the target folder", path=url)
    if not any(m.filename == "ml-100k/u.data" for m in members):
        raise DataError("archive has no ml-100k/u.data", path=url)
    return [m for m in members if PurePosixPath(m.filename).parts[:1] == ("ml-100k",)]


def download_ml100k(
    data_dir: str | PathLike[str],
    url: str = OFFICIAL_URL,
    sha256: str = OFFICIAL_SHA256,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch MovieLens 100K into ``<data_dir>/ml-100k/`` unless it is already there.

    Args:
        data_dir: the data directory (created if absent).
        url: where the zip is; it must contain ``ml-100k/u.data``.
        sha256: expected SHA-256 of the zip, hex.
        timeout: socket timeout in seconds.

    Returns:
        The ``ml-100k`` folder.

    Raises:
        DataError: the download failed, the checksum differs (nothing is kept),
            or the archive is not a MovieLens 100K zip.
    """
    expected = _check_sha256(sha256)
    data_dir = Path(data_dir).expanduser()
    target = data_dir / "ml-100k"
    if (target / "u.data").is_file():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    # Temporary files live in data_dir so the final rename stays on one filesystem.
    fd, zip_name = tempfile.mkstemp(prefix=".ml-100k-", suffix=".zip.part", dir=data_dir)
    staging = None
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out, timeout)
        if actual != expected:
            raise DataError(
                f"SHA-256 mismatch: expected {expected}, got {actual}; the download was discarded",
                path=url,
            )
        staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=data_dir))
        try:
            with zipfile.ZipFile(zip_name) as archive:
                archive.extractall(staging, members=_safe_members(archive, url))
        except zipfile.BadZipFile as e:
            raise DataError(f"not a zip archive: {e}", path=url) from None
        try:
            os.rename(staging / "ml-100k", target)
        except OSError:
            # Another process finished first: use its copy if it is complete.
            if not (target / "u.data").is_file():
                raise DataError(
                    f"{target} exists but has no u.data; remove or complete that folder, then download again",
                    path=target,
                ) from None
        return target
    finally:
        Path(zip_name).unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
