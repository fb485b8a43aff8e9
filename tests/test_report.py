"""``cmcrec report``: synthetic result files of every schema → index.html + valid PNGs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cmcrec.errors import CmcrecError, DataError
from cmcrec.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODELS = ("svd", "igmc", "mccl")
COMMAND = "cmcrec benchmark blog --seeds 0,1"


def _write(d: Path, name: str, payload) -> None:
    (d / name).write_text(json.dumps(payload))


def write_results(d: Path) -> None:
    """One small file per schema documented in docs/reports.md."""
    rng = np.random.default_rng(0)
    meta = {"command": COMMAND, "machine": {"cpu": "test cpu"}, "date": "2025-01-01T00:00:00Z"}
    _write(
        d,
        "accuracy.json",
        meta
        | {
            "rows": [
                {"dataset": ds, "model": m, "rmse_mean": base + 0.02 * j, "rmse_std": 0.004, "seeds": [0, 1, 2]}
                for ds, base in (("ml-100k", 0.9), ("douban", 0.73))
                for j, m in enumerate(MODELS)
            ],
            "runs": [
                {
                    "dataset": "ml-100k",
                    "model": "mccl",
                    "seed": 0,
                    "history": [
                        {"epoch": e, "train_loss": 1.5 / e, "valid_rmse": 0.95 - 0.01 * e} for e in range(1, 6)
                    ],
                }
            ],
        },
    )
    _write(
        d,
        "blog.json",
        meta
        | {
            "rows": [
                {"model": "svd", "rmse": 0.892, "recall@10": 0.052, "ndcg@10": 0.06, "coverage@10": 0.12},
                {"model": "mccl", "rmse": 0.845, "recall@10": 0.078, "ndcg@10": 0.09, "coverage@10": 0.24},
            ]
        },
    )
    pop = (1000 / np.arange(1, 201) ** 0.9).astype(int)
    _write(
        d,
        "popularity.json",
        meta
        | {
            "k": 10,
            "catalogue_popularity": pop.tolist(),
            "rows": [
                {"model": "svd", "recommendation_counts": np.r_[np.full(20, 50), np.zeros(180, int)].tolist()},
                {"model": "mccl", "recommended_popularity": rng.choice(pop[:120], 500).tolist()},
                {"model": "igmc", "decile_share": [0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]}
                | {"mean_popularity": 150.0},
            ],
        },
    )
    _write(
        d,
        "robustness.json",
        meta
        | {
            "rows": [
                {
                    "noise": s,
                    "kind": kind,
                    "model": m,
                    "seed": seed,
                    "rmse": 0.9 + s / 100 * (0.5 if m == "mccl" else 1),
                }
                | {"ndcg@10": 0.1 - s / 1000}
                for kind in ("fake", "flip")
                for s in (0.0, 5.0, 10.0, 20.0)
                for m in MODELS
                for seed in (0, 1)
            ]
        },
    )
    buckets = [("1-2", 120), ("3-5", 300), ("6-10", 250), ("11+", 400)]
    _write(
        d,
        "cold_start.json",
        meta
        | {
            "rows": [
                {"study": "bucket", "bucket": b, "model": m, "rmse": 1.1 - 0.03 * j, "ndcg@10": 0.05, "num_users": n}
                for j, (b, n) in enumerate(buckets)
                for m in MODELS
            ]
            + [
                {"study": "inductive", "k": k, "model": m, "rmse": 1.0 - 0.02 * k, "ndcg@10": 0.02 * k}
                for k in (1, 2, 5, 10)
                for m in MODELS
            ]
        },
    )
    _write(
        d,
        "training_curves.json",
        {
            "rows": [
                {"model": m, "dataset": "ml-100k", "epoch": e, "train_loss": 2.0 / e, "valid_rmse": 1.0 - 0.01 * e}
                for m in ("igmc", "svd")
                for e in range(1, 6)
            ]
        },
    )
    _write(
        d,
        "tau.json",
        meta
        | {
            "rows": [
                {
                    "tau": t,
                    "seed": s,
                    "valid_rmse": 0.9 + abs(np.log(t / 0.1)) * 0.01,
                    "rmse": 0.91 + abs(np.log(t / 0.1)) * 0.01,
                    "recall@10": 0.07,
                    "coverage@10": 0.1 + 0.1 * t,
                }
                for t in (0.07, 0.1, 0.2, 0.5, 1.0)
                for s in (0, 1)
            ]
        },
    )
    _write(
        d,
        "sweep_demo.json",
        meta
        | {
            "search_space": {
                "lr": {"type": "log-uniform", "low": 1e-4, "high": 1e-2},
                "max_nodes_per_hop": {"type": "categorical", "choices": [20, 50, 100, 200]},
            },
            "rows": [
                {"trial": i, "state": "COMPLETE", "value": 0.95 - 0.01 * i, "params": {"lr": 1e-3 * (i + 1)}}
                | {"duration_s": 1.0}
                for i in range(4)
            ]
            + [{"trial": 4, "state": "FAIL", "value": None, "params": {"lr": 5e-3}}],
            "best": {"trial": 3, "value": 0.92, "params": {"lr": 4e-3}},
        },
    )


def _pngs(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+\.png)"', index.read_text())


def test_report_draws_every_schema(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    write_results(results)
    report = build_report(results, out)
    pngs = _pngs(out / "index.html")
    assert len(pngs) >= 6 and len(pngs) == len(set(pngs)) == len(report.figures)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
    assert {
        "accuracy.png",
        "ranking.png",
        "popularity.png",
        "robustness.png",
        "cold_start_buckets.png",
        "cold_start_inductive.png",
        "training_curves.png",
        "tau.png",
        "sweep_demo.png",
    } <= set(pngs)
    page = (out / "index.html").read_text()
    assert "Source: <code>accuracy.json</code>" in page and COMMAND in page
    assert report.missing == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_missing_files_are_noted_not_fatal(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    _write(results, "tau.json", {"rows": [{"tau": 0.1, "valid_rmse": 0.9, "rmse": 0.91}]})
    report = build_report(results, out)
    assert report.figures == ["tau.png"]
    page = (out / "index.html").read_text()
    assert "robustness.json not found" in page and "accuracy.json not found" in page
    # Rebuilding over an earlier report replaces it.
    _write(results, "blog.json", {"rows": [{"model": "mccl", "recall@10": 0.1}]})
    assert build_report(results, out).figures == ["ranking.png", "tau.png"]


def test_malformed_json_names_the_file(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "robustness.json").write_text('{"rows": [\n  {"noise": 0.1,,}\n]}')
    with pytest.raises(DataError, match=r"robustness\.json:2"):
        build_report(results, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_row_missing_field_names_file_and_field(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "accuracy.json", {"rows": [{"dataset": "ml-100k", "rmse_mean": 0.9}]})
    with pytest.raises(DataError, match=r"accuracy\.json.*'model'"):
        build_report(results, tmp_path / "report")


def test_bad_directories(tmp_path):
    with pytest.raises(CmcrecError, match="no such directory"):
        build_report(tmp_path / "nope", tmp_path / "report")
    results, other = tmp_path / "results", tmp_path / "other"
    results.mkdir()
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(CmcrecError, match="not empty"):
        build_report(results, other)
    assert (other / "keep.txt").read_text() == "precious"
    with pytest.raises(CmcrecError, match="must differ"):
        build_report(results, results)


def test_cli_report(tmp_path, capsys):
    from cmcrec.cli.report import report_command

    results = tmp_path / "results"
    results.mkdir()
    write_results(results)
    report_command(results=results, out=tmp_path / "r", title="t", as_json=True)
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["figures"]) >= 6 and payload["missing"] == []


def test_cold_start_figures_have_a_row_of_panels_per_split():
    from cmcrec.report.plots import ResultFile, cold_start_bucket_figure, inductive_figure, palette

    rows = [
        {"split": s, "study": "bucket", "bucket": b, "model": m, "rmse": 1.0 + 0.1 * j, "num_users": 5}
        for s in ("ml-100k/u1", "movietweetings-100k/random")
        for j, b in enumerate(("1-2", "3-5"))
        for m in ("mf", "mccl")
    ] + [
        {"split": s, "study": "inductive", "k": k, "model": m, "rmse": 1.0 - 0.01 * k, "ndcg@10": 0.01 * k}
        for s in ("ml-100k/u1", "movietweetings-100k/random")
        for k in (1, 3)
        for m in ("mf", "mccl")
    ]
    src = ResultFile(path=Path("cold_start.json"), payload={"rows": rows}, rows=rows)
    colors = palette(["mf", "mccl"])
    for make, ncols in ((cold_start_bucket_figure, 1), (inductive_figure, 2)):
        fig = make(src, colors)
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert len(axes) == 2 * ncols
        titles = [ax.get_title() for ax in axes]
        assert sum(t.startswith("ml-100k/u1:") for t in titles) == ncols
        assert sum(t.startswith("movietweetings-100k/random:") for t in titles) == ncols


def test_accuracy_figure_tells_epoch_budgets_apart():
    from cmcrec.report.plots import ResultFile, accuracy_figure, palette

    rows = [
        {
            "dataset": "flixster",
            "model": "mccl",
            "preset": "cpu",
            "max_nodes_per_hop": 40,
            "epochs": e,
            "rmse_mean": m,
            "rmse_std": 0.001,
            "seeds": [0, 1, 2],
        }
        for e, m in ((8, 0.877), (16, 0.875))
    ] + [{"dataset": "flixster", "model": "mf", "preset": "cpu", "epochs": 100, "rmse_mean": 0.946, "seeds": [0]}]
    src = ResultFile(path=Path("accuracy.json"), payload={"rows": rows}, rows=rows)
    fig = accuracy_figure(src, palette(["mccl", "mf"]))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # best at the top: the axis lists bottom to top
    assert labels == ["mf", "mccl (cpu), 8 ep", "mccl (cpu), 16 ep"]


def test_training_curves_keep_runs_at_other_budgets_apart():
    """One model and seed at two presets is two lines (they were joined into one zig-zag), styled by preset."""
    from cmcrec.report.plots import ResultFile, palette, training_curve_rows, training_curves_figure

    def run(preset, epochs, base):
        hist = [{"epoch": e, "train_loss": 1.0 / e, "valid_rmse": base - 0.01 * e} for e in range(1, epochs + 1)]
        return {"dataset": "ml-100k", "model": "igmc", "seed": 0, "preset": preset, "epochs": epochs, "history": hist}

    payload = {"runs": [run("cpu", 3, 0.95), run("paper", 5, 0.93)]}
    src = ResultFile(path=Path("accuracy.json"), payload=payload, rows=[])
    rows = training_curve_rows(src)
    fig = training_curves_figure(rows, palette(["igmc"]))
    lines = [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() in ("-", "--")]
    assert sorted((len(ln.get_xdata()), ln.get_linestyle()) for ln in lines) == [(3, "-"), (5, "--")]


@pytest.mark.parametrize(("unit", "xs"), [(None, [0.0, 0.5, 1.0]), ("share", [0.0, 5.0, 20.0])])
def test_robustness_noise_axis_and_stored_error_bars(unit, xs):
    """Percent as the study writes it (noise 1 is 1 %, not 100 %); an averaged row keeps its stored std."""
    from cmcrec.report.plots import ResultFile, palette, robustness_figure

    stored = [0.0, 0.01, 0.03]
    values = [0.0, 0.05, 0.2] if unit == "share" else [0.0, 0.5, 1.0]
    rows = [
        {"noise": v, "kind": "fake", "model": "mccl", "rmse": 0.9 + v, "rmse_std": sd, "seeds": [0, 1, 2]}
        for v, sd in zip(values, stored, strict=True)
    ]
    payload = {"rows": rows} | ({"noise_unit": unit} if unit else {})
    fig = robustness_figure(ResultFile(path=Path("robustness.json"), payload=payload, rows=rows), palette(["mccl"]))
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3)
    np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), xs)
    bars = ax.collections[0].get_segments()  # one vertical error bar per point: (x, mean - sd) to (x, mean + sd)
    np.testing.assert_allclose([seg[1][1] - seg[0][1] for seg in bars], [2 * sd for sd in stored], atol=1e-9)


def test_accuracy_figure_survives_a_dataset_with_no_finite_rmse():
    from cmcrec.report.plots import ResultFile, accuracy_figure, palette

    rows = [
        {"dataset": "douban", "model": "mccl", "rmse_mean": float("nan"), "seeds": [0]},
        {"dataset": "ml-100k", "model": "mccl", "rmse_mean": 0.91, "rmse_std": 0.001, "seeds": [0, 1]},
    ]
    fig = accuracy_figure(ResultFile(path=Path("accuracy.json"), payload={"rows": rows}, rows=rows), palette(["mccl"]))
    assert any(t.get_text() == "no finite RMSE" for t in fig.axes[0].texts)


def test_provenance_names_every_command_a_study_file_records():
    from cmcrec.report.html import _provenance
    from cmcrec.report.plots import ResultFile

    runs = [{"model": "mf", "command": c} for c in ("cmcrec a --seeds 0", "cmcrec a --seeds 1", "cmcrec a --seeds 0")]
    src = ResultFile(path=Path("accuracy.json"), payload={"runs": runs}, rows=[])
    assert src.commands == ["cmcrec a --seeds 0", "cmcrec a --seeds 1"]
    text = _provenance(src)
    assert "2 commands" in text and "--seeds 1" in text
    one = ResultFile(path=Path("tau.json"), payload={"command": "cmcrec sweep"}, rows=[{"command": "cmcrec sweep"}])
    assert "command: <code>cmcrec sweep</code>" in _provenance(one)


def test_ranking_figure_averages_seeds_into_one_bar_per_model_and_split():
    from cmcrec.report.plots import ResultFile, palette, ranking_figure

    rows = [
        {"split": sp, "model": m, "seed": seed, "ndcg@10": base + 0.01 * seed}
        for sp in ("ml-100k/u1", "douban/monti")
        for m, base in (("mf", 0.05), ("mccl", 0.08))
        for seed in (0, 1, 2)
    ]
    fig = ranking_figure(ResultFile(path=Path("blog.json"), payload={"rows": rows}, rows=rows), palette(["mf", "mccl"]))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["mf (ml-100k/u1)", "mccl (ml-100k/u1)", "mf (douban/monti)", "mccl (douban/monti)"]
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights, [0.06, 0.09, 0.06, 0.09])
