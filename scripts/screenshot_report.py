"""Render a report.html in headless Chromium and save a PNG screenshot (to look at it as a person would).

    python scripts/screenshot_report.py reports/burst-.../report.html docs/report.png [--width 1400] [--height 3000]

Needs Debian's ``chromium`` (``apt-get install -y chromium``) or another Chromium/Chrome on PATH. Plotly
draws with JavaScript, so the page gets a virtual-time budget to finish before the shot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(report: Path, out: Path, width: int = 1400, height: int = 3000, scale: float = 1.0,
               budget_ms: int = 10_000, browser: str | None = None) -> Path:
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found on PATH (Debian: apt-get install -y chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memslo-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--force-device-scale-factor={scale}", f"--virtual-time-budget={budget_ms}",
               f"--screenshot={out.resolve()}", report.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--scale", type=float, default=1.0, help="device scale factor (0.5 halves the pixels)")
    args = p.parse_args(argv)
    if not args.report.exists():
        print(f"{args.report}: not found", file=sys.stderr)
        return 2
    try:
        path = screenshot(args.report, args.out, args.width, args.height, args.scale)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
