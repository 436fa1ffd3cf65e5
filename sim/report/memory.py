"""Memory figures: GPU memory by kind over time (one small panel per policy) and host memory per policy."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.core.units import GiB
from sim.report.data import ReportData, on_grid, time_grid

KINDS = (  # (label, how to compute from the series, colour)
    ("weights", ("weights_bytes",), "#4c72b0"),
    ("staging buffers", ("staging_bytes",), "#dd8452"),
    ("activations", ("workspace_bytes",), "#8c8c8c"),
    ("KV used", ("kv_used_bytes",), "#55a868"),
    ("KV free", ("kv_pool_bytes", "-kv_used_bytes"), "#c7e9c0"),
)


def gpu_memory(data: ReportData) -> go.Figure:
    pols = data.ran
    cols = 2 if len(pols) > 1 else 1
    rows = max(1, math.ceil(len(pols) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.name for p in pols] or ["(no data)"],
                        vertical_spacing=min(0.3 / rows, 0.12), horizontal_spacing=0.07)
    cap = data.gpu_memory_bytes * data.num_gpus / GiB
    for k, p in enumerate(pols):
        r, c = k // cols + 1, k % cols + 1
        grid = time_grid(ReportData(data.title, data.subtitle, [p]))  # each panel spans its own run
        for label, parts, color in KINDS:
            y = np.zeros(len(grid))
            for part in parts:
                sign = -1.0 if part.startswith("-") else 1.0
                y = y + sign * on_grid(p, part.lstrip("-"), grid)
            fig.add_trace(go.Scatter(x=grid, y=y / GiB, name=label, legendgroup=label, showlegend=k == 0,
                                     stackgroup=f"s{k}", mode="lines", line={"width": 0.5, "color": color},
                                     fillcolor=color, hovertemplate=f"{label}: %{{y:.2f}} GiB<extra></extra>"),
                          row=r, col=c)
        usable = on_grid(p, "usable_bytes", grid) / GiB
        fig.add_trace(go.Scatter(x=grid, y=usable, name="usable (utilisation limit)", legendgroup="usable",
                                 showlegend=k == 0, mode="lines", line={"color": "black", "dash": "dot", "width": 1},
                                 hovertemplate="usable: %{y:.1f} GiB<extra></extra>"), row=r, col=c)
        fig.update_yaxes(range=[0, cap * 1.02], row=r, col=c, title_text="GiB" if c == 1 else None)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="time (s)", row=rows, col=c)
    height = 120 + 220 * rows
    fig.update_layout(height=height, margin={"t": 40, "b": 90, "l": 60, "r": 20},
                      legend={"orientation": "h", "y": -70 / height, "yanchor": "top"})
    return fig


def host_memory(data: ReportData) -> go.Figure:
    """Host memory the policies hold: weights offloaded under the current plan plus swapped KV, summed over
    GPUs (the pinned reservation -- a host copy of every layer a policy may offload -- is not drawn)."""
    fig = go.Figure()
    grid = time_grid(data)
    for p in data.ran:
        y = (on_grid(p, "host_weights_bytes", grid) + on_grid(p, "host_kv_bytes", grid)) / GiB
        fig.add_trace(go.Scatter(x=grid, y=y, mode="lines", name=p.name, line={"color": data.color(p.name)},
                                 hovertemplate=f"{p.name}: %{{y:.2f}} GiB<extra></extra>"))
    fig.update_yaxes(title_text="host memory used (GiB)", rangemode="tozero")
    fig.update_xaxes(title_text="time (s)")
    fig.update_layout(height=300, margin={"t": 20, "b": 50, "l": 60, "r": 20})
    return fig
