"""A fuzzer for the command's input (issue 20): hypothesis mutates the shipped scenarios (types, extremes,
NaN and infinities, unicode, nesting, YAML aliases, broken text) and generates traces with bad rows, and
runs each through ``python -m sim.run``'s `main` in this process -- the loader, a very short simulation
(``until_s`` at most 3 s, at most two policies, at most 20,000 requests) and the run folder. Every case must
exit 0 or 2, with at most a few lines of error, no traceback (an exception escaping `main` fails the test),
and within a time bound; a run that exits 0 must account for every request.

Example counts: by default 150 examples per test, derandomized (the same cases every run; about 10 s for
both on a 2-core machine); ``MEMSLO_FUZZ=long`` selects 1,000 random examples per test for local runs
(``MEMSLO_FUZZ=long python -m pytest tests/test_fuzz.py --hypothesis-show-statistics``: about 3 minutes).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .helpers import REPO, shared_dir
from .test_bad_input import sim_run

settings.register_profile("memslo-fuzz", max_examples=150, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("memslo-fuzz-long", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
FUZZ = settings.get_profile("memslo-fuzz-long" if os.environ.get("MEMSLO_FUZZ") == "long" else "memslo-fuzz")
EXAMPLE_LIMIT_S = 60.0  # one example: load, simulate 3 s, write -- a hang fails here (and pytest-timeout above)

SHIPPED = ["burst.yaml", "steady.yaml", "selectn_a_prefill.yaml", "selectn_azure.yaml", "azure_conv.yaml",
           "kunserve_burst.yaml"]


def _shipped() -> dict[str, dict]:
    """The shipped scenarios as mappings, trace paths made absolute (they are written elsewhere)."""
    traces = shared_dir() / "data" / "traces"
    out = {}
    for name in SHIPPED:
        d = yaml.safe_load((REPO / "scenarios" / name).read_text())
        w = d.get("workload", {})
        if "trace" in w:
            w["trace"]["path"] = str(traces / Path(w["trace"]["path"]).name)
        for k in ("prompt", "output"):
            if isinstance(w.get(k), dict) and w[k].get("kind") == "empirical":
                w[k]["trace"] = str(traces / Path(w[k]["trace"]).name)
        out[name] = d
    return out


BASES = _shipped()


def _bomb(levels: int) -> list:
    x: list = ["lol"] * 9
    for _ in range(levels):  # 9 ** (levels + 1) leaves: YAML writes it with anchors and aliases, a few lines
        x = [x] * 9
    return x


def _nest(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


EXTREMES = [0, -1, 1, 2, 2**31, 2**63, 2**64 + 1, -(2**63), 10**30, 1e-300, 1e308, -1e308, 0.5, -0.0,
            math.nan, math.inf, -math.inf, True, False, None, "", "\u221e", "NaN", "1e9", "-0", "0x10",
            "../../etc/passwd", "\x00", "\u202e\u0645\u0631\u062d\u0628\u0627", "a" * 5000, [], {}, [1, 2],
            {"kind": "poisson"}, {"kind": "fixed", "value": 1}]
VALUES = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.integers(min_value=1, max_value=7).map(_bomb),
    st.integers(min_value=1, max_value=150).map(_nest),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                 max_leaves=8),
)


INTS = st.one_of(st.integers(0, 16), st.sampled_from([64, 255, 256, 1000, 4095, 4096, 4097, 65536, 10**6, 2**31]))
NUMBERS = st.one_of(st.floats(1e-6, 1e4), st.sampled_from([0.0, 1e-9, 0.001, 1.0, 99.9, 1e6]))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _paths(node: Any, prefix: tuple = (), limit: int = 500) -> list[tuple]:
    """Paths to values in a YAML mapping (keys and list indices), breadth first, at most ``limit`` (a value
    planted earlier may be an alias bomb: its paths are not all walked)."""
    out: list[tuple] = []
    queue = [(node, prefix)]
    while queue and len(out) < limit:
        n, p = queue.pop(0)
        if p:
            out.append(p)
        if isinstance(n, dict):
            queue += [(v, p + (k,)) for k, v in n.items()]
        elif isinstance(n, list):
            queue += [(v, p + (i,)) for i, v in enumerate(n[:4])]
    return out


def _parent(d: Any, path: tuple) -> Any:
    for p in path[:-1]:
        d = d[p]
    return d


def _mutate(data: st.DataObject, d: dict) -> None:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(d)
        kind = data.draw(st.sampled_from(["set", "perturb", "perturb", "perturb", "delete", "add"]), label="kind")
        if kind == "add" or not paths:
            where = data.draw(st.sampled_from([()] + [p for p in paths if isinstance(_parent(d, p + (0,)), dict)]))
            target = _parent(d, where + ("x",))
            if isinstance(target, dict):
                key = data.draw(st.sampled_from(["colour", "until_s", "seed", "limits", "name", "\u00e9t\u00e9"]))
                target[key] = copy.deepcopy(data.draw(VALUES))  # a copy: EXTREMES' own objects stay as they are
            continue
        numeric = [p for p in paths if _is_number(_parent(d, p + (0,)))]
        if kind == "perturb" and numeric:
            paths = numeric
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _parent(d, path)
        old = parent[path[-1]]
        if kind == "perturb" and _is_number(old):
            # a plausible number of another size: often still valid, so the simulation itself is exercised
            parent[path[-1]] = data.draw(NUMBERS if isinstance(old, float) else INTS, label="number")
        elif kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(data.draw(VALUES, label="value"))


def _bound_the_work(d: Any) -> None:
    """Keep a run short whatever was mutated: at most 3 s simulated, two policies, 20,000 requests, 16 GPUs
    (the guards' own limits are tested elsewhere; here a valid scenario must simply run)."""
    if not isinstance(d, dict):
        return
    u = d.get("until_s")
    if u is None or (isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u) and u > 3):
        d["until_s"] = 3.0
    if isinstance(d.get("compare"), list):
        d["compare"] = d["compare"][:2]
    lim = d.setdefault("limits", {})
    if isinstance(lim, dict):
        lim["max_expected_requests"], lim["max_gpus"] = 20_000, 16


