"""What the headline sweep scripts share: scenario variants as YAML edits, running them on the process pool
(`sim.pools.local`, like the capacity planner), and writing each headline's table and figure.

Outputs go to ``docs/headlines/``: ``KEY.md`` (the table the README quotes) and ``KEY.json`` (its figure),
and ``docs/headlines.html`` is rebuilt from every figure there (`sim.report.distribution.write_page`).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sim.config.scenario import LoadedScenario, Scenario  # noqa: E402
from sim.pools.local import make_executor  # noqa: E402
from sim.report.distribution import save_figure, write_page  # noqa: E402

SCEN = REPO / "scenarios"
OUT = REPO / "docs" / "headlines"
PAGE = REPO / "docs" / "headlines.html"
SEEDS = (0, 1, 2, 3, 4)


def find_shared() -> Path | None:
    for c in (os.environ.get("MEMSLO_SHARED"), REPO.parent / "shared", REPO.parent.parent / "shared"):
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    return None


def scenario_dict(name: str) -> dict:
    import yaml

    return yaml.safe_load((SCEN / f"{name}.yaml").read_text())


def loaded(name: str, d: dict) -> LoadedScenario:
    """A shipped scenario after edits (``d``: its YAML mapping); trace paths that do not resolve beside the
    file are looked up in the shared data folder."""
    d = copy.deepcopy(d)
    path = SCEN / f"{name}.yaml"
    w = d.get("workload") or {}
    shared = find_shared()
    if shared is not None:
        t = w.get("trace")
        if t and not (path.parent / t["path"]).exists():
            t["path"] = str(shared / "data" / "traces" / Path(t["path"]).name)
        for key in ("prompt", "output"):
            spec = w.get(key) or {}
            if spec.get("kind") == "empirical" and not (path.parent / spec["trace"]).exists():
                spec["trace"] = str(shared / "data" / "traces" / Path(spec["trace"]).name)
    return LoadedScenario(path, Scenario.model_validate(d))


def run_all(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None, label: str) -> list[Any]:
    """``fn`` over ``items`` on the process pool (results in order), with a one-line progress on stderr."""
    t0 = time.perf_counter()
    out = []
    with make_executor(workers) as pool:
        for k, r in enumerate(pool.map(fn, items), start=1):
            out.append(r)
            print(f"\r{label}: {k}/{len(items)} ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr,
                  flush=True)
    print(file=sys.stderr)
    return out


def publish(key: str, table: str, fig: Any | None, caption: str, order: int = 50,
            out: Path = OUT, page: Path = PAGE, points: Any | None = None) -> None:
    """Write a headline's table (markdown), its sweep's points (CSV, when given) and figure, and rebuild the
    page of all figures."""
    out.mkdir(parents=True, exist_ok=True)
    if table.strip():
        (out / f"{key}.md").write_text(table.rstrip() + "\n")
    if points is not None:
        points.to_csv(out / f"{key}.csv", index=False, float_format="%.6g")
    if fig is not None:
        save_figure(fig, out, key, caption, order)
        write_page(out, page)


def seeds_arg(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def floats_arg(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def join(items: Iterable[str], sep: str = ", ") -> str:
    return sep.join(items)
