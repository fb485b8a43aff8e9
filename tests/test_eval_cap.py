"""The evaluation cap chosen on validation after training (``select_eval_cap``), and checkpoints
written before a config field existed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic import low_rank_split
from test_accuracy_study import _kill_after_epoch, _Killed

from cmcrec.benchmarks.common import fit_or_load, model_key
from cmcrec.config import RunContext
from cmcrec.data.splits import validation_split
from cmcrec.errors import ArtifactError, CmcrecError
from cmcrec.graph.csr import RatingGraph
from cmcrec.models.configs import IGMCConfig
from cmcrec.recommender import Recommender
from cmcrec.training.batching import make_batcher
from cmcrec.training.selection import choose_eval_cap, eval_cap_candidates
from cmcrec.training.trainer import Trainer, predict_rows

# Users rate about 12 of 30 items and items are rated by about 16 of 40 users, so caps of 3, 6
# and none cut different subgraphs.
TINY = {
    "epochs": 3,
    "hidden_channels": 8,
    "num_layers": 2,
    "num_bases": 2,
    "head_hidden": 16,
    "max_nodes_per_hop": 3,
    "eval_max_nodes_per_hop": 3,
    "batch_size": 32,
    "lr": 0.01,
}
CTX = RunContext(seed=0, progress=False)


def test_candidates_are_the_cap_twice_it_and_none():
    assert eval_cap_candidates(200) == (200, 400, None)
    assert eval_cap_candidates(None) == (None,)


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [
        ({3: 0.9, 6: 0.8, None: 0.85}, 6),
        ({3: 0.9, 6: 0.95, None: 0.85}, None),
        ({3: 0.8, 6: 0.8, None: 0.8}, 3),  # of equals, the smaller (cheaper) cap
        ({3: math.nan, 6: 0.9, None: math.inf}, 6),  # a non-finite score is never chosen
        ({3: math.nan, 6: math.nan, None: math.nan}, 3),  # nothing finite: the cap training used
    ],
)
def test_choice_is_the_lowest_finite_validation_rmse(scores, chosen):
    seen = []
    out = choose_eval_cap(3, lambda cap: seen.append(cap) or scores[cap])
    assert seen == [3, 6, None]
    assert out["trained_with"] == 3 and out["chosen"] == chosen
    assert [s["eval_max_nodes_per_hop"] for s in out["valid_rmse"]] == [3, 6, None]
    recorded = [s["valid_rmse"] for s in out["valid_rmse"]]
    assert recorded == [v if math.isfinite(v) else None for v in scores.values()]  # plain JSON


def _valid_rmse(rec: Recommender, train, cap, seed: int) -> float:
    """The obvious recomputation: carve the same validation split, cut its subgraphs at ``cap`` from
    the graph of the ratings left to fit, predict with the kept weights."""
    fit_part, valid = validation_split(train, rec.config.valid_fraction, np.random.default_rng([seed, 101]))
    config = rec.config.replace(eval_max_nodes_per_hop=cap)
    batcher = make_batcher("subgraph", config, RatingGraph.from_ratings(fit_part), train=False, seed=0)
    pred = predict_rows(rec.module, batcher, valid.user, valid.item, batch_size=7)
    return float(np.sqrt(np.mean((pred.astype(np.float64) - valid.rating) ** 2)))


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_scores_each_cap_on_validation_and_predicts_with_the_best(tmp_path, seed):
    split = low_rank_split(seed=3)
    rec = Recommender.fit("igmc", split.train, TINY | {"select_eval_cap": True}, RunContext(seed=seed, progress=False))
    choice = rec.training["eval_cap"]
    scores = {s["eval_max_nodes_per_hop"]: s["valid_rmse"] for s in choice["valid_rmse"]}
    assert list(scores) == [3, 6, None]
    for cap, score in scores.items():  # the run's own validation split, carved with its seed
        assert score == pytest.approx(_valid_rmse(rec, split.train, cap, seed), rel=1e-5)
    assert len({round(v, 6) for v in scores.values()}) == 3  # the caps really cut different subgraphs
    # The first is the cap training validated with: its score is the kept epoch's.
    assert scores[3] == pytest.approx(rec.training["best_valid_rmse"], rel=1e-6)
    assert choice["trained_with"] == 3
    assert choice["chosen"] == min(scores, key=scores.get) == rec.config.eval_max_nodes_per_hop
    assert rec.trained_config == IGMCConfig.from_dict(TINY | {"select_eval_cap": True})
    # Saved and read back, the model keeps the chosen cap and knows what it was trained with.
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.config == rec.config and back.trained_config == rec.trained_config
    np.testing.assert_array_equal(
        back.predict_indices(split.test.user, split.test.item), rec.predict_indices(split.test.user, split.test.item)
    )


def test_choosing_after_training_gives_what_training_with_the_option_gives():
    """The option changes nothing in training, so an existing model can be given it afterwards."""
    split = low_rank_split(seed=3)
    with_option = Recommender.fit("igmc", split.train, TINY | {"select_eval_cap": True}, CTX)
    later = Recommender.fit("igmc", split.train, TINY, CTX)
    assert later.choose_eval_cap() == with_option.training["eval_cap"]
    assert later.config.eval_max_nodes_per_hop == with_option.config.eval_max_nodes_per_hop
    np.testing.assert_array_equal(
        later.predict_indices(split.test.user, split.test.item),
        with_option.predict_indices(split.test.user, split.test.item),
    )
    mf = Recommender.fit("mf", split.train, {"epochs": 1}, CTX)
    with pytest.raises(CmcrecError, match="mf cuts no subgraphs"):
        mf.choose_eval_cap()
    later.reset_eval_cap()
    assert later.config.eval_max_nodes_per_hop == 3 and "eval_cap" not in later.training
    # The validation split must be the run's own: no seed recorded, or other training ratings, is an error.
    unseeded = Recommender(later.model_name, later.config, later.module, later.train, training={})
    with pytest.raises(CmcrecError, match="no training seed"):
        unseeded.choose_eval_cap()
    fewer = Recommender(
        later.model_name,
        later.config,
        later.module,
        split.train.subset(np.arange(len(split.train) // 2)),
        later.training,
    )
    with pytest.raises(CmcrecError, match="validation ratings where training used"):
        fewer.choose_eval_cap()


def test_predictions_use_the_chosen_cap(monkeypatch):
    """Whatever the choice, every prediction afterwards cuts its subgraph with it."""
    split = low_rank_split(seed=3)
    monkeypatch.setattr(
        "cmcrec.recommender.choose_eval_cap", lambda cap, score: {"trained_with": cap, "chosen": None, "valid_rmse": []}
    )
    rec = Recommender.fit("igmc", split.train, TINY | {"select_eval_cap": True}, CTX)
    assert rec.config.eval_max_nodes_per_hop is None
    graph = RatingGraph.from_ratings(split.train)
    users, items = split.test.user, split.test.item

    def at(cap):
        batcher = make_batcher("subgraph", rec.config.replace(eval_max_nodes_per_hop=cap), graph, train=False, seed=0)
        return predict_rows(rec.module, batcher, users, items, batch_size=64)

    got = rec.predict_indices(users, items)
    np.testing.assert_allclose(got, at(None), rtol=1e-6)
    assert not np.allclose(got, at(3), rtol=1e-6)


def test_models_differing_only_in_select_eval_cap_share_their_training(tmp_path, monkeypatch):
    """The option acts after training: one saved model serves runs with and without it, each set
    up as its config asks, and nothing is retrained."""
    assert model_key("s", "igmc", {"lr": 0.1, "select_eval_cap": True}, 0) == model_key("s", "igmc", {"lr": 0.1}, 0)
    monkeypatch.setattr(  # a choice that differs from the trained cap, so the set-up shows
        "cmcrec.recommender.choose_eval_cap", lambda cap, score: {"trained_with": cap, "chosen": None, "valid_rmse": []}
    )
    split = low_rank_split(seed=3)
    on, off = (IGMCConfig.from_dict(TINY | {"select_eval_cap": flag}) for flag in (True, False))
    first = fit_or_load("igmc", split.train, on, CTX, tmp_path, "m")
    assert first.config.eval_max_nodes_per_hop is None
    fits = []
    monkeypatch.setattr(Recommender, "fit", lambda *a, **k: fits.append(1))
    plain = fit_or_load("igmc", split.train, off, CTX, tmp_path, "m")
    assert plain.config == off and "eval_cap" not in plain.training
    again = fit_or_load("igmc", split.train, on, CTX, tmp_path, "m")
    assert again.config == on.replace(eval_max_nodes_per_hop=None) and again.training["eval_cap"]["chosen"] is None
    assert fits == []
    # Saved without the option, then asked for it: chosen on load, still not retrained.
    (tmp_path / "m").rename(tmp_path / "old")
    plain.save(tmp_path / "m")
    assert fit_or_load("igmc", split.train, on, CTX, tmp_path, "m").config.eval_max_nodes_per_hop is None
    assert fits == []


def _drop_from_checkpoint(directory, field):
    """Make a checkpoint look written before config field ``field`` existed."""
    identity_file = directory.with_name(directory.name + ".json")  # fit_or_load's, when there is one
    if identity_file.is_file():
        identity = json.loads(identity_file.read_text())
        del identity["config"][field]
        identity_file.write_text(json.dumps(identity))
    state_file = directory / "state.json"
    state = json.loads(state_file.read_text())
    fields = dict(state["__dict__"])
    run = json.loads(fields["identity"])
    del run["config"][field]
    fields["identity"] = json.dumps(run, sort_keys=True)
    state["__dict__"] = [[k, v] for k, v in fields.items()]
    state_file.write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("dropped", "override", "resumed"),
    [
        ("edge_dropout", {}, True),  # as if added since: at its default, the same run
        ("edge_dropout", {"edge_dropout": 0.1}, False),  # the checkpoint meant the default
        ("mean_over", {}, False),  # older checkpoints averaged per relation, this run per node
        ("mean_over", {"mean_over": "relation"}, True),
    ],
)
def test_a_checkpoint_from_before_a_field_existed_resumes_only_the_run_it_was(
    tmp_path, monkeypatch, dropped, override, resumed
):
    split = low_rank_split(seed=3)
    config = IGMCConfig.from_dict(TINY | override)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            fit_or_load("igmc", split.train, config, CTX, tmp_path, "m")
    _drop_from_checkpoint(tmp_path / "m.checkpoint", dropped)
    restored = []
    load = Trainer.load_checkpoint
    monkeypatch.setattr(Trainer, "load_checkpoint", lambda self, d: restored.append(d) or load(self, d))
    rec = fit_or_load("igmc", split.train, config, CTX, tmp_path, "m")
    assert (restored == [tmp_path / "m.checkpoint"]) is resumed
    assert [h["epoch"] for h in rec.training["history"]] == [1, 2, 3]


@pytest.mark.parametrize(("dropped", "resumed"), [("edge_dropout", True), ("mean_over", False)])
def test_the_trainer_resumes_a_checkpoint_from_before_a_field_only_if_it_is_the_same_run(
    tmp_path, monkeypatch, dropped, resumed
):
    split = low_rank_split(seed=3)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            Recommender.fit("igmc", split.train, TINY, CTX, checkpoint_dir=tmp_path / "c")
    _drop_from_checkpoint(tmp_path / "c", dropped)
    if resumed:
        rec = Recommender.fit("igmc", split.train, TINY, CTX, checkpoint_dir=tmp_path / "c", resume=True)
        assert [h["epoch"] for h in rec.training["history"]] == [1, 2, 3]
    else:  # older checkpoints averaged per relation; this run averages per node
        with pytest.raises(ArtifactError, match="mean_over: checkpoint 'relation', now 'node'"):
            Recommender.fit("igmc", split.train, TINY, CTX, checkpoint_dir=tmp_path / "c", resume=True)


def test_a_run_killed_without_select_eval_cap_resumes_with_it(tmp_path, monkeypatch):
    split = low_rank_split(seed=3)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            fit_or_load("igmc", split.train, IGMCConfig.from_dict(TINY), CTX, tmp_path, "m")
    restored = []
    load = Trainer.load_checkpoint
    monkeypatch.setattr(Trainer, "load_checkpoint", lambda self, d: restored.append(d) or load(self, d))
    rec = fit_or_load("igmc", split.train, IGMCConfig.from_dict(TINY | {"select_eval_cap": True}), CTX, tmp_path, "m")
    assert restored == [tmp_path / "m.checkpoint"] and "eval_cap" in rec.training


def _add_to_checkpoint(directory, field, value):
    """Make a checkpoint look written by a version that kept ``field`` in its identities."""
    identity_file = directory.with_name(directory.name + ".json")
    if identity_file.is_file():
        identity = json.loads(identity_file.read_text())
        identity["config"][field] = value
        identity_file.write_text(json.dumps(identity))
    state_file = directory / "state.json"
    state = json.loads(state_file.read_text())
    fields = dict(state["__dict__"])
    run = json.loads(fields["identity"])
    run["config"][field] = value
    fields["identity"] = json.dumps(run, sort_keys=True)
    state["__dict__"] = [[k, v] for k, v in fields.items()]
    state_file.write_text(json.dumps(state))


def test_a_checkpoint_whose_identity_holds_select_eval_cap_resumes_either_way(tmp_path, monkeypatch):
    """Identities written between ee2ef02 and 4a87406 held the post-training field; it never
    separates runs."""
    split = low_rank_split(seed=3)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            fit_or_load("igmc", split.train, IGMCConfig.from_dict(TINY), CTX, tmp_path, "m")
    _add_to_checkpoint(tmp_path / "m.checkpoint", "select_eval_cap", True)
    restored = []
    load = Trainer.load_checkpoint
    monkeypatch.setattr(Trainer, "load_checkpoint", lambda self, d: restored.append(d) or load(self, d))
    rec = fit_or_load("igmc", split.train, IGMCConfig.from_dict(TINY), CTX, tmp_path, "m")
    assert restored == [tmp_path / "m.checkpoint"] and [h["epoch"] for h in rec.training["history"]] == [1, 2, 3]
    # The trainer's own check (--resume) agrees.
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(_Killed):
            Recommender.fit("igmc", split.train, TINY, CTX, checkpoint_dir=tmp_path / "c")
    _add_to_checkpoint(tmp_path / "c", "select_eval_cap", True)
    rec = Recommender.fit("igmc", split.train, TINY, CTX, checkpoint_dir=tmp_path / "c", resume=True)
    assert [h["epoch"] for h in rec.training["history"]] == [1, 2, 3]


def test_choosing_on_a_model_read_back_from_disk(tmp_path):
    """The validation split is carved again from the saved training ratings."""
    split = low_rank_split(seed=3)
    ctx = RunContext(seed=2, progress=False)
    Recommender.fit("igmc", split.train, TINY, ctx).save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    with_option = Recommender.fit("igmc", split.train, TINY | {"select_eval_cap": True}, ctx)
    assert loaded.choose_eval_cap() == with_option.training["eval_cap"]
    assert loaded.config == with_option.config
