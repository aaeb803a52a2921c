"""The HELICS door: one small wrapper every federate process opens.

It turns a name and a broker address into a HELICS combination federate on the zmq
core, registers vector publications/inputs (with units) and endpoints, and moves
time the way ``federates.common.timeline`` lays it out: ``advance(target)`` requests
``target`` and returns when it is granted. Federates are uninterruptible, so a
federate is granted exactly the times it asks for; every exchange is laid out on the
timeline so that a receiver asks for a time strictly after the sender's.
"""

from __future__ import annotations

import logging

import helics as h
import numpy as np

from federates.common.timeline import TIME_TOL_S


class Door:
    """A HELICS combination federate with tecosim's time discipline."""

    def __init__(self, name: str, broker_address: str, *, log: logging.Logger | None = None,
                 timeout_s: float = 60.0) -> None:
        self.name = name
        self.log = log or logging.getLogger(name)
        self._debug = self.log.isEnabledFor(logging.DEBUG)
        fi = h.helicsCreateFederateInfo()
        h.helicsFederateInfoSetCoreTypeFromString(fi, "zmq")
        h.helicsFederateInfoSetCoreInitString(
            fi, f"--federates=1 --broker_address={broker_address} --timeout={int(timeout_s)}s"
        )
        h.helicsFederateInfoSetFlagOption(fi, h.HELICS_FLAG_UNINTERRUPTIBLE, True)
        self.fed = h.helicsCreateCombinationFederate(name, fi)
        h.helicsFederateInfoFree(fi)
        self.granted = -1.0
        self.n_requests = 0

    # -- interfaces ---------------------------------------------------------
    def publication(self, key: str, unit: str):
        return h.helicsFederateRegisterGlobalPublication(self.fed, key, h.HELICS_DATA_TYPE_VECTOR, unit)

    def subscription(self, key: str, unit: str):
        return h.helicsFederateRegisterSubscription(self.fed, key, unit)

    def endpoint(self, name: str):
        return h.helicsFederateRegisterGlobalEndpoint(self.fed, name, "")

    def enter(self) -> None:
        h.helicsFederateEnterExecutingMode(self.fed)
        self.granted = 0.0
        self.log.info("executing")

    # -- values and messages ---------------------------------------------------
    @staticmethod
    def publish(pub, values: np.ndarray) -> None:
        h.helicsPublicationPublishVector(pub, [float(x) for x in values])

    @staticmethod
    def updated(sub) -> bool:
        return bool(h.helicsInputIsUpdated(sub))

    @staticmethod
    def vector(sub, n: int) -> np.ndarray:
        """The latest vector of ``sub``; zeros until something was published."""
        v = h.helicsInputGetVector(sub)
        if len(v) == 0:
            return np.zeros(n)
        if len(v) != n:
            raise ValueError(f"input {h.helicsInputGetTarget(sub)} has {len(v)} values, expected {n}")
        return np.asarray(v, dtype=float)

    @staticmethod
    def send(ep, dest: str, text: str) -> None:
        h.helicsEndpointSendBytesTo(ep, text.encode("utf-8"), dest)

    @staticmethod
    def receive(ep) -> list[str]:
        out = []
        while h.helicsEndpointHasMessage(ep):
            out.append(h.helicsMessageGetString(h.helicsEndpointGetMessage(ep)))
        return out

    # -- time ---------------------------------------------------------------
    def advance(self, target: float) -> None:
        """Request ``target`` [s] and return once it is granted."""
        while self.granted < target - TIME_TOL_S:
            t = h.helicsFederateRequestTime(self.fed, target)
            self.n_requests += 1
            if self._debug:
                self.log.debug("request %.6f -> granted %.6f", target, t)
            if t > target + TIME_TOL_S:
                raise RuntimeError(f"{self.name}: granted {t} beyond requested {target}")
            self.granted = t

    def close(self) -> None:
        h.helicsFederateDisconnect(self.fed)
        h.helicsFederateFree(self.fed)
        h.helicsCloseLibrary()
