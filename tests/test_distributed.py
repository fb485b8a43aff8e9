"""DDP on CPU (gloo): 2 processes under ``torchrun`` against the single-process path.

Each model gets one ``torchrun`` launch of ``tests/ddp_worker.py`` (see its
docstring for what it does), so the suite pays the interpreter and rendezvous
start-up once per model. ``--standalone`` picks a free rendezvous port, so
parallel test runs do not collide.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import low_rank_ratings, low_rank_split

from cmcrec.artifacts import load_state
from cmcrec.config import RunContext
from cmcrec.models.registry import get_model
from cmcrec.recommender import Recommender
from cmcrec.training import distributed as dist_utils

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
EPOCHS = 2
MF_CONFIG = {"factors": 4, "lr": 0.02, "batch_size": 32}
IGMC_CONFIG = {
    "hidden_channels": 8,
    "num_layers": 2,
    "max_nodes_per_hop": 5,
    "eval_max_nodes_per_hop": 5,
    "batch_size": 16,
}


def _igmc_available() -> bool:
    try:
        importlib.import_module("cmcrec.models.igmc")
    except ImportError:
        return False
    return True


MODELS = [
    pytest.param("mf", MF_CONFIG, id="mf"),
    pytest.param(
        "igmc",
        IGMC_CONFIG,
        id="igmc",
        marks=pytest.mark.skipif(not _igmc_available(), reason="cmcrec.models.igmc does not import yet"),
    ),
    # The ranking-aware term: extra subgraphs per batch, a rank's batch may hold no positive.
    pytest.param("igmc", IGMC_CONFIG | {"rank_weight": 0.5, "rank_negatives": 2}, id="igmc-rank"),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)  # a test run inside torchrun must not leak its group into the children
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def _single_fit(model: str, config: dict, epochs: int, checkpoint_dir: Path, resume: bool = False) -> Recommender:
    """The same run as the worker's, in this (single) process."""
    split = low_rank_split(seed=1)
    cfg = get_model(model).make_config(config | {"patience": None, "epochs": epochs})
    return Recommender.fit(
        model, split.train, cfg, RunContext(device="cpu", seed=0, progress=False), checkpoint_dir, resume=resume
    )


def _rmses(history: list[dict]) -> list[float]:
    return [h["valid_rmse"] for h in history]


