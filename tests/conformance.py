"""The conformance suite every registered model passes.

A model's test file subclasses :class:`ModelConformance` and sets ``model`` and
``overrides`` (a tiny, fast config). The suite checks the things every model must
do the same way: config round trip, training improves on the global mean,
save → load gives identical predictions, unknown ids raise, empty input works,
recommendations exclude seen items, and a new user can be served.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import low_rank_split

from cmcrec.errors import ConfigError, UnknownIdError
from cmcrec.models.registry import get_model
from cmcrec.recommender import Recommender


class ModelConformance:
    model: str = ""
    overrides: dict = {}
    # How much worse than the global mean the held-out RMSE may be. 0 (strictly better) for
    # models that learn this small synthetic problem; see the classes that relax it.
    mean_tolerance: float = 0.0

    @pytest.fixture(scope="class")
    @classmethod
    def split(cls):
        return low_rank_split(seed=3)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, split):
        return Recommender.fit(cls.model, split.train, dict(cls.overrides))

    def test_config_round_trip(self):
        spec = get_model(self.model)
        config = spec.make_config(dict(self.overrides))
        again = spec.config_cls.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config

    def test_config_rejects_unknown_field(self):
        with pytest.raises(ConfigError, match="no_such_field"):
            get_model(self.model).make_config({"no_such_field": 1})

    def test_training_beats_global_mean(self, fitted, split):
        pred = fitted.predict_indices(split.test.user, split.test.item)
        rmse = float(np.sqrt(np.mean((pred - split.test.rating) ** 2)))
        baseline = float(np.sqrt(np.mean((split.train.rating.mean() - split.test.rating) ** 2)))
        assert np.isfinite(pred).all()
        assert rmse < baseline + self.mean_tolerance, (rmse, baseline)

    def test_predictions_inside_scale(self, fitted, split):
        pred = fitted.predict_indices(split.test.user, split.test.item)
        assert pred.min() >= split.train.scale.minimum - 1e-5
        assert pred.max() <= split.train.scale.maximum + 1e-5

    def test_history_recorded(self, fitted):
        history = fitted.training["history"]
        assert len(history) >= 1
        assert 1 <= fitted.training["best_epoch"] <= len(history)
        assert min(h["valid_rmse"] for h in history) == pytest.approx(fitted.training["best_valid_rmse"])

    def test_save_load_identical(self, fitted, split, tmp_path):
        fitted.save(tmp_path / "m")
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
            "manifest.json",
            "model.safetensors",
            "train_ratings.safetensors",
            "vocab.json",
        ]
        loaded = Recommender.load(tmp_path / "m")
        a = fitted.predict_indices(split.test.user, split.test.item)
        b = loaded.predict_indices(split.test.user, split.test.item)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert [r.item for r in fitted.recommend("u1", k=5)] == [r.item for r in loaded.recommend("u1", k=5)]

    def test_unknown_ids_raise(self, fitted):
        with pytest.raises(UnknownIdError, match="nobody"):
            fitted.predict("nobody", ["i1"])
        with pytest.raises(UnknownIdError, match="no-item"):
            fitted.predict("u1", ["no-item"])

    def test_empty_input(self, fitted):
        assert fitted.predict("u1", []).shape == (0,)

    def test_recommend_excludes_seen(self, fitted, split):
        recs = fitted.recommend("u2", k=5)
        seen = set(split.train.items.ids[split.train.item[split.train.user == 2]])
        assert len(recs) == min(5, split.train.num_items - len(seen))
        assert not seen & {r.item for r in recs}
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
        assert all(r.title and r.title.startswith("Item ") for r in recs)

    def test_new_user(self, fitted):
        given = {"i1": 5, "i2": 1, "i3": 4}
        recs = fitted.recommend_for_ratings(given, k=4)
        assert len(recs) == 4
        assert not set(given) & {r.item for r in recs}
        assert all(np.isfinite(r.score) for r in recs)
