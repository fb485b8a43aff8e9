"""A worker ``tests/test_distributed.py`` runs under ``torchrun`` (gloo, CPU).

One launch does everything the test needs from a process group, so the
start-up cost (interpreters, rendezvous) is paid once per model:

0. builds trainers from models that differ across ranks: rank 0's weights (and
   weight average) must reach every rank, and models with other tensors on one
   rank must be refused;
1. trains ``--epochs`` epochs with a checkpoint, then gathers every rank's flat
   parameter vector (rank 0 checks they are bit-identical);
2. evaluates the trained weights on the validation and test rows with the
   distributed :meth:`Trainer.evaluate` (all-reduced sums and counts) and, on
   rank 0, single-process on the same rows;
3. resumes a copy of its own checkpoint for one more epoch and trains the same
   ``--epochs + 1`` epochs straight, to compare (N → N resume);
4. with ``--resume-from``, resumes a checkpoint a single process wrote (1 → N);
5. counts the DDP wrappers still alive before it leaves the process group.

Rank 0 writes ``WORKDIR/result.json``; other ranks write nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import low_rank_split  # noqa: E402

from cmcrec.config import RunContext  # noqa: E402
from cmcrec.graph.csr import RatingGraph  # noqa: E402
from cmcrec.models.registry import DataSpec, get_model  # noqa: E402
from cmcrec.recommender import Recommender, carve_validation  # noqa: E402
from cmcrec.training import distributed as dist_utils  # noqa: E402
from cmcrec.training import trainer as trainer_module  # noqa: E402
from cmcrec.training.batching import make_batcher  # noqa: E402
from cmcrec.training.trainer import Trainer, predict_rows  # noqa: E402

DATA_SEED = 1
CPU = torch.device("cpu")


def _identical_across_ranks(module: torch.nn.Module, ctx: RunContext) -> tuple[bool, float]:
    """(bit-identical?, largest absolute difference to rank 0) over every rank's flat parameters."""
    return _same_on_every_rank(dist_utils.flat_parameters(module), ctx)


def _same_on_every_rank(flat: torch.Tensor, ctx: RunContext) -> tuple[bool, float]:
    """(bit-identical?, largest absolute difference to rank 0) over every rank's copy of ``flat``."""
    flats = dist_utils.all_gather_tensors(flat, CPU, ctx)
    same = all(torch.equal(flats[0], f) for f in flats[1:])
    diff = max((float((flats[0] - f).abs().max()) for f in flats[1:]), default=0.0)
    return same, diff


