"""The robustness, cold-start and blog studies on tiny synthetic data: schemas, invariants, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import low_rank_split

from cmcrec.benchmarks import blog, cold_start, robustness
from cmcrec.cli import main
from cmcrec.data.ratings import Split
from cmcrec.errors import ConfigError

TINY = {
    "epochs": 2,
    "hidden_channels": 8,
    "num_layers": 2,
    "num_bases": 2,
    "max_nodes_per_hop": 5,
    "eval_max_nodes_per_hop": 5,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def split() -> Split:
    return low_rank_split(num_users=40, num_items=30, density=0.5)


def _frozen(split: Split) -> dict[str, np.ndarray]:
    t = split.test
    return {"user": t.user.copy(), "item": t.item.copy(), "rating": t.rating.copy(), "ts": t.timestamp.copy()}


def _no_training(monkeypatch):
    from cmcrec.recommender import Recommender

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Recommender, "fit", fail)


def test_add_noise_never_touches_test_pairs(split):
    noisy = robustness.add_noise(split.train, split.test, "fake", 50.0, seed=0)
    n = len(split.train)
    fakes = noisy.user[n:] * split.train.num_items + noisy.item[n:]
    assert len(noisy) - n == round(0.5 * n)
    assert not np.isin(fakes, split.test.user * split.test.num_items + split.test.item).any()
    flipped = robustness.add_noise(split.train, split.test, "flip", 10.0, seed=0)
    assert (flipped.rating != split.train.rating).sum() == round(0.1 * n)


def test_robustness_rows_and_resume(split, tmp_path, monkeypatch):
    out = tmp_path / "robustness.json"
    before = _frozen(split)
    payload = robustness.run_robustness(
        split, ["mf"], [0, 20], ["fake", "flip"], [0], out, extra=TINY, candidates=10, device="cpu", log=lambda s: None
    )
    payload = robustness.run_robustness(
        split, ["igmc"], [20], ["fake"], [0], out, extra=TINY, candidates=10, device="cpu", log=lambda s: None
    )
    for key, arr in before.items():  # the test split is never modified
        np.testing.assert_array_equal(arr, getattr(split.test, key if key != "ts" else "timestamp"))
    runs = payload["runs"]
    assert len(runs) == 5
    keys = {"noise", "kind", "model", "seed", "rmse", "ndcg@10", "recall@10", "num_train", "num_changed"}
    for run in runs:
        assert keys <= set(run)
        assert 0 <= run["ndcg@10"] <= 1 and run["rmse"] > 0
    by = {(r["kind"], r["noise"], r["model"]): r for r in runs}
    assert by[("flip", 0.0, "mf")]["reused_from"] == "fake"
    assert by[("flip", 0.0, "mf")]["rmse"] == by[("fake", 0.0, "mf")]["rmse"]
    assert by[("fake", 20.0, "mf")]["num_changed"] == round(0.2 * len(split.train))
    assert by[("flip", 20.0, "mf")]["num_changed"] == round(0.2 * len(split.train))
    assert by[("fake", 20.0, "igmc")]["candidates"] == 10
    assert by[("fake", 20.0, "mf")]["candidates"] == "all"
    rows = payload["rows"]
    assert {(r["kind"], r["noise"], r["model"]) for r in rows} == set(by)
    assert all({"noise", "kind", "model", "rmse", "ndcg@10", "recall@10", "seeds"} <= set(r) for r in rows)
    # The file holds the same, with the provenance of a study.
    saved = json.loads(out.read_text())
    assert {"rows", "runs", "machine", "date", "description"} <= set(saved)
    # Resume: nothing left to train.
    _no_training(monkeypatch)
    again = robustness.run_robustness(
        split, ["mf"], [0, 20], ["fake", "flip"], [0], out, extra=TINY, candidates=10, device="cpu", log=lambda s: None
    )
    assert len(again["runs"]) == 5
    # Other settings are not "done" and not averaged in: refused, naming the difference.
    for other, message in [
        ({"preset": "paper"}, "preset None there, 'paper' now"),
        ({"epochs": 5}, "epochs_override None there, 5 now"),
        ({"candidates": 200}, "candidates_requested 10 there, 200 now"),
        ({"extra": TINY | {"lr": 0.5}}, "overrides"),
    ]:
        kwargs = {"extra": TINY, "candidates": 10, "device": "cpu", "log": lambda s: None} | other
        with pytest.raises(ConfigError, match=message):
            robustness.run_robustness(split, ["mf"], [0], ["fake"], [0], out, **kwargs)


def test_inductive_split_leaves_users_without_training_ratings(split):
    rng = np.random.default_rng(0)
    train, heldout, users = cold_start.inductive_split(split, 0.2, 10, rng)
    assert users.size == round(0.2 * (split.train.concat(split.test).user_counts() >= 10).sum())
    assert train.user_counts()[users].sum() == 0
    assert train.users == split.train.users  # still in the vocabulary
    assert set(np.unique(heldout.user)) == set(users)
    assert len(heldout) == np.isin(split.train.user, users).sum() + np.isin(split.test.user, users).sum()
    orders = cold_start.order_user_ratings(heldout, "earliest", rng)
    for rows in orders:
        assert len(np.unique(heldout.user[rows])) == 1
        assert np.all(np.diff(heldout.timestamp[rows]) >= 0)


def test_cold_start_rows_and_resume(split, tmp_path, monkeypatch):
    out = tmp_path / "cold_start.json"
    payload = cold_start.run_cold_start(
        split,
        ["mf", "igmc"],
        [0],
        out,
        ks=(1, 3),
        holdout_fraction=0.2,
        min_ratings=8,
        candidates=10,
        extra=TINY,
        device="cpu",
        log=lambda s: None,
    )
    runs = {(r["study"], r["model"]): r for r in payload["runs"]}
    assert set(runs) == {("bucket", "mf"), ("bucket", "igmc"), ("inductive", "mf"), ("inductive", "igmc")}
    for model in ("mf", "igmc"):
        bucket = runs[("bucket", model)]["rows"]
        assert [r["bucket"] for r in bucket] == [b[0] for b in cold_start.BUCKETS]
        assert sum(r["num_ratings"] for r in bucket) == len(split.test)
        for r in bucket:
            assert {"study", "bucket", "model", "rmse", "ndcg@10", "num_users", "num_ratings"} <= set(r)
            assert (r["rmse"] is None) == (r["num_ratings"] == 0)
        ind = runs[("inductive", model)]
        assert ind["heldout_train_ratings"] == 0 and ind["num_heldout_users"] > 0
        for r in ind["rows"]:
            assert {"study", "k", "model", "rmse", "num_users", "num_ratings"} <= set(r)
            assert r["rmse"] > 0 and r["num_ratings"] > 0
    # MF never learned an embedding for the held-out users; it folds them in.
    assert runs[("inductive", "mf")]["heldout_rows_untouched"] is True
    assert runs[("inductive", "igmc")]["heldout_rows_untouched"] is None
    variants = {(r["model"], r["k"]) for r in runs[("inductive", "mf")]["rows"]}
    assert variants == {("mf", 1), ("mf", 3), ("bias-fallback", 1), ("bias-fallback", 3)}
    # Every variant scores the same target ratings for every k.
    assert len({r["num_ratings"] for r in runs[("inductive", "mf")]["rows"]}) == 1
    assert {r["study"] for r in payload["rows"]} == {"bucket", "inductive"}
    _no_training(monkeypatch)
    again = cold_start.run_cold_start(
        split,
        ["mf", "igmc"],
        [0],
        out,
        ks=(1, 3),
        holdout_fraction=0.2,
        min_ratings=8,
        candidates=10,
        extra=TINY,
        device="cpu",
        log=lambda s: None,
    )
    assert len(again["runs"]) == 4
    with pytest.raises(ConfigError, match="given 'earliest' there, 'random' now"):
        cold_start.run_cold_start(
            split,
            ["mf"],
            [0],
            out,
            ks=(1, 3),
            holdout_fraction=0.2,
            min_ratings=8,
            candidates=10,
            given="random",
            extra=TINY,
            device="cpu",
            log=lambda s: None,
        )


def test_decile_shares_exact():
    counts = np.array([5, 1, 9, 0, 3, 7, 2, 8, 4, 6])  # ranks: item 2 first, item 3 last
    lists = np.array([[2, 7, -1], [3, 2, 1]])
    shares, mean_pop, slots = blog.decile_shares(lists, counts)
    assert slots == 5
    assert shares == [0.4, 0.2, 0, 0, 0, 0, 0, 0, 0.2, 0.2]
    assert mean_pop == pytest.approx((9 + 8 + 0 + 9 + 1) / 5)


def test_blog_rows_popularity_file_and_resume(split, tmp_path, monkeypatch):
    out, pop = tmp_path / "blog.json", tmp_path / "popularity.json"
    payload = blog.run_blog(
        split, ["mf", "igmc", "popularity"], [0], out, pop, candidates=10, extra=TINY, device="cpu", log=lambda s: None
    )
    rows = {r["model"]: r for r in payload["rows"]}
    assert set(rows) == {"mf", "igmc", "popularity"}
    keys = {"model", "rmse", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10", "head_share@10"}
    for r in rows.values():
        assert keys | {"candidates", "seed"} <= set(r)
    assert rows["popularity"]["rmse"] is None and rows["mf"]["rmse"] > 0
    assert rows["igmc"]["candidates"] == 10 and rows["mf"]["candidates"] == "all"
    profile = json.loads(pop.read_text())
    curve = profile["catalogue_popularity"]
    assert len(curve) == split.train.num_items and curve == sorted(curve, reverse=True)
    assert sum(curve) == len(split.train)
    for r in profile["rows"]:
        assert len(r["decile_share"]) == 10 and sum(r["decile_share"]) == pytest.approx(1.0)
        assert r["mean_popularity"] == pytest.approx(rows[r["model"]]["avg_popularity@10"])
    _no_training(monkeypatch)
    again = blog.run_blog(split, ["mf", "igmc", "popularity"], [0], out, pop, candidates=10, extra=TINY)
    assert len(again["runs"]) == 3

    # Another split into the same files: popularity.json keeps only rows its catalogue belongs to.
    from dataclasses import replace

    monkeypatch.undo()
    other = replace(split, name="synthetic/other")
    both = blog.run_blog(other, ["popularity"], [0], out, pop, candidates=10, extra=TINY, log=lambda s: None)
    assert {r["split"] for r in both["runs"]} == {split.name, "synthetic/other"}
    assert {r["split"] for r in json.loads(pop.read_text())["rows"]} == {"synthetic/other"}


def test_blog_set_overrides_make_a_labelled_variant(split, tmp_path):
    out = tmp_path / "blog.json"
    models_dir = tmp_path / "models"
    kw = {"candidates": 10, "extra": TINY, "device": "cpu", "log": lambda s: None, "models_dir": models_dir}
    blog.run_blog(split, ["mf", "igmc"], [0], out, **kw)
    payload = blog.run_blog(split, ["mf", "igmc"], [0], out, overrides={"rank_weight": 0.5}, **kw)
    labels = sorted(r["model"] for r in payload["rows"])
    # MF has no rank_weight: its run is the same and is not repeated; IGMC gets a second, labelled run.
    assert labels == ["igmc", "igmc (rank_weight=0.5)", "mf"]
    variant = next(r for r in payload["runs"] if r["overrides"])
    assert variant["config"]["rank_weight"] == 0.5 and variant["model"] == "igmc"
    assert sorted(p.name for p in models_dir.iterdir()) == [
        "synthetic-igmc-rank_weight0.5-s0",
        "synthetic-igmc-s0",
        "synthetic-mf-s0",
    ]
    # Overrides are recorded as the config took them: 1 for a float field is 1.0, the same run as 1.0.
    payload = blog.run_blog(split, ["igmc"], [0], out, overrides={"rank_weight": 1}, **kw)
    recorded = [r["overrides"] for r in payload["runs"] if r["overrides"].get("rank_weight") == 1]
    assert recorded == [{"rank_weight": 1.0}] and isinstance(recorded[0]["rank_weight"], float)
    n = len(payload["runs"])
    assert len(blog.run_blog(split, ["igmc"], [0], out, overrides={"rank_weight": 1.0}, **kw)["runs"]) == n


def test_overrides_flag_parses_json_values():
    from cmcrec.cli.options import parse_set
    from cmcrec.errors import ConfigError

    assert parse_set(["rank_weight=0.3", "rank_threshold=null", "use_infonce=false", "x=abc"]) == {
        "rank_weight": 0.3,
        "rank_threshold": None,
        "use_infonce": False,
        "x": "abc",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["novalue"])


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["robustness", "--kinds", "fake,bogus"], "--kinds"),
        (["robustness", "--noise", "0,-5"], "--noise"),
        (["robustness", "--noise", "a"], "--noise"),
        (["robustness", "--models", "mf,nope"], "--models"),
        (["robustness", "--epochs", "0"], "--epochs"),
        (["robustness", "--split", "u9"], "--split"),
        (["cold-start", "--studies", "bucket,x"], "--studies"),
        (["cold-start", "--k", "1,20", "--min-ratings", "15"], "--min-ratings"),
        (["cold-start", "--given", "latest"], "--given"),
        (["cold-start", "--holdout-fraction", "1.5"], "--holdout-fraction"),
        (["cold-start", "--dataset", "nope"], "--dataset"),
        (["blog", "--models", "mf,nope"], "--models"),
        (["blog", "--max-train-ratings", "1"], "--max-train-ratings"),
        (["blog", "--preset", "huge"], "--preset"),
    ],
)
def test_bad_flags_exit_2_before_loading_data(argv, flag, tmp_path, capsys):
    # The data directory does not exist: a flag error must come first.
    code = main(["benchmark", *argv, "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")])
    assert code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
