"""The model inventory: read-only facts of a compiled model for ``tecosim feeders show``.

Owns what ``runner/feeders.py`` shows about a feeder model and nothing a study runs
on: every bus's kV base, the phase nodes' voltages, how many elements of each class
the circuit has, and which Lines have no current rating of their own. Plain
functions over an OpenDSS context; the adapter's methods of the same names call them.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["OPENDSS_DEFAULT_NORMAMPS", "bus_kv_bases", "element_counts", "lines_without_normamps",
           "phase_node_v_pu"]

#: OpenDSS's NormAmps of a Line whose data give none [A]
OPENDSS_DEFAULT_NORMAMPS = 400.0


def bus_kv_bases(dss) -> dict[str, float]:
    """Nominal line-to-neutral voltage (OpenDSS kVBase) of every bus [kV]; 0 = none set."""
    out = {}
    for i, name in enumerate(dss.Circuit.AllBusNames()):
        dss.Circuit.SetActiveBusi(i)
        out[name.lower()] = float(dss.Bus.kVBase())
    return out


def phase_node_v_pu(dss) -> tuple[list[str], np.ndarray]:
    """Phase nodes ``bus.1`` .. ``bus.3`` of the buses with a kV base and their voltage
    magnitude [pu of the bus's L-N base] in the last solution (neutral nodes 0, 4+
    and buses without a base left out)."""
    bases = bus_kv_bases(dss)
    names = [n.lower() for n in dss.Circuit.AllNodeNames()]
    vmag = np.asarray(dss.Circuit.AllBusVMag(), dtype=float)
    keep, base_v = [], []
    for k, n in enumerate(names):
        bus, _, node = n.rpartition(".")
        kv = bases.get(bus, 0.0)
        if node in ("1", "2", "3") and kv > 0:
            keep.append(k)
            base_v.append(kv * 1000.0)
    ix = np.asarray(keep, dtype=np.int64)
    return [names[k] for k in keep], vmag[ix] / np.asarray(base_v, dtype=float)


def element_counts(dss) -> dict[str, int]:
    """How many of each element class the circuit has [-].

    ``lines`` includes ``switches`` (Lines with switch=yes); ``transformers``
    includes the regulator transformers; ``regulators`` counts RegControls;
    ``loads`` every Load, ``loads_disabled`` those with enabled=no.
    """
    switches = disabled = 0
    i = dss.Lines.First()
    while i > 0:
        switches += bool(dss.Lines.IsSwitch())
        i = dss.Lines.Next()
    for name in dss.Loads.AllNames():  # Loads.First/Next skip disabled ones
        dss.Loads.Name(name)
        disabled += not dss.CktElement.Enabled()
    return {
        "lines": int(dss.Lines.Count()), "switches": switches,
        "transformers": int(dss.Transformers.Count()), "regulators": int(dss.RegControls.Count()),
        "capacitors": int(dss.Capacitors.Count()), "loads": int(dss.Loads.Count()),
        "loads_disabled": disabled, "generators": int(dss.Generators.Count()),
        "pv_systems": int(dss.PVsystems.Count()), "storage": int(dss.Storages.Count()),
    }


def lines_without_normamps(dss) -> list[str]:
    """Lines (lower-case names, switches left out) with no current rating of their own.

    A Line has none when its NormAmps is 0 (no loading: NaN in the lines table)
    or when neither the Line nor its LineCode gives NormAmps, so that OpenDSS's
    default :data:`OPENDSS_DEFAULT_NORMAMPS` applies (loading is then relative to
    that default). Whether a property was given is read from the element's
    ``ToJSON`` (which lists the properties that were set).
    """
    code_rated: dict[str, bool] = {}
    names = []
    for name in dss.Lines.AllNames():
        dss.Lines.Name(name)
        if dss.Lines.IsSwitch():
            continue
        amps = float(dss.Lines.NormAmps())
        if amps <= 0:
            names.append(name.lower())
            continue
        data = json.loads(dss.Element.ToJSON())
        code = str(data.get("LineCode", "")).lower()
        if not code:
            rated = "NormAmps" in data
        else:
            if code not in code_rated:
                dss.Circuit.SetActiveClass("LineCode")
                dss.ActiveClass.Name(code)
                code_rated[code] = "NormAmps" in json.loads(dss.Element.ToJSON())
            rated = code_rated[code] or amps != OPENDSS_DEFAULT_NORMAMPS
        if not rated:
            names.append(name.lower())
    return names
