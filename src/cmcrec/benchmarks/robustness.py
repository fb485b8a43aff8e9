"""The robustness study: test RMSE and NDCG@10 as noise is added to the training ratings.

For every noise kind (``fake``: random ratings on unrated pairs; ``flip``: real
ratings changed to another level, see :mod:`cmcrec.data.noise`), noise share
``p`` (in percent of the training ratings), model and seed, the *training*
ratings get the noise, the model is trained on them exactly as a user would
train it (its validation share is carved from the noisy ratings), and it is
scored on the untouched test split: RMSE and full-catalogue Recall/NDCG@10
(:func:`~cmcrec.evaluation.pipeline.evaluate_recommender`, ``candidates``
re-ranked for subgraph models). Fakes never land on a test pair.

A run at ``p = 0`` is the same for both kinds, so it is trained once and
copied to the other kind (``reused_from`` says so). Runs are written as they
finish and a rerun skips those already in the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmcrec.benchmarks.accuracy import model_config
from cmcrec.benchmarks.common import (
    command_line,
    load_results,
    machine,
    now,
    require_same_settings,
    seed_std,
    write_results,
)
from cmcrec.config import RunContext
from cmcrec.data.noise import flip_ratings, inject_fake
from cmcrec.data.ratings import Ratings, Split
from cmcrec.errors import ConfigError

NOISE_KINDS = ("fake", "flip")
#: Seeds of the noise generators: a fixed tag per kind, so runs are reproducible one by one.
_KIND_TAG = {"fake": 1, "flip": 2}


def candidates_used(rec, candidates: int | None) -> int | str:
    """What ranked each user's list: ``candidates`` for re-ranking models, ``"all"`` for full score matrices."""
    if getattr(rec.module, "score_all", None) is not None or candidates is None:
        return "all"
    return int(candidates)


def add_noise(train: Ratings, test: Ratings, kind: str, percent: float, seed: int) -> Ratings:
    """``train`` with ``percent`` % noise of ``kind``; the generator depends only on (seed, kind, percent)."""
    if kind not in NOISE_KINDS:
        raise ConfigError(f"--kinds: unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")
    rng = np.random.default_rng([seed, 303, _KIND_TAG[kind], int(round(percent * 1000))])
    if kind == "fake":
        return inject_fake(train, percent / 100.0, rng, avoid=test)
    return flip_ratings(train, percent / 100.0, rng)


def check_noise_levels(noise: Sequence[float], kinds: Sequence[str]) -> None:
    """Reject bad ``--noise``/``--kinds`` values before any data is read."""
    for k in kinds:
        if k not in NOISE_KINDS:
            raise ConfigError(f"--kinds: unknown noise kind {k!r}; known: {', '.join(NOISE_KINDS)}")
    for p in noise:
        if not np.isfinite(p) or p < 0:
            raise ConfigError(f"--noise: shares are percentages >= 0, got {p!r}")
        if p > 100 and "flip" in kinds:
            raise ConfigError(f"--noise: cannot flip more than 100% of the ratings, got {p!r}")


def _key(run: dict[str, Any]) -> tuple:
    return (
        run["split"],
        run["kind"],
        float(run["noise"]),
        run["model"],
        run["seed"],
        run.get("preset"),
        run.get("epochs_override"),
        run.get("max_train_ratings"),
    )


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (kind, noise, model): metrics averaged over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["split"], r["kind"], float(r["noise"]), r["model"]), []).append(r)
    rows = []
    for (split, kind, noise, model), rs in sorted(groups.items()):
        row: dict[str, Any] = {"split": split, "noise": noise, "kind": kind, "model": model}
        for metric in ("rmse", "mae", "ndcg@10", "recall@10", "coverage@10"):
            values = [r[metric] for r in rs if r.get(metric) is not None]
            row[metric] = float(np.mean(values)) if values else None
            row[f"{metric}_std"] = seed_std(values) if values else None
        row["seeds"] = sorted(r["seed"] for r in rs)
        row["num_train"] = rs[0]["num_train"]
        rows.append(row)
    return rows