def _copy_checkpoint(src: Path, dst: Path, ctx: RunContext) -> Path:
    if ctx.is_main:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    dist_utils.barrier()
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default="{}", help="JSON config overrides")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--resume-from", type=Path, default=None, help="a checkpoint written by one process")
    args = parser.parse_args()

    ctx = dist_utils.init_from_env(RunContext(device="cpu", seed=0, progress=False))
    split = low_rank_split(seed=DATA_SEED)
    spec = get_model(args.model)
    overrides = json.loads(args.config) | {"patience": None}
    config = spec.make_config(overrides | {"epochs": args.epochs})
    out: dict = {"world_size": ctx.world_size}

    # 0. A trainer starts every rank from rank 0's weights, its weight average included, and refuses
    # ranks whose models differ in their tensors.
    data_spec = DataSpec.from_ratings(split.train)
    averaged = config.replace(ema_decay=0.9)
    probe = spec.build(averaged, data_spec)
    if ctx.rank == 1:
        with torch.no_grad():
            for p in probe.parameters():
                p.add_(1.0)
    trainer = Trainer(probe, averaged, ctx)
    out["broadcast_identical"], out["broadcast_max_diff"] = _identical_across_ranks(probe, ctx)
    flat_average = torch.cat([a.reshape(-1).double() for a in trainer.average.average])
    out["average_identical"], _ = _same_on_every_rank(flat_average, ctx)
    odd = spec.build(config, data_spec)
    if ctx.rank == 1:
        odd.register_buffer("extra", torch.zeros(1))
    try:
        Trainer(odd, config, ctx)
        out["mismatch_error"] = None
    except RuntimeError as err:
        out["mismatch_error"] = str(err)
    del probe, trainer, odd

    # 1. Train with a checkpoint; the ranks must hold the same weights.
    ckpt = args.workdir / "ddp_ckpt"
    rec = Recommender.fit(args.model, split.train, config, ctx, checkpoint_dir=ckpt)
    out["history"] = rec.training["history"]
    out["best_valid_rmse"] = rec.training["best_valid_rmse"]
    out["params_identical"], out["params_max_diff"] = _identical_across_ranks(rec.module, ctx)
    out["num_parameters"] = sum(p.numel() for p in rec.module.parameters())

    # 2. Distributed evaluation of these weights == single-process evaluation on the same rows.
    fit_part, valid = carve_validation(split.train, config, ctx.seed)
    batcher = make_batcher(
        rec.module.batch_kind, config, RatingGraph.from_ratings(fit_part), train=False, seed=ctx.seed
    )
    evaluator = Trainer(rec.module, config, ctx)
    odd = split.test.subset(np.arange(len(split.test) - 1 + len(split.test) % 2))  # uneven shares
    one = split.test.subset(np.arange(1))  # fewer rows than ranks: rank 1's share is empty
    for name, rows in (("valid", valid), ("test", split.test), ("odd", odd), ("one", one)):
        rmse, _ = evaluator.evaluate(rows, batcher)
        out[f"{name}_rmse_distributed"] = rmse
        out[f"{name}_rows"] = len(rows)
        if ctx.is_main:
            pred = predict_rows(rec.module, batcher, rows.user, rows.item, batch_size=7, device=CPU)
            out[f"{name}_rmse_single"] = math.sqrt(float(np.mean((pred.astype(np.float64) - rows.rating) ** 2)))

    # 2b. The evaluation cap chosen on validation: each rank scores its share and the sums are
    # shared, so every rank chooses alike, with the scores of one process over all rows.
    if hasattr(config, "select_eval_cap"):
        predicted = []  # rows this rank scores: its share of each cap's validation pass
        real_predict_rows = trainer_module.predict_rows
        trainer_module.predict_rows = lambda *a, **k: predicted.append(len(a[2])) or real_predict_rows(*a, **k)
        choice = rec.choose_eval_cap(ctx)
        trainer_module.predict_rows = real_predict_rows
        out["eval_cap_rows_this_rank"] = sum(predicted)
        out["eval_cap_rows_all_ranks"] = dist_utils.all_reduce_sums([float(sum(predicted))], CPU, ctx)[0]
        out["eval_cap_rows_expected"] = len(valid) * len(choice["valid_rmse"])
        scores = torch.tensor([s["valid_rmse"] for s in choice["valid_rmse"]], dtype=torch.float64)
        out["eval_cap_same_on_ranks"], _ = _same_on_every_rank(scores, ctx)
        if ctx.is_main:
            out["eval_cap_distributed"] = choice
            out["eval_cap_single"] = rec.choose_eval_cap(RunContext(device="cpu", progress=False))
        rec.reset_eval_cap()

    # 3. N → N resume: one more epoch after the checkpoint equals training that many epochs straight.
    longer = config.replace(epochs=args.epochs + 1)
    resumed = Recommender.fit(
        args.model,
        split.train,
        longer,
        ctx,
        checkpoint_dir=_copy_checkpoint(ckpt, args.workdir / "ddp_ckpt_resumed", ctx),
        resume=True,
    )
    straight = Recommender.fit(args.model, split.train, longer, ctx)
    out["resume_history"] = resumed.training["history"]
    out["straight_history"] = straight.training["history"]
    out["resume_params_identical"], _ = _identical_across_ranks(resumed.module, ctx)
    a, b = dist_utils.flat_parameters(resumed.module), dist_utils.flat_parameters(straight.module)
    out["resume_vs_straight_max_diff"] = float((a - b).abs().max())

    # 4. 1 → N resume.
    if args.resume_from is not None:
        from_single = Recommender.fit(
            args.model,
            split.train,
            longer,
            ctx,
            checkpoint_dir=_copy_checkpoint(args.resume_from, args.workdir / "from_single", ctx),
            resume=True,
        )
        out["from_single_history"] = from_single.training["history"]
        out["from_single_params_identical"], _ = _identical_across_ranks(from_single.module, ctx)

    # 5. No DDP wrapper may outlive the process group: every trainer above (the evaluator, the fitted
    # recommenders) is still alive here, and a wrapper freed after destroy_process_group aborts gloo
    # now and then at interpreter exit.
    gc.collect()
    live = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    out["live_ddp_wrappers"] = dist_utils.all_reduce_sums([float(live)], CPU, ctx)[0]  # over every rank
    if ctx.is_main:
        (args.workdir / "result.json").write_text(json.dumps(out))
    dist_utils.shutdown()


if __name__ == "__main__":
    main()
