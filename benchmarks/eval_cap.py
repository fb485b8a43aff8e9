"""The evaluation cap chosen on validation, for models already trained (``select_eval_cap`` afterwards).

``select_eval_cap`` changes nothing in training: once training ends it scores the kept
weights on the validation split with ``eval_max_nodes_per_hop``, twice it and no cap, and
predicts with the best. So a model trained without it can be given it later
(:meth:`cmcrec.recommender.Recommender.choose_eval_cap`) and gets what training with it would
have given. This script does that for saved models (the ``--models-dir`` of
``cmcrec benchmark accuracy``) and reports each model's test RMSE at the cap it was trained
with and at the cap chosen on validation. The test RMSE at every cap is printed too, for the
record; the choice never reads it.

Usage::

    python benchmarks/eval_cap.py --dataset ml-100k --models-dir DIR NAME [NAME ...]
        [--data-dir ../shared/data] [--out benchmarks/results/eval_cap.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def evaluate(rec, test) -> dict:
    """Choose ``rec``'s cap on validation; its test RMSE at every candidate and at the choice."""
    from cmcrec.evaluation.metrics import rmse

    choice = rec.choose_eval_cap()
    chosen = rec.config
    caps = []
    for score in choice["valid_rmse"]:
        cap = score["eval_max_nodes_per_hop"]
        rec.config, rec._batcher = chosen.replace(eval_max_nodes_per_hop=cap), None
        caps.append(score | {"test_rmse": rmse(rec.predict_indices(test.user, test.item), test.rating)})
    rec.config, rec._batcher = chosen, None
    at = {c["eval_max_nodes_per_hop"]: c for c in caps}
    trained, best = at[choice["trained_with"]], at[choice["chosen"]]
    return {
        "seed": rec.training.get("seed"),
        "best_epoch": rec.training.get("best_epoch"),
        "trained_with": choice["trained_with"],
        "chosen": choice["chosen"],
        "caps": caps,
        "valid_rmse_trained_cap": trained["valid_rmse"],
        "valid_rmse_chosen_cap": best["valid_rmse"],
        "test_rmse_trained_cap": trained["test_rmse"],
        "test_rmse_chosen_cap": best["test_rmse"],
    }


def table(runs: list[dict]) -> str:
    head = f"{'model':<58} {'cap':>5} {'chosen':>6} {'valid@cap':>9} {'valid@ch':>9} {'test@cap':>9} {'test@ch':>9}"
    return "\n".join(
        [head]
        + [
            f"{r['model']:<58} {r['trained_with']!s:>5} {r['chosen']!s:>6} {r['valid_rmse_trained_cap']:>9.4f} "
            f"{r['valid_rmse_chosen_cap']:>9.4f} {r['test_rmse_trained_cap']:>9.4f} {r['test_rmse_chosen_cap']:>9.4f}"
            for r in runs
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="model directories under --models-dir")
    p.add_argument("--dataset", required=True, help="the dataset the models were trained on (its standard split)")
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=None, help="datasets folder (else $CMCREC_DATA_DIR)")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here (atomically)")
    args = p.parse_args(argv)

    from cmcrec.artifacts import atomic_write_text
    from cmcrec.benchmarks.common import command_line, machine, now
    from cmcrec.data.datasets import load_split
    from cmcrec.errors import CmcrecError
    from cmcrec.recommender import Recommender

    split = load_split(args.dataset, None, data_dir=args.data_dir)
    runs = []
    for name in args.names:
        path = args.models_dir / name
        try:
            rec = Recommender.load(path)
        except CmcrecError as e:
            raise SystemExit(f"{path}: {e}") from None
        if rec.train.digest() != split.train.digest():
            raise SystemExit(f"{path}: was not trained on {split.name}'s training ratings")
        t0 = time.perf_counter()
        run = {"model": name, "model_name": rec.model_name} | evaluate(rec, split.test)
        run["seconds"] = time.perf_counter() - t0
        runs.append(run)
        print(table([run]).splitlines()[-1], flush=True)
    result = {
        "description": "Evaluation cap (eval_max_nodes_per_hop) chosen on each model's validation split "
        "after training (Recommender.choose_eval_cap, what select_eval_cap does); test RMSE at the cap "
        "training used and at the chosen one. The test RMSE at every candidate is recorded, never used to choose.",
        "dataset": args.dataset,
        "split": split.name,
        "runs": runs,
        "command": command_line(argv),
        "machine": machine(),
        "date": now(),
    }
    print(table(runs))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
