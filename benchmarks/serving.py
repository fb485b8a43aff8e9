"""Top-K serving: how much of the full-catalogue top-10 the candidate step keeps, and how fast it is.

Subgraph models (IGMC, MCCL) cost one forward pass per (user, item), so
``Recommender.recommend`` scores only the top ``N`` items of a cheap candidate
generator (item-kNN). This study measures, on ML-100K ``u1`` and a trained
artifact:

(a) **Candidate recall.** For a seeded sample of test users (users of
    ``u1.test`` with at least one training rating in the artifact), the model
    scores *every* item the user has not rated in training; its top-10 of those
    is the reference list ("full top-10", what ``rank(users, 10, None)``
    returns). For each ``N`` the generator's ``N`` candidates are drawn as
    ``recommend`` draws them, and we report, averaged over users,

    - ``kept``: ``|full top-10 ∩ top-10 of the candidates| / 10`` — how much of
      the served list is the list full scoring would serve;
    - ``in_candidates``: ``|full top-10 ∩ candidates| / 10`` — the ceiling the
      re-ranker could reach from those candidates.

    Ties: an item scoring at least the full top-10's last score counts as a
    member of the full top-10 (capped at 10), so with no ties these are the plain
    set overlaps and with ties they do not depend on the tie-break order.

    The top-10 of the candidates is taken from the same full score vector
    (restricted to the candidates) rather than by scoring them again: prediction
    is deterministic and independent of which pairs share a batch, so this is
    the list ``rank(users, 10, N)`` returns (the tests check the two agree), at
    a fraction of the cost.

(b) **Latency** of single requests, one process, ``torch.set_num_threads(2)``:
    ``recommend(user, k=10, candidates=N)`` for sampled training users, and
    ``recommend_for_ratings(ratings, k=10, candidates=N)`` where ``ratings`` are
    5–20 real ratings (from ``u1.test``, so absent from the training graph) of a
    sampled user. The one-off set-up (training graph, candidate generator) is
    built and timed before the loop; each ``N`` gets warm-up calls first, then
    every call is timed on its own with ``time.perf_counter``. p50 and p99 are
    over those calls (with fewer than 100 calls p99 is close to the maximum).

(c) The smallest ``N`` whose ``kept`` is at least 90%, and whether the targets
    p50 < 50 ms and p99 < 200 ms hold for both request kinds there.

Usage::

    python benchmarks/serving.py [--model DIR | --train-model mccl --preset cpu --epochs N
        [--max-train-ratings M]] [--dataset ml-100k] [--split u1] [--data-dir ../shared/data]
        [--users 100] [--calls 50] [--ns 50,100,200,500] [--json]
        [--out benchmarks/results/serving.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcrec.benchmarks.common import command_line, machine, now, write_results

TARGET_KEPT = 0.9
TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0


def sample_users(rec, test, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct indices (in ``rec``'s vocabulary) of test users with a training rating."""
    ids = np.unique(test.users.ids[test.user]) if len(test) else np.zeros(0, object)
    idx = rec.users.lookup(ids, missing=-1)
    idx = idx[idx >= 0]
    idx = idx[rec.train.user_counts()[idx] > 0]
    return np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))


