"""calibration.report writes one self-contained HTML page."""

from calibration.measurements import vidur_files
from calibration.report import main as report_main


def test_report_is_self_contained(tmp_path):
    out = tmp_path / "r.html"
    (f7,) = [p for p in vidur_files("h100") if "7b" in p.name]
    report_main([str(f7), "--out", str(out)])
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "h100-sxm" in page
    assert "<script src=" not in page and len(page) > 1_000_000  # plotly.js is inlined: opens offline
    assert page.count("Plotly.newPlot") == 2  # measured vs predicted, residuals (one model: no leave-one-out)
    assert "compute_efficiency" in page and "default (no data for it)" in page
