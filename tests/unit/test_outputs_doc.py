"""docs/outputs.md documents every file and results table of a run, and every column.

A short in-process run (network-aware envelopes, so the envelope tables have rows; the
DSO and the loss allocation run too; EVs and air conditioners, for their tables) is compared with the doc: every file of the run
folder matches a documented file, every table and column of ``results/`` is
documented with the type the run has, and everything documented as in every run is
in the run. The run's report is written too (by ``tecosim run`` or here), so
``report.html`` and ``report/<id>.png`` are checked like the other files, and a
compare folder of the run is checked against the doc's compare folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DEFAULT, REPO, tecosim

pytestmark = pytest.mark.feeder

DOC = REPO / "docs" / "outputs.md"
RUN = ["--set", "study.start=2026-06-21T11:30:00-04:00", "--set", "study.duration=30min",
       "--set", "market.network_aware=envelopes",
       # flexible demand, so that its tables (flex, ev_sessions) are checked too
       "--set", "prosumers.ev.share=0.3", "--set", "prosumers.hvac.share=0.3",
       "--set", "prosumers.water_heater.share=0.3",
       "--set", "controllers.demand_response.enabled=true",
       # the devices dispatched from the cleared price, for the flex_bids table
       "--set", "prosumers.flex_dispatch=cleared"]
TYPES = {"int", "float", "bool", "str", "datetime"}


# ---------------------------------------------------------------- the doc, parsed
def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading) + 1
    out = []
    for line in lines[start:]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= len(level):
            break
        out.append(line)
    return "\n".join(out)


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text``: a list of rows, each {header: cell}."""
    found, rows, header = [], None, None
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif set("".join(cells)) <= set("-: "):
                continue
            else:
                assert len(cells) == len(header), f"table row with {len(cells)} cells, header has {len(header)}: {line}"
                rows.append(dict(zip(header, cells, strict=True)))
        elif header is not None:
            found.append(rows)
            header, rows = None, None
    return found


def _name(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"first cell is not one `name`: {cell!r}"
    return m.group(1)


def _pattern(name: str) -> re.Pattern:
    """``tap_<regulator>`` -> ``tap_[^/]+`` (a placeholder stands for one or more characters)."""
    parts = re.split(r"<[^<>]+>", name)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


def _always(cell: str) -> bool:
    assert cell == "yes" or cell.startswith("no:"), f"'in every run' must be 'yes' or 'no: when': {cell!r}"
    return cell == "yes"


class Doc:
    def __init__(self, text: str) -> None:
        (files,) = _tables(_section(text, "## Files of a run folder"))
        self.files = {_name(r["file"]): _always(r["in every run"]) for r in files}
        (compare,) = _tables(_section(text, "## A compare folder"))
        self.compare_files = {_name(r["file"]): r["always"] == "yes" for r in compare}
        results = _section(text, "## Results tables")
        overview = _tables(results.split("\n### ", 1)[0])[0]
        self.tables = {_name(r["table"]): _always(r["in every run"]) for r in overview}
        self.columns: dict[str, dict[str, str]] = {}
        for m in re.finditer(r"^### `([^`]+)`$", results, flags=re.MULTILINE):
            (cols,) = _tables(_section(results, m.group(0)))
            self.columns[m.group(1)] = {_name(r["column"]): r["type"] for r in cols}


@pytest.fixture(scope="module")
def doc() -> Doc:
    return Doc(DOC.read_text())


# ---------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs_doc") / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(out), *RUN)
    assert r.returncode == 0, f"run failed:\n{r.stdout}\n{r.stderr}"
    if not (out / "report.html").exists():
        from runner.report import write_report

        write_report(out)
    return out


@pytest.fixture(scope="module")
def compare_dir(run_dir, tmp_path_factory) -> Path:
    from runner.compare import write_compare

    out = tmp_path_factory.mktemp("outputs_doc") / "compare"
    write_compare([run_dir], out, labels=["the run"])
    return out


def _type(s: pd.Series) -> str:
    kind = s.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    if kind == "M":
        return "datetime"
    if kind in "OUS" or pd.api.types.is_string_dtype(s.dtype):
        return "str"
    return str(s.dtype)


# ---------------------------------------------------------------- the checks
def test_the_doc_is_well_formed(doc):
    assert doc.files and doc.tables
    assert set(doc.columns) == set(doc.tables), "the overview and the ### sections list other tables"
    for table, cols in doc.columns.items():
        assert cols, f"{table}: no columns"
        bad = {c: t for c, t in cols.items() if t not in TYPES}
        assert not bad, f"{table}: unknown types {bad} (allowed: {sorted(TYPES)})"


def _check_files(folder: Path, documented: dict[str, bool]) -> None:
    patterns = {name: _pattern(name) for name in documented}
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    undocumented = [f for f in files if not any(p.fullmatch(f) for p in patterns.values())]
    assert not undocumented, f"files of {folder.name} missing from docs/outputs.md: {undocumented}"
    missing = [name for name, always in documented.items()
               if always and not any(patterns[name].fullmatch(f) for f in files)]
    assert not missing, f"documented as always there but not written: {missing}"


def test_every_file_of_the_run_is_documented(doc, run_dir):
    _check_files(run_dir, doc.files)


def test_every_file_of_a_compare_folder_is_documented(doc, compare_dir):
    _check_files(compare_dir, doc.compare_files)
    kpis = pd.read_csv(compare_dir / "compare_kpis.csv")
    assert list(kpis.columns) == ["kpi", "unit", "the run"]


def test_every_table_of_the_run_is_documented(doc, run_dir):
    written = {p.stem for p in (run_dir / "results").glob("*.parquet")}
    assert not written - set(doc.tables), f"tables missing from docs/outputs.md: {sorted(written - set(doc.tables))}"
    always = {t for t, a in doc.tables.items() if a}
    assert not always - written, f"documented as in every run but not written: {sorted(always - written)}"


def test_every_column_is_documented_with_its_type(doc, run_dir):
    problems = []
    for path in sorted((run_dir / "results").glob("*.parquet")):
        table = path.stem
        df = pd.read_parquet(path)
        documented = doc.columns.get(table, {})
        fixed = {c for c in documented if "<" not in c}
        patterns = {c: _pattern(c) for c in documented if "<" in c}
        for col in df.columns:
            name = col if col in fixed else next((c for c, p in patterns.items() if p.fullmatch(col)), None)
            if name is None:
                problems.append(f"{table}.{col}: not documented")
            elif _type(df[col]) != documented[name]:
                problems.append(f"{table}.{col}: type {_type(df[col])} in the run, {documented[name]} in the doc")
        problems += [f"{table}.{c}: documented, not in the run" for c in sorted(fixed - set(df.columns))]
        if [c for c in df.columns if c in fixed] != [c for c in documented if c in fixed and c in df.columns]:
            problems.append(f"{table}: columns in another order than the doc's")
    assert not problems, "docs/outputs.md vs the run:\n" + "\n".join(problems)


def test_the_envelope_tables_have_rows(run_dir):
    # so that their column types above were read from data, not from empty frames
    for table in ("envelopes", "dso_envelopes"):
        assert len(pd.read_parquet(run_dir / "results" / f"{table}.parquet")) > 0, table
