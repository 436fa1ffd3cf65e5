"""Headlines as distributions: the median of a sweep with its 95 % bootstrap interval, the curve over the
knob, and one self-contained page of every headline's figure.

A headline is never one lucky point: a sweep runs the knob that matters over its range and several seeds,
and the headline is the median over all of it with a percentile bootstrap interval
(`scipy.stats.bootstrap`, resampling the sweep's points). `curve` draws the whole curve (median per knob
value with its interval, every point faint behind it); `write_page` puts every figure saved by the sweep
scripts (JSON, one per headline, in one folder) on one HTML page with plotly.js inlined once.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from scipy.stats import bootstrap

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def median_ci(values: Iterable[float], confidence: float = 0.95, n_resamples: int = 4000,
              seed: int = 0) -> tuple[float, float, float]:
    """Median and its percentile-bootstrap interval over the finite values (NaN if there are none; the
    interval is the point itself when all values agree or there is only one)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    med = float(np.median(x))
    if len(x) == 1 or np.all(x == x[0]):
        return med, med, med
    res = bootstrap((x,), np.median, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return med, float(res.confidence_interval.low), float(res.confidence_interval.high)


def fmt_ci(m: tuple[float, float, float], fmt: str = "{:.1f}", unit: str = "") -> str:
    """``median [low, high]`` with a unit after each number (e.g. ``4.3x [3.1x, 6.0x]``)."""
    med, lo, hi = m
    if not np.isfinite(med):
        return "n/a"
    f = lambda v: fmt.format(v) + unit
    return f"{f(med)} [{f(lo)}, {f(hi)}]"


def by_knob(df: pd.DataFrame, knob: str, value: str, groups: Sequence[str] = ()) -> pd.DataFrame:
    """Median and interval of ``value`` per knob setting (and per group): columns knob, groups..., median,
    lo, hi, n."""
    rows = []
    keys = [*groups, knob]
    for key, part in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        med, lo, hi = median_ci(part[value])
        rows.append({**dict(zip(keys, key)), "median": med, "lo": lo, "hi": hi, "n": int(part[value].notna().sum())})
    return pd.DataFrame(rows)


def curve(df: pd.DataFrame, knob: str, value: str, group: str | None, title: str, x_title: str, y_title: str,
          log_y: bool = False, ref: float | None = None, ref_label: str = "") -> go.Figure:
    """The whole curve: per group, the median over seeds at each knob value with its 95 % interval (error
    bars), and every point of the sweep faint behind it. ``ref``: a horizontal reference line."""
    fig = go.Figure()
    names = [None] if group is None else list(dict.fromkeys(df[group]))
    for k, name in enumerate(names):
        part = df if name is None else df[df[group] == name]
        c = COLORS[k % len(COLORS)]
        s = by_knob(part, knob, value)
        fig.add_trace(go.Scatter(x=part[knob], y=part[value], mode="markers", marker=dict(color=c, size=5, opacity=0.3),
                                 name=f"{name or value} (each seed)", legendgroup=str(name), showlegend=False,
                                 hovertemplate=f"{knob} %{{x}}<br>{value} %{{y:.3g}}<extra>{name or ''}</extra>"))
        fig.add_trace(go.Scatter(x=s[knob], y=s["median"], mode="lines+markers", line=dict(color=c, width=2),
                                 name=str(name or value), legendgroup=str(name),
                                 error_y=dict(type="data", symmetric=False, array=s["hi"] - s["median"],
                                              arrayminus=s["median"] - s["lo"], color=c, thickness=1.2),
                                 hovertemplate=f"{knob} %{{x}}<br>median %{{y:.3g}}<extra>{name or ''}</extra>"))
    if ref is not None:
        fig.add_hline(y=ref, line=dict(color="#888", dash="dot"), annotation_text=ref_label)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white",
                      height=430, margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.18))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def save_figure(fig: go.Figure, folder: Path, key: str, caption: str, order: int = 50) -> Path:
    """One headline's figure as JSON (small, diffable) with its caption, for `write_page`."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{key}.json"
    p.write_text(json.dumps({"key": key, "caption": caption, "order": order, "figure": json.loads(fig.to_json())},
                            sort_keys=True))
    return p


def write_page(folder: Path, out: Path, title: str = "memslo headlines as distributions") -> Path:
    """Every figure saved in ``folder`` on one self-contained page (plotly.js inlined once)."""
    docs = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda d: (d["order"], d["key"]))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;"
             "max-width:1200px;color:#222} h2{font-size:18px;margin:28px 0 2px 0;border-bottom:1px solid #ddd}"
             " .caption{color:#555;font-size:13px;margin:2px 0 6px 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='caption'>Each headline of the README is the median of a "
             "sweep with its 95 % bootstrap interval; each curve shows the median per knob value (bars: 95 % "
             "interval over seeds) and every simulated point faintly. Regenerate with the scripts named in "
             "each caption.</p>"]
    first = True
    for d in docs:
        fig = go.Figure(d["figure"])
        parts.append(f"<h2 id='{html.escape(d['key'])}'>{html.escape(fig.layout.title.text or d['key'])}</h2>")
        parts.append(f"<p class='caption'>{html.escape(d['caption'])}</p>")
        parts.append(pio.to_html(fig, include_plotlyjs=first, full_html=False, div_id=f"fig-{d['key']}"))
        first = False
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
