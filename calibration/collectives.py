"""Build the collectives table `sim.cost.collectives` reads, from Vidur's public NCCL measurements.

``python -m calibration.collectives [DATA_DIR] [--out calibration/profiles/collectives.yaml]``

DATA_DIR holds ``{h100,a100}_dgx_all_reduce.csv``, ``*_pairwise_nvlink_all_reduce.csv`` and the
``*_send_recv.csv`` files (default: ``measurements/vidur`` in the shared data folder). Each file times one
collective (``time_stats.<op>.median``, ms: the median over the profiler's repeats) against the message
``size`` (bytes), per ``num_workers`` and ``devices_per_node``, one row per rank (the public files hold
rank 0 only), 993 sizes from 2 KiB to 64 MiB (A100 NVLink pairs: 2247, to 512 MiB), spaced linearly in
three ranges (8 KiB apart to 1 MiB, 32 KiB to 16 MiB, 128 KiB to 64 MiB).

One series per (table, collective, worker count). Its measured sizes, sorted, are split alternately: the
table is built from the even-indexed sizes and scored on the odd-indexed ones (held out), so the scores
are what the simulator's interpolation misses between knots on sizes it has not seen. Knots: the training
rows are binned by log2(size) in 1/16 octave (fine enough to place NCCL's algorithm switches, where the
time steps by up to 2x), bins merged until each holds at least 3 measured sizes (a median of 3 rejects
one outlier: below 1 MiB the times are bimodal, e.g. 8 us or 40 us at neighbouring sizes); each bin gives
one knot, its median log size and the median time of its rows (all ranks, all sizes in the bin). The
held-out error is set against the data's own noise: each measured time against the median of its two
neighbours on each side (``noise``); the scores are given over all sizes and apart below and from 1 MiB
(the linear size grid puts 87 % of the rows above 1 MiB).

The output is small (about 100 knots per series) and carries provenance (source files with sha256, the
command, the date) and the scores (median and p90 of |predicted / measured - 1|, held out and on every row).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.cost.collectives import COLLECTIVES_FORMAT, COLLECTIVES_PATH, SizeCurve

from .measurements import sha256, shared_data_dir

KNOTS_PER_OCTAVE = 16
MIN_SIZES_PER_KNOT = 3  # a median of 3 measured sizes rejects one outlier (the small sizes are bimodal)
SMALL_BYTES = 1 << 20  # below: latency-bound, sizes 8 KiB apart; above: bandwidth-bound, 32-128 KiB apart
# table -> (all-reduce file, its rows: "one_node" = every worker on one node, "two_nodes" = split evenly over
#           two; send/recv file, its rows' devices_per_node: 2 = both ranks on one node, 1 = one per node)
TABLES: dict[str, tuple[str | None, str | None, str, int]] = {
    "h100-nvswitch": ("h100_dgx_all_reduce.csv", "one_node", "h100_dgx_send_recv.csv", 2),
    "a100-nvswitch": ("a100_dgx_all_reduce.csv", "one_node", "a100_dgx_send_recv.csv", 2),
    "h100-nvlink-pairs": ("h100_pairwise_nvlink_all_reduce.csv", "one_node", "h100_pairwise_nvlink_send_recv.csv", 2),
    "a100-nvlink-pairs": ("a100_pairwise_nvlink_all_reduce.csv", "one_node", "a100_pairwise_nvlink_send_recv.csv", 2),
    "a100-nvswitch-2nodes": ("a100_dgx_all_reduce.csv", "two_nodes", "a100_dgx_send_recv.csv", 1),
    "h100-nvswitch-2nodes": (None, None, "h100_dgx_send_recv.csv", 1),
}
SIG = 4  # significant digits kept of a knot's time (the files resolve 1 us; the fastest times are ~5 us)


def default_data_dir() -> Path:
    return shared_data_dir() / "measurements" / "vidur"


def read_collective(path: Path) -> pd.DataFrame:
    """One NCCL file as rows (workers, devices_per_node, rank, size_bytes, time_s)."""
    df = pd.read_csv(path)
    col = [c for c in df.columns if c.startswith("time_stats.") and c.endswith(".median")]
    need = {"num_workers", "devices_per_node", "size"}
    if len(col) != 1 or not need <= set(df.columns):
        raise ValueError(f"{path}: expected one time_stats.<op>.median column and {sorted(need)}")
    return pd.DataFrame({"workers": df["num_workers"].astype(int),
                         "devices_per_node": df["devices_per_node"].astype(int),
                         "rank": df["rank"].astype(int) if "rank" in df else 0,
                         "size_bytes": df["size"].astype(float), "time_s": df[col[0]].astype(float) * 1e-3})


def series(data_dir: Path) -> dict[tuple[str, str, int], tuple[pd.DataFrame, str, str]]:
    """(table, collective, workers) -> (rows, source file, which rows) for every table in `TABLES`."""
    files: dict[str, pd.DataFrame] = {}

    def rows(name: str) -> pd.DataFrame:
        if name not in files:
            files[name] = read_collective(data_dir / name)
        return files[name]

    out: dict[tuple[str, str, int], tuple[pd.DataFrame, str, str]] = {}
    for table, (ar_file, placement, sr_file, sr_dpn) in TABLES.items():
        if ar_file is not None:
            d = rows(ar_file)
            nodes = 1 if placement == "one_node" else 2
            d = d[d["devices_per_node"] * nodes == d["workers"]]
            for w, g in d.groupby("workers"):
                which = f"num_workers == {w}, devices_per_node == {w // nodes}"
                out[(table, "all_reduce", int(w))] = (g, ar_file, which)
        d = rows(sr_file)
        out[(table, "send_recv", 2)] = (d[(d["workers"] == 2) & (d["devices_per_node"] == sr_dpn)], sr_file,
                                       f"num_workers == 2, devices_per_node == {sr_dpn}")
    return out


def split_sizes(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The series' measured sizes, sorted, and a mask: True for the sizes the table is built from."""
    sizes = np.unique(rows["size_bytes"].to_numpy())
    return sizes, np.arange(len(sizes)) % 2 == 0


