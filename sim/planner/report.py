"""``plan.html``: the capacity answer in words at the top, then per model the cost/throughput Pareto plot,
the max sustainable rate of every configuration, the price per million output tokens, and the tables.
Built from the tables only (`sim.planner.tables`), one self-contained file (plotly.js inlined once)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from sim.report.html import CSS

SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star", "cross", "hexagon"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _searched(df: pd.DataFrame, model: str) -> pd.DataFrame:
    d = df[(df.model == model) & df.status.isin(["done", "dominated"])].copy()
    d["label"] = d["count"].astype(str) + "x " + d.gpu + " " + d.strategy + " " + \
        d.host_memory_gib_per_gpu.map(lambda h: f"{h:g}G")
    return d


def pareto_figure(df: pd.DataFrame, model: str, front: list[str]) -> go.Figure:
    """Price per hour against the highest rate sustained at the SLO target, one marker per searched
    configuration (colour: GPU, symbol: strategy), the Pareto front as a step line."""
    d = _searched(df, model)
    fig = go.Figure()
    gpus, strategies = sorted(d.gpu.unique()), sorted(d.strategy.unique())
    for gi, g in enumerate(gpus):
        for si, s in enumerate(strategies):
            x = d[(d.gpu == g) & (d.strategy == s)]
            if x.empty:
                continue
            fig.add_trace(go.Scatter(
                x=x.usd_per_hour, y=x.max_rate_per_s, mode="markers", name=f"{g} / {s}",
                marker=dict(color=COLORS[gi % len(COLORS)], symbol=SYMBOLS[si % len(SYMBOLS)], size=10,
                            opacity=[1.0 if st == "done" else 0.35 for st in x.status]),
                text=x.label, hovertemplate="%{text}<br>$%{x:.2f}/h<br>%{y:g} req/s<extra></extra>"))
    f = d.set_index("config").loc[[c for c in front if c in set(d.config)]]
    if len(f):
        fig.add_trace(go.Scatter(x=f.usd_per_hour, y=f.max_rate_per_s, mode="lines", line_shape="hv",
                                 name="Pareto front", line=dict(color="#444", dash="dot")))
    fig.update_layout(height=430, margin=dict(l=60, r=20, t=30, b=50), xaxis_title="price (USD per hour)",
                      yaxis_title="max sustainable rate (req/s)", legend=dict(font=dict(size=11)))
    fig.update_xaxes(type="log")
    return fig


def rates_figure(df: pd.DataFrame, model: str, rates: list[float]) -> go.Figure:
    """Highest proven rate per configuration, cheapest at the top; for a dominated configuration (grey) the
    search stopped early, so its bar is a lower bound and an x marks the rate it was proven to fail at."""
    d = _searched(df, model).sort_values(["usd_per_hour", "config"])
    fig = go.Figure(go.Bar(
        y=d.label, x=d.max_rate_per_s, orientation="h", name="max sustainable rate",
        marker=dict(color=["#1f77b4" if s == "done" else "#b8c9dc" for s in d.status]),
        text=[f"${c:.2f}/h" for c in d.usd_per_hour], textposition="outside",
        hovertemplate="%{y}: %{x:.3g} req/s<extra></extra>"))
    dom = d[d.status == "dominated"]
    fig.add_trace(go.Scatter(y=dom.label, x=dom.fail_rate_per_s, mode="markers", name="proven to fail",
                             marker=dict(symbol="x", color="#d62728", size=8),
                             hovertemplate="%{y}: fails at %{x:.3g} req/s<extra></extra>"))
    for r in rates:
        fig.add_vline(x=r, line=dict(color="#d62728", dash="dash", width=1))
    fig.update_layout(height=max(300, 20 * len(d) + 90), margin=dict(l=260, r=40, t=20, b=50),
                      xaxis_title="max sustainable rate (req/s); dashed: planned rates",
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    fig.update_yaxes(autorange="reversed")
    return fig


def price_figure(df: pd.DataFrame, model: str) -> go.Figure:
    """USD per million output tokens at each configuration's max sustainable rate."""
    d = _searched(df, model)
    d = d[d.usd_per_million_output_tokens_at_max.notna() & (d.status == "done")]
    d = d.sort_values("usd_per_million_output_tokens_at_max")
    fig = go.Figure(go.Bar(y=d.label, x=d.usd_per_million_output_tokens_at_max, orientation="h",
                           marker_color="#2ca02c", hovertemplate="%{y}: $%{x:.2f}<extra></extra>"))
    fig.update_layout(height=max(300, 20 * len(d) + 80), margin=dict(l=260, r=40, t=20, b=50),
                      xaxis_title="USD per million output tokens at the max sustainable rate", showlegend=False)
    fig.update_yaxes(autorange="reversed")
    return fig


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1e4 else f"{v:,.0f}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in columns) + "</tr>"
                   for _, r in df[columns].iterrows())
    return f'<table class="metrics"><tr>{head}</tr>{body}</table>'


def render(summary: dict[str, Any], configs: pd.DataFrame, cheapest: pd.DataFrame, rates: dict[str, list[float]],
           description: str = "") -> str:
    first = True
    parts = [f"<h1>Capacity plan: {html.escape(summary['plan'])}</h1>",
             f'<div class="sub">{html.escape(description)}</div>',
             '<div class="verdict">' + "".join(f'<p class="head">{html.escape(m)}: {html.escape(e["verdict"])}</p>'
                                               for m, e in summary["models"].items()) + "</div>",
             f'<p class="caption">{summary["configurations"]} configurations: '
             + ", ".join(f"{v} {k}" for k, v in summary["by_status"].items())
             + f"; {summary['evaluations']} simulations. A configuration sustains a rate when at least "
             f"{summary['target_attainment']:.0%} of the requests meet both latency SLOs. \"pruned\": cannot "
             "start or duplicates a cheaper one; \"dominated\": its search stopped once a configuration that "
             "costs no more was proven faster.</p>"]
    for m, e in summary["models"].items():
        parts.append(f"<h2>{html.escape(m)} (TTFT SLO {e['ttft_slo_s']:g} s, TPOT SLO {e['tpot_slo_s']:g} s)</h2>")
        figs = [("Cost against throughput", "Each marker is a configuration; faint ones were dominated.",
                 pareto_figure(configs, m, e["pareto_front"])),
                ("Max sustainable rate per configuration", "Cheapest first. Configurations that cannot start "
                 "or duplicate a cheaper one are listed in the table at the end.", rates_figure(configs, m, rates[m])),
                ("Price per million output tokens", "At each configuration's max sustainable rate, cheapest first "
                 "(configurations whose search finished).",
                 price_figure(configs, m))]
        for title, cap, fig in figs:
            parts.append(f"<h3>{title}</h3><div class='caption'>{cap}</div>")
            parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            first = False
        parts.append("<h3>Cheapest configuration per planned rate</h3><div class='caption'>Price per million "
                     "output tokens when serving exactly that rate.</div>")
        parts.append(_table(cheapest[cheapest.model == m], ["rate_per_s", "config", "usd_per_hour",
                                                            "max_rate_per_s", "usd_per_million_output_tokens"]))
    parts.append("<h2>All configurations</h2>")
    parts.append(_table(configs, ["config", "usd_per_hour", "status", "max_rate_per_s", "fail_rate_per_s",
                                  "usd_per_million_output_tokens_at_max", "evaluations", "reason"]))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Capacity plan: {html.escape(summary['plan'])}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def write(path: Path, *args: Any, **kw: Any) -> Path:
    path.write_text(render(*args, **kw), encoding="utf-8")
    return path