def run_robustness(
    split: Split,
    models: Sequence[str],
    noise: Sequence[float],
    kinds: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    preset: str | None = None,
    epochs: int | None = None,
    extra: dict[str, Any] | None = None,
    candidates: int | None = 200,
    max_train_ratings: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and score every (kind, noise %, model, seed) on ``split``; returns the payload written to ``out``.

    Args:
        split: the clean split; ``split.train`` is already subsampled if asked (``max_train_ratings``
            is only recorded, to tell runs on different samples apart).
        models: registry names.
        noise: noise shares in percent of the training ratings (``0``–``30`` typically).
        kinds: ``fake`` and/or ``flip``.
        seeds: each seed drives the noise, the validation carve-out and training.
        out: results JSON (runs already there are skipped).
        preset, epochs, extra: see :func:`~cmcrec.benchmarks.accuracy.model_config`.
        candidates: items re-ranked per user by subgraph models for NDCG/Recall.
    """
    from cmcrec.evaluation.pipeline import evaluate_recommender
    from cmcrec.recommender import Recommender

    check_noise_levels(noise, kinds)
    payload = load_results(out)
    runs: list[dict[str, Any]] = payload.get("runs", [])
    settings = {
        "split": split.name,
        "preset": preset,
        "epochs_override": epochs,
        "max_train_ratings": max_train_ratings,
        "overrides": dict(extra or {}),
        "candidates_requested": candidates,
    }
    require_same_settings(runs, settings, out)
    done = {_key(r): r for r in runs}
    command = command_line()
    clean = split.train
    for kind in kinds:
        for p in noise:
            for model in models:
                config = model_config(model, preset, epochs, extra)
                for seed in seeds:
                    run: dict[str, Any] = {
                        "dataset": clean.name.split("/")[0],
                        "split": split.name,
                        "kind": kind,
                        "noise": float(p),
                        "model": model,
                        "seed": seed,
                    } | settings
                    if _key(run) in done:
                        continue
                    twin = None
                    if p == 0:  # the clean run is the same for every kind
                        twin = next(
                            (done[k] for k in (_key(run | {"kind": o}) for o in NOISE_KINDS if o != kind) if k in done),
                            None,
                        )
                    if twin is not None:
                        run = twin | {"kind": kind, "reused_from": twin["kind"], "date": now()}
                    else:
                        t0 = time.perf_counter()
                        noisy = add_noise(clean, split.test, kind, float(p), seed)
                        rec = Recommender.fit(
                            model,
                            noisy,
                            config,
                            RunContext(device=device, seed=seed, num_workers=num_workers, progress=False),
                        )
                        metrics = evaluate_recommender(
                            rec, Split(noisy, split.test, split.name), ks=(10,), candidates=candidates, sampled=False
                        )
                        run |= {
                            "rmse": metrics["rmse"],
                            "mae": metrics["mae"],
                            "ndcg@10": metrics["ndcg@10"],
                            "recall@10": metrics["recall@10"],
                            "coverage@10": metrics["coverage@10"],
                            "num_users_evaluated": metrics["num_users_evaluated"],
                            "candidates": candidates_used(rec, candidates),
                            "num_train": len(clean),
                            "num_noisy": len(noisy),
                            "num_changed": int(
                                len(noisy) - len(clean) if kind == "fake" else (noisy.rating != clean.rating).sum()
                            ),
                            "num_test": len(split.test),
                            "best_epoch": rec.training["best_epoch"],
                            "epochs": config.epochs,
                            "train_seconds": rec.training["seconds"],
                            "wall_seconds": time.perf_counter() - t0,
                            "config": config.to_dict(),
                            "command": command,
                            "date": now(),
                        }
                    runs.append(run)
                    done[_key(run)] = run
                    log(
                        f"{kind:<4} {p:5.1f}%  {model:<10} seed {seed}: RMSE {run['rmse']:.4f}  "
                        f"NDCG@10 {run['ndcg@10']:.4f}" + (" (copied from the clean run)" if twin else "")
                    )
                    payload = {
                        "description": "Noise injected into the training ratings only (fake: random ratings on "
                        "unrated pairs; flip: real ratings changed to another level); noise in percent of the "
                        "training ratings; validation carved from the noisy training data; test split clean. "
                        "NDCG/Recall@10 are full-catalogue (subgraph models re-rank `candidates` items).",
                        "rows": aggregate(runs),
                        "runs": runs,
                        "machine": machine(),
                        "date": now(),
                    }
                    write_results(out, payload)
    if not payload:
        payload = {"rows": aggregate(runs), "runs": runs}
    return payload


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'kind':<5} {'noise %':>7} {'model':<10} {'RMSE':>7} {'NDCG@10':>8} {'Recall@10':>9}"]
    for r in sorted(rows, key=lambda r: (r["kind"], r["model"], r["noise"])):
        lines.append(
            f"{r['kind']:<5} {r['noise']:>7.1f} {r['model']:<10} {r['rmse']:>7.4f} "
            f"{r['ndcg@10']:>8.4f} {r['recall@10']:>9.4f}"
        )
    return "\n".join(lines)