def _text_mutation(data: st.DataObject, text: str) -> bytes:
    raw = text.encode()
    kind = data.draw(st.sampled_from(["none", "none", "none", "truncate", "bytes", "deep"]), label="text")
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw)))]
    if kind == "bytes":
        k = data.draw(st.integers(0, len(raw)))
        return raw[:k] + data.draw(st.binary(min_size=1, max_size=8)) + raw[k:]
    if kind == "deep":  # deeper than PyYAML can read, or than the loader allows
        n = data.draw(st.sampled_from([70, 500, 3000]))
        return raw + f"\ndescription: {'[' * n}{']' * n}\n".encode()
    return raw


def _check(code: int, out: str, err: str, folder: Path, name: str) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics shows the mix
    assert code in (0, 2), (code, err[-3000:])
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert all(len(line) <= 1000 for line in lines), max(map(len, lines))
    if code == 2:
        errors = [x for x in lines if not x.startswith("warning: ")]
        assert len(lines) <= 5 and len(errors) == 1, err[-3000:]
        assert errors[0].startswith((f"{name}: ", "--", str(folder.parent))), errors[0]
        return
    s = json.loads((folder / "summary.json").read_text())
    for pol, m in s["policies"].items():
        assert m["finished"] + m["rejected"] == m["requests"] == s["requests"], pol
    assert not (folder / "INCOMPLETE").exists()


@FUZZ
@given(data=st.data())
@pytest.mark.timeout(600)
def test_fuzz_mutated_shipped_scenarios(data):
    base = data.draw(st.sampled_from(SHIPPED), label="scenario")
    d = copy.deepcopy(BASES[base])
    _mutate(data, d)
    _bound_the_work(d)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(_text_mutation(data, yaml.safe_dump(d, allow_unicode=True, sort_keys=False)))
        t0 = time.perf_counter()
        code, out, err = sim_run(path, "--out", Path(tmp) / "out", "--quiet", "--no-report", "--max-spans", "2000")
        assert time.perf_counter() - t0 < EXAMPLE_LIMIT_S
        _check(code, out, err, Path(tmp) / "out", "fuzz.yaml")


CELLS_GOOD = st.integers(1, 3000).map(str)
CELLS_BAD = st.sampled_from(["", "nan", "inf", "-inf", "abc", "0", "-3", "1.5", "1e30", "\u00bd", "0x10", "NULL",
                             " ", "1,5", "\u0661\u0662"])


@FUZZ
@given(data=st.data())
@pytest.mark.timeout(600)
def test_fuzz_generated_traces(data):
    """Traces of good and bad rows (the test knows which): with ``on_bad_rows: error`` a trace with a bad row
    exits 2 naming its first bad row; with ``drop`` the bad rows are dropped and counted, the rest served."""
    n = data.draw(st.integers(1, 30), label="rows")
    rows, bad = [], []
    for i in range(n):
        cells = [f"{0.05 * i:.3f}", data.draw(CELLS_GOOD), data.draw(CELLS_GOOD)]
        if data.draw(st.booleans(), label="bad row"):
            cells[data.draw(st.integers(0, 2))] = data.draw(CELLS_BAD)
        rows.append(cells)
    mode = data.draw(st.sampled_from(["error", "drop"]), label="on_bad_rows")
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "t.csv"
        body = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
            ",".join(f'"{c}"' if "," in c else c for c in r) + "\n" for r in rows)
        trace.write_text(body)
        import pandas as pd

        # the oracle: which rows are requests, by the documented rules (read back as pandas reads them)
        df = pd.read_csv(trace)
        for k in range(len(df)):
            vals = [pd.to_numeric(pd.Series([df.iloc[k, c]]), errors="coerce").iloc[0] for c in range(3)]
            ok = all(pd.notna(v) and math.isfinite(v) for v in vals) and all(
                float(v).is_integer() and 1 <= v <= 2**24 for v in vals[1:])
            if not ok:
                bad.append(k)
        (Path(tmp) / "s.yaml").write_text(
            "model: llama-2-7b\nhardware: {gpu: h100-sxm}\nslo: {ttft_s: 5, tpot_s: 0.2}\nuntil_s: 3\n"
            f"workload:\n  trace: {{path: t.csv, on_bad_rows: {mode}}}\ncompare: [{{name: none}}]\n")
        code, out, err = sim_run(Path(tmp) / "s.yaml", "--out", Path(tmp) / "out", "--quiet", "--no-report")
        _check(code, out, err, Path(tmp) / "out", "s.yaml")
        if bad and (mode == "error" or len(bad) == len(df)):
            assert code == 2
            first = f"row {bad[0] + 1} (line {bad[0] + 2}), column "
            assert first in err if mode == "error" else "no usable rows" in err
        else:
            assert code == 0, err
            s = json.loads((Path(tmp) / "out" / "summary.json").read_text())
            assert s["requests"] == len(df) - len(bad)
            assert s.get("input", {}).get("trace_rows_dropped", 0) == len(bad)
