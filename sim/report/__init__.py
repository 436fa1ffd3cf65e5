"""The HTML report of a comparison (plotly): one module per figure group, the verdict in its own module.

    from sim.report import ReportData, write_report
    write_report("report.html", ReportData.from_scenario(loaded, runs, verdict_lines))
"""

from __future__ import annotations

from pathlib import Path

from sim.report.data import PolicyData, ReportData
from sim.report.verdict import verdict


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render the report and write it as one self-contained HTML file."""
    from sim.report.html import render  # plotly is imported only when a report is written

    path = Path(path)
    path.write_text(render(data), encoding="utf-8")
    return path


__all__ = ["PolicyData", "ReportData", "verdict", "write_report"]
