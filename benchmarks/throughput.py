"""Throughput of subgraph extraction and of IGMC / MCCL training on ML-100K.

IGMC's settings: 1 hop, ``max_nodes_per_hop`` 200, batch 50, random training
pairs of u1.base. Reports

- extraction subgraphs/s of the vectorised code and of the per-pair oracle
  (``tests/subgraph_oracle.py``) in the same run, and their ratio;
- training subgraphs/s (extraction + forward + backward + Adam step, through
  the trainer's own loader: ``--num-workers`` DataLoader processes, or with 0
  in the training process) for IGMC, MCCL and MCCL with linear edge scorers, and the
  compute-only rate on pre-extracted batches, to show where the time goes;
- peak RSS of the process.

Training rates are the median of ``--repeats`` timings (3); every timing is
kept under ``<key>_runs``, because on a small shared machine they vary.

Usage::

    python benchmarks/throughput.py [--quick] [--json] [--device cpu|cuda] [--num-workers N]
        [--models igmc,mccl,mccl-lin] [--repeats 3] [--data-dir ../shared/data]
        [--out benchmarks/results/throughput.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle lives with the tests


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_extraction(graph, train, batches: int, batch_size: int, rng: np.random.Generator) -> dict:
    from subgraph_oracle import DictGraph, oracle_batch

    from cmcrec.graph.subgraph import extract_subgraphs

    rows = [rng.choice(len(train), batch_size, replace=False) for _ in range(batches)]
    extract_subgraphs(graph, train.user[rows[0]], train.item[rows[0]], max_nodes_per_hop=200)  # warm-up
    t0 = time.perf_counter()
    edges = 0
    for r in rows:
        b = extract_subgraphs(graph, train.user[r], train.item[r], max_nodes_per_hop=200)
        edges += b.num_edges
    fast = batches * batch_size / (time.perf_counter() - t0)
    oracle_rows = rows[: max(1, batches // 4)]
    dict_graph = DictGraph.from_rating_graph(graph)  # built once, outside the timing
    t0 = time.perf_counter()
    for r in oracle_rows:
        oracle_batch(dict_graph, train.user[r], train.item[r], 1, 200)
    slow = len(oracle_rows) * batch_size / (time.perf_counter() - t0)
    return {
        "extract_subgraphs_per_s": fast,
        "oracle_subgraphs_per_s": slow,
        "extract_speedup": fast / slow,
        "mean_edges_per_subgraph": edges / (batches * batch_size),
    }


def bench_training(model_name: str, graph, train, steps: int, device: str, num_workers: int, seed: int) -> dict:
    from cmcrec.models.registry import DataSpec, get_model
    from cmcrec.training.batching import TargetRows, make_batcher
    from cmcrec.training.trainer import batch_loader, epoch_batches, make_optimizer

    spec = get_model(model_name)
    config = spec.make_config({"batch_size": 50, "max_nodes_per_hop": 200})
    torch.manual_seed(seed)
    dev = torch.device(device)
    data = DataSpec.from_ratings(train)
    model = spec.build(config, data).to(dev).train()
    opt = make_optimizer(model, config, dev)  # the trainer's
    batcher = make_batcher(
        "subgraph", config, graph, train=True, seed=seed, rating_range=(data.rating_min, data.rating_max)
    )
    batches = epoch_batches(len(train), config.batch_size, seed, 0)[: steps + 2]
    rows = TargetRows(train.user, train.item, train.rating, batcher)

    def step(batch):
        batch = batch.to(dev)
        loss, _ = model.loss(batch, model(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cached = list(batch_loader(rows, batches[:2], 0))  # warm-up batches, reused for the compute-only rate
    for b in cached:
        step(b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    # The trainer's own loader. The clock starts when the first batch arrives (worker start-up is paid once per epoch of
    # ~1,600 batches, not per 40), before anything could be built ahead of the steps timed.
    # Without workers, next() extracts the first batch in this process: that work is timed too.
    t0 = time.perf_counter()
    it = iter(batch_loader(rows, batches[2:], num_workers))
    first = next(it)
    if num_workers > 0:
        t0 = time.perf_counter()
    n = 0
    for b in itertools.chain([first], it):
        step(b)
        n += b.num_targets
    if dev.type == "cuda":
        torch.cuda.synchronize()
    end_to_end = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    reps = max(2, steps // 4)
    n = 0
    for i in range(reps):
        step(cached[i % 2])
        n += cached[i % 2].num_targets
    if dev.type == "cuda":
        torch.cuda.synchronize()
    compute = n / (time.perf_counter() - t0)
    return {f"{model_name}_train_subgraphs_per_s": end_to_end, f"{model_name}_compute_subgraphs_per_s": compute}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer batches (for a smoke run)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers extracting subgraphs")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here (atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--models", default="igmc,mccl,mccl-lin", help="comma-separated subgraph models to time (registry names)"
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="time each model this many times; the median is reported, all kept"
    )
    args = p.parse_args(argv)

    from cmcrec.artifacts import atomic_write_text
    from cmcrec.benchmarks.common import command_line, machine
    from cmcrec.data.datasets import load_split
    from cmcrec.errors import CmcrecError
    from cmcrec.graph.csr import RatingGraph
    from cmcrec.models.registry import get_model
    from cmcrec.training.allocator import tune_cpu_allocator
    from cmcrec.training.trainer import resolve_device

    # Every flag is checked before anything is timed.
    if args.num_workers < 0 or args.repeats < 1:
        p.error(f"--num-workers must be >= 0 and --repeats >= 1, got {args.num_workers}, {args.repeats}")
    try:
        for name in args.models.split(","):
            get_model(name)
        resolve_device(args.device)
        train = load_split("ml-100k", "u1", data_dir=args.data_dir).train
    except CmcrecError as e:
        p.error(str(e))

    malloc_tuned = args.device == "cpu" and tune_cpu_allocator()  # as the trainer does
    graph = RatingGraph.from_ratings(train)
    rng = np.random.default_rng(args.seed)
    steps = 6 if args.quick else 40
    result: dict = {"dataset": "ml-100k/u1", "hops": 1, "max_nodes_per_hop": 200, "batch_size": 50}
    result |= bench_extraction(graph, train, 8 if args.quick else 60, 50, rng)
    for name in args.models.split(","):
        reps = [
            bench_training(name, graph, train, steps, args.device, args.num_workers, args.seed)
            for _ in range(max(1, args.repeats))
        ]
        for key in reps[0]:
            values = [r[key] for r in reps]
            result[key] = float(np.median(values))
            result[key + "_runs"] = values
    result["peak_rss_mb"] = peak_rss_mb()
    result |= {
        "device": args.device,
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "command": command_line(argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k != "machine":
                if isinstance(v, list):
                    v = ", ".join(f"{x:,.1f}" for x in v)
                print(f"{k:<40} {v:,.1f}" if isinstance(v, float) else f"{k:<40} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
