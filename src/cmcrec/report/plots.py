"""One figure per study, drawn from its results file (schemas in ``docs/reports.md``).

Every function takes a loaded :class:`ResultFile` (and a model → colour map, so
a model has the same colour in every figure) and returns a
:class:`matplotlib.figure.Figure`. Figures are built with the object API, not
``pyplot``: no global state, no display backend, safe to call from anywhere.
Rows with a missing or non-finite value are left out of a plot, not drawn as 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from cmcrec.benchmarks.accuracy import shown_preset
from cmcrec.benchmarks.common import model_label
from cmcrec.errors import DataError

__all__ = [
    "ResultFile",
    "accuracy_figure",
    "cold_start_bucket_figure",
    "inductive_figure",
    "load_result",
    "palette",
    "popularity_figure",
    "ranking_figure",
    "robustness_figure",
    "sweep_figure",
    "tau_figure",
    "training_curve_rows",
    "training_curves_figure",
]

RANKING_METRICS = ("recall@10", "ndcg@10", "coverage@10", "precision@10", "hit@10", "mrr@10")
METRIC_LABELS = {
    "rmse": "test RMSE (rating points)",
    "valid_rmse": "validation RMSE (rating points)",
    "ndcg@10": "NDCG@10 (0–1)",
    "recall@10": "Recall@10 (0–1)",
    "precision@10": "Precision@10 (0–1)",
    "hit@10": "Hit@10 (0–1)",
    "mrr@10": "MRR@10 (0–1)",
    "coverage@10": "catalogue coverage@10 (share of items)",
    "avg_popularity@10": "avg. popularity of top-10 items (training ratings)",
}
NOISE_TITLES = {"fake": "fake ratings injected", "flip": "real ratings flipped"}
DPI = 110


@dataclass
class ResultFile:
    """A results JSON: its path, the whole payload, and its ``rows``."""

    path: Path
    payload: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def command(self) -> str | None:
        """The command recorded in the file (top level, else its first row or run that has one)."""
        found = self.commands
        return found[0] if found else None

    @property
    def commands(self) -> list[str]:
        """Every distinct command the file records: top level first, then its rows' and runs' in order
        (a study file gathers runs of several invocations)."""
        runs = self.payload.get("runs", [])
        found = [
            self.payload.get("command"),
            *(r.get("command") for r in [*self.rows, *(runs if isinstance(runs, list) else [])] if isinstance(r, dict)),
        ]
        return list(dict.fromkeys(c for c in found if isinstance(c, str)))

    def require(self, rows: Iterable[tuple[int, dict[str, Any]]], fields: Sequence[str]) -> None:
        """Raise :class:`DataError` naming the file, row and field when a row lacks one of ``fields``."""
        for i, row in rows:
            for f in fields:
                if f not in row:
                    raise DataError(f"row {i} has no {f!r} (needed for the plot)", path=self.path, field=f)


def load_result(path: Path) -> ResultFile:
    """Read a results JSON: an object with a ``rows`` list of objects, or a bare list of rows.

    Raises:
        DataError: the file is not valid JSON, or its rows are not a list of objects.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read: {e}", path=path) from None
    if isinstance(payload, list):
        payload = {"rows": payload}
    if not isinstance(payload, dict):
        raise DataError(f"expected a JSON object with a 'rows' list, got {type(payload).__name__}", path=path)
    rows = payload.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError("'rows' must be a list of objects", path=path, field="rows")
    return ResultFile(path, payload, rows)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _marker(models: Sequence[str], model: str) -> str:
    """A marker per model within a figure, so overlapping lines stay distinguishable."""
    return MARKERS[models.index(model) % len(MARKERS)]


def palette(models: Iterable[str]) -> dict[str, Any]:
    """A fixed colour per model name (sorted, so the same set of models always gets the same colours)."""
    from matplotlib import colormaps

    names = sorted(set(models))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _order(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def _new_figure(ncols: int, nrows: int = 1, width: float = 4.2, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(6.0, width * ncols), height * nrows + 0.9), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def _bars(ax, labels: Sequence[str], means, stds, colors, fmt: str = "{:.3f}") -> None:
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, color=colors, capsize=4, edgecolor="black", linewidth=0.5, label=None)
    for xi, m, s in zip(x, means, stds, strict=True):
        ax.annotate(
            fmt.format(m), (xi, m + (s or 0)), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8
        )
    ax.set_xticks(x, labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0, ha="right")
    top = max((m + (s or 0) for m, s in zip(means, stds, strict=True)), default=1.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)


