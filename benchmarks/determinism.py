"""Does the same seed give the same model in every process? (CPU, several threads.)

Trains a subgraph model for a few steps on ML-100K u1 in ``--processes``
fresh processes with the same seed and thread count, hashes each trained model's
weights, and counts the distinct hashes: 1 means bit-identical training. With
``--no-warm-up`` the children skip :func:`cmcrec.models.layers.warm_cpu_math`, to show
what it fixes (a first-call error in MKL's vector math after the first sparse product;
see its docstring).

Usage::

    python benchmarks/determinism.py [--processes 20] [--threads 2] [--model mccl]
        [--steps 20] [--no-warm-up] [--data-dir ../shared/data]
        [--out benchmarks/results/determinism.json]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """Train ``--steps`` batches and print the weights' hash (runs in a fresh process).

    The model's own layers, training batcher and Adam, on ML-100K u1 with the model's
    default config; the trainer around them is left out to keep each process short.
    """
    import numpy as np
    import torch

    from cmcrec.data.datasets import load_split
    from cmcrec.graph.csr import RatingGraph
    from cmcrec.models import layers
    from cmcrec.models.registry import DataSpec, get_model
    from cmcrec.training.batching import make_batcher

    torch.set_num_threads(args.threads)
    if args.no_warm_up:
        layers.warm_cpu_math = lambda: None
    train = load_split("ml-100k", "u1", data_dir=args.data_dir).train
    spec = get_model(args.model)
    config = spec.make_config({})
    batcher = make_batcher("subgraph", config, RatingGraph.from_ratings(train), train=True, seed=0)
    torch.manual_seed(0)
    model = spec.build(config, DataSpec.from_ratings(train)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        rows = np.arange(step * 50, step * 50 + 50)
        batch = batcher(train.user[rows], train.item[rows], train.rating[rows])
        loss, _ = model.loss(batch, model(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    print(digest.hexdigest()[:16])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    p.add_argument("--model", default="mccl")
    p.add_argument("--steps", type=int, default=20, help="training steps of 50 pairs in each process")
    p.add_argument("--no-warm-up", action="store_true", help="skip warm_cpu_math in the children")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here (atomically)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for flag in ("processes", "threads", "steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.child:
        child(args)
        return 0

    from cmcrec.artifacts import atomic_write_text
    from cmcrec.benchmarks.common import command_line, machine, now

    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--model", args.model]
    cmd += ["--steps", str(args.steps), "--data-dir", args.data_dir] + (["--no-warm-up"] if args.no_warm_up else [])
    hashes = []
    t0 = time.perf_counter()
    for i in range(args.processes):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"child process {i} failed (exit {out.returncode})")
        hashes.append(out.stdout.strip().splitlines()[-1])
    counts = collections.Counter(hashes)
    result = {
        "model": args.model,
        "steps": args.steps,
        "threads": args.threads,
        "warm_up": not args.no_warm_up,
        "processes": args.processes,
        "distinct_models": len(counts),
        "processes_per_model": sorted(counts.values(), reverse=True),
        "seconds": time.perf_counter() - t0,
        "command": command_line(argv),
        "machine": machine(),
        "date": now(),
    }
    print(f"{'model':<8} {'threads':>7} {'warm-up':>8} {'processes':>9} {'distinct models':>15}  processes per model")
    print(
        f"{args.model:<8} {args.threads:>7} {str(result['warm_up']).lower():>8} {args.processes:>9} "
        f"{len(counts):>15}  {result['processes_per_model']}"
    )
    if args.out is not None:  # one row per setting (with and without the warm-up); a rerun replaces its own
        rows = json.loads(args.out.read_text()).get("rows", []) if args.out.is_file() else []
        setting = ("model", "steps", "threads", "warm_up", "processes")
        rows = [r for r in rows if tuple(r.get(k) for k in setting) != tuple(result[k] for k in setting)]
        rows.append(result)
        payload = {"rows": rows, "machine": result["machine"], "date": result["date"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
