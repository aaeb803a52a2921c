"""Names of the federation's HELICS interfaces, in one place.

Values (physical quantities, vectors in customer order, with units):
``market/schedule_p_kw``, ``prosumers/deviation_p_kw``, ``feeder/v_pu``,
``feeder/p_kw``, ``feeder/q_kvar``, ``feeder/curtailed_p_kw``.
Endpoints (messages): one per federate, named after it.
"""

SCHEDULE_P_KW = ("market/schedule_p_kw", "kW")
DEVIATION_P_KW = ("prosumers/deviation_p_kw", "kW")
FEEDER_V_PU = ("feeder/v_pu", "pu")
FEEDER_P_KW = ("feeder/p_kw", "kW")
FEEDER_Q_KVAR = ("feeder/q_kvar", "kvar")
FEEDER_CURTAILED_P_KW = ("feeder/curtailed_p_kw", "kW")
#: the DSO's SCADA view after each solve: source P, element loading and flow, bus VUF
#: (federates.feeder.role.Scada.to_vector; units differ by position, so none here)
FEEDER_SCADA = ("feeder/scada", "")

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
