"""The notebooks in examples/: kept stripped in git, and executed headless (nbclient,
a real ipykernel) so that they cannot rot. Each notebook asserts what it shows (e.g.
control lowers the highest customer voltage), so a notebook that runs but no longer
shows it fails here."""

from __future__ import annotations

import ast
import os

import pytest

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
#: what a notebook may import: the API, and what a notebook user has anyway
ALLOWED_IMPORTS = {"tecosim", "os", "pathlib", "matplotlib", "pandas", "numpy"}


def _code_cells(name: str) -> list[dict]:
    import json

    nb = json.loads((EXAMPLES / name).read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_three_notebooks_are_there():
    assert NOTEBOOKS == ["feeder_by_path.ipynb", "market_topologies.ipynb", "weak_grid_control.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_in_git_are_stripped_use_only_the_api_and_assert(name):
    cells = _code_cells(name)
    assert cells
    assert all(c["outputs"] == [] for c in cells), f"{name}: has outputs (clear them before committing)"
    assert all(c["execution_count"] is None for c in cells), f"{name}: has execution counts"
    imported: set[str] = set()
    asserts = 0
    for c in cells:
        tree = ast.parse("".join(c["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            asserts += isinstance(node, ast.Assert)
    assert imported <= ALLOWED_IMPORTS, f"{name} imports {sorted(imported - ALLOWED_IMPORTS)}"
    assert "tecosim" in imported and asserts >= 2, name


@pytest.mark.slow
@pytest.mark.feeder
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(EXAMPLES / name, as_version=4)
    # the kernel imports tecosim from this checkout, and writes its runs under tmp_path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TECOSIM_RUNS", str(tmp_path))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()  # a failing cell raises
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in cells)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), "no figure shown"
    assert any(p.name == "manifest.json" for p in tmp_path.rglob("manifest.json"))
    assert not (EXAMPLES / "runs").exists()
