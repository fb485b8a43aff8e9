"""ML-100K download against a local HTTP server: checksum verified, nothing half-written."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmcrec.data import download_ml100k, load_ratings, load_split
from cmcrec.data.download import OFFICIAL_SHA256
from cmcrec.errors import ConfigError, DataError

GENRES = ["unknown", "Action", "Comedy"]


def build_zip(path: Path) -> str:
    """A tiny synthetic ml-100k.zip; returns its SHA-256."""
    data = "1\t1\t5\t10\n1\t2\t3\t11\n2\t1\t4\t12\n3\t3\t1\t13\n"
    items = "".join(
        f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{flags}\n"
        for i, flags in ((1, "0|1|0"), (2, "0|0|1"), (3, "0|1|1"))
    )
    genre = "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/", "")
        z.writestr("ml-100k/u.data", data)
        z.writestr("ml-100k/u.item", items)
        z.writestr("ml-100k/u.genre", genre)
        z.writestr("ml-100k/u1.base", data.splitlines(keepends=True)[0] + data.splitlines(keepends=True)[2])
        z.writestr("ml-100k/u1.test", "".join(data.splitlines(keepends=True)[1::2]))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, str]]:
    """(url of the fixture zip, its sha256), served on 127.0.0.1 at a random port."""
    root = tmp_path / "www"
    root.mkdir()
    digest = build_zip(root / "ml-100k.zip")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ml-100k.zip", digest
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_with_good_checksum(tmp_path, server):
    url, digest = server
    data_dir = tmp_path / "data"
    folder = download_ml100k(data_dir, url=url, sha256=digest)
    assert folder == data_dir / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.genre", "u.item", "u1.base", "u1.test"]
    assert [p.name for p in data_dir.iterdir()] == ["ml-100k"]  # no temporary files left
    r = load_ratings("ml-100k", data_dir=data_dir)
    assert (r.num_users, r.num_items, len(r)) == (3, 3, 4)
    assert r.item_genres["3"] == ("Action", "Comedy")
    # Already there: returns without fetching (the URL is not even valid).
    assert download_ml100k(data_dir, url="http://127.0.0.1:9/none.zip", sha256=digest) == folder


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, server):
    url, digest = server
    data_dir = tmp_path / "data"
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"SHA-256 mismatch: expected {wrong}, got {digest}") as info:
        download_ml100k(data_dir, url=url, sha256=wrong)
    assert info.value.path == url
    assert list(data_dir.iterdir()) == []


def test_unreachable_url_is_a_data_error(tmp_path, server):
    url, digest = server
    with pytest.raises(DataError, match="download failed"):
        download_ml100k(tmp_path / "data", url=url.replace("ml-100k.zip", "missing.zip"), sha256=digest)
    assert list((tmp_path / "data").iterdir()) == []


def test_existing_folder_without_u_data_is_named(tmp_path, server):
    url, digest = server
    data_dir = tmp_path / "data"
    (data_dir / "ml-100k").mkdir(parents=True)
    (data_dir / "ml-100k" / "u.item").write_text("left over\n")
    with pytest.raises(DataError, match="exists but has no u.data"):
        download_ml100k(data_dir, url=url, sha256=digest)
    assert [p.name for p in data_dir.iterdir()] == ["ml-100k"]  # the download's temporary files are gone


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Promises 1,000 bytes, sends 10 and hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_connection_cut_mid_body_is_a_data_error(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        with pytest.raises(
            DataError, match=r"^http://[^ ]+/x.zip: download cut short: the connection closed 990 bytes early$"
        ):
            download_ml100k(tmp_path / "data", url=f"http://127.0.0.1:{httpd.server_address[1]}/x.zip", sha256="0" * 64)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert list((tmp_path / "data").iterdir()) == []


def test_bad_sha256_argument():
    with pytest.raises(ConfigError, match="64 hexadecimal"):
        download_ml100k("/nonexistent", sha256="abc")
    assert len(OFFICIAL_SHA256) == 64


def test_load_split_downloads_when_asked(tmp_path, server, monkeypatch):
    url, digest = server
    import cmcrec.data.datasets as datasets

    monkeypatch.setattr(datasets, "download_ml100k", lambda d: download_ml100k(d, url=url, sha256=digest))
    with pytest.raises(DataError, match="download=True"):
        load_split("ml-100k", data_dir=tmp_path)
    s = load_split("ml-100k", data_dir=tmp_path, download=True)
    assert (len(s.train), len(s.test)) == (2, 2)
    assert s.train.num_users == 3
