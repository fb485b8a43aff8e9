"""Reports: PNG plots and one HTML page built from the result files in a directory.

``build_report(results_dir, out_dir)`` reads whichever of the known result files
exist (see ``docs/reports.md`` for their schemas), draws one figure per study,
and writes ``index.html`` plus the PNGs atomically. Missing files are listed on
the page; malformed ones raise :class:`~cmcrec.errors.DataError` naming the file.
"""

from __future__ import annotations

from cmcrec.report.html import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
