"""Memory overload over time: the KV capacity (summed over GPUs) and the KV in use, and the tail time to first
token of the requests arriving in each window -- what parameter dropping changes."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.data import PolicyData, ReportData, on_grid, time_grid


def shown(data: ReportData) -> bool:
    return any("kv_capacity_tokens" in p.series for p in data.ran)


def _used_tokens(p: PolicyData) -> PolicyData:
    s = p.series.copy()
    per_block = s.kv_capacity_tokens / s.kv_total_blocks.clip(lower=1)
    s["kv_used_tokens"] = s.kv_used_blocks * per_block
    return PolicyData(p.name, p.summary, p.requests, s, p.instants)


def rolling_p99_ttft(p: PolicyData, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """P99 TTFT of the requests arriving in each ``window_s`` window (NaN when none finished a prefill)."""
    df = p.requests[p.requests.ttft_s.notna()]
    if not len(df):
        return np.zeros(0), np.zeros(0)
    edges = np.arange(0.0, float(df.arrival_s.max()) + window_s, window_s)
    idx = np.searchsorted(edges, df.arrival_s.to_numpy(), side="right") - 1
    ttft = df.ttft_s.to_numpy()
    out = np.full(len(edges), np.nan)
    for k in np.unique(idx):
        out[k] = np.percentile(ttft[idx == k], 99)
    return edges + window_s / 2, out


def capacity_and_ttft(data: ReportData, window_s: float = 5.0) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("KV cache, summed over GPUs: capacity (solid) and in use (dotted)",
                                        f"P99 TTFT of the requests arriving in each {window_s:g} s"))
    grid = time_grid(data)
    for p in data.ran:
        q = _used_tokens(p)
        color = data.color(p.name)
        fig.add_trace(go.Scatter(x=grid, y=on_grid(q, "kv_capacity_tokens", grid) / 1e3, mode="lines", name=p.name,
                                 legendgroup=p.name, line={"color": color, "shape": "hv", "width": 1.8},
                                 hovertemplate=f"{p.name} capacity: %{{y:,.0f}}k tokens<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=grid, y=on_grid(q, "kv_used_tokens", grid) / 1e3, mode="lines", showlegend=False,
                                 legendgroup=p.name, line={"color": color, "dash": "dot", "width": 1.2},
                                 hovertemplate=f"{p.name} in use: %{{y:,.0f}}k tokens<extra></extra>"), row=1, col=1)
        x, y = rolling_p99_ttft(p, window_s)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", showlegend=False, legendgroup=p.name,
                                 marker={"size": 4}, line={"color": color, "width": 1.5},
                                 hovertemplate=f"{p.name}: P99 TTFT %{{y:.3g}} s<extra></extra>"), row=2, col=1)
        for _r, name, t in p.instants:
            if name.startswith(("drop", "restore ")):
                fig.add_vline(x=t, line={"color": color, "width": 1, "dash": "dash" if name.startswith("drop") else "dot"},
                              row=1, col=1)
    for start, end in data.bursts:
        fig.add_vrect(x0=start, x1=end, fillcolor="#f4b400", opacity=0.15, line_width=0)
    fig.update_yaxes(title_text="k tokens", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="TTFT (s, log)", type="log", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_layout(height=560, margin={"t": 40, "b": 50, "l": 60, "r": 20})
    return fig