def held_out_ratings(rec, test, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Up to ``n`` rating dicts, each 5–20 test ratings of one test user (items the model knows)."""
    known = rec.items.lookup(test.items.ids[test.item], missing=-1) >= 0
    out = []
    users = np.unique(test.user[known])
    for u in rng.permutation(users):
        rows = np.nonzero((test.user == u) & known)[0]
        if len(rows) < 5:
            continue
        rows = rng.choice(rows, size=int(rng.integers(5, min(20, len(rows)) + 1)), replace=False)
        out.append({str(test.items.ids[test.item[r]]): float(test.rating[r]) for r in rows})
        if len(out) == n:
            break
    return out


def full_scores(rec, users: np.ndarray, chunk: int = 20) -> np.ndarray:
    """Predicted ratings ``(U, num_items)`` of every item; items rated in training are ``-inf``."""
    num_items = rec.data.num_items
    out = np.empty((len(users), num_items), np.float32)
    for start in range(0, len(users), chunk):
        u = users[start : start + chunk]
        pred = rec.predict_indices(np.repeat(u, num_items), np.tile(np.arange(num_items), len(u)))
        out[start : start + len(u)] = pred.reshape(len(u), num_items)
    for row, h in enumerate(histories(rec, users)[0]):
        out[row, h] = -np.inf
    return out


def histories(rec, users: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's rated items and ratings in the model's training data."""
    seen = rec.train.csr()
    spans = [slice(seen.indptr[u], seen.indptr[u + 1]) for u in users]
    return [seen.indices[s] for s in spans], [seen.data[s] for s in spans]


def top_k(scores: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best of ``items`` (−1 entries ignored) by ``scores[item]``, best first."""
    items = items[items >= 0]
    s = scores[items]
    items = items[s > -np.inf]
    return items[np.argsort(-scores[items], kind="stable")[:k]]


def candidate_recall(
    rec, users: np.ndarray, ns: Sequence[int], k: int = 10, scores: np.ndarray | None = None
) -> dict[int, dict[str, float]]:
    """For each ``N``: mean ``kept`` and ``in_candidates`` (see the module docstring) over ``users``.

    Args:
        rec: a fitted :class:`~cmcrec.recommender.Recommender`.
        users: user indices.
        ns: candidate counts.
        k: list length.
        scores: :func:`full_scores` of ``users``, if already computed.
    """
    scores = full_scores(rec, users) if scores is None else scores
    all_items = np.arange(rec.data.num_items)
    full = [top_k(scores[row], all_items, k) for row in range(len(users))]
    hist, rats = histories(rec, users)
    out = {}
    for n in ns:
        cand = rec.candidate_generator.candidates(hist, rats, n, exclude=hist)
        kept, inside = [], []
        for row, ref in enumerate(full):
            if len(ref) == 0:
                kept.append(1.0)
                inside.append(1.0)
                continue
            # An item as good as the full list's last one counts as kept, so tied scores
            # (common in a barely trained model) do not depend on the tie-break order.
            bar = scores[row, ref[-1]]
            served = top_k(scores[row], cand[row], k)
            kept.append(min(int((scores[row, served] >= bar).sum()), len(ref)) / len(ref))
            c = cand[row][cand[row] >= 0]
            inside.append(min(int((scores[row, c] >= bar).sum()), len(ref)) / len(ref))
        out[n] = {"kept": float(np.mean(kept)), "in_candidates": float(np.mean(inside))}
    return out


def time_calls(fn: Callable[[Any], object], args: Sequence[Any], warmup: int) -> dict[str, float]:
    """p50 / p99 / mean milliseconds of ``fn(a)`` for each ``a`` in ``args``, after ``warmup`` calls."""
    if not args:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "calls": 0}
    for a in list(args)[:warmup]:
        fn(a)
    ms = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(np.mean(ms)),
        "calls": len(ms),
    }


def load_or_train(args) -> tuple[Any, Any, dict[str, Any]]:
    """(recommender, split, description of the model) from ``--model`` or ``--train-model``."""
    from cmcrec.data.datasets import load_split
    from cmcrec.recommender import Recommender

    split = load_split(args.dataset, args.split, data_dir=args.data_dir)
    if args.model is not None:
        rec = Recommender.load(args.model)
        source = {"artifact": str(args.model)}
    else:
        from cmcrec.benchmarks.accuracy import model_config
        from cmcrec.config import RunContext

        config = model_config(args.train_model, args.preset, args.epochs)
        train = split.train
        if args.max_train_ratings is not None and args.max_train_ratings < len(train):
            rng = np.random.default_rng([args.seed, 202])
            train = train.subset(np.sort(rng.choice(len(train), args.max_train_ratings, replace=False)))
        rec = Recommender.fit(args.train_model, train, config, RunContext(device="cpu", seed=args.seed, progress=False))
        trained = {"preset": args.preset, "epochs": args.epochs, "max_train_ratings": args.max_train_ratings}
        source = {"trained": trained}
    model = {
        "name": rec.model_name,
        "config": rec.config.to_dict(),
        "num_train_ratings": len(rec.train),
        "best_epoch": rec.training.get("best_epoch"),
        "best_valid_rmse": rec.training.get("best_valid_rmse"),
    } | source
    return rec, split, model


def run_serving(rec, split, ns: Sequence[int], num_users: int, calls: int, seed: int, warmup: int = 3) -> dict:
    """Recall and latency rows for each ``N``, and the chosen ``N`` (see the module docstring)."""
    rng = np.random.default_rng([seed, 4242])
    users = sample_users(rec, split.test, num_users, rng)
    if len(users) == 0:
        raise SystemExit(f"{split.name}: no test user has a training rating in the model")
    t0 = time.perf_counter()
    _ = rec.graph, rec.candidate_generator  # the one-off set-up a server does at start
    setup_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    recall = candidate_recall(rec, users, ns)
    recall_seconds = time.perf_counter() - t0

    user_ids = [str(rec.users.ids[u]) for u in users[:calls]]
    new_users = held_out_ratings(rec, split.test, calls, rng)
    rows = []
    for n in ns:
        rows.append(
            {
                "n": n,
                **recall[n],
                "recommend": time_calls(lambda u, n=n: rec.recommend(u, k=10, candidates=n), user_ids, warmup),
                "recommend_for_ratings": time_calls(
                    lambda r, n=n: rec.recommend_for_ratings(r, k=10, candidates=n), new_users, warmup
                ),
            }
        )
    chosen = next((r for r in rows if r["kept"] >= TARGET_KEPT), None)
    verdict = None
    if chosen is not None:
        meets = {
            kind: chosen[kind]["p50_ms"] < TARGET_P50_MS and chosen[kind]["p99_ms"] < TARGET_P99_MS
            for kind in ("recommend", "recommend_for_ratings")
        }
        verdict = {"n": chosen["n"], "kept": chosen["kept"], "meets_latency": meets}
    return {
        "rows": rows,
        "chosen": verdict,
        "num_users": len(users),
        "num_new_users": len(new_users),
        "setup_ms": setup_ms,
        "recall_seconds": recall_seconds,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{'N':>5} {'kept':>6} {'in cand':>8} | {'recommend p50':>13} {'p99':>7} | "
        f"{'new-user p50':>12} {'p99':>7}  (ms)"
    ]
    for r in result["rows"]:
        a, b = r["recommend"], r["recommend_for_ratings"]
        lines.append(
            f"{r['n']:>5} {r['kept']:>6.1%} {r['in_candidates']:>8.1%} | {a['p50_ms']:>13.1f} {a['p99_ms']:>7.1f} | "
            f"{b['p50_ms']:>12.1f} {b['p99_ms']:>7.1f}"
        )
    c = result["chosen"]
    if c is None:
        lines.append(f"no N keeps {TARGET_KEPT:.0%} of the full top-10")
    else:
        ok = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in c["meets_latency"].items())
        lines.append(
            f"smallest N keeping >= {TARGET_KEPT:.0%}: {c['n']} ({c['kept']:.1%}); "
            f"p50 < {TARGET_P50_MS:g} ms and p99 < {TARGET_P99_MS:g} ms — {ok}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a saved model directory")
    src.add_argument("--train-model", help="train this model first (e.g. mccl, igmc)")
    p.add_argument("--preset", default="cpu", help="config preset for --train-model")
    p.add_argument("--epochs", type=int, help="epochs for --train-model")
    p.add_argument("--max-train-ratings", type=int, help="train on a seeded sample of this many ratings")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split", default="u1")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--users", type=int, default=100, help="test users sampled for candidate recall")
    p.add_argument("--calls", type=int, default=50, help="timed requests per N and request kind")
    p.add_argument("--ns", default="50,100,200,500", help="comma-separated candidate counts")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--out", type=Path, help="write the results JSON here (atomically)")
    args = p.parse_args(argv)
    try:
        ns = sorted({int(x) for x in args.ns.split(",") if x.strip()})
    except ValueError:
        p.error(f"--ns: need comma-separated positive integers, got {args.ns!r}")
    if not ns or ns[0] < 1:
        p.error(f"--ns: need positive integers, got {args.ns!r}")
    if args.users < 1 or args.calls < 1:
        p.error("--users and --calls must be >= 1")
    torch.set_num_threads(args.threads)

    from cmcrec.errors import CmcrecError

    try:
        rec, split, model = load_or_train(args)
    except CmcrecError as e:
        p.error(str(e))
    if getattr(rec.module, "score_all", None) is not None:
        # Such a model ranks the whole catalogue for every request; the candidate step is never used.
        p.error(f"{rec.model_name} scores the whole catalogue (no candidate step to study); give a subgraph model")
    result = run_serving(rec, split, ns, args.users, args.calls, args.seed)
    payload = {
        "description": "Share of the full-catalogue top-10 kept by the item-kNN candidate step at each N, and "
        "single-request latency of recommend / recommend_for_ratings (see benchmarks/serving.py).",
        "dataset": args.dataset,
        "split": split.name,
        "model": model,
        "threads": args.threads,
        "targets": {"kept": TARGET_KEPT, "p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS},
        **result,
        "command": command_line(),
        "machine": machine(),
        "date": now(),
    }
    if args.out is not None:
        write_results(args.out, payload)
    if args.json:
        print(json.dumps(payload))
    else:
        print(format_table(result))
    return payload


if __name__ == "__main__":
    main()
