"""Artifacts: atomic writes, pickle-free nested state, version refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic import low_rank_split

from cmcrec.artifacts import atomic_directory, flatten_state, load_state, save_state, unflatten_state
from cmcrec.errors import ArtifactError
from cmcrec.recommender import Recommender


def test_flatten_round_trip_keeps_types():
    state = {
        0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
        "groups": [{"lr": 0.1, "params": [0, 1], "betas": (0.9, 0.999)}],
        "arr": np.arange(4),
        "none": None,
    }
    skeleton, tensors = flatten_state(state)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert set(back) == {0, "groups", "arr", "none"}
    assert torch.equal(back[0]["exp_avg"], state[0]["exp_avg"])
    assert back["groups"][0]["betas"] == (0.9, 0.999)
    np.testing.assert_array_equal(back["arr"], np.arange(4))


def test_optimizer_state_survives_save_load(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    save_state(tmp_path, "s", {"opt": opt.state_dict()})
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))], lr=0.5)
    opt2.load_state_dict(load_state(tmp_path, "s")["opt"])
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_whole(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("1")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_ignores_a_crashed_process_leftover(tmp_path):
    """A stale .out.old-<pid> folder from a crash whose pid this process now has does not block a save."""
    import os

    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    stale = tmp_path / f".out.old-{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_atomic_directory_restores_the_old_artifact_if_the_final_move_fails(tmp_path, monkeypatch):
    import os

    import cmcrec.artifacts as artifacts

    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    real = os.replace

    def fail_on_new(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", fail_on_new)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_directory(target) as tmp:
            (tmp / "b.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_recover_directory_puts_back_what_a_crash_left_aside(tmp_path):
    from cmcrec.artifacts import recover_directory

    target = tmp_path / "run.checkpoint"
    aside = tmp_path / ".run.checkpoint.old-abc"
    aside.mkdir()
    (aside / "state.json").write_text("{}")
    assert recover_directory(target) is True
    assert (target / "state.json").is_file() and not aside.exists()
    assert recover_directory(target) is False  # present: left alone


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    split = low_rank_split(seed=4)
    rec = Recommender.fit("mf", split.train, {"epochs": 2, "factors": 2, "batch_size": 64})
    return rec.save(tmp_path_factory.mktemp("a") / "model")


def test_manifest_contents(saved):
    m = json.loads((saved / "manifest.json").read_text())
    assert m["format"] == "cmcrec-model" and m["format_version"] == 1
    assert m["model"] == "mf" and m["config"]["factors"] == 2
    assert m["scale"]["levels"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(m["training"]["history"]) == 2


def test_unknown_version_refused(saved, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99 is not supported"):
        Recommender.load(bad)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing tensor file"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "cannot read safetensors"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "invalid JSON"),
        (lambda d: (d / "manifest.json").write_text("[]"), "not a cmcrec model manifest"),
        (lambda d: (d / "vocab.json").write_bytes(b'{"users": ["\xff"]}'), "vocab.json: not UTF-8"),
    ],
)
def test_damaged_artifacts_refused(saved, tmp_path, damage, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    damage(bad)
    with pytest.raises(ArtifactError, match=message):
        Recommender.load(bad)


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such model directory"):
        Recommender.load(tmp_path / "nope")


@pytest.mark.parametrize("model", ["mccl", "igmc"])
def test_models_saved_before_a_behaviour_changing_field_load_as_they_were_trained(tmp_path, model):
    """MCCL's ``scorer_edges`` defaults to "rating" now and both models' ``mean_over``
    to "node"; a saved config without them was trained with per-direction scores
    and means per relation, and must load as "directed" and "relation"."""
    split = low_rank_split(seed=4)
    tiny = {"epochs": 1, "hidden_channels": 4, "num_layers": 2, "num_bases": 2, "mean_over": "relation"}
    if model == "mccl":
        tiny.update(latent_channels=4, scorer_hidden=3, scorer_edges="directed")
    rec = Recommender.fit(model, split.train, tiny)
    path = rec.save(tmp_path / "model")
    m = json.loads((path / "manifest.json").read_text())
    for field in ("scorer_edges", "mean_over"):
        m["config"].pop(field, None)
    (path / "manifest.json").write_text(json.dumps(m))
    loaded = Recommender.load(path)
    assert loaded.config.mean_over == "relation"
    if model == "mccl":
        assert loaded.config.scorer_edges == "directed"
    users, items = split.test.user[:20], split.test.item[:20]
    expected = rec.predict_indices(users, items)
    np.testing.assert_allclose(loaded.predict_indices(users, items), expected, rtol=1e-6)
    # The field changes predictions (so the test above can tell the two apart) ...
    rec.module.config = rec.module.config.replace(mean_over="node")
    assert not np.allclose(rec.predict_indices(users, items), expected, rtol=1e-4)
    # ... and a config written by hand (not a saved model) gets today's defaults.
    fresh = type(loaded.config).from_dict({})
    assert fresh.mean_over == "node"
    if model == "mccl":
        assert fresh.scorer_edges == "rating"
