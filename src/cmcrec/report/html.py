"""Build the report: find the result files, draw their figures, write ``index.html`` atomically.

The output directory is built in a temporary sibling and moved into place in one
rename (:func:`cmcrec.artifacts.atomic_directory`), so a reader sees the old
report or the new one, never half of each. Because the whole directory is
replaced, ``build_report`` refuses to write over a directory that is not empty
and is not a report it wrote before.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcrec.artifacts import atomic_directory
from cmcrec.benchmarks.common import now
from cmcrec.errors import CmcrecError
from cmcrec.report import plots
from cmcrec.report.plots import ResultFile

GENERATOR = "cmcrec report"


@dataclass
class Section:
    """One figure of the report: where its data comes from and how to read it."""

    slug: str
    title: str
    source: str
    how_to_read: str
    build: Callable[[ResultFile, dict[str, Any]], Any]
    table: tuple[str, ...] = ()
    study: str | None = None


SECTIONS = [
    Section(
        "accuracy",
        "Rating accuracy (test RMSE)",
        "accuracy.json",
        "One panel per dataset, best at the top. Dots are the mean test RMSE over seeds, whiskers ± one "
        "standard deviation; lower is better. The axis spans each panel's values (it does not start at 0).",
        plots.accuracy_figure,
        ("dataset", "model", "preset", "epochs", "rmse_mean", "rmse_std", "mae_mean", "seeds"),
    ),
    Section(
        "ranking",
        "Top-10 ranking, coverage and popularity",
        "blog.json",
        "Full-catalogue ranking of unseen items for every test user. Recall@10 and NDCG@10: higher is better. "
        "Coverage@10 is the share of the catalogue that appears in at least one user's top 10 (higher = less "
        "concentrated). Average popularity of recommended items: lower = less popularity bias.",
        plots.ranking_figure,
        ("dataset", "model", "rmse", "recall@10", "ndcg@10", "coverage@10", "avg_popularity@10"),
    ),
    Section(
        "popularity",
        "Popularity bias: recommendations on the long tail",
        "popularity.json",
        "Left: training ratings per item, items sorted from most to least rated (the long tail); a dotted line "
        "per model marks the mean popularity of the items it recommends. Right: share of all top-K slots that "
        "go to each tenth of the catalogue (most popular tenth first), against the share of training ratings "
        "those items hold (dashed). A curve below the dashed one in the first buckets and above it in the tail "
        "recommends less popularity-biased lists than the data itself.",
        plots.popularity_figure,
    ),
    Section(
        "robustness",
        "Robustness to noisy training ratings",
        "robustness.json",
        "Test RMSE (top, lower is better) and NDCG@10 (bottom, higher is better) against the share of training "
        "ratings that are noise: fake ratings injected (random user, item, level) or real ratings flipped to "
        "another level. A flatter curve is a more robust model.",
        plots.robustness_figure,
    ),
    Section(
        "cold_start_buckets",
        "Cold start: users by activity",
        "cold_start.json",
        "Test users grouped by the number of training ratings they have (users per bucket under the labels). "
        "The left buckets are the cold-start users.",
        plots.cold_start_bucket_figure,
        study="bucket",
    ),
    Section(
        "cold_start_inductive",
        "Cold start: new users without retraining",
        "cold_start.json",
        "Users held out of training entirely, scored from k ratings they give (subgraph models build their "
        "subgraphs from these ratings; id-based models fold the user in). Lower RMSE at small k is better.",
        plots.inductive_figure,
        study="inductive",
    ),
    Section(
        "tau",
        "Sensitivity to the InfoNCE temperature τ",
        "tau.json",
        "Each τ trained with every other parameter fixed, over seeds (mean ± std). The dotted line marks the τ "
        "with the best validation RMSE, which is how τ should be chosen; the test curves are reported only.",
        plots.tau_figure,
    ),
]
TRAINING_SECTION = (
    "training_curves",
    "Training curves",
    "Training loss (left) and validation RMSE (right) per epoch. The validation share is carved from the training "
    "ratings; the circled point is the epoch the trainer kept. A validation curve that turns up while the loss "
    "keeps falling is overfitting.",
)
SWEEP_HOW_TO_READ = (
    "Left: the objective (best validation RMSE of each trial; lower is better) by trial number, with the best so "
    "far. Other panels: the objective against each searched parameter; the star is the best trial. The test "
    "split plays no part in these numbers."
)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        index: path of ``index.html``.
        figures: PNG file names, in page order.
        missing: one note per figure that could not be drawn because its source file is absent.
    """

    index: Path
    figures: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.index), "figures": self.figures, "missing": self.missing}


