"""The HTTP service end to end: a tiny model trained here, served, and queried.

Every endpoint is checked through FastAPI's ``TestClient`` with exact shapes;
the bad-request corpus (``service_bad_requests.json``) must all be 4xx, never
5xx; one test runs a real uvicorn server on loopback and talks to it with httpx.
"""

from __future__ import annotations

import importlib
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from cmcrec._version import __version__
from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary
from cmcrec.recommender import Recommender
from cmcrec.service import create_app

with warnings.catch_warnings():
    # Newer Starlette warns that its TestClient will move from httpx to httpx2; irrelevant here.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

CORPUS = json.loads((Path(__file__).parent / "service_bad_requests.json").read_text())["cases"]
NUM_USERS, NUM_ITEMS, PER_USER = 30, 20, 8
LIMITS = {"max_k": 20, "max_items": 8, "max_ratings": 6}  # the corpus is written against these
CONFIGS = {
    "mf": {"epochs": 2, "factors": 4},
    "igmc": {"epochs": 1, "hidden_channels": 8, "num_layers": 2, "max_nodes_per_hop": 5, "eval_max_nodes_per_hop": 5},
}
GENRES = ("Drama", "Comedy", "Horror")


def tiny_ratings(seed: int = 0) -> Ratings:
    """30 users × 20 items, 8 distinct items per user, ratings 1..5, titles and genres."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(NUM_USERS), PER_USER)
    item = np.concatenate([rng.choice(NUM_ITEMS, size=PER_USER, replace=False) for _ in range(NUM_USERS)])
    items = [f"i{j}" for j in range(NUM_ITEMS)]
    return Ratings(
        user=user,
        item=item,
        rating=rng.integers(1, 6, size=len(user)).astype(np.float32),
        users=Vocabulary([f"u{u}" for u in range(NUM_USERS)], "user"),
        items=Vocabulary(items, "item"),
        scale=RatingScale.from_range(1, 5),
        item_titles={i: f"Movie {i.upper()} (2001)" for i in items},
        item_genres={i: (GENRES[j % 3],) for j, i in enumerate(items)},
        name="tiny",
    )


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_dir(request, tmp_path_factory) -> Path:
    name = request.param
    if name != "mf":
        try:
            importlib.import_module(f"cmcrec.models.{name}")
        except ImportError as e:
            pytest.skip(f"cmcrec.models.{name} is not importable yet: {e}")
    rec = Recommender.fit(name, tiny_ratings(), CONFIGS[name])
    return rec.save(tmp_path_factory.mktemp(name) / "model")


@pytest.fixture(scope="module")
def client(model_dir) -> TestClient:
    return TestClient(create_app(model_dir, **LIMITS))


def seen_items(client: TestClient, user: str) -> set[str]:
    rec = client.app.state.recommender
    u = rec.users.index(user)
    return {str(rec.items.ids[i]) for i in rec.train.item[rec.train.user == u]}


def check_items(items: list[dict], k: int) -> None:
    assert len(items) == k
    assert len({it["item"] for it in items}) == k
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    for it in items:
        assert set(it) == {"item", "score", "title", "genres"}
        assert it["title"] == f"Movie {it['item'].upper()} (2001)"
        assert it["genres"] in [[g] for g in GENRES]
        assert 1.0 <= it["score"] <= 5.0


def test_health(client, model_dir):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "model": json.loads((model_dir / "manifest.json").read_text())["model"],
        "num_users": NUM_USERS,
        "num_items": NUM_ITEMS,
        "cmcrec_version": __version__,
    }


def test_item(client):
    rec = client.app.state.recommender
    r = client.get("/items/i3")
    assert r.status_code == 200
    assert r.json() == {
        "item": "i3",
        "title": "Movie I3 (2001)",
        "genres": ["Drama"],
        "num_ratings": int((rec.train.item == rec.items.index("i3")).sum()),
    }


def test_predict_matches_library(client):
    items = ["i0", "i5", "i0", "i19"]
    r = client.post("/predict", json={"user": "u2", "items": items})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == "u2"
    assert [p["item"] for p in body["predictions"]] == items  # request order, duplicates kept
    expected = client.app.state.recommender.predict("u2", items)
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected, rtol=1e-6)
    assert all(1.0 <= p["score"] <= 5.0 for p in body["predictions"])


def test_integer_ids_are_their_decimal_string(client):
    r = client.post("/recommend", json={"user": 7, "k": 1})
    assert r.status_code == 404
    assert r.json()["message"] == "unknown user id '7'"


@pytest.mark.parametrize("k", [1, 5, 10])
def test_recommend_excludes_seen(client, k):
    r = client.post("/recommend", json={"user": "u4", "k": k})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == "u4"
    check_items(body["items"], k)
    assert not {it["item"] for it in body["items"]} & seen_items(client, "u4")


def test_recommend_include_seen(client):
    r = client.post("/recommend", json={"user": "u4", "k": NUM_ITEMS, "exclude_seen": False})
    assert r.status_code == 200
    items = r.json()["items"]
    check_items(items, NUM_ITEMS)
    assert seen_items(client, "u4") <= {it["item"] for it in items}


def test_recommend_caps_at_catalogue(client):
    # k above the unseen items left: every unseen item, no padding.
    r = client.post("/recommend", json={"user": "u0", "k": LIMITS["max_k"]})
    assert r.status_code == 200
    assert len(r.json()["items"]) <= NUM_ITEMS - len(seen_items(client, "u0"))


def test_new_user_excludes_rated(client):
    ratings = {"i1": 5, "i2": 1.0, "i7": 4}
    r = client.post("/recommend/new-user", json={"ratings": ratings, "k": 6})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"items"}
    check_items(body["items"], 6)
    assert not {it["item"] for it in body["items"]} & set(ratings)
    library = client.app.state.recommender.recommend_for_ratings(ratings, k=6)
    assert body["items"] == [x.to_dict() for x in library]


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "cmcrec recommender"
    assert spec["info"]["description"]
    assert {"/health", "/items/{item_id}", "/predict", "/recommend", "/recommend/new-user"} <= set(spec["paths"])
    assert all(op.get("summary") for path in spec["paths"].values() for op in path.values())
    schemas = spec["components"]["schemas"]
    assert schemas["RecommendRequest"]["properties"]["k"]["maximum"] == LIMITS["max_k"]
    assert schemas["PredictRequest"]["properties"]["items"]["maxItems"] == LIMITS["max_items"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_bad_request(client, case):
    kwargs: dict = {"headers": case.get("headers", {})}
    if "json" in case:
        kwargs["json"] = case["json"]
    elif "raw" in case:
        kwargs["content"] = case["raw"].encode()
    r = client.request(case["method"], case["path"], **kwargs)
    assert 400 <= r.status_code < 500, r.text
    assert r.status_code == case["status"], r.text
    body = r.json()
    assert body["error"] and isinstance(body["message"], str)
    assert case["message"].lower() in body["message"].lower(), body["message"]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 15
    assert {c["status"] for c in CORPUS} >= {400, 404, 405, 422}


def test_body_size_limit(model_dir):
    client = TestClient(create_app(model_dir, max_body_bytes=256))
    big = {"user": "u1", "items": ["i1"] * 100}
    r = client.post("/predict", json=big)
    assert r.status_code == 413
    assert "256 bytes" in r.json()["message"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"user": "u1", "items": ['
        for _ in range(100):
            yield b'"i1", '
        yield b'"i1"]}'

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/predict", json={"user": "u1", "items": ["i1"]}).status_code == 200


def test_bad_limits(model_dir):
    with pytest.raises(ValueError, match="max_k"):
        create_app(model_dir, max_k=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_server(model_dir):
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(model_dir, **LIMITS), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/health").json()["num_items"] == NUM_ITEMS
            r = http.post("/recommend", json={"user": "u3", "k": 3})
            assert r.status_code == 200 and len(r.json()["items"]) == 3
            r = http.post("/recommend/new-user", json={"ratings": {"i1": 5}, "k": 2})
            assert r.status_code == 200 and len(r.json()["items"]) == 2
            r = http.post("/recommend", content=b"{oops", headers={"content-type": "application/json"})
            assert r.status_code == 400
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_bug_is_answered_with_the_documented_json_500(model_dir, monkeypatch):
    app = create_app(model_dir, **LIMITS)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.recommender, "recommend", broken)
    r = TestClient(app, raise_server_exceptions=False).post("/recommend", json={"user": "u0", "k": 3})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "internal_error"
    assert "boom" not in r.text  # no internals leak to the client


def test_new_user_ratings_naming_one_item_twice_are_refused(client):
    """Ids are looked up as strings, so two keys that print alike (1 and "1" where ids are digits)
    name one item: refused, naming it, instead of fitting two conflicting ratings."""
    import re

    from cmcrec.errors import CmcrecError

    class Alias:  # a key that is not "i1" but prints as it
        def __str__(self) -> str:
            return "i1"

    rec = client.app.state.recommender
    with pytest.raises(CmcrecError, match=re.escape("item 'i1' is rated more than once")):
        rec.recommend_for_ratings({"i1": 5.0, Alias(): 1.0, "i2": 3.0}, k=3)
