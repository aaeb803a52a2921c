"""The names of the grid's limits and of the other causes of curtailment: one vocabulary
from the DSO's decisions to the report.

A :class:`Limit` is a ``str`` (``enum.StrEnum``): it equals its name and is written as
it, in messages, tables and the ledger (``Limit.V_MAX == "v_max"``; a ``limit`` read
back from a table or a message is the plain string, and matches the member).

Who names what:

* the DSO (federates/controllers/dso.py, dso_agent.py, role.py): the limit a cut is
  for (``DsoCap.limit``: v_max, thermal, vuf, export), and the names
  ``"<limit>:<element>"`` (:func:`limit_key`) of its constraints, envelope bindings
  (``OperatingEnvelope.binding``) and grid constraints (``GridConstraint.name``;
  also v_min and import);
* the feeder's inverters (federates/feeder/inverters.py): the cause of curtailed
  energy (the DSO's limit, or their own Volt-Watt curve, or the operating envelope):
  the ``curtailments`` and ``curtailment_energy`` tables and
  ``CurtailmentNotice.limit``, which the market's ``curtailed_trades.limit`` repeats;
  and v_max / v_min in ``control_violations``;
* the feeder (federates/feeder/role.py): every limit in the ``violations`` table, and
  the import it did not serve under a load limit (``load_limit``, in ``curtailments``
  and ``curtailment_energy``) and the DSO's demand-response calls (``demand_response``,
  in ``curtailments`` only);
* the report (runner/report.py): the colour and label of each curtailment cause.
"""

from __future__ import annotations

from enum import StrEnum


class Limit(StrEnum):
    """A limit of the grid, or what else curtailed an export."""

    V_MAX = "v_max"  #: customer over-voltage [pu]
    V_MIN = "v_min"  #: customer under-voltage [pu]
    THERMAL = "thermal"  #: line or transformer loading [% of its rating]
    VUF = "vuf"  #: bus voltage unbalance factor [%]
    EXPORT = "export"  #: substation export (reverse power) cap [kW]
    IMPORT = "import"  #: substation import cap [kW]
    VOLT_WATT = "volt_watt"  #: the inverter's own Volt-Watt curve (not a DSO decision)
    ENVELOPE = "envelope"  #: the DSO's ex-ante operating envelope (``market.network_aware``)
    #: the DSO's involuntary import limit (a smart meter's load limiter) after demand
    #: response failed (``controllers.demand_response.load_limit``): unserved import
    LOAD_LIMIT = "load_limit"
    #: the DSO's demand-response call (``controllers.demand_response``): a voluntary import
    #: cut, recorded in ``curtailments`` (no energy of its own in ``curtailment_energy``:
    #: the cut is the prosumers' ``demand_response.reduced_kwh``, paid in settlement)
    DEMAND_RESPONSE = "demand_response"


def limit_key(limit: str, element: str) -> str:
    """``"<limit>:<element>"``: one limit at one place, e.g. ``v_max:p007``,
    ``thermal:line.l12``, ``export:source``."""
    return f"{limit}:{element}"


def limit_of(key: str) -> str:
    """The limit of a :func:`limit_key` (``"v_min:p003"`` -> ``"v_min"``)."""
    return key.partition(":")[0]
