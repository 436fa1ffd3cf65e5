"""The layers of docs/architecture.md as import contracts (pyproject.toml, [tool.importlinter]): every import
in sim points down, no module or package of sim closes an import cycle, the simulator imports neither the
torch backend nor calibration, and never torch. TYPE_CHECKING imports count.

Each contract is also shown to break on an import that violates it, added to the real graph."""

from __future__ import annotations

import sys
import tomllib

import grimp
import pytest
from importlinter import configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract

from .helpers import REPO

TYPES = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract, "forbidden": ForbiddenContract}
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
SESSION = {k: v for k, v in CONFIG.items() if k != "contracts"}
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}

configuration.configure()


def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*CONFIG["root_packages"], include_external_packages=CONFIG["include_external_packages"])


def kept(contract_id: str, g: grimp.ImportGraph) -> bool:
    c = CONTRACTS[contract_id]
    options = {k: v for k, v in c.items() if k not in ("id", "name", "type")}
    return TYPES[c["type"]](c["name"], SESSION, options).check(g, verbose=False).kept


@pytest.mark.parametrize("contract_id", list(CONTRACTS))
def test_the_contracts_hold(contract_id):
    assert kept(contract_id, graph()), f"import contract {contract_id!r} broken: run `lint-imports` for the chain"


@pytest.mark.parametrize("contract_id, importer, imported", [
    ("sim-layers", "sim.core.model", "sim.engine.cluster"),  # a core type reaching up into the engine
    ("sim-layers", "sim.engine.instance", "sim.policies.selectn.controller"),  # the engine knowing a policy
    ("sim-layers", "sim.policies.flexgen", "sim.handlers.kunserve.group"),  # policies and handlers are apart
    ("sim-acyclic", "sim.engine.kv", "sim.engine.instance"),  # a cycle inside one layer
    ("sim-acyclic", "sim.handlers.kunserve.group", "sim.handlers.kunserve.forming"),
    ("top-level", "sim.engine.iteration", "backend.executor"),
    ("no-torch-in-sim", "sim.engine.kv", "torch"),
])
def test_a_violating_import_breaks_the_contract(contract_id, importer, imported):
    g = graph()
    g.add_import(importer=importer, imported=imported)
    assert not kept(contract_id, g)


def strongly_connected(g: grimp.ImportGraph, package: str) -> list[set[str]]:
    """Import cycles among the modules of ``package`` (Tarjan's strongly connected components of size > 1)."""
    mods = sorted(m for m in g.modules if m == package or m.startswith(package + "."))
    adj = {m: [x for x in g.find_modules_directly_imported_by(m) if x in mods] for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in mods:
        if m not in index:
            visit(m)
    return out


def test_no_module_of_sim_is_in_an_import_cycle():
    g = graph()
    assert strongly_connected(g, "sim") == []
    # two modules that import nothing of sim: importing each other makes exactly a 2-cycle
    g.add_import(importer="sim.core.units", imported="sim.core.timeline")
    g.add_import(importer="sim.core.timeline", imported="sim.core.units")
    assert strongly_connected(g, "sim") == [{"sim.core.units", "sim.core.timeline"}]