def build_knots(rows: pd.DataFrame, per_octave: int = KNOTS_PER_OCTAVE,
                min_sizes: int = MIN_SIZES_PER_KNOT) -> tuple[list[int], list[float]]:
    """Knots from ``rows`` (all ranks): bins of 1/per_octave of log2 size, merged left to right until each
    holds at least ``min_sizes`` measured sizes (a short last bin joins the one before); each knot is its
    bin's median log size and median time."""
    rows = rows.sort_values("size_bytes", kind="stable")
    lg = np.log2(rows["size_bytes"].to_numpy())
    t = rows["time_s"].to_numpy()
    bins = np.floor(lg * per_octave)
    groups: list[np.ndarray] = []
    cur = np.zeros(len(lg), dtype=bool)
    for b in np.unique(bins):
        cur |= bins == b
        if len(np.unique(lg[cur])) >= min_sizes:
            groups.append(cur)
            cur = np.zeros(len(lg), dtype=bool)
    if cur.any():
        if groups:
            groups[-1] = groups[-1] | cur
        else:
            groups.append(cur)
    sizes = [round(2.0 ** float(np.median(lg[g]))) for g in groups]
    times = [float(f"{float(np.median(t[g])):.{SIG}g}") for g in groups]
    return sizes, times


def neighbour_noise(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(|t / median of the two measured sizes on each side - 1|, size) per measured size (times: medians
    over ranks): how far one measurement strays from its neighbours, the floor any interpolation of this
    data sits on."""
    per_size = rows.groupby("size_bytes")["time_s"].median().sort_index()
    t = per_size.to_numpy()
    out = np.empty(len(t))
    for i in range(len(t)):
        nb = [t[j] for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < len(t)]
        out[i] = abs(t[i] / np.median(nb) - 1.0)
    return out, per_size.index.to_numpy()


def _q(e: np.ndarray) -> dict[str, float]:
    return {"median": float(f"{np.median(e):.5g}"), "p90": float(f"{np.quantile(e, 0.9):.5g}"), "n": len(e)}


def build(data_dir: Path, per_octave: int = KNOTS_PER_OCTAVE) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """(tables, scores, files used): what `write` puts in the collectives file."""
    tables: dict[str, Any] = {t: {} for t in TABLES}
    scores: dict[str, Any] = {t: {} for t in TABLES}
    used: set[str] = set()
    for (table, op, w), (rows, src, which) in series(data_dir).items():
        if rows.empty:
            raise ValueError(f"{data_dir / src}: no rows with {which}")
        used.add(src)
        sizes, train = split_sizes(rows)
        is_train = rows["size_bytes"].isin(sizes[train])
        ks, kt = build_knots(rows[is_train], per_octave)
        curve = SizeCurve(tuple(float(x) for x in ks), tuple(kt))
        size = rows["size_bytes"].to_numpy()
        pred = np.array([curve(x) for x in size])
        err = np.abs(pred / rows["time_s"].to_numpy() - 1.0)
        held = ~is_train.to_numpy()
        noise, noise_size = neighbour_noise(rows)
        knots = {"size_bytes": ks, "time_s": kt}
        score: dict[str, Any] = {"source": f"{src}: {which}"}
        for part, m, nm in (("all", np.ones(len(size), bool), np.ones(len(noise), bool)),
                            ("below_1mib", size < SMALL_BYTES, noise_size < SMALL_BYTES),
                            ("from_1mib", size >= SMALL_BYTES, noise_size >= SMALL_BYTES)):
            score[part] = {"held_out": _q(err[held & m]), "all_rows": _q(err[m]), "noise": _q(noise[nm])}
        if op == "all_reduce":
            tables[table].setdefault("all_reduce", {})[w] = knots
            scores[table].setdefault("all_reduce", {})[w] = score
        else:
            tables[table]["send_recv"] = knots
            scores[table]["send_recv"] = score
    return tables, scores, sorted(data_dir / f for f in used)


def to_document(tables: dict[str, Any], scores: dict[str, Any], files: list[Path], command: str,
                per_octave: int = KNOTS_PER_OCTAVE) -> dict[str, Any]:
    return {
        "format": COLLECTIVES_FORMAT,
        "units": "size_bytes: message bytes per rank; time_s: seconds of one collective (NCCL, CUDA events)",
        "interpolation": "piecewise linear in (log size, log time) between knots; below the first knot its time; "
                         "beyond the last, linear in bytes at the last octave's marginal bandwidth "
                         "(sim/cost/collectives.py)",
        "tables": tables,
        "scores": {"metric": "|predicted / measured - 1| of the table's interpolation, over all sizes and below / "
                             "from 1 MiB; held_out: the odd-indexed measured sizes the table was not built from; "
                             "all_rows: every row (every rank); noise: each measured time against the median of "
                             "its 4 nearest measured sizes",
                   **scores},
        "provenance": {"date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                       "command": command,
                       "data_files": [{"name": p.name, "sha256": sha256(p)} for p in files],
                       "source": "Vidur (MIT) NCCL profiles of A100-80GB and H100 servers",
                       "knots": f"table built from the even-indexed measured sizes of each series; {per_octave} "
                                f"bins per octave of size, merged until each holds >= {MIN_SIZES_PER_KNOT} measured "
                                f"sizes, each the median log size and median time of its rows",
                       "note": "h100_pairwise_nvlink_send_recv.csv and a100_pairwise_nvlink_send_recv.csv are the "
                               "same file (same sha256): the two nvlink-pairs send/recv curves are one "
                               "measurement"}}


def write(doc: dict[str, Any], out: Path) -> Path:
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    header = ("# memslo collectives table: NCCL all-reduce and send/recv times per fabric, read by "
              "sim/cost/collectives.py;\n# written by calibration.collectives (regenerate with provenance.command)\n")
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=None))
    return out


def score_lines(scores: dict[str, Any]) -> list[str]:
    head = (f"{'table':21s} {'collective':10s} {'n':>3s} {'sizes':10s} {'held-out med':>12s} {'p90':>7s} "
            f"{'all-rows med':>12s} {'p90':>7s} {'noise med':>9s} {'p90':>7s}")
    lines = [head]
    for table, t in scores.items():
        if table == "metric":
            continue
        items = [("all_reduce", w, s) for w, s in sorted(t.get("all_reduce", {}).items())]
        if "send_recv" in t:
            items.append(("send_recv", 2, t["send_recv"]))
        for op, w, s in items:
            for part, label in (("all", "all"), ("below_1mib", "< 1 MiB"), ("from_1mib", ">= 1 MiB")):
                h, a, n = s[part]["held_out"], s[part]["all_rows"], s[part]["noise"]
                lines.append(f"{table:21s} {op:10s} {w:3d} {label:10s} {h['median']:12.1%} {h['p90']:7.1%} "
                             f"{a['median']:12.1%} {a['p90']:7.1%} {n['median']:9.1%} {n['p90']:7.1%}")
    return lines


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m calibration.collectives", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", type=Path, help="folder of the Vidur NCCL CSVs (default: the shared data's)")
    ap.add_argument("--out", type=Path, default=COLLECTIVES_PATH, help="collectives YAML to write")
    a = ap.parse_args(argv)
    data = a.data or default_data_dir()
    cmd = "python -m calibration.collectives " + " ".join(shlex.quote(x) for x in
                                                           (argv if argv is not None else sys.argv[1:]))
    tables, scores, files = build(data)
    write(to_document(tables, scores, files, cmd.strip()), a.out)
    print("\n".join(score_lines(scores)))
    print(f"wrote {a.out}")
    return a.out


if __name__ == "__main__":
    main()
