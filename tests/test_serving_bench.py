"""The serving benchmark's recall computation on a tiny trained model (no wall-clock assertions)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import low_rank_split

from cmcrec.recommender import Recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serving  # noqa: E402

TINY = {
    "epochs": 2,
    "hidden_channels": 8,
    "num_layers": 2,
    "num_bases": 2,
    "head_hidden": 16,
    "max_nodes_per_hop": 6,
    "eval_max_nodes_per_hop": 6,
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def split():
    return low_rank_split(seed=5, num_users=30, num_items=25, density=0.8)


@pytest.fixture(scope="module")
def rec(split):
    return Recommender.fit("igmc", split.train, dict(TINY))


def test_recall_in_unit_interval(rec, split):
    users = serving.sample_users(rec, split.test, 8, np.random.default_rng(0))
    assert len(users) == 8
    recall = serving.candidate_recall(rec, users, [2, 5, 25], k=5)
    assert sorted(recall) == [2, 5, 25]
    for r in recall.values():
        assert 0.0 <= r["kept"] <= r["in_candidates"] <= 1.0
    # Every unrated item is a candidate: nothing is lost.
    assert recall[25] == {"kept": 1.0, "in_candidates": 1.0}


def test_served_list_is_what_rank_returns(rec, split):
    users = serving.sample_users(rec, split.test, 6, np.random.default_rng(1))
    scores = serving.full_scores(rec, users)
    hist, rats = serving.histories(rec, users)
    cand = rec.candidate_generator.candidates(hist, rats, 5, exclude=hist)
    ranked = rec.rank(users, 3, candidates=5)
    for row in range(len(users)):
        np.testing.assert_array_equal(serving.top_k(scores[row], cand[row], 3), ranked[row][ranked[row] >= 0])
    full = rec.rank(users, 3, candidates=None)
    for row in range(len(users)):
        np.testing.assert_array_equal(serving.top_k(scores[row], np.arange(rec.data.num_items), 3), full[row])


def test_run_serving_rows(rec, split):
    result = serving.run_serving(rec, split, [3, 8], num_users=5, calls=2, seed=0, warmup=1)
    assert [r["n"] for r in result["rows"]] == [3, 8]
    for r in result["rows"]:
        assert 0.0 <= r["kept"] <= 1.0 and 0.0 <= r["in_candidates"] <= 1.0
        assert r["recommend"]["calls"] == 2
        assert r["recommend_for_ratings"]["calls"] == result["num_new_users"] > 0
    assert "smallest N" in serving.format_table(result) or "no N" in serving.format_table(result)
