"""The report page: title, verdict, a metrics table and the figures, in one self-contained HTML file
(plotly.js inlined once, so it opens offline)."""

from __future__ import annotations

import html
import math
from typing import Callable

import plotly.graph_objects as go
import plotly.io as pio

from sim.core.units import GiB
from sim.report import activity, latency, memory, overload
from sim.report.data import PolicyData, ReportData

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222}
h1{margin:0 0 4px 0;font-size:26px} h2{font-size:18px;margin:28px 0 2px 0;border-bottom:1px solid #ddd}
.sub{color:#555;margin-bottom:14px} .caption{color:#555;font-size:13px;margin:2px 0 6px 0}
.verdict{background:#f3f7fb;border-left:4px solid #1f77b4;padding:10px 14px;font-size:16px;line-height:1.45}
.verdict p{margin:4px 0} .verdict p.head{font-weight:600;font-size:17px}
.warn{background:#fff4e5;border-left-color:#f0a020}
table.metrics{border-collapse:collapse;font-size:13px;margin-top:10px}
table.metrics th,table.metrics td{border-bottom:1px solid #e4e4e4;padding:4px 9px;text-align:right}
table.metrics td{white-space:nowrap} table.metrics th{background:#fafafa} table.metrics td.name,table.metrics th.name,table.metrics td:nth-child(2){text-align:left}
td.err{color:#b00020;text-align:left}
"""

# (section id, heading, caption, figure builder, shown when)
SECTIONS: list[tuple[str, str, str, Callable[[ReportData], go.Figure], Callable[[ReportData], bool]]] = [
    ("fig-slo-throughput", "SLO attainment and throughput",
     "Share of all requests that met both latency SLOs (rejected requests count as misses), and output tokens "
     "per second over the simulated time.", latency.attainment_throughput, lambda d: True),
    ("fig-latency-cdf", "Latency distributions",
     "Cumulative share of finished requests under each latency; dashed lines are the SLOs.",
     latency.latency_cdfs, lambda d: True),
    ("fig-ttft-arrival", "Time to first token by arrival time",
     "Each dot is a request; shaded bands mark the scenario's bursts, if it has any.", latency.ttft_by_arrival, lambda d: True),
    ("fig-gpu-memory", "GPU memory by kind over time",
     "Weights, staging buffers for streamed layers, activation workspace, KV cache in use and free KV blocks; "
     "the dotted line is the usable memory (GPU memory \u00d7 utilisation).", memory.gpu_memory, lambda d: True),
    ("fig-host-memory", "Host memory",
     "Host memory holding the weights offloaded under the current plan and swapped KV (the pinned reservation for layers a policy may offload later is not drawn).", memory.host_memory, lambda d: True),
    ("fig-pcie", "PCIe utilisation",
     "Bytes moved per second over each link's bandwidth: weight copies, UVA reads and KV swaps.",
     activity.pcie, lambda d: True),
    ("fig-queue-batch", "Queue length and batch size", "Summed over GPUs.", activity.queue_batch, lambda d: True),
    ("fig-interval", "Offloading interval over time",
     "Select-N keeps the last layer of every group of i layers in host memory; smaller i frees more GPU memory "
     "and costs more PCIe time.", activity.intervals, activity.has_intervals),
    ("fig-events", "Timeline events", "Plan changes, parameter drops and restores as recorded on the timeline.",
     activity.events, activity.has_events),
    ("fig-kv-capacity", "KV capacity and tail TTFT over time",
     "The cluster's KV capacity and KV in use, summed over GPUs (a parameter drop raises the capacity at once; "
     "dashed lines mark drops, dotted lines restores), and the P99 TTFT of the requests arriving in each window.",
     overload.capacity_and_ttft, overload.shown),
]


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "\u2013" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x * scale, fmt)


def metrics_table(data: ReportData) -> str:
    head = ("policy", "plan", "SLO attainment", "tokens/s", "requests/s", "p50 TTFT (s)", "p99 TTFT (s)",
            "p50 TPOT (ms)", "p99 TPOT (ms)", "GPU memory peak (GiB)", "host memory peak (GiB)",
            "PCIe H2D util.", "preemptions", "finished", "rejected")
    rows = []
    for p in data.policies:
        name = html.escape(p.name)
        s = p.summary
        if p.error is not None:
            rows.append(f"<tr><td class='name'>{name}</td><td class='err' colspan='{len(head) - 1}'>could not run: "
                        f"{html.escape(p.error)}</td></tr>")
            continue
        cells = (html.escape(str(s.get("policy", ""))), _num(s["slo_attainment"], ".1%"),
                 _num(s["throughput_tokens_per_s"], ",.0f"), _num(s["throughput_requests_per_s"], ".2f"),
                 _num(s["ttft_s"]["p50"], ".3g"), _num(s["ttft_s"]["p99"], ".3g"),
                 _num(s["tpot_s"]["p50"], ".0f", 1e3), _num(s["tpot_s"]["p99"], ".0f", 1e3),
                 _num(s["gpu_memory_peak_bytes"], ".1f", 1 / GiB), _num(s["host_memory_peak_bytes"], ".1f", 1 / GiB),
                 _num(s["pcie_h2d_utilization"], ".0%"), str(s["preemptions"]), str(s["finished"]),
                 str(s["rejected"]))
        rows.append(f"<tr><td class='name'>{name}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for n in data.not_run:
        rows.append(f"<tr><td class='name'>{html.escape(n)}</td><td class='err' colspan='{len(head) - 1}'>"
                    "not run (interrupted)</td></tr>")
    ths = "".join(f"<th class='name'>{h}</th>" if i < 2 else f"<th>{h}</th>" for i, h in enumerate(head))
    return f"<table class='metrics' id='metrics'><tr>{ths}</tr>{''.join(rows)}</table>"


def _slo_text(data: ReportData) -> str:
    parts = []
    if math.isfinite(data.slo_ttft_s):
        parts.append(f"TTFT \u2264 {data.slo_ttft_s:.3g} s")
    if math.isfinite(data.slo_tpot_s):
        parts.append(f"TPOT \u2264 {data.slo_tpot_s * 1e3:.3g} ms")
    return "SLO: " + (" and ".join(parts) if parts else "none")


def render(data: ReportData) -> str:
    """The whole page as a string."""
    verdict = data.verdict or ["(no verdict)"]
    vhtml = "".join(f"<p class='{'head' if i == 0 else ''}'>{html.escape(s)}</p>" for i, s in enumerate(verdict))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>memslo \u2013 {html.escape(data.title)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>memslo report: {html.escape(data.title)}</h1>",
             f"<div class='sub'>{html.escape(data.subtitle)} \u00b7 {html.escape(_slo_text(data))}</div>"]
    if data.description:
        parts.append(f"<div class='caption'>{html.escape(data.description)}</div>")
    parts.append(f"<div class='verdict{' warn' if data.interrupted else ''}' id='verdict'>{vhtml}</div>")
    parts.append(metrics_table(data))
    first = True
    for sid, title, caption, build, show in SECTIONS:
        if not data.ran or not show(data):
            continue
        fig = build(data)
        fig.update_layout(template="plotly_white", font={"size": 12})
        div = pio.to_html(fig, full_html=False, include_plotlyjs=first, div_id=sid,
                          config={"displaylogo": False, "responsive": True})
        first = False
        parts.append(f"<section><h2>{html.escape(title)}</h2><div class='caption'>{html.escape(caption)}</div>"
                     f"{div}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["render", "metrics_table", "SECTIONS", "PolicyData"]