def _model_legend(
    fig: Figure, colors: dict[str, Any], models: Sequence[str], lines: bool = False, ncols: int = 6, fontsize: int = 8
) -> None:
    """One legend below the panels naming each model once: colour patches, or line markers (``lines``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if lines:
        handles = [Line2D([], [], color=colors[m], marker=".", label=m) for m in models]
    else:
        handles = [Patch(facecolor=colors[m], edgecolor="black", linewidth=0.5, label=m) for m in models]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(models), ncols), title="model", fontsize=fontsize
    )


# -- accuracy / ranking -----------------------------------------------------------------------------


def accuracy_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Test RMSE per model, one panel per dataset: a dot per row at the mean over seeds, whiskers = ± std.

    Rows are sorted best first and labelled on the axis; the RMSE axis spans the panel's values (it does
    not start at 0, so differences of a few thousandths stay visible: the printed values carry the scale).
    """
    rows = [(i, r) for i, r in enumerate(src.rows)]
    src.require(rows, ("dataset", "model", "rmse_mean"))
    datasets = _order(r["dataset"] for _, r in rows)
    per_panel = max(sum(1 for _, r in rows if r["dataset"] == ds) for ds in datasets)
    ncols = min(2, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = _new_figure(ncols, nrows=nrows, width=6.4, height=max(2.4, 0.28 * per_panel + 1.2))
    for ax in axes.ravel()[len(datasets) :]:
        ax.set_visible(False)
    for ax, ds in zip(axes.ravel(), datasets, strict=False):
        sel = sorted(
            (r for _, r in rows if r["dataset"] == ds and _num(r["rmse_mean"]) is not None),
            key=lambda r: r["rmse_mean"],
            reverse=True,  # best at the top
        )
        if not sel:  # every row of this dataset is NaN (a diverged run): say so instead of failing
            ax.text(0.5, 0.5, "no finite RMSE", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(ds)
            continue
        labels = [str(r["model"]) + (f" ({shown_preset(r)})" if shown_preset(r) else "") for r in sel]
        # The same model and preset run with another epoch budget (--epochs) is another row: say which.
        shared = {lab for lab in labels if labels.count(lab) > 1}
        labels = [
            f"{lab}, {r['epochs']} ep" if lab in shared and r.get("epochs") is not None else lab
            for lab, r in zip(labels, sel, strict=True)
        ]
        means = [r["rmse_mean"] for r in sel]
        stds = [_num(r.get("rmse_std")) or 0.0 for r in sel]
        y = np.arange(len(sel))
        for yi, m, sd, r in zip(y, means, stds, sel, strict=True):
            ax.errorbar(m, yi, xerr=sd, fmt="o", color=colors[str(r["model"])], capsize=3, markeredgecolor="black")
            ax.annotate(f"{m:.4f}", (m + sd, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=7)
        lo = min(m - sd for m, sd in zip(means, stds, strict=True))
        hi = max(m + sd for m, sd in zip(means, stds, strict=True))
        pad = (hi - lo) * 0.25 or abs(hi) * 0.01 or 0.01
        ax.set_xlim(lo - pad * 0.3, hi + pad)
        ax.grid(axis="x", alpha=0.3)
        seeds = sorted({len(r["seeds"]) for r in sel if isinstance(r.get("seeds"), list)})
        ax.set_title(f"{ds}" + (f" ({'/'.join(map(str, seeds))} seeds)" if seeds else ""))
        ax.set_xlabel("test RMSE (rating points, lower is better)")
    fig.suptitle("Rating accuracy: test RMSE per model (mean ± std over seeds)")
    return fig


def ranking_metrics_present(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [m for m in (*RANKING_METRICS, "avg_popularity@10") if any(_num(r.get(m)) is not None for r in rows)]


def ranking_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Recall@10 / NDCG@10 / coverage@10 (and any other @10 ranking metric present), bars per model."""
    rows = [(i, r) for i, r in enumerate(src.rows) if "model" in r]
    src.require(rows, ("model",))
    sel = [r for _, r in rows]
    metrics = ranking_metrics_present(sel)
    if not metrics:
        raise DataError("no ranking metric (recall@10, ndcg@10, coverage@10, ...) in any row", path=src.path)

    def place(r: dict[str, Any]) -> Any:
        return r.get("dataset") or r.get("split")

    places = _order(place(r) for r in sel)
    models = _order(str(r["model"]) for r in sel)
    # One bar per (model, dataset or split): per-seed rows (blog.json) are averaged, whiskers ± std.
    groups = _order((str(r["model"]), place(r)) for r in sel)
    # Two panels a row, so many models still give a figure one can read at page width.
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = _new_figure(ncols, nrows=nrows, width=max(3.2, 0.7 * len(groups) + 1.2), height=4.0)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        stats, labels, bar_colors = [], [], []
        for model, where in groups:
            vals = [_num(r.get(metric)) for r in sel if (str(r["model"]), place(r)) == (model, where)]
            vals = [v for v in vals if v is not None]
            if vals:
                stats.append(_mean_std(vals))
                labels.append(model + (f" ({where})" if len(places) > 1 else ""))
                bar_colors.append(colors[model])
        _bars(ax, labels, [m for m, _ in stats], [sd for _, sd in stats], bar_colors)
        ax.set_title(metric)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_xlabel("model")
    fig.suptitle(
        "Full-catalogue top-10 ranking per model, mean ± std over seeds\n"
        "(higher is better; avg. popularity: lower = less biased)"
    )
    _model_legend(fig, colors, models)
    return fig


# -- popularity -------------------------------------------------------------------------------------


def _popularity_ranks(pop: np.ndarray) -> np.ndarray:
    """Each item's 0-based popularity rank (0 = most rated; stable among ties)."""
    order = np.argsort(-pop, kind="stable")
    rank = np.empty(pop.size, dtype=np.int64)
    rank[order] = np.arange(pop.size)
    return rank


def _value_positions(pop: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rank position of popularity ``values`` on the catalogue curve (middle of a tie group)."""
    asc = np.sort(pop)
    greater = pop.size - np.searchsorted(asc, values, side="right")
    equal = np.searchsorted(asc, values, side="right") - np.searchsorted(asc, values, side="left")
    return greater + np.maximum(equal - 1, 0) / 2.0


def popularity_figure(src: ResultFile, colors: dict[str, Any], bins: int = 10) -> Figure:
    """The catalogue's long tail, and the share of each model's recommendations per popularity decile."""
    pop_raw = src.payload.get("catalogue_popularity")
    if not isinstance(pop_raw, list) or not pop_raw:
        raise DataError("needs a non-empty 'catalogue_popularity' list", path=src.path, field="catalogue_popularity")
    pop = np.asarray(pop_raw, dtype=float)
    n = pop.size
    bins = min(bins, n)
    rows = [(i, r) for i, r in enumerate(src.rows)]
    src.require(rows, ("model",))
    item_bin = _popularity_ranks(pop) * bins // n
    k = src.payload.get("k", 10)

    fig, axes = _new_figure(2, width=5.4, height=4.0)
    ax_curve, ax_share = axes[0]
    ax_curve.plot(np.arange(1, n + 1), np.sort(pop)[::-1], color="black", linewidth=1.5, label="catalogue")
    ax_curve.fill_between(np.arange(1, n + 1), np.sort(pop)[::-1], color="0.85")
    centers = (np.arange(bins) + 0.5) * 100.0 / bins
    catalogue_share = np.bincount(item_bin, weights=pop, minlength=bins) / max(pop.sum(), 1e-12) * 100
    ax_share.plot(centers, catalogue_share, "k--", marker="s", label="training ratings (catalogue)")
    models = []
    for i, r in rows:
        model = str(r["model"])
        if "recommendation_counts" in r:
            counts = np.asarray(r["recommendation_counts"], dtype=float)
            if counts.size != n:
                raise DataError(
                    f"row {i}: recommendation_counts has {counts.size} entries, catalogue_popularity {n}",
                    path=src.path,
                    field="recommendation_counts",
                )
            share = np.bincount(item_bin, weights=counts, minlength=bins)
            mean_pop = float((counts * pop).sum() / max(counts.sum(), 1e-12))
        elif "recommended_popularity" in r:
            values = np.asarray(r["recommended_popularity"], dtype=float)
            pos = _value_positions(pop, values)
            share = np.bincount(np.minimum((pos * bins // n).astype(np.int64), bins - 1), minlength=bins)
            mean_pop = float(values.mean()) if values.size else float("nan")
        elif "decile_share" in r:
            share = np.asarray(r["decile_share"], dtype=float)
            mean_pop = _num(r.get("mean_popularity")) or float("nan")
        else:
            raise DataError(
                f"row {i} ({model}) needs 'recommendation_counts', 'recommended_popularity' or 'decile_share'",
                path=src.path,
            )
        total = share.sum()
        if total <= 0:
            continue
        models.append(model)
        x = centers if share.size == bins else (np.arange(share.size) + 0.5) * 100.0 / share.size
        label = model + (
            f" (seed {r['seed']})" if "seed" in r and sum(str(q.get("model")) == model for _, q in rows) > 1 else ""
        )
        ax_share.plot(x, share / total * 100, marker="o", color=colors[model], label=label)
        if math.isfinite(mean_pop):
            ax_curve.axhline(mean_pop, color=colors[model], linestyle=":", linewidth=1.5, label=f"{model}: mean")
    ax_curve.set_title("Catalogue long tail (dotted: mean popularity of each model's top-K)")
    ax_curve.set_xlabel("item popularity rank (1 = most rated)")
    ax_curve.set_ylabel("training ratings per item (count)")
    ax_curve.set_xlim(1, n)
    ax_curve.legend(fontsize=8)
    ax_curve.grid(alpha=0.3)
    ax_share.set_title(f"Where top-{k} recommendations fall on the popularity curve")
    ax_share.set_xlabel("item popularity rank bucket (% of catalogue, most popular first)")
    ax_share.set_ylabel(f"share of top-{k} slots / of ratings (%)")
    ax_share.set_xticks(np.arange(bins + 1) * 100.0 / bins)
    ax_share.set_xlim(0, 100)
    ax_share.set_ylim(bottom=0)
    ax_share.legend(fontsize=8)
    ax_share.grid(alpha=0.3)
    fig.suptitle("Popularity bias: recommended items against the catalogue's popularity curve")
    return fig


# -- robustness -------------------------------------------------------------------------------------


def _group_stats(values: Sequence[float], stored_std: float | None) -> tuple[float, float]:
    """Mean ± std of a group; a group of one already-averaged row keeps the std stored with it."""
    if len(values) == 1 and stored_std is not None:
        return float(values[0]), stored_std
    return _mean_std(values)


def _line(
    ax, xs, groups: dict[Any, list[float]], color, label: str, marker: str = "o", stored: dict | None = None
) -> None:
    x = [v for v in xs if groups.get(v)]
    stats = [_group_stats(groups[v], (stored or {}).get(v)) for v in x]
    if not x:
        return
    ax.errorbar(
        x, [m for m, _ in stats], yerr=[s for _, s in stats], color=color, marker=marker, capsize=3, label=label
    )


def robustness_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """RMSE and NDCG@10 against the share of noisy training ratings, one column per noise kind."""
    rows = [(i, r) for i, r in enumerate(src.rows)]
    src.require(rows, ("noise", "kind", "model"))
    metrics = [m for m in ("rmse", "ndcg@10") if any(_num(r.get(m)) is not None for _, r in rows)]
    if not metrics:
        raise DataError("no 'rmse' or 'ndcg@10' values in any row", path=src.path)
    kinds = _order(r["kind"] for _, r in rows if r["kind"] in ("fake", "flip") or _num(r["noise"]))
    # Clean runs (noise 0) may carry kind "none"/null: they are the starting point of every panel.
    clean = [r for _, r in rows if not _num(r["noise"]) and r["kind"] not in kinds]
    # Percent of the training ratings, as the robustness study writes it; a file may say it holds shares.
    scale = 100.0 if src.payload.get("noise_unit") == "share" else 1.0
    models = _order(str(r["model"]) for _, r in rows)
    fig, axes = _new_figure(max(1, len(kinds)), nrows=len(metrics), width=4.6, height=3.3)
    for col, kind in enumerate(kinds or ["all"]):
        sel = [r for _, r in rows if r["kind"] == kind] + clean
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            for model in models:
                groups: dict[float, list[float]] = {}
                stored: dict[float, float | None] = {}
                for r in sel:
                    v, x = _num(r.get(metric)), _num(r["noise"])
                    if str(r["model"]) == model and v is not None and x is not None:
                        groups.setdefault(x * scale, []).append(v)
                        stored[x * scale] = _num(r.get(f"{metric}_std"))
                _line(ax, sorted(groups), groups, colors[model], model, _marker(models, model), stored)
            ax.set_title(f"{metric.upper() if metric == 'rmse' else metric} — {NOISE_TITLES.get(kind, kind)}")
            ax.set_xlabel("noise share (% of training ratings)")
            ax.set_ylabel(METRIC_LABELS[metric])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Robustness to noisy training ratings (test metrics; mean ± std over seeds)")
    return fig


# -- cold start -------------------------------------------------------------------------------------


def _bucket_key(label: str) -> tuple[float, str]:
    m = re.search(r"\d+", label)
    return (float(m.group()) if m else math.inf, label)


def _by_split(rows: Sequence[tuple[int, dict[str, Any]]]) -> list[tuple[str | None, list[tuple[int, dict]]]]:
    """Rows grouped by their ``split`` (or ``dataset``), in first-seen order; one group when neither is recorded."""

    def where(r: dict[str, Any]) -> str | None:
        return r.get("split") or r.get("dataset")

    return [(s, [(i, r) for i, r in rows if where(r) == s]) for s in _order(where(r) for _, r in rows)]


def cold_start_bucket_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Test metrics of users grouped by how many training ratings they have; one row of panels per split."""
    rows = [(i, r) for i, r in enumerate(src.rows) if r.get("study") == "bucket"]
    if not rows:
        raise DataError("no rows with study 'bucket'", path=src.path, field="study")
    src.require(rows, ("bucket", "model"))
    metrics = [m for m in ("rmse", "ndcg@10") if any(_num(r.get(m)) is not None for _, r in rows)]
    if not metrics:
        raise DataError("bucket rows have no 'rmse' or 'ndcg@10'", path=src.path)
    models = _order(str(r["model"]) for _, r in rows)
    splits = _by_split(rows)
    n_buckets = len(_order(str(r["bucket"]) for _, r in rows))
    fig, axes = _new_figure(
        len(metrics), nrows=len(splits), width=max(4.5, 0.35 * n_buckets * len(models) + 2), height=3.8
    )
    width = 0.8 / len(models)
    for row, (split, split_rows) in enumerate(splits):
        # A bucket no test user falls in (num_users 0) has nothing to draw.
        split_rows = [(i, r) for i, r in split_rows if r.get("num_users") != 0]
        buckets = sorted(_order(str(r["bucket"]) for _, r in split_rows), key=_bucket_key)
        users = {str(r["bucket"]): r.get("num_users") for _, r in split_rows if r.get("num_users") is not None}
        for ax, metric in zip(axes[row], metrics, strict=True):
            x = np.arange(len(buckets))
            for j, model in enumerate(models):
                vals = []
                for b in buckets:
                    picked = [r for _, r in split_rows if str(r["bucket"]) == b and str(r["model"]) == model]
                    picked = [r for r in picked if _num(r.get(metric)) is not None]
                    vs = [_num(r.get(metric)) for r in picked]
                    stored = _num(picked[0].get(f"{metric}_std")) if len(picked) == 1 else None
                    vals.append(_group_stats(vs, stored) if vs else (np.nan, 0.0))
                ax.bar(
                    x - 0.4 + width * (j + 0.5),
                    [m for m, _ in vals],
                    width,
                    yerr=[s for _, s in vals],
                    color=colors[model],
                    edgecolor="black",
                    linewidth=0.5,
                    capsize=2,
                    label=model,
                )
            ax.set_xticks(x, [f"{b}\n({users[b]} users)" if b in users else b for b in buckets], fontsize=8)
            ax.set_xlabel("training ratings per test user (activity bucket)")
            ax.set_ylabel(METRIC_LABELS[metric])
            where = f"{split}: " if split else ""
            ax.set_title(f"{where}{'RMSE' if metric == 'rmse' else metric} by user activity", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    _model_legend(fig, colors, models)
    fig.suptitle("Cold start: test metrics of users with few training ratings")
    return fig


def inductive_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Users held out of training entirely: metrics against the number k of ratings they give; a row per split."""
    rows = [(i, r) for i, r in enumerate(src.rows) if r.get("study") == "inductive"]
    if not rows:
        raise DataError("no rows with study 'inductive'", path=src.path, field="study")
    src.require(rows, ("k", "model"))
    metrics = [m for m in ("rmse", "ndcg@10") if any(_num(r.get(m)) is not None for _, r in rows)]
    if not metrics:
        raise DataError("inductive rows have no 'rmse' or 'ndcg@10'", path=src.path)
    models = _order(str(r["model"]) for _, r in rows)
    splits = _by_split(rows)
    fig, axes = _new_figure(len(metrics), nrows=len(splits), width=4.8, height=3.6)
    for row, (split, split_rows) in enumerate(splits):
        for ax, metric in zip(axes[row], metrics, strict=True):
            for model in models:
                groups: dict[float, list[float]] = {}
                stored: dict[float, float | None] = {}
                for _, r in split_rows:
                    v, k = _num(r.get(metric)), _num(r["k"])
                    if str(r["model"]) == model and v is not None and k is not None:
                        groups.setdefault(k, []).append(v)
                        stored[k] = _num(r.get(f"{metric}_std"))
                _line(ax, sorted(groups), groups, colors[model], model, _marker(models, model), stored)
            ax.set_xlabel("ratings given by each held-out user (k)")
            ax.set_ylabel(METRIC_LABELS[metric])
            where = f"{split}: " if split else ""
            ax.set_title(f"{where}{'RMSE' if metric == 'rmse' else metric} of new users", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Inductive cold start: unseen users scored from k ratings\n(no retraining)", fontsize=11)
    return fig


# -- training curves --------------------------------------------------------------------------------


def training_curve_rows(src: ResultFile) -> list[dict[str, Any]]:
    """Per-epoch rows ``{model, dataset, seed, preset, epochs_budget, epoch, train_loss, valid_rmse}`` from any
    supported layout (``preset`` and ``epochs_budget`` as a results file's runs record them, else None).

    Layouts: ``training_curves.json`` rows; a ``*history*.json`` holding a list of
    epoch records or ``{"history": [...], "model": ..., "dataset": ...}``; a
    results file whose ``runs`` carry ``history``.
    """
    out: list[dict[str, Any]] = []
    default_model = src.path.stem.replace("history", "").strip("_-. ") or "model"

    def add(
        history: Any, model: Any, dataset: Any, seed: Any, where: str, preset: Any = None, budget: Any = None
    ) -> None:
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise DataError(f"{where}: 'history' must be a list of epoch objects", path=src.path, field="history")
        for j, h in enumerate(history):
            if "epoch" not in h:
                raise DataError(f"{where}: epoch record {j} has no 'epoch'", path=src.path, field="epoch")
            out.append(
                {
                    "model": str(model),
                    "dataset": dataset,
                    "seed": seed,
                    "preset": preset,
                    "epochs_budget": budget,
                    "epoch": h["epoch"],
                    "train_loss": h.get("train_loss"),
                    "valid_rmse": h.get("valid_rmse"),
                }
            )

    p = src.payload
    if "history" in p:
        add(p["history"], p.get("model", default_model), p.get("dataset"), p.get("seed"), "top level")
    for i, run in enumerate(p.get("runs", []) if isinstance(p.get("runs"), list) else []):
        if isinstance(run, dict) and "history" in run:
            # A run trained with --set overrides is its own curve (model_label), not merged with the plain one.
            label = model_label(run) if "model" in run else default_model
            # So are runs of one model and seed at another preset or epoch budget (a line each).
            add(
                run["history"],
                label,
                run.get("dataset"),
                run.get("seed"),
                f"run {i}",
                run.get("preset"),
                run.get("epochs"),
            )
    epoch_rows = [(i, r) for i, r in enumerate(src.rows) if "epoch" in r]
    if epoch_rows and not any("history" in r for r in src.rows):
        src.require(epoch_rows, ("epoch",))
        for _, r in epoch_rows:
            out.append(
                {
                    "model": str(r.get("model", default_model)),
                    "dataset": r.get("dataset"),
                    "seed": r.get("seed"),
                    "epoch": r["epoch"],
                    "train_loss": r.get("train_loss"),
                    "valid_rmse": r.get("valid_rmse"),
                }
            )
    for i, r in enumerate(src.rows):
        if "history" in r:
            add(r["history"], r.get("model", default_model), r.get("dataset"), r.get("seed"), f"row {i}")
    return out


def _curve_key(row: dict[str, Any]) -> tuple:
    """What makes one line: model, seed, preset and epoch budget."""
    return (row["model"], row["seed"], row.get("preset"), row.get("epochs_budget"))


def training_curves_figure(rows: Sequence[dict[str, Any]], colors: dict[str, Any]) -> Figure:
    """Training loss and validation RMSE per epoch; one row of panels per dataset, a line per run.

    A model's seeds share its colour; one legend below the panels names each model once (a legend per
    panel listing every seed grew taller than the panels once a results file held dozens of runs).
    """
    datasets = _order(r["dataset"] for r in rows)
    styles = {"cpu": "-", "paper": "--"}  # any other preset: dotted
    fig, axes = _new_figure(2, nrows=len(datasets), width=5.0, height=3.2)
    for row, ds in enumerate(datasets):
        sel = [r for r in rows if r["dataset"] == ds]
        runs = _order(_curve_key(r) for r in sel)
        for col, (metric, label) in enumerate(
            [("train_loss", "training loss (total objective)"), ("valid_rmse", "validation RMSE (rating points)")]
        ):
            ax = axes[row, col]
            for key in runs:
                model, preset = key[0], key[2]
                pts = sorted(
                    (r["epoch"], _num(r[metric]))
                    for r in sel
                    if _curve_key(r) == key and _num(r.get(metric)) is not None
                )
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                style = styles.get(preset, ":")
                ax.plot(xs, ys, color=colors[model], marker=".", alpha=0.9, linewidth=1, linestyle=style)
                if metric == "valid_rmse":
                    best = int(np.argmin(ys))
                    ax.plot(xs[best], ys[best], "o", color=colors[model], markersize=8, markerfacecolor="none")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(f"{ds or 'dataset not recorded'}: {label.split(' (')[0]}")
            ax.grid(alpha=0.3)
    _model_legend(fig, colors, _order(r["model"] for r in rows), lines=True, ncols=3, fontsize=7)
    fig.suptitle(
        "Training curves, one line per run (model, preset, epoch budget and seed); colour: model;\n"
        "line: solid cpu preset, dashed paper, dotted other; circles: epoch kept (best validation RMSE)"
    )
    return fig


# -- τ sensitivity ----------------------------------------------------------------------------------


def tau_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Validation and test RMSE, Recall@10 and coverage@10 against the InfoNCE temperature τ."""
    rows = [(i, r) for i, r in enumerate(src.rows)]
    src.require(rows, ("tau",))
    taus = sorted({float(r["tau"]) for _, r in rows if _num(r["tau"])})
    if not taus:
        raise DataError("no positive 'tau' values", path=src.path, field="tau")

    def groups(metric: str) -> dict[float, list[float]]:
        g: dict[float, list[float]] = {}
        for _, r in rows:
            v = _num(r.get(metric))
            if v is not None and _num(r["tau"]):
                g.setdefault(float(r["tau"]), []).append(v)
        return g

    panels = [
        ("RMSE", "RMSE (rating points)", [("valid_rmse", "validation (selects τ)", "o"), ("rmse", "test", "s")]),
        ("Recall@10 (test)", "Recall@10 (0–1)", [("recall@10", "test", "s")]),
        ("Catalogue coverage@10 (test)", "coverage@10 (share of items)", [("coverage@10", "test", "s")]),
    ]
    panels = [p for p in panels if any(groups(m) for m, _, _ in p[2])]
    fig, axes = _new_figure(len(panels), width=4.3, height=3.6)
    valid = groups("valid_rmse")
    chosen = min(valid, key=lambda t: _mean_std(valid[t])[0]) if valid else None
    shades = {"valid_rmse": "tab:blue", "rmse": "tab:red", "recall@10": "tab:green", "coverage@10": "tab:purple"}
    for ax, (title, ylabel, series) in zip(axes[0], panels, strict=True):
        for metric, label, marker in series:
            g = groups(metric)
            _line(ax, sorted(g), g, shades[metric], label, marker)
        if chosen is not None:
            ax.axvline(chosen, color="0.4", linestyle=":", label=f"τ = {chosen:g} (best validation)")
        ax.set_xscale("log")
        ax.set_xticks(taus, [f"{t:g}" for t in taus])
        ax.minorticks_off()
        ax.set_xlabel("InfoNCE temperature τ (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    model = src.payload.get("study", {}).get("model") if isinstance(src.payload.get("study"), dict) else None
    fig.suptitle(f"{model or 'MCCL'}: sensitivity to τ (mean ± std over seeds; test is reported, not used)")
    return fig


# -- sweeps -----------------------------------------------------------------------------------------


def sweep_figure(src: ResultFile, colors: dict[str, Any]) -> Figure:
    """Optuna study: validation RMSE per trial with the running best, and against each searched parameter."""
    rows = [(i, r) for i, r in enumerate(src.rows)]
    src.require(rows, ("trial", "value"))
    done = [r for _, r in rows if _num(r["value"]) is not None]
    space = src.payload.get("search_space", {}) if isinstance(src.payload.get("search_space"), dict) else {}
    params = list(space) or _order(p for r in done for p in (r.get("params") or {}))
    params = [p for p in params if any(p in (r.get("params") or {}) for r in done)]
    fig, axes = _new_figure(1 + len(params), width=3.6, height=3.4)
    ax = axes[0, 0]
    xs = [r["trial"] for r in done]
    ys = [r["value"] for r in done]
    ax.plot(xs, ys, "o", color="tab:blue", alpha=0.7, label="trial")
    if ys:
        ax.step(xs, np.minimum.accumulate(ys), where="post", color="tab:red", label="best so far")
    failed = [r["trial"] for _, r in rows if r.get("state") not in (None, "COMPLETE")]
    for t in failed:
        ax.axvline(t, color="0.7", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("best validation RMSE (rating points)")
    ax.set_title("Optimisation history" + (f" ({len(failed)} not complete: grey)" if failed else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    best = src.payload.get("best") if isinstance(src.payload.get("best"), dict) else None
    for ax, p in zip(axes[0, 1:], params, strict=True):
        pts = [(r["params"][p], r["value"]) for r in done if p in (r.get("params") or {})]
        if pts:
            px, py = zip(*pts, strict=True)
            ax.plot(px, py, "o", color="tab:blue", alpha=0.7, label="trial")
        if best and p in best.get("params", {}):
            ax.plot(best["params"][p], best["value"], "*", color="tab:red", markersize=14, label="best")
        desc = space.get(p, {})
        if desc.get("type") == "log-uniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif desc.get("type") == "categorical" and all(_num(c) and c > 0 for c in desc.get("choices", [])):
            ax.set_xscale("log")
            ax.set_xticks(desc["choices"], [str(c) for c in desc["choices"]])
            ax.minorticks_off()
        ax.set_xlabel(p + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("best validation RMSE")
        ax.set_title(f"RMSE vs {p}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    study = src.payload.get("study", {}) if isinstance(src.payload.get("study"), dict) else {}
    name = " / ".join(str(study[k]) for k in ("name", "model", "dataset") if study.get(k))
    fig.suptitle(f"Hyper-parameter sweep{' ' + name if name else ''} (objective: best validation RMSE)")
    return fig
