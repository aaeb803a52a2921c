"""``tecosim feeders list|show``: what a feeder model holds and whether its base case solves.

:func:`describe_feeder` compiles any OpenDSS master file (a bundled feeder's or one
given by path) with :class:`federates.feeder.opendss.OpenDSSFeeder` and returns plain
data (dicts, lists, numbers, strings; JSON-ready): buses, phase nodes, loads by
connection and phase count, kV levels, element counts, lines without a current rating
and a base snapshot solve (regulators and capacitors acting, no customers, loads at
their nominal kW). :func:`format_feeder` and :func:`format_feeder_list` are the text
forms the command prints.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from federates.common.config import FEEDERS_DIR, bundled_feeders
from federates.common.errors import ConfigError, PowerFlowNotConverged, Problem
from federates.common.units import PHASE_TO_NODE, PHASES
from federates.feeder.opendss import OpenDSSFeeder

__all__ = ["bundled_feeder_master", "describe_feeder", "feeder_summaries", "format_feeder",
           "format_feeder_list", "resolve_feeder"]

#: kV levels are base kV L-L rounded to this many decimals [-]
KV_DECIMALS = 3
#: longest one-line description in ``feeders list`` [characters]
DESCRIPTION_CHARS = 72


class _InventoryFeeder(OpenDSSFeeder):
    """An OpenDSSFeeder that survives a base case that does not converge.

    ``feeders show`` reports the non-convergence (``solve_error``) with the rest of
    the inventory instead of failing, since that is when the inventory is needed.
    """

    solve_error: str | None = None

    def solve(self, *, controls: bool = True, t_s: float = math.nan) -> None:
        try:
            super().solve(controls=controls, t_s=t_s)
        except PowerFlowNotConverged as e:
            self.solve_error = str(e)


def _meta(name: str) -> dict[str, Any]:
    return yaml.safe_load((FEEDERS_DIR / name / "feeder.yaml").read_text()) or {}


def bundled_feeder_master(name: str) -> Path:
    """Master file of the bundled feeder ``name`` (its feeder.yaml ``master``)."""
    return (FEEDERS_DIR / name / _meta(name)["master"]).resolve()


def resolve_feeder(name_or_path: str) -> tuple[str | None, Path]:
    """(bundled name or None, master file) for ``feeders show NAME|PATH``.

    A bundled name wins; otherwise a path to a master .dss file, or to a folder with a
    feeder.yaml. Raises ConfigError (exit 2) naming the bundled feeders, or saying
    there is no such file.
    """
    names = bundled_feeders()
    if name_or_path in names:
        return name_or_path, bundled_feeder_master(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "feeder.yaml").is_file():
        meta = yaml.safe_load((p / "feeder.yaml").read_text()) or {}
        if "master" in meta and (p / meta["master"]).is_file():
            return meta.get("name"), (p / meta["master"]).resolve()
    if p.is_file():
        return None, p.resolve()
    allowed = f"a bundled feeder ({', '.join(names)}) or the path of an OpenDSS master .dss file"
    looks_like_path = "/" in name_or_path or "\\" in name_or_path or name_or_path.lower().endswith(".dss")
    what = f"no such file: {p}" if looks_like_path else f"unknown feeder {name_or_path!r} and no such file"
    raise ConfigError([Problem("feeder", what, allowed)], "arguments")


def _kv_ll(kv_ln: float) -> float:
    return round(kv_ln * math.sqrt(3.0), KV_DECIMALS)


def describe_feeder(master: Path) -> dict[str, Any]:
    """Inventory and base-solve check of the OpenDSS model ``master`` (plain data).

    Keys: ``master`` (path); ``buses`` [-]; ``buses_without_kv_base`` [-];
    ``nodes_by_phase`` {a, b, c: phase nodes [-]}; ``loads``: ``count`` (enabled
    Loads), ``disabled``, ``by_connection`` {wye, delta: count},
    ``by_connection_and_phases`` {wye|delta: {"1"|"2"|"3": count}} where the phase
    count is the number of distinct phases a..c the Load is wired to (a single-phase
    line-to-line load ``bus.1.2`` counts 2), split-phase loads left out;
    ``split_phase``: Loads on 120/240 V split-phase secondaries (both legs of one
    single-phase transformer, :class:`LoadPoint`); ``kw`` / ``kvar`` nominal totals [kW,
    kvar]; ``kv_levels`` distinct bus base voltages line-to-line [kV], descending;
    ``elements`` (OpenDSSFeeder.element_counts); ``lines_without_normamps`` [-] and
    ``lines_without_normamps_examples`` (up to 5 names); ``base_solve``: converged
    (bool), error (str or None), source_p_kw / source_q_kvar [kW, kvar, + import],
    losses_kw, load_kw [kW], v_min_pu / v_max_pu [pu] with v_min_node / v_max_node
    over the phase nodes of buses with a kV base (None when there are none).
    Raises FeederModelError when OpenDSS cannot load the model.
    """
    f = _InventoryFeeder(Path(master))
    bases = f.bus_kv_bases()
    phase_of_node = {str(n): ph for ph, n in PHASE_TO_NODE.items()}
    nodes = Counter()
    for name in f.node_v_pu():
        ph = phase_of_node.get(name.rpartition(".")[2])
        if ph is not None:
            nodes[ph] += 1
    points = f.load_points()
    by_conn = Counter(lp.conn for lp in points)
    by_conn_ph: dict[str, Counter] = {}
    for lp in points:
        if not lp.split_phase:
            by_conn_ph.setdefault(lp.conn, Counter())[str(len(lp.phases))] += 1
    no_amps = f.lines_without_normamps()
    counts = f.element_counts()

    node_names, v = f.phase_node_v_pu()
    solve: dict[str, Any] = {"converged": f.solve_error is None, "error": f.solve_error}
    p_kw, q_kvar = f.source_pq()
    solve.update(source_p_kw=p_kw, source_q_kvar=q_kvar, losses_kw=f.losses_kw(), load_kw=f.load_kw())
    if len(v):
        lo, hi = int(v.argmin()), int(v.argmax())
        solve.update(v_min_pu=float(v[lo]), v_min_node=node_names[lo], v_max_pu=float(v[hi]),
                     v_max_node=node_names[hi])
    else:
        solve.update(v_min_pu=None, v_min_node=None, v_max_pu=None, v_max_node=None)
    return {
        "master": str(Path(master).resolve()),
        "buses": len(bases),
        "buses_without_kv_base": sum(1 for kv in bases.values() if kv <= 0),
        "nodes_by_phase": {ph: nodes[ph] for ph in PHASES},
        "loads": {
            "count": len(points),
            "disabled": counts["loads_disabled"],
            "by_connection": {c: by_conn[c] for c in ("wye", "delta")},
            "by_connection_and_phases": {c: dict(sorted(by_conn_ph.get(c, Counter()).items()))
                                         for c in ("wye", "delta")},
            "split_phase": sum(1 for lp in points if lp.split_phase),
            "kw": float(sum(lp.kw for lp in points)),
            "kvar": float(sum(lp.kvar for lp in points)),
        },
        "kv_levels": sorted({_kv_ll(kv) for kv in bases.values() if kv > 0}, reverse=True),
        "elements": counts,
        "lines_without_normamps": len(no_amps),
        "lines_without_normamps_examples": no_amps[:5],
        "base_solve": solve,
    }


def _one_line(text: str) -> str:
    """First sentence of ``text`` on one line, cut to :data:`DESCRIPTION_CHARS`."""
    flat = " ".join(str(text).split())
    first = re.split(r"(?<=[.;])\s", flat, maxsplit=1)[0].rstrip(".;")
    if len(first) <= DESCRIPTION_CHARS:
        return first
    return first[: DESCRIPTION_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def feeder_summaries() -> list[dict[str, Any]]:
    """One summary per bundled feeder: name, buses, loads, kv_levels, description."""
    out = []
    for name in bundled_feeders():
        d = describe_feeder(bundled_feeder_master(name))
        out.append({"name": name, "buses": d["buses"], "loads": d["loads"]["count"],
                    "kv_levels": d["kv_levels"], "description": _one_line(_meta(name).get("description", "")),
                    "master": d["master"]})
    return out


def _kv_text(levels: list[float]) -> str:
    return ", ".join(f"{kv:g}" for kv in levels) or "none"


def format_feeder_list(rows: list[dict[str, Any]]) -> str:
    """``feeders list`` as aligned text, one line per feeder."""
    if not rows:
        return "no bundled feeders"
    w = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{r['name']:<{w}}  {r['buses']:>5} buses  {r['loads']:>5} loads  "
                     f"kV {_kv_text(r['kv_levels']):<18}  {r['description']}")
    return "\n".join(lines)


def format_feeder(d: dict[str, Any], name: str | None = None) -> str:
    """``feeders show`` as text."""
    loads, el, s = d["loads"], d["elements"], d["base_solve"]
    n = d["nodes_by_phase"]
    mix = []
    for conn in ("wye", "delta"):
        for ph, c in loads["by_connection_and_phases"][conn].items():
            mix.append(f"{conn} {ph}-phase {c}")
    if loads.get("split_phase"):
        mix.append(f"split-phase 120/240 V {loads['split_phase']}")
    disabled = f"; {loads['disabled']} disabled" if loads["disabled"] else ""
    lines = [
        f"feeder     {name + '  ' if name else ''}{d['master']}",
        f"buses      {d['buses']} ({d['buses_without_kv_base']} without a kV base); "
        f"phase nodes a {n['a']}, b {n['b']}, c {n['c']}",
        f"kV levels  {_kv_text(d['kv_levels'])} (base kV line-to-line)",
        f"loads      {loads['count']} ({', '.join(mix) or 'none'}{disabled}): "
        f"{loads['kw']:.1f} kW, {loads['kvar']:.1f} kvar nominal",
        f"elements   lines {el['lines']} (switches {el['switches']}), transformers {el['transformers']}, "
        f"regulators {el['regulators']}, capacitors {el['capacitors']}"
        + "".join(f", {k.replace('_', ' ')} {el[k]}" for k in ("generators", "pv_systems", "storage") if el[k]),
        f"ratings    {d['lines_without_normamps']} lines without NormAmps"
        + (f" (e.g. {', '.join(d['lines_without_normamps_examples'])})" if d["lines_without_normamps"] else ""),
    ]
    if s["converged"]:
        head = "base solve converged yes"
    else:
        head = f"base solve converged NO ({s['error']})"
    volts = ("no bus has a kV base" if s["v_min_pu"] is None else
             f"V min {s['v_min_pu']:.4f} pu at {s['v_min_node']}, max {s['v_max_pu']:.4f} pu at {s['v_max_node']}")
    lines.append(f"{head}: source {s['source_p_kw']:.1f} kW, {s['source_q_kvar']:.1f} kvar; "
                 f"losses {s['losses_kw']:.2f} kW; {volts}")
    return "\n".join(lines)
