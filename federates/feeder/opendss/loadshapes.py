"""The model's own loadshapes: each original Load following its daily or yearly LoadShape.

Owns ``feeder.background_load_shape: model``: each original (non-customer) Load's
shape read once as a periodic curve (:func:`read_loadshape`, OpenDSS's time
placement), and every Load's kW, kvar at a time of day (:meth:`ModelLoadShapes.
powers_at`). The feeder role runs it every physics step through
``OpenDSSFeeder.set_background_time``, which writes the powers into the model.
"""

from __future__ import annotations

import numpy as np

from federates.common.errors import FeederModelError

__all__ = ["Curve", "ModelLoadShapes", "read_loadshape"]

#: a LoadShape as a periodic curve: (hours incl. hour 0, P, Q or None, period [h], UseActual)
Curve = tuple[np.ndarray, np.ndarray, np.ndarray | None, float, bool]


def read_loadshape(dss, name: str, where: str) -> Curve:
    """LoadShape ``name`` of context ``dss`` as a periodic curve: (hours, P, Q or None,
    period [h], UseActual). ``where`` (the model file) labels a FeederModelError.

    OpenDSS's time placement: point k (1, 2, ...) of a fixed-interval shape
    (``interval`` / ``minterval`` / ``sinterval``) sits at hour k x interval and the
    shape repeats every npts x interval hours, so the last point is also hour 0;
    an explicit-hour shape (``hour=(...)``) has its points at those hours and
    repeats every last-hour hours (OpenDSS wraps at the last point). When the first
    point is after hour 0, hour 0 takes the last point's value. Without QMult, Q
    follows P (as in OpenDSS).
    """
    ls = dss.LoadShape
    try:
        ls.Name(name)
    except Exception:
        raise FeederModelError(f"{where}: a Load names LoadShape {name!r}, which is not defined") from None
    n = int(ls.Npts())
    p = np.asarray(ls.PMult(), dtype=float)[:n]
    q_all = np.asarray(ls.QMult(), dtype=float)
    q = q_all[:n] if len(q_all) >= n and not (n == 1 and q_all.tolist() == [0.0]) else None
    interval_h = float(ls.HrInterval())
    if interval_h > 0:
        hours = np.arange(1, n + 1, dtype=float) * interval_h
    else:
        hours = np.asarray(ls.TimeArray(), dtype=float)[:n]
    if n < 1 or len(p) != n or len(hours) != n or np.any(np.diff(hours) <= 0) or hours[0] < 0:
        raise FeederModelError(
            f"{where}: LoadShape {name!r} has no usable points "
            f"(npts {n}, {len(p)} multipliers, {len(hours)} hours; hours must increase from >= 0)"
        )
    period_h = float(hours[-1])
    if hours[0] > 0:  # hour 0 = the end of the previous period = the last point
        hours = np.concatenate([[0.0], hours])
        p = np.concatenate([p[-1:], p])
        q = None if q is None else np.concatenate([q[-1:], q])
    return hours, p, q, period_h, bool(ls.UseActual())


class ModelLoadShapes:
    """The original Loads and the shapes they follow, read once.

    ``rows``: per original Load (Loads.Idx, nominal kW, nominal kvar, shape key or "",
    yearly?); ``curves``: per shape key its :data:`Curve`.
    """

    def __init__(self, rows: list[tuple[int, float, float, str, bool]], curves: dict[str, Curve]) -> None:
        self.rows = rows
        self.curves = curves

    @classmethod
    def read(cls, dss, background: list[tuple[int, float, float]], where: str) -> ModelLoadShapes:
        """Each Load of ``background`` (Loads.Idx, nominal kW, nominal kvar) with its
        shape: its ``daily``, else its ``yearly``."""
        loads = dss.Loads
        curves: dict[str, Curve] = {}
        rows = []
        for idx, kw, kvar in background:
            loads.Idx(idx)
            daily = loads.Daily().strip().lower()
            yearly = loads.Yearly().strip().lower()
            key, use_yearly = (daily, False) if daily else (yearly, bool(yearly))
            if key and key not in curves:
                curves[key] = read_loadshape(dss, key, where)
            rows.append((idx, float(kw), float(kvar), key, use_yearly))
        return cls(rows, curves)

    def _multipliers_at(self, hour_of_day: float, hour_of_year: float | None) -> dict[tuple[str, bool], tuple[float, float]]:
        """(P, Q) multiplier of every (shape, yearly?) in use, linear between the points."""
        at: dict[tuple[str, bool], tuple[float, float]] = {}
        for key, use_yearly in {(r[3], r[4]) for r in self.rows if r[3]}:
            hours, p, q, period_h, _ = self.curves[key]
            t = float(hour_of_year) if (use_yearly and hour_of_year is not None) else float(hour_of_day)
            tau = t % period_h if period_h > 0 else 0.0
            mp = float(np.interp(tau, hours, p))
            at[(key, use_yearly)] = (mp, mp if q is None else float(np.interp(tau, hours, q)))
        return at

    def powers_at(self, hour_of_day: float, scale: float,
                  hour_of_year: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every Load's (kW, kvar) at the given time x ``scale`` (n, 2) and its nominal kW (n,).

        Times as ``OpenDSSFeeder.set_background_time`` takes them. kW = nominal kW x
        P(t) x scale, kvar = nominal kvar x Q(t) x scale; a ``UseActual`` shape gives kW
        = P(t) x scale directly and kvar = Q(t) x scale (without QMult: kW at the Load's
        nominal power factor); a Load without a shape: its nominal kW, kvar x scale.
        """
        scale = float(scale)
        at = self._multipliers_at(hour_of_day, hour_of_year)
        n = len(self.rows)
        new = np.empty((n, 2))
        kw0 = np.empty(n)
        for k, (_, kw, kvar, key, use_yearly) in enumerate(self.rows):
            kw0[k] = kw
            if not key:
                new[k] = (kw * scale, kvar * scale)
                continue
            mp, mq = at[(key, use_yearly)]
            if self.curves[key][4]:  # UseActual: the shape is the power itself [kW, kvar]
                q_kvar = mq if self.curves[key][2] is not None else (mp * kvar / kw if kw else 0.0)
                new[k] = (mp * scale, q_kvar * scale)
            else:
                new[k] = (kw * mp * scale, kvar * mq * scale)
        return new, kw0
