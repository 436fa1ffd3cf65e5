"""The short written verdict at the top of a report (and in summary.json): which compared policy does best
against the SLO, by how much, and why the others fall short. Plain text from the summaries alone."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from sim.core.units import GiB


def pct(x: float) -> str:
    """A share as a percentage with one decimal (``0.994`` -> ``99.4%``)."""
    return f"{100 * x:.1f}%"


def times(r: float) -> str:
    """A ratio as ``1.6×``: one decimal below 10, none above, two below 0.1."""
    if not math.isfinite(r):
        return "\u221e\u00d7"
    return (f"{r:.0f}" if r >= 10 else f"{r:.1f}" if r >= 0.1 else f"{r:.2f}") + "\u00d7"


def _dur(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.1f} s"


def _rank(s: Mapping[str, Any]) -> tuple[float, float]:
    return (s.get("slo_attainment", 0.0), s.get("throughput_tokens_per_s", 0.0))


def _why(s: Mapping[str, Any], ttft_slo: float, tpot_slo: float) -> str:
    """What the median request misses (or, failing that, what the tail misses)."""
    reasons = []
    for key, slo, what in (("ttft_s", ttft_slo, "TTFT"), ("tpot_s", tpot_slo, "TPOT")):
        p = s.get(key) or {}
        for q in ("p50", "p99"):
            v = p.get(q)
            if v is not None and math.isfinite(slo) and v > slo:
                label = "median" if q == "p50" else "p99"
                reasons.append(f"{label} {what} {_dur(v)} against {_dur(slo)}")
                break
    return "; ".join(reasons)


def verdict(summaries: Mapping[str, Mapping[str, Any]], ttft_slo_s: float = math.inf,
            tpot_slo_s: float = math.inf, interrupted: bool = False, about_input: Sequence[str] = ()) -> list[str]:
    """Sentences, headline first. ``summaries`` are per-policy summaries in the order compared;
    ``about_input``: sentences on what was done to the input (e.g. requests longer than the context), last."""
    out: list[str] = []
    if interrupted:
        out.append("Interrupted: these are partial results.")
    ran = {n: s for n, s in summaries.items() if s.get("error") is None and s.get("requests", 0) > 0}
    failed = {n: s["error"] for n, s in summaries.items() if s.get("error") is not None}
    has_slo = math.isfinite(ttft_slo_s) or math.isfinite(tpot_slo_s)
    if not ran:
        out.append("No compared policy could run.")
    else:
        order = sorted(ran, key=lambda n: _rank(ran[n]), reverse=True)  # stable: ties keep compare order
        best, bs = order[0], ran[order[0]]
        tp = bs.get("throughput_tokens_per_s", 0.0)
        if len(order) == 1:
            out.append(f"{best} meets the SLO for {pct(bs['slo_attainment'])} of requests ({tp:.0f} tokens/s)."
                       if has_slo else f"{best} serves {tp:.0f} tokens/s.")
        else:
            ru, rs = order[1], ran[order[1]]
            if has_slo and not rs.get("throughput_tokens_per_s"):  # no ratio to a policy that produced nothing
                out.append(f"{best} meets the SLO for {pct(bs['slo_attainment'])} of requests ({tp:.0f} tokens/s); "
                           f"{ru}, the next best ({pct(rs['slo_attainment'])}), produced no tokens.")
            elif has_slo:
                ratio = tp / rs["throughput_tokens_per_s"]
                out.append(f"{best} meets the SLO for {pct(bs['slo_attainment'])} of requests at {times(ratio)} "
                           f"the throughput of {ru}, the next best ({pct(rs['slo_attainment'])}).")
            else:
                by_tp = sorted(ran, key=lambda n: ran[n].get("throughput_tokens_per_s", 0.0), reverse=True)
                a, b = by_tp[0], by_tp[1]
                if ran[b].get("throughput_tokens_per_s"):
                    r = ran[a]["throughput_tokens_per_s"] / ran[b]["throughput_tokens_per_s"]
                    out.append(f"No SLO set: {a} has the highest throughput, {times(r)} that of {b}.")
                else:
                    out.append(f"No SLO set: {a} has the highest throughput "
                               f"({ran[a].get('throughput_tokens_per_s', 0.0):.0f} tokens/s); {b} produced no tokens.")
        host = bs.get("offloaded_weight_bytes_mean", 0.0)
        if host > 0:
            out.append(f"{best} keeps {host / GiB:.1f} GiB of weights in host memory on average.")
        if has_slo:  # as good against the SLO, with GPU memory freed: worth saying
            for n in order[1:]:
                s, h = ran[n], ran[n].get("offloaded_weight_bytes_mean", 0.0)
                if s["slo_attainment"] >= bs["slo_attainment"] - 0.005 and h > host:
                    out.append(f"{n} also meets it for {pct(s['slo_attainment'])} with {h / GiB:.1f} GiB of "
                               "weights in host memory.")
        if has_slo:
            for n in order[1:]:
                s = ran[n]
                if s["slo_attainment"] < 0.5 and s["slo_attainment"] < bs["slo_attainment"]:
                    why = _why(s, ttft_slo_s, tpot_slo_s)
                    out.append(f"{n} meets it for {pct(s['slo_attainment'])}" + (f" ({why})." if why else "."))
        for n in order:
            rej = ran[n].get("rejected", 0)
            if rej:
                out.append(f"{n} rejected {rej} of {ran[n]['requests']} requests.")
    for n, err in failed.items():
        out.append(f"{n} could not run: {err.rstrip('.')}.")
    out.extend(about_input)
    return out
