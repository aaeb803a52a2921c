"""Units, signs and phases: said once, here.

Sign convention
    ``p_kw > 0`` is consumption (import from the grid at the customer point);
    ``p_kw < 0`` is export. ``q_kvar > 0`` is reactive power drawn (inductive, as a
    load); ``q_kvar < 0`` is reactive power injected. Every place that flips a sign
    says so in a comment.

Energy in a market interval
    ``energy_kwh > 0`` on a bid means the participant wants to buy; offers carry a
    positive ``energy_kwh`` with ``side == "sell"``.

Per unit
    Customer voltages are per unit of the nominal line-to-neutral voltage of their
    bus (``kVBase`` of the OpenDSS bus), magnitudes only.

Time
    Inside the federation time is seconds from study start (``t_s``). Outputs also
    carry timezone-aware timestamps.

Phases
    Phases a/b/c are OpenDSS nodes 1/2/3. ``PHASE_TO_NODE`` is the only mapping.
"""

from __future__ import annotations

PHASES: tuple[str, ...] = ("a", "b", "c")
PHASE_TO_NODE: dict[str, int] = {"a": 1, "b": 2, "c": 3}
NODE_TO_PHASE: dict[int, str] = {v: k for k, v in PHASE_TO_NODE.items()}

SECONDS_PER_HOUR = 3600.0


def kw_to_kwh(p_kw: float, dt_s: float) -> float:
    """Energy [kWh] of a constant power ``p_kw`` [kW] held for ``dt_s`` [s]."""
    return p_kw * dt_s / SECONDS_PER_HOUR


def parse_duration_s(text: str | int | float) -> float:
    """Seconds in a duration written as ``900``, ``"900s"``, ``"15min"``, ``"1h"``, ``"2d"``.

    Raises ValueError naming the accepted forms.
    """
    if isinstance(text, bool):
        raise ValueError("a duration must be a number of seconds or a string like '15min'")
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    units = (("min", 60.0), ("ms", 1e-3), ("s", 1.0), ("h", 3600.0), ("d", 86400.0))
    for suffix, factor in units:
        if s.endswith(suffix):
            number = s[: -len(suffix)]
            try:
                return float(number) * factor
            except ValueError:
                break
    try:
        return float(s)
    except ValueError:
        raise ValueError(
            f"cannot read duration {text!r}; write seconds or a number with s, min, h or d"
        ) from None
