"""The cold-start study: how models do for users with few ratings, and for users never trained on.

Two studies (``shared/DESIGN.md`` §2):

**Activity buckets** (``study = "bucket"``). One model is trained on the
standard split; its test metrics are restricted to the test users whose number
of *training* ratings falls in each bucket of :data:`BUCKETS` (``0`` only
occurs on splits that leave some test users without training ratings, such as
MovieTweetings' random split). RMSE over the bucket's test ratings; NDCG@10
and Recall@10 (full catalogue, subgraph models re-rank ``candidates`` items)
over its users with a relevant test item, ``None`` when it has none.

**Inductive users** (``study = "inductive"``). A seeded ``holdout_fraction`` of
the users with at least ``min_ratings`` ratings (training and test together)
is removed from training entirely: they stay in the vocabulary, with zero
training ratings. The model trains on everybody else. Each held-out user's
ratings are ordered (``earliest`` by timestamp, or ``random`` with the seed);
the first ``max(ks)`` form the pool the model is *given* from and the rest are
the *targets*, the same for every ``k`` so that the curves over ``k`` compare
like with like. For each ``k`` the model sees the user's first ``k`` ratings and
predicts the targets, with no retraining:

* subgraph models add the user to the training graph
  (:meth:`~cmcrec.graph.csr.RatingGraph.with_new_user`) and score the targets'
  enclosing subgraphs;
* MF folds the user in (:meth:`~cmcrec.models.mf.BiasedMF.fold_in`: one ridge
  regression for the user's bias and factors, item parameters fixed) — the
  embedding rows it holds for the held-out users are never used, and the run
  records whether they are still exactly their initial values
  (``heldout_rows_untouched``);
* ``bias-fallback`` (for MF) predicts global mean + item bias, ignoring the
  given ratings: the floor a cold-start method must beat.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from cmcrec.benchmarks.robustness import candidates_used
from cmcrec.config import RunContext
from cmcrec.data.ratings import Ratings, Split
from cmcrec.data.splits import subsample
from cmcrec.errors import CmcrecError, ConfigError
from cmcrec.evaluation.metrics import mae, rmse
from cmcrec.evaluation.pipeline import RecommenderRanker
from cmcrec.models.registry import get_model

#: (label, fewest, most) training ratings of a test user; ``None`` = no upper bound.
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1-2", 1, 2),
    ("3-5", 3, 5),
    ("6-20", 6, 20),
    (">20", 21, None),
)
STUDIES = ("bucket", "inductive")
GIVEN = ("earliest", "random")


# ----------------------------------------------------------------------------- activity buckets


def bucket_metrics(rec, split: Split, candidates: int | None = 200) -> list[dict[str, Any]]:
    """Test RMSE and NDCG/Recall@10 of ``rec`` per activity bucket of :data:`BUCKETS`.

    Args:
        rec: a Recommender fitted on ``split.train``.
        split: the split (buckets count each test user's ratings in ``split.train``).
        candidates: items re-ranked per user by subgraph models.
    """
    from cmcrec.evaluation.protocols import evaluate_full_ranking

    train, test = split.train, split.test
    counts = train.user_counts()[test.user]
    pred = rec.predict_indices(test.user, test.item)
    rows = []
    for label, lo, hi in BUCKETS:
        mask = (counts >= lo) & (counts <= (hi if hi is not None else np.iinfo(np.int64).max))
        row: dict[str, Any] = {
            "study": "bucket",
            "bucket": label,
            "model": rec.model_name,
            "rmse": rmse(pred[mask], test.rating[mask]) if mask.any() else None,
            "mae": mae(pred[mask], test.rating[mask]) if mask.any() else None,
            "ndcg@10": None,
            "recall@10": None,
            "num_users": int(np.unique(test.user[mask]).size),
            "num_ratings": int(mask.sum()),
            "num_users_ranked": 0,
        }
        if mask.any():
            try:
                ranking = evaluate_full_ranking(RecommenderRanker(rec, candidates), train, test.subset(mask), ks=(10,))
            except CmcrecError:  # no user of the bucket has a relevant test item
                ranking = None
            if ranking is not None:
                row |= {
                    "ndcg@10": ranking["ndcg@10"],
                    "recall@10": ranking["recall@10"],
                    "num_users_ranked": ranking["num_users_evaluated"],
                }
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- inductive users


def holdout_users(ratings: Ratings, fraction: float, min_ratings: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``round(fraction · eligible)`` (at least one) users drawn among those with ≥ ``min_ratings``.

    Raises:
        CmcrecError: no user has ``min_ratings`` ratings.
    """
    eligible = np.flatnonzero(ratings.user_counts() >= min_ratings)
    if eligible.size == 0:
        raise CmcrecError(f"{ratings.name}: no user has {min_ratings} or more ratings to hold out")
    n = min(eligible.size, max(1, int(round(fraction * eligible.size))))
    return np.sort(rng.choice(eligible, size=n, replace=False))


def inductive_split(
    split: Split, fraction: float, min_ratings: int, rng: np.random.Generator
) -> tuple[Ratings, Ratings, np.ndarray]:
    """``(train, heldout, users)``: ``split.train`` without the held-out users, and all their ratings.

    The held-out users are drawn from the whole split (train and test), and all
    their ratings, training and test, go to ``heldout``. ``train`` keeps the
    vocabularies, so the held-out users are in it with zero ratings.
    """
    everything = split.train.concat(split.test, name=split.name)
    users = holdout_users(everything, fraction, min_ratings, rng)
    train = split.train.subset(~np.isin(split.train.user, users), name=f"{split.train.name}/inductive")
    heldout = everything.subset(np.isin(everything.user, users), name=f"{split.name}/heldout-users")
    return train, heldout, users


def order_user_ratings(heldout: Ratings, given: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each held-out user's ratings, in the order they are given to the model.

    ``earliest``: by timestamp (ties by row); ``random``: a random order. Users in ascending index order.
    """
    if given not in GIVEN:
        raise ConfigError(f"--given must be one of {', '.join(GIVEN)}, got {given!r}")
    rows = np.arange(len(heldout))
    if given == "earliest":
        if heldout.timestamp is None:
            raise CmcrecError(f"{heldout.name}: --given earliest needs timestamps; use --given random")
        key = heldout.timestamp
    else:
        key = rng.permutation(len(heldout))
    order = np.lexsort((rows, key, heldout.user))
    users = heldout.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    return np.split(order, starts[1:])


def _untouched_user_rows(rec, model: str, config, seed: int, users: np.ndarray) -> bool | None:
    """Whether every per-user parameter row of ``users`` still holds its initial value (None: no such rows).

    The initial values are rebuilt exactly as :meth:`Recommender.fit` built them (same seed, same shapes).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = get_model(model).build(config, rec.data).state_dict()
    trained = rec.module.state_dict()
    checked = False
    for name, init in fresh.items():
        if init.ndim >= 1 and init.shape[0] == rec.data.num_users and name.startswith("user"):
            checked = True
            if not torch.equal(init[users].cpu(), trained[name][users].cpu()):
                return False
    return True if checked else None


def inductive_predictions(
    rec, heldout: Ratings, orders: list[np.ndarray], ks: Sequence[int]
) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Predicted and true target ratings of every held-out user, per model variant and ``k``.

    Returns:
        ``{variant: {k: (pred, true)}}`` with variants ``rec.model_name`` and, for
        fold-in models, ``"bias-fallback"``. The targets are each user's ratings
        after the first ``max(ks)``.
    """
    kmax = max(ks)
    scale = heldout.scale
    fold = getattr(rec.module, "fold_in", None)
    out: dict[str, dict[int, list[tuple[np.ndarray, np.ndarray]]]] = {rec.model_name: {k: [] for k in ks}}
    if fold is not None:
        # Fold-in builds CPU tensors, so it runs on a CPU copy of the module.
        module = copy.deepcopy(rec.module).cpu().eval()
        out["bias-fallback"] = {k: [] for k in ks}
    for rows in orders:
        targets = rows[kmax:]
        if targets.size == 0:
            continue
        t_items, t_true = heldout.item[targets], heldout.rating[targets]
        for k in ks:
            g_items, g_vals = heldout.item[rows[:k]], heldout.rating[rows[:k]]
            if fold is not None:
                with torch.no_grad():
                    bias, factors = module.fold_in(torch.as_tensor(g_items), torch.as_tensor(g_vals))
                    ti = torch.as_tensor(t_items)
                    base = module.global_mean + module.item_bias(ti).squeeze(-1)
                    s = base + bias
                    if factors.numel():
                        s = s + module.item_factors(ti) @ factors
                    pred = s.clamp(module.rating_min, module.rating_max).numpy()
                    fallback = base.clamp(module.rating_min, module.rating_max).numpy()
                out["bias-fallback"][k].append((fallback, t_true))
            else:
                graph, u_new = rec.graph.with_new_user(
                    g_items, scale.relation_type(g_vals), scale.normalize(g_vals).astype(np.float32)
                )
                pred = rec.predict_indices(np.full(len(t_items), u_new, np.int64), t_items, graph=graph)
            out[rec.model_name][k].append((np.asarray(pred, dtype=np.float64), t_true))
    return {
        variant: {
            k: (
                np.concatenate([p for p, _ in parts]) if parts else np.zeros(0),
                np.concatenate([t for _, t in parts]) if parts else np.zeros(0),
            )
            for k, parts in per_k.items()
        }
        for variant, per_k in out.items()
    }


def inductive_rows(rec, heldout: Ratings, orders: list[np.ndarray], ks: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (variant, k): RMSE/MAE over every held-out user's target ratings."""
    num_users = sum(1 for rows in orders if rows.size > max(ks))
    rows = []
    for variant, per_k in inductive_predictions(rec, heldout, orders, ks).items():
        for k, (pred, true) in per_k.items():
            rows.append(
                {
                    "study": "inductive",
                    "k": int(k),
                    "model": variant,
                    "base_model": rec.model_name,
                    "rmse": rmse(pred, true) if len(true) else None,
                    "mae": mae(pred, true) if len(true) else None,
                    "num_users": num_users,
                    "num_ratings": int(len(true)),
                }
            )
    return rows


# ----------------------------------------------------------------------------- the study


def _key(run: dict[str, Any]) -> tuple:
    return (
        run["split"],
        run["study"],
        run["model"],
        run["seed"],
        run.get("preset"),
        run.get("epochs_override"),
        run.get("max_train_ratings"),
    )


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over seeds, per (split, study, bucket or k, model)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            where = row.get("bucket") if row["study"] == "bucket" else row.get("k")
            groups.setdefault((run["split"], row["study"], str(where), row["model"]), []).append(
                row | {"seed": run["seed"]}
            )
    out = []
    for (split, study, _, model), rows in groups.items():
        agg: dict[str, Any] = {"split": split, "study": study}
        agg |= {"bucket": rows[0]["bucket"]} if study == "bucket" else {"k": rows[0]["k"]}
        agg["model"] = model
        for metric in ("rmse", "mae", "ndcg@10", "recall@10"):
            if metric in rows[0]:
                values = [r[metric] for r in rows if r.get(metric) is not None]
                agg[metric] = float(np.mean(values)) if values else None
                agg[f"{metric}_std"] = seed_std(values) if values else None
        for count in ("num_users", "num_ratings"):
            agg[count] = float(np.mean([r[count] for r in rows])) if len(rows) > 1 else rows[0][count]
        agg["seeds"] = sorted(r["seed"] for r in rows)
        out.append(agg)
    return out


def run_cold_start(
    split: Split,
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    studies: Sequence[str] = STUDIES,
    ks: Sequence[int] = (1, 3, 5, 10),
    holdout_fraction: float = 0.15,
    min_ratings: int = 15,
    given: str = "earliest",
    candidates: int | None = 200,
    preset: str | None = None,
    epochs: int | None = None,
    extra: dict[str, Any] | None = None,
    max_train_ratings: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the bucket and/or inductive study for every (model, seed); returns the payload written to ``out``.

    Args:
        split: the standard split of the dataset (not subsampled: ``max_train_ratings`` subsamples the
            training ratings each study trains on, after the held-out users are removed).
        models: registry names.
        seeds: each seed drives the held-out users, the given order (``random``) and training.
        out: results JSON (runs already there are skipped).
        studies: ``bucket`` and/or ``inductive``.
        ks: numbers of ratings given per held-out user.
        holdout_fraction: share of eligible users held out of training.
        min_ratings: fewest ratings (train + test) of an eligible user; must exceed ``max(ks)``.
        given: ``earliest`` (by timestamp) or ``random`` order of the given ratings.
        candidates: items re-ranked per user by subgraph models in the bucket study.
        preset, epochs, extra: see :func:`~cmcrec.benchmarks.accuracy.model_config`.
    """
    from cmcrec.recommender import Recommender

    check_options(studies, ks, holdout_fraction, min_ratings, given)
    payload = load_results(out)
    runs: list[dict[str, Any]] = payload.get("runs", [])
    # Splits may differ (the figures have a row per split); every other setting must match.
    settings = {
        "preset": preset,
        "epochs_override": epochs,
        "max_train_ratings": max_train_ratings,
        "overrides": dict(extra or {}),
        "given": given,
        "holdout_fraction": holdout_fraction,
        "min_ratings": min_ratings,
        "ks": list(ks),
        "candidates_requested": candidates,
    }
    require_same_settings(runs, settings, out)
    done = {_key(r) for r in runs}
    command = command_line()
    for study in studies:
        for model in models:
            config = model_config(model, preset, epochs, extra)
            for seed in seeds:
                run: dict[str, Any] = {
                    "dataset": split.train.name.split("/")[0],
                    "split": split.name,
                    "study": study,
                    "model": model,
                    "seed": seed,
                } | settings
                if _key(run) in done:
                    continue
                t0 = time.perf_counter()
                context = RunContext(device=device, seed=seed, num_workers=num_workers, progress=False)
                if study == "bucket":
                    train = subsample(split.train, max_train_ratings)
                    rec = Recommender.fit(model, train, config, context)
                    rows = bucket_metrics(rec, Split(train, split.test, split.name), candidates)
                    run["candidates"] = candidates_used(rec, candidates)
                else:
                    rng = np.random.default_rng([seed, 404])
                    train, heldout, users = inductive_split(split, holdout_fraction, min_ratings, rng)
                    train = subsample(train, max_train_ratings)
                    rec = Recommender.fit(model, train, config, context)
                    orders = order_user_ratings(heldout, given, rng)
                    rows = inductive_rows(rec, heldout, orders, ks)
                    run |= {
                        "num_heldout_users": int(users.size),
                        "heldout_train_ratings": int(np.isin(train.user, users).sum()),
                        "heldout_rows_untouched": _untouched_user_rows(rec, model, config, seed, users),
                    }
                run |= {
                    "rows": rows,
                    "num_train": len(train),
                    "best_epoch": rec.training["best_epoch"],
                    "epochs": config.epochs,
                    "train_seconds": rec.training["seconds"],
                    "wall_seconds": time.perf_counter() - t0,
                    "config": config.to_dict(),
                    "command": command,
                    "date": now(),
                }
                runs.append(run)
                done.add(_key(run))
                for row in rows:
                    where = f"bucket {row['bucket']:>4}" if study == "bucket" else f"k={row['k']:<3}"
                    score = "   -  " if row["rmse"] is None else f"{row['rmse']:.4f}"
                    log(
                        f"{study:<9} {row['model']:<13} seed {seed} {where}: RMSE {score} "
                        f"({row['num_ratings']} ratings)"
                    )
                payload = {
                    "description": "Cold start. bucket: test metrics of a model trained on the standard split, "
                    "restricted to test users by their number of training ratings. inductive: users held out of "
                    "training entirely; given k of their ratings (no retraining: subgraph models add them to the "
                    "graph, MF folds them in by ridge regression, bias-fallback = global mean + item bias), "
                    "scored on their ratings after the first max(k).",
                    "rows": aggregate(runs),
                    "runs": runs,
                    "machine": machine(),
                    "date": now(),
                }
                write_results(out, payload)
    if not payload:
        payload = {"rows": aggregate(runs), "runs": runs}
    return payload


def check_options(
    studies: Sequence[str], ks: Sequence[int], holdout_fraction: float, min_ratings: int, given: str
) -> None:
    """Reject bad options (named by their CLI flag) before any data is read."""
    for s in studies:
        if s not in STUDIES:
            raise ConfigError(f"--studies: unknown study {s!r}; known: {', '.join(STUDIES)}")
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k: numbers of given ratings must be >= 1, got {list(ks)}")
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in (0, 1), got {holdout_fraction}")
    if min_ratings <= max(ks):
        raise ConfigError(
            f"--min-ratings must exceed the largest --k ({max(ks)}) so every held-out user has ratings to score, "
            f"got {min_ratings}"
        )
    if given not in GIVEN:
        raise ConfigError(f"--given must be one of {', '.join(GIVEN)}, got {given!r}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'study':<9} {'where':<10} {'model':<13} {'RMSE':>7} {'NDCG@10':>8} {'users':>7} {'ratings':>8}"]
    for r in rows:
        where = r["bucket"] if r["study"] == "bucket" else f"k={r['k']}"
        rm = "-" if r.get("rmse") is None else f"{r['rmse']:.4f}"
        nd = "-" if r.get("ndcg@10") is None else f"{r['ndcg@10']:.4f}"
        lines.append(
            f"{r['study']:<9} {where:<10} {r['model']:<13} {rm:>7} {nd:>8} "
            f"{r['num_users']:>7.0f} {r['num_ratings']:>8.0f}"
        )
    return "\n".join(lines)