def _check_out(out_dir: Path, results_dir: Path) -> None:
    if out_dir.resolve() == results_dir.resolve():
        raise CmcrecError(f"--out {out_dir}: must differ from --results (the report replaces its directory)")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CmcrecError(f"--out {out_dir}: exists and is not a directory")
        index = out_dir / "index.html"
        ours = index.is_file() and GENERATOR in index.read_text(encoding="utf-8", errors="replace")[:2000]
        if any(out_dir.iterdir()) and not ours:
            raise CmcrecError(
                f"--out {out_dir}: directory is not empty and holds no cmcrec report; it would be replaced "
                "as a whole, so choose a new or empty directory"
            )


def _ranking_source(loaded: dict[str, ResultFile]) -> ResultFile | None:
    """``blog.json``, else the first other results file whose rows carry a model and a ranking metric."""
    if "blog.json" in loaded:
        return loaded["blog.json"]
    for name, src in sorted(loaded.items()):
        rows = [r for r in src.rows if "model" in r]
        if name not in ("tau.json", "robustness.json", "cold_start.json") and plots.ranking_metrics_present(rows):
            return src
    return None


def _provenance(src: ResultFile) -> str:
    parts = [f"Source: <code>{html.escape(src.name)}</code>"]
    commands = src.commands
    if not commands:
        parts.append("command: not recorded in the file")
    elif len(commands) == 1:
        parts.append(f"command: <code>{html.escape(commands[0])}</code>")
    else:  # a study file gathering runs of several invocations: name them all
        listed = "<br>".join(f"<code>{html.escape(c)}</code>" for c in commands)
        parts.append(f"<details><summary>{len(commands)} commands</summary>{listed}</details>")
    if isinstance(src.payload.get("date"), str):
        parts.append(f"date: {html.escape(src.payload['date'])}")
    m = src.payload.get("machine")
    if isinstance(m, dict):
        where = ", ".join(str(m[k]) for k in ("gpu", "cpu") if m.get(k))
        if where:
            parts.append(f"machine: {html.escape(where)}")
    return " · ".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    if not rows or not cols:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(png: str, title: str, how: str, caption: str, extra: str = "") -> tuple[str, str, str]:
    """``(anchor, title, html)`` of one figure's section."""
    anchor = png.removesuffix(".png")
    body = (
        f'<section id="{html.escape(anchor)}"><h2>{html.escape(title)}</h2>'
        f'<figure><img src="{html.escape(png)}" alt="{html.escape(title)}">'
        f"<figcaption>{caption}</figcaption></figure>"
        f'<p class="how">{html.escape(how)}</p>{extra}</section>'
    )
    return anchor, title, body


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")
    fig.clear()


