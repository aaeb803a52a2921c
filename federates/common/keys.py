"""Names of the federation's HELICS interfaces, in one place.

Values (physical quantities, vectors in customer order, with units):
``market/schedule_p_kw`` (per customer, once per interval), ``prosumers/deviation_p_kw``
(per step of the interval and customer, row-major, once per interval),
``feeder/dso_view`` (the DSO's view of a control round, by exception,
:class:`federates.common.messages.DsoView`), ``feeder/meter_block`` (v, p, q of every
step of the interval just finished, for the meters).
Endpoints (messages): one per federate, named after it.
"""

SCHEDULE_P_KW = ("market/schedule_p_kw", "kW")
DEVIATION_P_KW = ("prosumers/deviation_p_kw", "kW")
#: step, rounds, may_act, customer v [pu] and p [kW], then the SCADA vector (source P,
#: element loading and flow, bus VUF): units differ by position, so none here
FEEDER_DSO_VIEW = ("feeder/dso_view", "")
#: (v_pu, p_kw, q_kvar) x (steps of the interval) x customers, flattened in that order
FEEDER_METER_BLOCK = ("feeder/meter_block", "")

MARKET, PROSUMERS, FEEDER, METERS, CONTROLLERS = "market", "prosumers", "feeder", "meters", "controllers"
FEDERATES = (PROSUMERS, MARKET, FEEDER, METERS, CONTROLLERS)


# ---- prosumers split across K federates (``prosumers.federates``) --------------------
def prosumers_names(parts: int) -> list[str]:
    """Federate (and endpoint) names of the prosumer parts: ``prosumers`` for one part,
    else ``prosumers_0`` .. ``prosumers_{K-1}``."""
    return [PROSUMERS] if parts == 1 else [f"{PROSUMERS}_{i}" for i in range(parts)]


def deviation_key(part: int, parts: int) -> tuple[str, str]:
    """The deviation publication of prosumer part ``part`` of ``parts`` (its slice of sites)."""
    return DEVIATION_P_KW if parts == 1 else (f"{PROSUMERS}_{part}/deviation_p_kw", DEVIATION_P_KW[1])


def part_bounds(n: int, part: int, parts: int) -> tuple[int, int]:
    """Site positions ``[lo, hi)`` of part ``part`` of ``parts``: contiguous slices in
    site order, sizes differing by at most one (the first ``n % parts`` one larger)."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} outside 0..{parts - 1}")
    size, extra = divmod(n, parts)
    lo = part * size + min(part, extra)
    return lo, lo + size + (1 if part < extra else 0)


def federate_names(parts: int) -> list[str]:
    """Every federate of a run with ``parts`` prosumer parts (FEDERATES for one part)."""
    return [*prosumers_names(parts), *FEDERATES[1:]]


def admm_endpoint(name: str) -> str:
    """The endpoint of federate ``name`` (the market or a prosumers part) for the
    iterates of the distributed P2P clearing (``market.mechanism: admm_distributed``;
    registered only then, with the ``comms`` delay of ``admm``)."""
    return f"{name}/admm"
