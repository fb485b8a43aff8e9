"""Training throughput under DDP: subgraphs/s with 1 vs N processes and 0 vs K DataLoader workers.

For every ``(processes, workers)`` pair this launches ``torchrun --standalone``
on itself (the hidden ``--worker`` mode), which trains MCCL (IGMC when MCCL does
not import) on a seeded ``--max-train-ratings`` sample of ML-100K ``u1`` for
``--epochs`` epochs. Throughput is the trainer's own global rate (target
subgraphs of all ranks per second of training, validation excluded) in the last
epoch, so the first epoch's warm-up does not count. On CPU the processes use
gloo with ``OMP_NUM_THREADS=1`` each; with ``--device cuda`` they use NCCL, one
GPU per process.

Example (CPU, a couple of minutes)::

    python benchmarks/distributed.py --data-dir /path/to/data --max-train-ratings 3000
    python benchmarks/distributed.py --device cuda --processes 1,2,4 --workers 0,4 --out results/ddp-gpu.json

``--json`` prints one JSON line; ``--out FILE`` writes the same object
atomically, with the exact command, the machine, the torch version and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmcrec.artifacts import atomic_write_text
from cmcrec.benchmarks.common import machine


def default_model() -> str:
    try:
        import cmcrec.models.mccl  # noqa: F401
    except ImportError:
        return "igmc"
    return "mccl"


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise SystemExit(f"{flag}: expected non-negative integers, got {text!r}")
    return values


# -- the worker: one torchrun launch ------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Train under torchrun and (rank 0) write the timing to ``--result``."""
    from cmcrec.config import RunContext
    from cmcrec.data.datasets import load_split
    from cmcrec.graph.csr import RatingGraph
    from cmcrec.models.presets import preset_overrides
    from cmcrec.models.registry import DataSpec, get_model
    from cmcrec.recommender import carve_validation
    from cmcrec.training import distributed as dist_utils
    from cmcrec.training.batching import fit_batchers
    from cmcrec.training.trainer import Trainer

    ctx = dist_utils.init_from_env(
        RunContext(device=args.device, num_workers=args.num_workers, seed=args.seed, progress=False)
    )
    spec = get_model(args.model)
    fields = set(spec.config_cls.__dataclass_fields__)
    overrides = preset_overrides("cpu", fields) | json.loads(args.config)
    config = spec.make_config(overrides | {"epochs": args.epochs, "patience": None})
    train = load_split("ml-100k", "u1", data_dir=args.data_dir, seed=args.seed).train
    if args.max_train_ratings is not None and args.max_train_ratings < len(train):
        rows = np.sort(np.random.default_rng([args.seed, 202]).choice(len(train), args.max_train_ratings, False))
        train = train.subset(rows)
    fit_part, valid = carve_validation(train, config, args.seed)
    torch.manual_seed(args.seed)
    data = DataSpec.from_ratings(fit_part)
    module = spec.build(config, data)
    trainer = Trainer(module, config, ctx, find_unused_parameters=args.find_unused)
    graph = RatingGraph.from_ratings(fit_part)
    kind = module.batch_kind
    t0 = time.perf_counter()
    result = trainer.fit(fit_part, valid, *fit_batchers(kind, config, graph, data, seed=args.seed, rank=ctx.rank))
    wall = time.perf_counter() - t0
    if ctx.is_main:
        last = result.history[-1]
        record = {
            "subgraphs_per_s": last.subgraphs_per_s,
            "epoch_subgraphs_per_s": [h.subgraphs_per_s for h in result.history],
            "last_epoch_seconds": last.seconds,
            "fit_seconds": wall,
            "train_targets": len(fit_part),
            "valid_rmse": last.valid_rmse,
            "device": str(trainer.device),
            "batch_size_per_process": config.batch_size,
        }
        Path(args.result).write_text(json.dumps(record))
    dist_utils.shutdown()


# -- the driver --------------------------------------------------------------------------------------


def run_one(args: argparse.Namespace, processes: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cmcrec-ddp-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            str(Path(__file__).resolve()),
            "--worker",
            f"--result={result}",
            f"--model={args.model}",
            f"--device={args.device}",
            f"--num-workers={workers}",
            f"--epochs={args.epochs}",
            f"--seed={args.seed}",
            f"--config={args.config}",
        ]
        if args.data_dir is not None:
            cmd.append(f"--data-dir={args.data_dir}")
        if args.max_train_ratings is not None:
            cmd.append(f"--max-train-ratings={args.max_train_ratings}")
        if args.find_unused:
            cmd.append("--find-unused")
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"benchmark run failed: processes={processes} workers={workers} (exit {proc.returncode})")
        return {"processes": processes, "workers": workers} | json.loads(result.read_text())


def table(rows: list[dict]) -> str:
    base = rows[0]["subgraphs_per_s"] if rows else 1.0
    lines = [f"{'processes':>9} {'workers':>7} {'subgraphs/s':>12} {'speed-up':>8} {'epoch s':>8}"]
    for r in rows:
        lines.append(
            f"{r['processes']:>9} {r['workers']:>7} {r['subgraphs_per_s']:>12,.0f} "
            f"{r['subgraphs_per_s'] / base:>7.2f}x {r['last_epoch_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registry name (default: mccl, else igmc)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding ml-100k")
    p.add_argument("--max-train-ratings", type=int, default=3000, help="seeded sample of u1.base to train on")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts")
    p.add_argument("--workers", default="0,1", help="comma-separated DataLoader worker counts (per process)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (gloo) or cuda (NCCL, one GPU each)")
    p.add_argument("--config", default="{}", help="JSON config overrides on top of the 'cpu' preset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--find-unused",
        action="store_true",
        help="wrap with find_unused_parameters=True, to measure what that setting would cost",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object here (atomically)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    try:
        json.loads(args.config)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config: invalid JSON ({e.msg})") from None
    if args.worker:
        worker(args)
        return
    if args.epochs < 2:  # the first epoch is warm-up; the timed one must be another
        raise SystemExit(f"--epochs must be >= 2 (the first epoch is not timed), got {args.epochs}")
    processes = _int_list(args.processes, "--processes")
    workers = _int_list(args.workers, "--workers")
    if min(processes) < 1:
        raise SystemExit(f"--processes: each count must be >= 1, got {args.processes!r}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available on this machine")
        if max(processes) > torch.cuda.device_count():
            raise SystemExit(f"--processes: {max(processes)} > {torch.cuda.device_count()} visible GPUs")
    rows = []
    for n in processes:
        for w in workers:
            rows.append(run_one(args, n, w))
            if not args.json:
                print(f"processes={n} workers={w}: {rows[-1]['subgraphs_per_s']:,.0f} subgraphs/s", file=sys.stderr)
    report = {
        "benchmark": "distributed",
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["distributed.py", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "model": args.model,
        "dataset": "ml-100k/u1",
        "max_train_ratings": args.max_train_ratings,
        "epochs": args.epochs,
        "device": args.device,
        "find_unused_parameters": args.find_unused,
        "config_overrides": json.loads(args.config),
        "results": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