def build_report(results_dir: str | Path, out_dir: str | Path, title: str = "cmcrec results") -> ReportResult:
    """Draw every figure whose results file exists in ``results_dir``; write ``out_dir/index.html`` and PNGs.

    Args:
        results_dir: folder of results JSON files (``accuracy.json``, ``blog.json``, ``popularity.json``,
            ``robustness.json``, ``cold_start.json``, ``training_curves.json``, ``*history*.json``,
            ``tau.json``, ``sweep_*.json``).
        out_dir: the report folder; replaced as a whole (it must be new, empty or an earlier report).
        title: the page title.

    Raises:
        CmcrecError: ``results_dir`` is missing, or ``out_dir`` is unsafe to replace.
        DataError: a results file is not valid JSON or lacks a field its figure needs (names the file).
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise CmcrecError(f"--results {results_dir}: no such directory")
    _check_out(out_dir, results_dir)
    loaded = {p.name: plots.load_result(p) for p in sorted(results_dir.glob("*.json")) if p.is_file()}

    curve_sources = [
        src
        for name, src in loaded.items()
        if name == "training_curves.json" or "history" in name or name == "accuracy.json"
    ]
    curves: list[dict[str, Any]] = []
    curve_files: list[ResultFile] = []
    for src in curve_sources:
        found = plots.training_curve_rows(src)
        if found:
            curves += found
            curve_files.append(src)
    models = {str(r["model"]) for src in loaded.values() for r in src.rows if "model" in r}
    models |= {r["model"] for r in curves}
    colors = plots.palette(models)

    result = ReportResult(index=out_dir / "index.html")
    sections: list[tuple[str, str, str]] = []
    notes: list[str] = []
    with atomic_directory(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a report is meant to be read (and served)
        for sec in SECTIONS:
            src = _ranking_source(loaded) if sec.slug == "ranking" else loaded.get(sec.source)
            if src is None:
                notes.append(f"{sec.title}: {sec.source} not found in {results_dir}")
                continue
            if sec.study is not None and not any(r.get("study") == sec.study for r in src.rows):
                notes.append(f"{sec.title}: {src.name} has no rows of this study")
                continue
            png = f"{sec.slug}.png"
            _save(sec.build(src, colors), tmp / png)
            result.figures.append(png)
            extra = _table(src.rows, sec.table) if sec.table else ""
            if sec.slug == "tau" and isinstance(src.payload.get("summary"), list):
                extra = _table(
                    src.payload["summary"],
                    ("tau", "valid_rmse_mean", "rmse_mean", "recall@10_mean", "coverage@10_mean", "seeds"),
                )
            sections.append(_figure_html(png, sec.title, sec.how_to_read, _provenance(src), extra))

        slug, heading, how = TRAINING_SECTION
        if curves:
            png = f"{slug}.png"
            _save(plots.training_curves_figure(curves, colors), tmp / png)
            result.figures.append(png)
            caption = "<br>".join(_provenance(s) for s in curve_files)
            sections.append(_figure_html(png, heading, how, caption))
        else:
            notes.append(
                f"{heading}: no training_curves.json, *history*.json, or accuracy.json runs with 'history' "
                f"in {results_dir}"
            )

        sweeps = [src for name, src in loaded.items() if name.startswith("sweep")]
        for src in sweeps:
            png = f"{src.path.stem}.png"
            _save(plots.sweep_figure(src, colors), tmp / png)
            result.figures.append(png)
            best = src.payload.get("best") if isinstance(src.payload.get("best"), dict) else None
            extra = ""
            if best:
                extra = _table(
                    [{"trial": best.get("trial"), "value": best.get("value")} | best.get("params", {})],
                    tuple(["trial", "value", *best.get("params", {})]),
                )
            tb = src.payload.get("test_best")
            if isinstance(tb, dict):
                extra += (
                    f"<p>Test metrics of the best configuration, {html.escape(str(tb.get('note', 'after selection')))}"
                    f": RMSE {_fmt(tb.get('rmse'))}, Recall@10 {_fmt(tb.get('recall@10'))}, "
                    f"coverage@10 {_fmt(tb.get('coverage@10'))}.</p>"
                )
            sections.append(_figure_html(png, f"Sweep: {src.path.stem}", SWEEP_HOW_TO_READ, _provenance(src), extra))
        if not sweeps:
            notes.append(f"Hyper-parameter sweeps: no sweep_*.json in {results_dir}")

        result.missing = notes
        (tmp / "index.html").write_text(_page(title, results_dir, sections, notes), encoding="utf-8")
    return result


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
figure { margin: 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; margin-top: 0.3em; }
code { background: #f4f4f4; padding: 0 0.2em; } .how { max-width: 60em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
.missing { background: #fff8e0; border: 1px solid #e6c200; padding: 0.5em 1em; }
"""


def _page(title: str, results_dir: Path, sections: list[tuple[str, str, str]], notes: list[str]) -> str:
    toc = "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t, _ in sections)
    missing = ""
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        missing = f'<div class="missing"><strong>Not shown (source missing):</strong><ul>{items}</ul></div>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Built {html.escape(now())} from <code>{html.escape(str(results_dir))}</code>. "
        "Every figure names the results file it was drawn from and the command that produced it. "
        "See <code>docs/reports.md</code> for the file formats.</p>"
        f"{missing}<ul>{toc}</ul>{''.join(body for _, _, body in sections)}</body></html>\n"
    )
