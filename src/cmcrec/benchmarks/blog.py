"""The blog table: rating accuracy, top-10 quality and popularity bias of every model on one split.

The write-up that made MCCL known compared it with SVD on MovieLens by RMSE,
Recall@10 and catalogue coverage (``shared/DESIGN.md`` §1). This study
measures the same things for each model on one split, with the project's own
protocols: RMSE on the test ratings, full-catalogue Recall/NDCG@10 over the
test users with a relevant item (models with a full score matrix rank every
unseen item; subgraph models re-rank the top ``candidates`` items of the
item-kNN generator — the ``candidates`` column says which), coverage@10,
average popularity and head share of the recommended items. ``popularity``
(most-popular, ranking only) has no RMSE.

It also writes the popularity profile of each model's top-10 lists
(``popularity.json``): the share of recommendation slots that fall in each
decile of the catalogue ranked by training popularity (decile 0 = the 10% most
rated items), beside the catalogue's own popularity curve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmcrec.benchmarks.accuracy import model_config
from cmcrec.benchmarks.common import (
    command_line,
    fit_or_load,
    load_results,
    machine,
    model_key,
    model_label,
    now,
    write_results,
)
from cmcrec.benchmarks.robustness import candidates_used
from cmcrec.config import RunContext
from cmcrec.data.ratings import Split
from cmcrec.errors import ConfigError
from cmcrec.evaluation.pipeline import RecommenderRanker

POPULARITY = "popularity"
BLOG_METRICS = ("recall@10", "ndcg@10", "coverage@10", "avg_popularity@10", "head_share@10")


class _RecordingRanker:
    """Passes ``rank`` through to a ranker and keeps every list it returns."""

    def __init__(self, ranker) -> None:
        self.ranker = ranker
        self.lists: list[np.ndarray] = []

    def __repr__(self) -> str:
        return repr(self.ranker)

    def rank(self, users: np.ndarray, k: int) -> np.ndarray:
        out = self.ranker.rank(users, k)
        self.lists.append(np.asarray(out))
        return out


def popularity_ranks(item_counts: np.ndarray) -> np.ndarray:
    """0-based rank of every item by training count, most rated first (ties by item index)."""
    order = np.lexsort((np.arange(len(item_counts)), -np.asarray(item_counts)))
    ranks = np.empty(len(item_counts), dtype=np.int64)
    ranks[order] = np.arange(len(item_counts))
    return ranks


def decile_shares(lists: np.ndarray, item_counts: np.ndarray) -> tuple[list[float], float, int]:
    """Where the recommended items sit in the catalogue's popularity ranking.

    Args:
        lists: ``(U, k)`` recommended item indices, ``-1`` padded.
        item_counts: ``(I,)`` training ratings per item.

    Returns:
        ``(decile_share, mean_popularity, num_recommendations)``: the share of
        recommendation slots whose item is in each popularity-rank decile (10
        floats summing to 1; decile ``d`` holds ranks ``[d·I/10, (d+1)·I/10)``),
        the mean training count of the recommended items, and the slot count.
    """
    items = lists[lists >= 0]
    if items.size == 0:
        return [0.0] * 10, 0.0, 0
    num_items = len(item_counts)
    decile = popularity_ranks(item_counts)[items] * 10 // num_items
    share = np.bincount(decile, minlength=10) / items.size
    return [float(s) for s in share], float(np.asarray(item_counts)[items].mean()), int(items.size)


def _key(run: dict[str, Any]) -> tuple:
    return (
        run["split"],
        run["model"],
        run["seed"],
        run.get("candidates_requested"),
        run.get("preset"),
        run.get("epochs_override"),
        run.get("max_train_ratings"),
        json.dumps(run.get("overrides") or {}, sort_keys=True),
    )


_ROW_KEYS = ("split", "model", "rmse", "mae", *BLOG_METRICS, "gini@10", "candidates", "seed", "num_users_evaluated")


def _row(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run.get(k) for k in _ROW_KEYS} | {"model": model_label(run)}


def popularity_payload(runs: Sequence[dict[str, Any]], catalogue: np.ndarray) -> dict[str, Any]:
    """The ``popularity.json`` object for the given blog runs."""
    return {
        "description": "Popularity profile of each model's top-10 lists over the test users with a relevant item: "
        "decile_share[d] = share of recommendation slots whose item is in popularity-rank decile d of the "
        "catalogue (0 = most rated 10%); catalogue_popularity = training ratings per item, sorted descending. "
        "Rows of the latest split's runs only (the catalogue is that split's).",
        "catalogue_popularity": [int(c) for c in np.sort(np.asarray(catalogue))[::-1]],
        "rows": [
            {
                "split": r["split"],
                "model": model_label(r),
                "seed": r["seed"],
                "decile_share": r["decile_share"],
                "mean_popularity": r["mean_popularity"],
                "num_recommendations": r["num_recommendations"],
                "command": r.get("command"),
            }
            for r in runs
        ],
        "machine": machine(),
        "date": now(),
    }


def run_blog(
    split: Split,
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    popularity_out: Path | None = None,
    *,
    candidates: int | None = 200,
    preset: str | None = None,
    epochs: int | None = None,
    extra: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    max_train_ratings: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
    models_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit and score every (model, seed) on ``split``; writes ``out`` (and ``popularity_out``) after each run.

    Args:
        split: the split (``split.train`` already subsampled if asked; ``max_train_ratings`` is recorded).
        models: registry names, plus ``popularity`` for the most-popular ranker.
        seeds: training seeds.
        out: the blog table JSON (runs already there are skipped).
        popularity_out: the popularity-profile JSON, rebuilt from all runs in ``out``.
        candidates: items re-ranked per user by subgraph models.
        preset, epochs, extra: see :func:`~cmcrec.benchmarks.accuracy.model_config`.
        overrides: config overrides applied after ``extra`` that define a variant
            (the CLI's ``--set``): recorded with each run, part of its resume key
            and of its row's model label (:func:`model_label`), for the models
            whose config has the key.
    """
    from cmcrec.evaluation.protocols import PopularityRanker, evaluate_full_ranking, evaluate_ratings

    check_models(models)
    train, test = split.train, split.test
    catalogue = train.item_counts()
    payload = load_results(out)
    runs: list[dict[str, Any]] = payload.get("runs", [])
    done = {_key(r) for r in runs}
    command = command_line()
    for model in models:
        merged = {**(extra or {}), **(overrides or {})}
        config = None if model == POPULARITY else model_config(model, preset, epochs, merged)
        # The overrides this model's config actually took (model_config ignores keys it lacks), with
        # the values the config ended up with (see accuracy.run_accuracy).
        applied = {} if config is None else {k: getattr(config, k) for k in overrides or {} if hasattr(config, k)}
        for seed in seeds:
            run: dict[str, Any] = {
                "dataset": train.name.split("/")[0],
                "split": split.name,
                "model": model,
                "seed": seed,
                "candidates_requested": candidates,
                "preset": preset,
                "epochs_override": epochs,
                "max_train_ratings": max_train_ratings,
                "overrides": applied,
            }
            if _key(run) in done:
                continue
            t0 = time.perf_counter()
            if model == POPULARITY:
                ranker = _RecordingRanker(PopularityRanker(train))
                accuracy: dict[str, Any] = {"rmse": None, "mae": None}
                run |= {"candidates": "all", "config": None}
            else:
                context = RunContext(device=device, seed=seed, num_workers=num_workers, progress=False)
                rec = fit_or_load(
                    model,
                    train,
                    config,
                    context,
                    models_dir,
                    model_key(split.name, model, applied, seed, preset, epochs),
                )
                ranker = _RecordingRanker(RecommenderRanker(rec, candidates))
                accuracy = dict(evaluate_ratings(rec.predict_indices(test.user, test.item), test))
                run |= {
                    "candidates": candidates_used(rec, candidates),
                    "best_epoch": rec.training["best_epoch"],
                    "epochs": config.epochs,
                    "train_seconds": rec.training["seconds"],
                    "config": config.to_dict(),
                }
            ranking = evaluate_full_ranking(ranker, train, test, ks=(10,))
            shares, mean_pop, slots = decile_shares(np.concatenate(ranker.lists), catalogue)
            run |= {
                "rmse": accuracy["rmse"],
                "mae": accuracy["mae"],
                **{m: ranking[m] for m in (*BLOG_METRICS, "gini@10")},
                "num_users_evaluated": ranking["num_users_evaluated"],
                "relevance_threshold": ranking["relevance_threshold"],
                "num_train": len(train),
                "decile_share": shares,
                "mean_popularity": mean_pop,
                "num_recommendations": slots,
                "wall_seconds": time.perf_counter() - t0,
                "command": command,
                "date": now(),
            }
            runs.append(run)
            done.add(_key(run))
            rm = "   -  " if run["rmse"] is None else f"{run['rmse']:.4f}"
            log(
                f"{model_label(run):<10} seed {seed}: RMSE {rm}  Recall@10 {run['recall@10']:.4f}  "
                f"NDCG@10 {run['ndcg@10']:.4f}  coverage@10 {run['coverage@10']:.3f}  ({run['wall_seconds']:.0f}s)"
            )
            payload = {
                "description": "One split, every model: test RMSE; full-catalogue Recall/NDCG@10, coverage@10, "
                "average popularity and head share (top 10% items) of the top-10 lists of the test users with a "
                "relevant item; `candidates` = items each list was chosen from ('all', or the item-kNN "
                "candidates a subgraph model re-ranks). popularity = most-popular baseline (no RMSE).",
                "rows": [_row(r) for r in runs],
                "runs": runs,
                "machine": machine(),
                "date": now(),
            }
            write_results(out, payload)
            if popularity_out is not None:
                # The catalogue is this split's: rows of runs on other splits would be read against it.
                here = [r for r in runs if r["split"] == split.name]
                write_results(popularity_out, popularity_payload(here, catalogue))
    if not payload:
        payload = {"rows": [], "runs": runs}
    return payload


def check_models(models: Sequence[str]) -> None:
    """Every name is a registered model or ``popularity`` (raises :class:`ConfigError` naming ``--models``)."""
    from cmcrec.models.registry import get_model, model_names

    for m in models:
        if m == POPULARITY:
            continue
        try:
            get_model(m)
        except ConfigError:
            raise ConfigError(
                f"--models: unknown model {m!r}; known: {', '.join([*model_names(), POPULARITY])}"
            ) from None


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'model':<10} {'seed':>4} {'RMSE':>7} {'Recall@10':>9} {'NDCG@10':>8} {'cov@10':>7} "
        f"{'avgpop@10':>9} {'head@10':>8} {'cand':>5}"
    ]
    for r in rows:
        rm = "-" if r["rmse"] is None else f"{r['rmse']:.4f}"
        lines.append(
            f"{r['model']:<10} {r['seed']:>4} {rm:>7} {r['recall@10']:>9.4f} {r['ndcg@10']:>8.4f} "
            f"{r['coverage@10']:>7.3f} {r['avg_popularity@10']:>9.1f} {r['head_share@10']:>8.3f} "
            f"{str(r['candidates']):>5}"
        )
    return "\n".join(lines)
