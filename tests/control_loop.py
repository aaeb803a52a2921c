"""The control loop of one physics step, for tests that drive the controls on a toy plant.

The feeder runs it with OpenDSS (``FeederRole._settle`` and ``apply``, and the engines
hand the DSO its view): after every solve the inverters act
(:meth:`InverterFleet.on_solve`); once they have settled the DSO decides
(:meth:`ControllersRole.on_view`) and its caps go back to the inverters
(:meth:`InverterFleet.apply_dso`). :class:`ControlLoop` makes the same calls in the
same order for one solve and returns what the feeder would apply next, as commands.
"""

from __future__ import annotations

import numpy as np

from federates.common.messages import ControlCommand, DsoView
from federates.controllers.role import ControllersRole
from federates.feeder.inverters import InverterFleet


class ControlLoop:
    """The inverters of ``sites`` and the DSO, as the feeder and the engines drive them."""

    def __init__(self, cfg, sites, inverter_kva, *, sensitivities=None):
        self.fleet = InverterFleet(cfg, sites, inverter_kva)
        self.dso = ControllersRole(cfg, sites, inverter_kva, sensitivities=sensitivities)
        self.max_iterations = self.fleet.max_iterations

    def on_readings(self, g: int, v_pu, p_kw, q_kvar, curtailed_p_kw, scada=None) -> list[ControlCommand]:
        """What one solve of step ``g`` brings: the set-points to apply before the next
        solve, [] when the step is over."""
        fleet = self.fleet
        n = fleet.n
        q_kvar = np.zeros(n) if q_kvar is None else q_kvar
        moved = fleet.on_solve(g, np.asarray(v_pu, float), np.asarray(p_kw, float), np.asarray(q_kvar, float),
                               np.asarray(curtailed_p_kw, float))
        if moved is None:
            v, p = fleet.sensed
            reply = self.dso.on_view(DsoView(step=g, rounds=fleet.rounds, may_act=fleet.dso_may_act,
                                             v_pu=v, p_kw=p, scada=scada))
            moved = fleet.apply_dso(g, reply.caps, capped=reply.capped) if reply else None
        if moved is None:
            return []
        cap = fleet.cap_kw
        return [ControlCommand(participant=fleet.participants[i], q_kvar=float(fleet.q_kvar[i]),
                               p_export_cap_kw=None if np.isinf(cap[i]) else float(cap[i]))
                for i in np.flatnonzero(moved)]

    # what the tests inspect
    @property
    def q_kvar(self) -> np.ndarray:
        return self.fleet.q_kvar

    @property
    def cap_kw(self) -> np.ndarray:
        return self.fleet.cap_kw

    @property
    def dso_cap_kw(self) -> np.ndarray:
        return self.fleet.dso_cap_kw

    def _vw_cap_in_force(self) -> np.ndarray:
        return self.fleet._vw_cap_in_force()

    def report(self, k: int):
        return self.fleet.report(k)

    def tables(self):
        return {**self.fleet.tables(), **self.dso.tables()}
