"""Render docs/RESULTS.md from the JSON files in benchmarks/results/ — numbers are never typed by hand.

Usage: python benchmarks/results_md.py [--results benchmarks/results] [--out docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from cmcrec.artifacts import atomic_write_text
from cmcrec.benchmarks.accuracy import shown_preset

ROOT = Path(__file__).resolve().parents[1]

PUBLISHED = {  # DESIGN.md §2: published single-split RMSE anchors (IGMC's are checkpoint ensembles)
    "ml-100k": {"IGMC (published)": 0.905, "GC-MC": 0.905, "best known": 0.8889},
    "douban": {"IGMC (published)": 0.721, "GC-MC": 0.734, "best known": 0.7208},
    "flixster": {"IGMC (published)": 0.872, "GC-MC": 0.917, "best known": 0.872},
    "yahoo_music": {"IGMC (published)": 19.1, "GC-MC": 20.5, "best known": 18.70},
}


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        # Rates and sizes (>= 100) read better whole; RMSEs and shares keep their digits.
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"
    return str(v)


def _provenance(d: dict) -> str:
    m = d.get("machine", {})
    cmds = sorted({x["command"] for x in (d.get("runs") or d.get("rows") or []) if x.get("command")})
    cmd = d.get("command") or "`; `".join(cmds)
    where = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"
    return f"Command: `{cmd}` — {where}, {d.get('date', '?')}."


def _configs(x):
    """Every model config (a dict with ``max_nodes_per_hop``) anywhere in a results file."""
    if isinstance(x, dict):
        if "max_nodes_per_hop" in x:
            yield x
        for v in x.values():
            yield from _configs(v)
    elif isinstance(x, list):
        for v in x:
            yield from _configs(v)


def per_relation_note(d: dict) -> list[str]:
    """A note for a study whose subgraph models predate ``mean_over`` (they averaged per relation).

    None when every config names its mean, or when every row of the study says which mean it used
    (a ``mean_over`` column: a study holding runs from before and after the option)."""
    rows = d.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "mean_over" in r for r in rows):
        return []
    if not any("mean_over" not in c for c in _configs(d)):
        return []
    return [
        "Subgraph models in this study were trained before the `mean_over` option existed: their R-GCN layers "
        "average messages per relation (`mean_over=relation`), not over a node's edges as today's default does "
        "(see the accuracy table for the difference). Not re-run since.",
        "",
    ]


def accuracy_section(d: dict) -> list[str]:
    out = ["## Accuracy (test RMSE, standard splits)", ""]
    out.append(
        "Single models, epoch chosen on a validation share of the training ratings; mean ± sample std over seeds. "
        "Published IGMC numbers average several checkpoints (ensemble); ours are single models. "
        "s/run is the training wall time of one run, often with other jobs sharing the 2 cores: "
        "speed is measured in the throughput tables, not here."
    )
    out.append("")
    rows = sorted(d["rows"], key=lambda r: (r["dataset"], r["rmse_mean"]))
    # Rows labelled `model (key=value)` were trained with config overrides: `--set` variants, and runs of
    # earlier code relabelled with the setting they had (mean_over=relation). Today's defaults come first.
    plain = [r for r in rows if "(" not in r["model"]]
    variants = [r for r in rows if "(" in r["model"]]
    out += _accuracy_table(plain)
    if variants:
        out += [
            "",
            "Variants: runs with config overrides (`--set`), YahooMusic with another number of rating buckets "
            "(`--num-buckets`, labelled `num_buckets=N`; the default is 10), and runs from before `mean_over` "
            "existed, labelled `mean_over=relation` (their R-GCN layers averaged per relation).",
            "",
            *_accuracy_table(variants),
        ]
    cmds = sorted({r["command"] for r in d["runs"]})
    out += ["", "Commands: " + "; ".join(f"`{c}`" for c in cmds), ""]
    # Runs record their own machine (the file's `machine` is its last writer's); older runs fall back to it.
    machines = Counter(_machine_text(r.get("machine") or d.get("machine", {})) for r in d["runs"])
    if len(machines) == 1:
        out += [f"Machine: {next(iter(machines))}.", ""]
    else:
        out += ["Machines: " + "; ".join(f"{m} ({n} runs)" for m, n in machines.most_common()) + ".", ""]
    return out


def _machine_text(m: dict) -> str:
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"


def _accuracy_table(rows: list[dict]) -> list[str]:
    out = [
        "| dataset | model | preset | RMSE mean ± std | seeds | epochs (max) | best epochs | s/run | published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub = ", ".join(f"{k} {v}" for k, v in PUBLISHED.get(r["dataset"], {}).items()) if r["model"] == "igmc" else ""
        rmse = f"{r['rmse_mean']:.4f} ± {r['rmse_std']:.4f}"
        preset = shown_preset(r) or "–"
        out.append(
            f"| {r['dataset']} | {r['model']} | {preset} | {rmse} | "
            f"{len(r['seeds'])} | {r['epochs']} | {r.get('best_epochs')} | {r['train_seconds_mean']:.0f} | {pub} |"
        )
    return out


def throughput_section(d: dict, name: str) -> list[str]:
    keys = [
        "extract_subgraphs_per_s",
        "oracle_subgraphs_per_s",
        "extract_speedup",
        "igmc_train_subgraphs_per_s",
        "igmc_compute_subgraphs_per_s",
        "mccl_train_subgraphs_per_s",
        "mccl_compute_subgraphs_per_s",
        "mccl-lin_train_subgraphs_per_s",
        "mccl-lin_compute_subgraphs_per_s",
        "peak_rss_mb",
        "num_workers",
    ]
    out = [f"### {name}", "", "| metric | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(d.get(k), 1)} |" for k in keys if k in d]
    out += ["", _provenance(d), ""]
    return out


def serving_section(d: dict) -> list[str]:
    out = [
        "## Serving: candidate recall and latency (ML-100K u1, MCCL artifact, CPU, 2 threads)",
        "",
        "kept = share of the model's full-catalogue top-10 that the item-kNN candidate step keeps at N; "
        "latency per single `recommend` / `recommend_for_ratings` call, k = 10. Targets: kept ≥ 90% with "
        "p50 < 50 ms and p99 < 200 ms.",
        "",
        "| N | kept | recommend p50 ms | recommend p99 ms | new-user p50 ms | new-user p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in d.get("rows", []):
        a, b = r["recommend"], r["recommend_for_ratings"]
        cells = [r["n"], f"{r['kept']:.0%}", *(f"{x[q]:.1f}" for x in (a, b) for q in ("p50_ms", "p99_ms"))]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    chosen = d.get("chosen")
    out += ["", f"N meeting the recall target: {chosen if chosen is not None else 'none'}.", "", _provenance(d), ""]
    return out


def load_section(d: dict) -> list[str]:
    out = [
        "## HTTP load test (loopback, bounded)",
        "",
        "| requests | errors | clients | p50 ms | p99 ms | requests/s |",
        "|---|---|---|---|---|---|",
        f"| {d['requests']} | {d['errors']} | {d['clients']} | {d['p50_ms']:.0f} | {d['p99_ms']:.0f} "
        f"| {d['rps']:.1f} |",
        "",
        _provenance(d),
        "",
    ]
    return out


def table_section(title: str, d: dict, columns: list[str], note: str = "") -> list[str]:
    out = [f"## {title}", ""]
    if note:
        out += [note, ""]
    out.append("| " + " | ".join(columns) + " |")
    out.append("|" + "---|" * len(columns))
    for r in d.get("rows", []):
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    out += ["", _provenance(d), ""]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README whose generated block is refreshed")
    args = p.parse_args()
    r = args.results
    lines = [
        "# Results",
        "",
        "Generated by `python benchmarks/results_md.py` from `benchmarks/results/*.json`; each section names the",
        "command, machine and date recorded in its file. Nothing here is typed by hand.",
        "",
    ]
    if (d := _load(r / "accuracy.json")) is not None:
        lines += accuracy_section(d)
    if (d := _load(r / "blog.json")) is not None:
        lines += table_section(
            "The blog's table: MF vs MCCL on ML-100K u1 (full-catalogue ranking)",
            d,
            [
                "model",
                "rmse",
                "recall@10",
                "ndcg@10",
                "coverage@10",
                "avg_popularity@10",
                "head_share@10",
                "candidates",
            ],
            "Relevant = test items rated ≥ 4; every item unrated in training is ranked (subgraph models re-rank "
            "the top `candidates` of the item-kNN generator).",
        )
        lines += per_relation_note(d)
    tp = [
        (f, n)
        for f, n in [
            ("throughput.json", "DataLoader worker extracting"),
            ("throughput_workers0.json", "extraction in the training process"),
        ]
        if (r / f).is_file()
    ]
    if tp:
        lines += ["## Throughput (ML-100K u1, 1 hop, max_nodes_per_hop 200, batch 50, CPU)", ""]
        for f, n in tp:
            lines += throughput_section(_load(r / f), n)
    for f, title, cols in [
        ("serving.json", "Serving", serving_section),
        (
            "robustness.json",
            "Robustness (noise injected into training ratings)",
            ["kind", "noise", "model", "rmse", "ndcg@10", "recall@10"],
        ),
        (
            "cold_start.json",
            "Cold start",
            ["split", "study", "bucket", "k", "model", "rmse", "ndcg@10", "num_users"],
        ),
        ("tau.json", "τ sensitivity", ["tau", "seed", "valid_rmse", "rmse", "recall@10", "coverage@10"]),
        (
            "throughput_ab.json",
            "Throughput before and after the CSR-product, sort and allocator speed work (same machine state)",
            [
                "round",
                "code",
                "extract_subgraphs_per_s",
                "igmc_train_subgraphs_per_s",
                "igmc_compute_subgraphs_per_s",
                "mccl-lin_train_subgraphs_per_s",
                "mccl-lin_compute_subgraphs_per_s",
            ],
        ),
        (
            "throughput_ab_scorer.json",
            "Throughput before and after MCCL's per-rating edge scores and sampled KL (same machine state)",
            [
                "round",
                "code",
                "extract_subgraphs_per_s",
                "igmc_train_subgraphs_per_s",
                "mccl_train_subgraphs_per_s",
                "mccl_compute_subgraphs_per_s",
                "mccl-lin_train_subgraphs_per_s",
                "mccl-lin_compute_subgraphs_per_s",
                "peak_rss_mb",
            ],
        ),
        (
            "throughput_ab_speed.json",
            "Throughput before and after the int32 build, fused scorer and torch extraction work (same machine state)",
            [
                "round",
                "code",
                "extract_subgraphs_per_s",
                "igmc_train_subgraphs_per_s",
                "igmc_compute_subgraphs_per_s",
                "mccl_train_subgraphs_per_s",
                "mccl_compute_subgraphs_per_s",
                "mccl-lin_train_subgraphs_per_s",
                "peak_rss_mb",
            ],
        ),
        (
            "throughput_ab_kernels.json",
            "Throughput with the fused CPU kernels off and on (one commit, same machine state)",
            [
                "round",
                "code",
                "igmc_train_subgraphs_per_s",
                "igmc_compute_subgraphs_per_s",
                "mccl_train_subgraphs_per_s",
                "mccl_compute_subgraphs_per_s",
                "mccl-lin_train_subgraphs_per_s",
                "mccl-lin_compute_subgraphs_per_s",
                "peak_rss_mb",
            ],
        ),
        (
            "igmc_reference_check.json",
            "IGMC at the public implementation's settings (5 epochs)",
            [
                "seed",
                "code",
                "mean_over",
                "output",
                "best_epoch",
                "best_valid_rmse",
                "rmse",
                "public_igmc_rmse_after_5_epochs",
            ],
        ),
        (
            "determinism.json",
            "Same seed, same model? (fresh processes, CPU; `warm_up` is `warm_cpu_math`)",
            ["model", "threads", "steps", "warm_up", "processes", "distinct_models", "processes_per_model"],
        ),
        ("distributed.json", "Distributed training", None),
        ("load.json", "HTTP load test", load_section),
    ]:
        d = _load(r / f)
        if d is None:
            continue
        if callable(cols):
            lines += cols(d)
        elif cols is None:
            lines += [
                f"## {title}",
                "",
                "```json",
                json.dumps({k: v for k, v in d.items() if k != "machine"}, indent=1)[:4000],
                "```",
                "",
                _provenance(d),
                "",
            ]
        else:
            lines += table_section(title, d, cols, d.get("what", ""))
            lines += per_relation_note(d)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if args.readme.is_file():
        refresh_readme(args.readme, r)


BEGIN, END = "<!-- BEGIN GENERATED RESULTS -->", "<!-- END GENERATED RESULTS -->"


def refresh_readme(readme: Path, r: Path) -> None:
    """Replace the README block between the markers with the accuracy and blog tables."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return
    block: list[str] = []
    if (d := _load(r / "accuracy.json")) is not None:
        block += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in accuracy_section(d)]
    if (d := _load(r / "blog.json")) is not None:
        block += table_section(
            "### The blog's table (ML-100K u1, full-catalogue top-10)",
            d,
            ["model", "rmse", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10", "candidates"],
        )
        block += per_relation_note(d)
    for name, render in (("serving.json", serving_section), ("load.json", load_section)):
        if (d := _load(r / name)) is not None:
            block += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in render(d)]
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(readme, head + BEGIN + "\n" + "\n".join(block).replace("## ###", "###") + "\n" + END + tail)
    print(f"refreshed {readme}")


if __name__ == "__main__":
    main()
