"""A sites file: named customers at given buses and phases (``prosumers.sites``), checked
against the feeder model (pure, no OpenDSS: the caller passes the model's loads and
the phases of its buses).

CSV columns: ``customer`` (the participant's name; it also names its series in a
measured profiles file), ``bus``, ``phase`` (or ``phases``: one of a, b, c; 1, 2, 3
are read as a, b, c); optional ``group`` (the service transformer it shares: same
group = same transformer), ``pv_kwp`` [kWp], ``battery_kwh`` [kWh],
``daily_load_kwh`` [kWh/day] (replace the seeded draws; an empty cell keeps the draw).
Lines starting with ``#`` before the header are comments. Sites keep the file's order;
without ``group``, consecutive customers of one bus and phase share a transformer of
at most ``customers_per_transformer``, as with the seeded placement.

Every problem (unknown bus, a phase the bus does not have, a bad name or number, a
repeated customer) names the file, the line and the column, with some allowed values,
and all are raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import pandas as pd

from federates.common.csvfiles import leading_comment_lines
from federates.common.errors import ConfigError, Problem
from federates.common.grid import CustomerSite, LoadPoint
from federates.common.units import NODE_TO_PHASE, PHASES

_NAME_OK = re.compile(r"^[A-Za-z0-9_\-]+$")
REQUIRED = ("customer", "bus", "phase")
OPTIONAL = ("group", "pv_kwp", "battery_kwh", "daily_load_kwh")


def bus_phases_of_nodes(node_names: list[str]) -> dict[str, set[str]]:
    """Phases (a, b, c) of each bus (lower case) from OpenDSS node names ``bus.node``."""
    out: dict[str, set[str]] = {}
    for name in node_names:
        bus, _, node = name.lower().rpartition(".")
        if node.isdigit() and int(node) in NODE_TO_PHASE:
            out.setdefault(bus, set()).add(NODE_TO_PHASE[int(node)])
    return out


def _some(values: list[str], near: str, n: int = 8) -> str:
    close = difflib.get_close_matches(near, values, n=3)
    rest = [v for v in sorted(values) if v not in close]
    shown = close + rest[: n - len(close)]
    return ", ".join(shown) + (f", ... ({len(values)} in all)" if len(values) > len(shown) else "")


def read_sites_file(path: Path, load_points: list[LoadPoint], bus_phases: dict[str, set[str]],
                    customers_per_transformer: int = 3) -> list[CustomerSite]:
    """The sites of ``path`` in file order (``index`` = position), checked against the
    model: ``bus_phases`` maps each bus (lower case) to its phases; a site on a bus and
    phase of a model Load records that Load (``CustomerSite.load``; on a split-phase
    Load the customer is connected across its legs). ConfigError listing every problem."""
    path = Path(path)
    src = str(path)
    try:
        lead = leading_comment_lines(path)
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skiprows=lead, skip_blank_lines=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ConfigError([Problem("prosumers.sites", f"cannot be read: {' '.join(str(e).split())[:300]}",
                                   "a CSV file with a header line")], src) from None
    cols = {str(c).strip().lower(): c for c in df.columns}
    if "phases" in cols and "phase" not in cols:
        cols["phase"] = cols.pop("phases")
    problems = [Problem(f"column {cols[c]}", "unknown column", ", ".join((*REQUIRED, *OPTIONAL)))
                for c in cols if c not in (*REQUIRED, *OPTIONAL)]
    problems += [Problem("columns", f"no {c} column", ", ".join(REQUIRED) + " (required)")
                 for c in REQUIRED if c not in cols]
    if problems:
        raise ConfigError(problems, src)
    by_bus: dict[str, list[LoadPoint]] = {}
    for lp in load_points:
        by_bus.setdefault(lp.bus.lower(), []).append(lp)
    buses = sorted(bus_phases)
    rows, seen = [], {}
    for r in range(len(df)):
        cell = {k: str(df.at[r, c]).strip() for k, c in cols.items()}
        if not any(cell.values()):
            continue  # a blank line
        line = lead + 2 + r

        def bad(col: str, msg: str, allowed: str, line=line, cell=cell) -> None:
            problems.append(Problem(f"line {line}, column {cols[col]}", f"{cell[col]!r} {msg}", allowed))

        name, bus, ph = cell["customer"], cell["bus"].lower(), cell["phase"].lower()
        if not _NAME_OK.match(name):
            bad("customer", "is not a usable name", "letters, digits, _ or -")
        elif name in seen:
            bad("customer", f"is listed twice (first on line {seen[name]})", "each customer once")
        seen.setdefault(name, line)
        ph = NODE_TO_PHASE.get(int(ph), ph) if ph.isdigit() else ph
        if bus not in bus_phases:
            bad("bus", "is not a bus of the feeder model", _some(buses, bus))
        elif ph not in bus_phases[bus]:
            bad("phase", f"is not a phase of bus {cell['bus']}", ", ".join(sorted(bus_phases[bus])))
        elif ph not in PHASES:
            bad("phase", "is not a phase", "a, b, c")
        numbers = {}
        for k in ("pv_kwp", "battery_kwh", "daily_load_kwh"):
            text = cell.get(k, "")
            if text == "":
                continue
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v) or v < 0 or (k == "daily_load_kwh" and v == 0):
                bad(k, "is not a finite number >= 0" if k != "daily_load_kwh" else "is not a finite number > 0",
                    "a number in " + ("kWp" if k == "pv_kwp" else "kWh" if k == "battery_kwh" else "kWh/day"))
            numbers[k] = v
        group = cell.get("group", "")
        if group and not _NAME_OK.match(group):
            bad("group", "is not a usable name", "letters, digits, _ or -")
        load = next((lp.name for lp in by_bus.get(bus, []) if ph in lp.phases), "")
        rows.append((line, name, bus, ph, group, load, numbers))
    if not rows and not problems:
        problems.append(Problem("rows", "the file places no customer", "one row per customer"))
    # groups: given, or consecutive customers of one bus and phase, up to the transformer size
    where: dict[str, tuple[str, str, int]] = {}
    for line, _, bus, ph, group, *_ in rows:
        if group and where.setdefault(group, (bus, ph, line))[:2] != (bus, ph):
            b, p, first = where[group]
            problems.append(Problem(f"line {line}, column {cols['group']}",
                                    f"{group!r} is on bus {b} phase {p} (line {first}), not {bus} {ph}",
                                    "one bus and phase per service transformer group"))
    if problems:
        raise ConfigError(problems, src)
    width = max(3, len(str(len(rows) - 1)))
    sites, auto, count = [], -1, customers_per_transformer
    last = None
    for index, (_, name, bus, ph, group, load, numbers) in enumerate(rows):
        if not group:
            if (bus, ph) != last or count >= customers_per_transformer:
                auto, count, last = auto + 1, 0, (bus, ph)
            count += 1
            group = f"g{auto:0{width}d}"
        orig = next(lp.bus for lp in by_bus.get(bus, [])) if by_bus.get(bus) else bus
        sites.append(CustomerSite(participant=name, index=index, bus=orig, phase=ph, group=group, load=load,
                                  pv_kwp=numbers.get("pv_kwp"), battery_kwh=numbers.get("battery_kwh"),
                                  daily_load_kwh=numbers.get("daily_load_kwh")))
    return sites
