"""Activity over time: PCIe utilisation per link and bus, queue length and batch size, the offloading
interval (when a policy has one), and timeline events such as plan changes, drops and restores."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.data import ReportData, on_grid, rate_on_grid, time_grid

DASHES = ("solid", "dash", "dot", "dashdot")


def pcie(data: ReportData) -> go.Figure:
    """Utilisation = bytes moved per second / link capacity, per GPU host link (each direction) and per
    upstream bus (host to device), averaged over each time bin."""
    links = (("h2d_bytes_total", data.h2d_bytes_per_s, "GPU host link, host\u2192GPU"),
             ("d2h_bytes_total", data.d2h_bytes_per_s, "GPU host link, GPU\u2192host"),
             ("bus_h2d_bytes_total", data.bus_bytes_per_s, "upstream bus, host\u2192GPU"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.09,
                        subplot_titles=[t for _, _, t in links])
    grid = time_grid(data, max_points=300, min_step_s=1.0)
    mid = (grid[:-1] + grid[1:]) / 2 if len(grid) > 1 else grid
    buses = sorted({g // data.gpus_per_bus for g in range(data.num_gpus)})
    for p in data.ran:
        for row, (col, cap, _) in enumerate(links, start=1):
            # a bus counter is the same on each of its GPUs: read it from the bus's first GPU
            units = [b * data.gpus_per_bus for b in buses] if col.startswith("bus") else list(range(data.num_gpus))
            for j, g in enumerate(units):
                unit = f"bus{g // data.gpus_per_bus}" if col.startswith("bus") else f"gpu{g}"
                y = rate_on_grid(p, col, grid, g) / cap
                label = p.name if len(units) == 1 else f"{p.name} {unit}"
                fig.add_trace(go.Scatter(x=mid, y=y, mode="lines", name=label, legendgroup=p.name,
                                         showlegend=row == 1 and j == 0,
                                         line={"color": data.color(p.name), "dash": DASHES[j % len(DASHES)],
                                               "width": 1.5},
                                         hovertemplate=f"{label}: %{{y:.0%}}<extra></extra>"), row=row, col=1)
        for row in (1, 2, 3):
            fig.update_yaxes(tickformat=".1~%", rangemode="tozero", title_text="utilisation", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_layout(height=620, margin={"t": 40, "b": 50, "l": 60, "r": 20})
    return fig


def queue_batch(data: ReportData) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("queue length (requests waiting to be scheduled)",
                                        "batch size (sequences running)"))
    grid = time_grid(data)
    for p in data.ran:
        for row, col in ((1, "waiting"), (2, "running")):
            fig.add_trace(go.Scatter(x=grid, y=on_grid(p, col, grid), mode="lines", name=p.name,
                                     legendgroup=p.name, showlegend=row == 1,
                                     line={"color": data.color(p.name), "shape": "hv", "width": 1.5},
                                     hovertemplate=f"{p.name}: %{{y:.0f}}<extra></extra>"), row=row, col=1)
    for start, end in data.bursts:
        fig.add_vrect(x0=start, x1=end, fillcolor="#f4b400", opacity=0.15, line_width=0)
    fig.update_yaxes(title_text="requests", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="sequences", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_layout(height=480, margin={"t": 40, "b": 50, "l": 60, "r": 20})
    return fig


def has_intervals(data: ReportData) -> bool:
    return any(len(p.series) and (p.series.interval > 0).any() for p in data.ran)


def intervals(data: ReportData) -> go.Figure:
    """The Select-N offloading interval (0 when the plan has none) and the number of offloaded layers."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("offloading interval i (one layer in host memory per i)",
                                        "layers whose weights are in host memory"))
    grid = time_grid(data)
    for p in data.ran:
        gpus = sorted(p.series.gpu.unique())
        rows = ((1, "interval"), (2, "offloaded_layers")) if (p.series.interval > 0).any() \
            else ((2, "offloaded_layers"),)
        for j, g in enumerate(gpus[:4]):
            label = p.name if len(gpus) == 1 else f"{p.name} gpu{g}"
            for row, col in rows:
                fig.add_trace(go.Scatter(x=grid, y=on_grid(p, col, grid, gpus=[g]), mode="lines", name=label,
                                         legendgroup=p.name, showlegend=row == 2 and j == 0,
                                         line={"color": data.color(p.name), "shape": "hv",
                                               "dash": DASHES[j % len(DASHES)]},
                                         hovertemplate=f"{label}: %{{y:.0f}}<extra></extra>"), row=row, col=1)
    fig.update_yaxes(title_text="interval i", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="layers", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_layout(height=440, margin={"t": 40, "b": 50, "l": 60, "r": 20})
    return fig


def has_events(data: ReportData) -> bool:
    return any(p.instants for p in data.ran)


def events(data: ReportData, max_per_policy: int = 3000) -> go.Figure:
    """Timeline instants (plan changes, parameter drops and restores), one row per policy."""
    fig = go.Figure()
    for p in data.ran:
        inst = p.instants[:max_per_policy]
        if not inst:
            continue
        names = np.array([n for _, n, _ in inst])
        kinds = np.array([n.split()[0] for n in names])
        for kind in sorted(set(kinds)):
            m = kinds == kind
            fig.add_trace(go.Scatter(x=[t for (_, _, t), k in zip(inst, m) if k], y=[p.name] * int(m.sum()),
                                     mode="markers", name=f"{p.name}: {kind}", legendgroup=p.name,
                                     marker={"color": data.color(p.name), "size": 9, "symbol": "line-ns-open",
                                             "line": {"width": 2, "color": data.color(p.name)}},
                                     text=[f"{r}: {n}" for (r, n, _), k in zip(inst, m) if k],
                                     hovertemplate="%{text} at %{x:.2f} s<extra></extra>"))
    fig.update_xaxes(title_text="time (s)")
    fig.update_layout(height=120 + 40 * len(data.ran), margin={"t": 20, "b": 50, "l": 120, "r": 20})
    return fig