@pytest.mark.parametrize(("model", "config"), MODELS)
def test_two_processes_against_one(tmp_path, model, config):
    single_ckpt = tmp_path / "single_ckpt"
    single = _single_fit(model, config, EPOCHS, single_ckpt)

    work = tmp_path / "ddp"
    work.mkdir()
    _torchrun(
        [
            str(WORKER),
            f"--model={model}",
            f"--config={json.dumps(config)}",
            f"--epochs={EPOCHS}",
            f"--workdir={work}",
            f"--resume-from={single_ckpt}",
        ]
    )
    r = json.loads((work / "result.json").read_text())
    assert r["world_size"] == 2

    # (a) a trainer starts every rank from rank 0's weights and weight average; other models are refused.
    assert r["broadcast_identical"], f"ranks disagree by up to {r['broadcast_max_diff']}"
    assert r["average_identical"]
    assert r["mismatch_error"] and "every rank must build the same model" in r["mismatch_error"]
    # (a) gradients are averaged, so every rank holds the very same weights.
    assert r["params_identical"], f"ranks disagree by up to {r['params_max_diff']}"
    assert r["resume_params_identical"] and r["from_single_params_identical"]
    assert len(r["history"]) == EPOCHS

    # (b) all-reduced sums and counts == one process over the same rows (no row dropped or counted twice).
    for name in ("valid", "test", "odd", "one"):
        assert r[f"{name}_rmse_distributed"] == pytest.approx(r[f"{name}_rmse_single"], rel=1e-6, abs=0)
    assert r["odd_rows"] % 2 == 1 and r["one_rows"] == 1
    # The trainer's own selection metric is the same distributed evaluation of the kept weights.
    assert r["valid_rmse_distributed"] == pytest.approx(r["best_valid_rmse"], rel=1e-12)

    # (b) the evaluation cap chosen on validation: every rank chooses alike, as one process would.
    if model != "mf":
        assert r["eval_cap_same_on_ranks"]
        # Each rank scored only its share: the shares add up to every row once per cap.
        assert r["eval_cap_rows_all_ranks"] == r["eval_cap_rows_expected"]
        assert r["eval_cap_rows_this_rank"] < r["eval_cap_rows_expected"]
        got, want = r["eval_cap_distributed"], r["eval_cap_single"]
        assert got["chosen"] == want["chosen"] and got["trained_with"] == want["trained_with"]
        for a, b in zip(got["valid_rmse"], want["valid_rmse"], strict=True):
            assert a["valid_rmse"] == pytest.approx(b["valid_rmse"], rel=1e-9)
        assert got["valid_rmse"][0]["valid_rmse"] == pytest.approx(r["best_valid_rmse"], rel=1e-9)

    # (c) N → N: resume after EPOCHS epochs for one more == EPOCHS + 1 straight, exactly.
    assert _rmses(r["resume_history"]) == _rmses(r["straight_history"])
    assert r["resume_vs_straight_max_diff"] == 0.0

    # (c) 1 → 2: the history carries over and training continues.
    assert _rmses(r["from_single_history"])[:EPOCHS] == _rmses(single.training["history"])
    assert len(r["from_single_history"]) == EPOCHS + 1

    # (c) 2 → 1: the checkpoint holds the unwrapped module's state dict, and resumes here.
    state = load_state(work / "ddp_ckpt", "state")
    assert set(state["model"]) == set(single.module.state_dict())
    assert len(state["torch_rng_ranks"]) == 2
    resumed = _single_fit(model, config, EPOCHS + 1, work / "ddp_ckpt", resume=True)
    assert _rmses(resumed.training["history"])[:EPOCHS] == _rmses(r["history"])
    assert len(resumed.training["history"]) == EPOCHS + 1

    # (d) No trainer keeps a DDP wrapper past fit: freed after the process group, it can abort gloo.
    assert r["live_ddp_wrappers"] == 0

    # Only rank 0 wrote files: one checkpoint per fit, the result, nothing else.
    assert sorted(p.name for p in work.iterdir()) == ["ddp_ckpt", "ddp_ckpt_resumed", "from_single", "result.json"]
    assert sorted(p.name for p in (work / "ddp_ckpt").iterdir()) == ["state.json", "state.safetensors"]


def test_cli_train_two_processes_one_artifact(tmp_path):
    """``torchrun -m cmcrec train``: rank 0 alone prints the result and saves the artifact."""
    ratings = low_rank_ratings(num_users=30, num_items=20, seed=3)
    csv = tmp_path / "ratings.csv"
    lines = ["user,item,rating"] + [
        f"{ratings.users.ids[u]},{ratings.items.ids[i]},{r:g}"
        for u, i, r in zip(ratings.user, ratings.item, ratings.rating, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    proc = _torchrun(
        [
            "-m",
            "cmcrec",
            "train",
            "--model=mf",
            f"--dataset={csv}",
            "--epochs=2",
            "--device=cpu",
            f"--out={out}",
            "--json",
            "--k=5",
        ]
    )
    stdout = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(stdout) == 1, proc.stdout
    result = json.loads(stdout[0])
    assert result["out"] == str(out) and result["best_epoch"] >= 1
    assert proc.stderr.count("saved ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.checkpoint", "ratings.csv"]
    rec = Recommender.load(out)
    assert np.isfinite(rec.predict_indices(np.array([0, 1]), np.array([0, 1]))).all()


def test_helpers_without_a_process_group(monkeypatch):
    """Outside torchrun everything is a no-op and the context is unchanged."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = RunContext(device="cpu")
    assert not dist_utils.is_distributed()
    assert dist_utils.init_from_env(ctx) == ctx
    assert dist_utils.all_reduce_sums([1.5, 2.0], torch.device("cpu"), ctx) == [1.5, 2.0]
    t = torch.arange(3.0)
    (only,) = dist_utils.all_gather_tensors(t, torch.device("cpu"), ctx)
    assert torch.equal(only, t)
    module = torch.nn.Linear(2, 3)
    assert dist_utils.wrap_model(module, torch.device("cpu"), ctx) is module
    assert dist_utils.flat_parameters(module).shape == (9,)
    seeds = {dist_utils.rank_seed(0, epoch, rank) for epoch in range(3) for rank in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    dist_utils.barrier()
