"""Reading request traces (Azure 2023, the original Azure layout, BurstGPT) into ``arrival_s,
prompt_tokens, output_tokens`` -- checked row by row.

A row that is not a request (a missing, non-numeric or non-finite cell, a fractional token count, a count
below 1 or above `MAX_TRACE_TOKENS`, an unparsable timestamp) is an error naming the file, the row and the
column, or, with ``on_bad_rows="drop"``, dropped and counted (``DataFrame.attrs``). Nothing is clipped or
dropped silently; the one documented exception is BurstGPT's failed requests (zero response tokens), which
are skipped and counted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from sim.core.units import GiB


class WorkloadError(ValueError):
    """A trace or distribution that cannot produce requests."""


TRACE_LAYOUTS = {
    "azure": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "azure-original": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
}
MAX_TRACE_BYTES = 4 * GiB
MAX_TRACE_TOKENS = 1 << 24  # per prompt or output: beyond any model's context


def _cell(x: object) -> str:
    s = str(x)
    return repr(s if len(s) <= 40 else s[:40] + "...")


def _column_problems(raw: pd.Series, num: pd.Series, tokens: bool) -> pd.Series:
    """Per row: why ``raw`` (parsed as ``num``) is not a valid value, or '' if it is."""
    why = pd.Series("", index=raw.index, dtype=object)
    missing = raw.isna()
    why[missing] = "missing (empty or NaN)"
    nonnum = num.isna() & ~missing
    why[nonnum] = [f"not a number: {_cell(x)}" for x in raw[nonnum]]
    v = num.to_numpy(dtype=float, na_value=np.nan)
    ok = ~np.isnan(v)
    bad = ok & ~np.isfinite(v)
    why[bad] = [f"not finite: {x:g}" for x in v[bad]]
    if tokens:
        ok &= np.isfinite(v)
        frac = ok & (v != np.floor(np.where(ok, v, 0)))
        why[frac] = [f"not a whole number of tokens: {x:g}" for x in v[frac]]
        low = ok & ~frac & (v < 1)
        why[low] = [f"a token count must be >= 1, got {x:g}" for x in v[low]]
        high = ok & ~frac & (v > MAX_TRACE_TOKENS)
        why[high] = [f"a token count must be <= {MAX_TRACE_TOKENS:,}, got {x:g}" for x in v[high]]
    return why


def read_trace(path: str | Path, on_bad_rows: Literal["error", "drop"] = "error") -> pd.DataFrame:
    """Read a trace CSV in any of the supported layouts into ``arrival_s, prompt_tokens, output_tokens``
    (arrival times relative to the first request, sorted). A bad row raises `WorkloadError` naming the row
    (1 = the first data row, on line 2) and the column, or is dropped with ``on_bad_rows="drop"``;
    ``attrs`` of the result hold ``rows`` (data rows read), ``dropped_rows`` and ``first_bad`` (the first
    dropped row's problem), and ``failed_skipped`` (BurstGPT rows with zero response tokens: failed requests,
    skipped as documented)."""
    path = Path(path)
    if not path.exists():
        raise WorkloadError(f"{path}: trace file not found")
    if path.is_dir():
        raise WorkloadError(f"{path}: is a folder, not a trace CSV")
    try:
        if path.stat().st_size > MAX_TRACE_BYTES:
            raise WorkloadError(f"{path}: over {MAX_TRACE_BYTES // GiB} GiB; cut the trace to the window you replay")
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        if isinstance(e, WorkloadError):
            raise
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WorkloadError(f"{path}: not a readable CSV ({first})") from None
    for layout, (tcol, pcol, ocol) in TRACE_LAYOUTS.items():
        if {tcol, pcol, ocol} <= set(df.columns):
            break
    else:
        cols = [c if len(str(c)) <= 30 else str(c)[:30] + "..." for c in list(df.columns)[:6]]
        raise WorkloadError(
            f"{path}: unknown trace layout (columns {cols}); expected one of "
            + "; ".join(f"{k}: {','.join(v)}" for k, v in TRACE_LAYOUTS.items()))
    if layout == "azure-original":
        ts = pd.to_datetime(df[tcol], format="mixed", errors="coerce")
        t = (ts - ts.min()).dt.total_seconds()
    else:
        t = pd.to_numeric(df[tcol], errors="coerce")
    p = pd.to_numeric(df[pcol], errors="coerce")
    o = pd.to_numeric(df[ocol], errors="coerce")
    failed = pd.Series(False, index=df.index)
    if layout == "burstgpt":
        failed = o == 0  # a failed request in BurstGPT's logs, not a request that was served
    problems = {tcol: _column_problems(df[tcol], t, tokens=False), pcol: _column_problems(df[pcol], p, tokens=True),
                ocol: _column_problems(df[ocol], o, tokens=True)}
    why = pd.Series("", index=df.index, dtype=object)
    for col, w in problems.items():  # the first failing column of each row
        new = (why == "") & (w != "") & ~failed
        why[new] = [f"column {col}: {x}" for x in w[new]]
    bad = (why != "").to_numpy()
    first_bad = ""
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        first_bad = f"row {k + 1} (line {k + 2}), {why.iloc[k]}"
        if on_bad_rows != "drop":
            more = int(bad.sum()) - 1
            raise WorkloadError(f"{path.name}: {first_bad}"
                                + (f" (and {more:,} more bad row{'s' if more > 1 else ''})" if more else ""))
    keep = ~bad & ~failed.to_numpy()
    if not keep.any():
        raise WorkloadError(f"{path}: no usable rows" + (f" (first bad: {first_bad})" if first_bad else ""))
    out = pd.DataFrame({"arrival_s": t.to_numpy(dtype=float)[keep],
                        "prompt_tokens": p.to_numpy(dtype=float)[keep].astype(np.int64),
                        "output_tokens": o.to_numpy(dtype=float)[keep].astype(np.int64)})
    out = out.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    out["arrival_s"] -= out["arrival_s"].iloc[0]
    out.attrs.update(rows=len(df), dropped_rows=int(bad.sum()), first_bad=first_bad,
                     failed_skipped=int(failed.sum()))
    return out
