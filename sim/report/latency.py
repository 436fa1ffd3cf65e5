"""Latency figures: CDFs of TTFT, TPOT and end-to-end time per policy with the SLO lines, and TTFT by
arrival time (where a burst shows up as a wall of late first tokens)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.data import ReportData, cdf_points, thin


def slo_line(x: list[float], y: list[float], label: str, where: str) -> go.Scatter:
    """A dashed black SLO line labelled at its end."""
    return go.Scatter(x=x, y=y, mode="lines+text", text=["", label], textposition=where, showlegend=False,
                      line={"dash": "dash", "color": "black", "width": 1}, textfont={"size": 11},
                      hovertemplate=f"{label}: %{{x:.3g}}<extra></extra>" if x[0] == x[1] else
                      f"{label}: %{{y:.3g}}<extra></extra>")


def latency_cdfs(data: ReportData) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=("time to first token", "time per output token (mean per request)",
                                        "end-to-end latency"))
    cols = (("ttft_s", 1.0, 1), ("tpot_mean_s", 1e3, 2), ("e2e_s", 1.0, 3))
    for p in data.ran:
        fin = p.requests[p.requests.state == "finished"]
        for col, scale, c in cols:
            x, y = cdf_points(fin[col])
            fig.add_trace(go.Scatter(x=x * scale, y=y, mode="lines", name=p.name, legendgroup=p.name,
                                     showlegend=c == 1, line={"color": data.color(p.name), "shape": "hv"},
                                     hovertemplate=f"{p.name}: %{{x:.3g}} \u2192 %{{y:.1%}}<extra></extra>"),
                          row=1, col=c)
    for slo, scale, c, what in ((data.slo_ttft_s, 1.0, 1, "TTFT SLO"), (data.slo_tpot_s, 1e3, 2, "TPOT SLO")):
        if math.isfinite(slo):  # a trace, not add_vline: its annotation misplaces itself on log axes
            fig.add_trace(slo_line([slo * scale] * 2, [0, 0.97], what, "bottom right"), row=1, col=c)
    for c, title in ((1, "TTFT (s, log)"), (2, "TPOT (ms, log)"), (3, "end-to-end (s, log)")):
        fig.update_xaxes(type="log", title_text=title, row=1, col=c)
    fig.update_yaxes(title_text="share of finished requests", tickformat=".0%", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=3)
    fig.update_layout(height=380, margin={"t": 40, "b": 50, "l": 60, "r": 20}, legend={"orientation": "h", "y": -0.22})
    return fig


def ttft_by_arrival(data: ReportData) -> go.Figure:
    fig = go.Figure()
    for start, end in data.bursts:
        fig.add_vrect(x0=start, x1=end, fillcolor="#f4b400", opacity=0.15, line_width=0,
                      annotation_text="burst", annotation_position="top left")
    for p in data.ran:
        df = thin(p.requests[p.requests.ttft_s.notna()])
        fig.add_trace(go.Scatter(x=df.arrival_s, y=df.ttft_s, mode="markers", name=p.name,
                                 marker={"size": 4, "color": data.color(p.name), "opacity": 0.7},
                                 hovertemplate=f"{p.name}: arrived %{{x:.1f}} s, TTFT %{{y:.3g}} s<extra></extra>"))
    if math.isfinite(data.slo_ttft_s):
        end = max((float(p.requests.arrival_s.max()) for p in data.ran), default=1.0)
        fig.add_trace(slo_line([0, end], [data.slo_ttft_s] * 2, "TTFT SLO", "bottom left"))
    fig.update_yaxes(type="log", title_text="TTFT (s, log)")
    fig.update_xaxes(title_text="arrival time (s)")
    fig.update_layout(height=340, margin={"t": 20, "b": 50, "l": 60, "r": 20})
    return fig


def attainment_throughput(data: ReportData) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("SLO attainment (TTFT and TPOT both met; rejected = missed)",
                                        "throughput"))
    names = [p.name for p in data.policies]
    att = [p.summary.get("slo_attainment", 0.0) if p.error is None else 0.0 for p in data.policies]
    tput = [p.summary.get("throughput_tokens_per_s", 0.0) if p.error is None else 0.0 for p in data.policies]
    text_a = [f"{a:.1%}" if p.error is None else "could not run" for a, p in zip(att, data.policies)]
    text_t = [f"{t:,.0f}" if p.error is None else "could not run" for t, p in zip(tput, data.policies)]
    colors = [data.color(n) for n in names]
    fig.add_trace(go.Bar(x=names, y=att, text=text_a, textposition="outside", marker_color=colors,
                         showlegend=False, hovertemplate="%{x}: %{y:.1%}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=tput, text=text_t, textposition="outside", marker_color=colors,
                         showlegend=False, hovertemplate="%{x}: %{y:,.0f} tokens/s<extra></extra>"), row=1, col=2)
    fig.update_yaxes(title_text="share of requests", tickformat=".0%", range=[0, 1.15], row=1, col=1)
    top = max(tput, default=0.0)
    fig.update_yaxes(title_text="output tokens/s", range=[0, (top or 1.0) * 1.18], row=1, col=2)
    fig.update_layout(height=340, margin={"t": 40, "b": 40, "l": 60, "r": 20})
    return fig



