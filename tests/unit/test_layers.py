"""Layers point down (docs/architecture.md), read from every module's imports.

    tecosim/                      the Python API's name: re-exports runner/api.py
    runner/                       cli, api, launch, engine, reports
    federates/*/federate.py       the HELICS doors, one per federate
    federates/runtime.py          the plumbing of a federate process
    federates/<domain>/           prosumers, market, feeder, meters, controllers
    federates/common/             the ground floor: schema, clock, messages, units, ...

A module may import its own floor or any floor below it, never above. Imports made only
for type hints (under ``if TYPE_CHECKING:``) are not dependencies and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ("prosumers", "market", "feeder", "meters", "controllers")


def floor(module: str) -> int:
    """0 ground floor, 1 a domain, 2 runtime, 3 a federate door, 4 the runner, 5 the
    ``tecosim`` package (the API's name, above the CLI that calls the API in runner/api.py)."""
    parts = module.split(".")
    if parts[0] == "tecosim":
        return 5
    if parts[0] == "runner":
        return 4
    if parts[0] != "federates" or len(parts) == 1:
        return -1  # third-party or the bare package: not a floor
    if parts[1] == "common":
        return 0
    if parts[1] == "runtime":
        return 2
    if parts[1] in DOMAINS:
        return 3 if parts[-1] == "federate" else 1
    raise AssertionError(f"{module}: not on any floor of docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import that runs, at any depth (functions included)."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def imported_module(name: str) -> str:
    """``federates.market.role.MarketRole`` -> the module ``federates.market.role``."""
    parts = name.split(".")
    while parts and not ((ROOT / Path(*parts)).with_suffix(".py").is_file() or (ROOT / Path(*parts)).is_dir()):
        parts.pop()
    return ".".join(parts) or name


SOURCES = sorted([*(ROOT / "federates").rglob("*.py"), *(ROOT / "runner").rglob("*.py"),
                  *(ROOT / "tecosim").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path):
    me = module_name(path)
    mine = floor(me)
    up = []
    for line, name in runtime_imports(ast.parse(path.read_text(), str(path))):
        target = imported_module(name)
        theirs = floor(target)
        if theirs > mine or (mine == 1 and theirs == 1 and target.split(".")[1] != me.split(".")[1]
                             and not _shared_domain(me, target)):
            up.append(f"line {line}: {target} (floor {theirs})")
    assert not up, f"{me} (floor {mine}) imports upwards: {up}"


#: where one domain uses another's pure code, by design: the prosumers sign their orders
#: with the market's ledger keys; the DSO plans on the feeder's linear model; the feeder's
#: inverters and the DSO know the prosumers' registered DER (its inverter ratings)
SHARED = {
    ("federates.prosumers", "federates.market.ledger"),
    ("federates.controllers", "federates.feeder.sensitivity"),
    ("federates.feeder.role", "federates.prosumers.agents"),
    ("federates.controllers.role", "federates.prosumers.agents"),
}


def _shared_domain(me: str, target: str) -> bool:
    return any(me.startswith(a) and target.startswith(b) for a, b in SHARED)


def test_the_floors_are_checked():
    """The check sees an upward import where there is one (it cannot pass vacuously)."""
    tree = ast.parse("from runner.cli import main\nif TYPE_CHECKING:\n    from runner.engine import x\n")
    assert [imported_module(n) for _, n in runtime_imports(tree)] == ["runner.cli"]
    assert floor("federates.common.config.schema") < floor("federates.market.role") < floor("federates.runtime") \
        < floor("federates.market.federate") < floor("runner.engine") < floor("tecosim")
    assert any(p.parts[-2] == "tecosim" for p in SOURCES)  # the API package is read too
