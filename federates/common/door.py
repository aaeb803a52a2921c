"""The HELICS door: one small wrapper every federate process opens.

It turns a name and a broker address into a HELICS combination federate on the zmq
core, registers vector publications/inputs (with units) and endpoints, and moves
time the way ``federates.common.timeline`` lays it out: ``advance(target)`` requests
``target`` and returns when it is granted. Federates are uninterruptible, so a
federate is granted exactly the times it asks for; every exchange is laid out on the
timeline so that a receiver asks for a time strictly after the sender's.

Work done while waiting: :meth:`Door.later` leaves work (a role's book-keeping, a
drain of its tables) for the federate's next time request. That request is then made
asynchronously and the work is done while it is pending: HELICS already knows this
federate sends nothing before the time it asked for, so the others go on (the market
keeps its books while the feeder plays the interval it cleared). The work must not use
the door (HELICS allows no sends while a request is pending) and nothing sent at the
request's time may depend on it. The work starts LATER_HANDOFF_S after the request: the
request still has to pass HELICS's threads (this federate's core, the broker, the
receivers' cores) before it grants anyone anything, and on a machine with fewer cores
than busy processes work started at once competes with them for a CPU. Measured on the
2-core machine (the market's books at once against 1 ms later): the feeder was granted
its next time 1.5-2.1 ms after the market's request against 0.7 ms.

Heartbeat: with ``TECOSIM_HEARTBEAT_DIR`` set (the runner sets it to ``<run>/logs``), the
door keeps ``<dir>/<name>.heartbeat``, one fixed-width line overwritten in place (no
fsync): ``grnt`` and the time granted once a request returns (and on entering
executing mode), ``reqt`` with the time requested before each request, ``done`` on
close; ``work`` with the study time reached (:meth:`Door.working`) from a federate
that works through many steps between two requests. The runner reads them to find a
federate that stopped requesting time (``runner.launch.HangWatch``).

Across hosts the runner also sets ``TECOSIM_LOCAL_INTERFACE``: the address the core
listens on for the broker (``--local_interface``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helics as h
import numpy as np
from helics.capi import ffi as _ffi
from helics.capi import lib as _lib

from federates.common.timeline import TIME_TOL_S

#: the pause [s] between a time request and the work left for it (module docstring)
LATER_HANDOFF_S = 0.001
HEARTBEAT_ENV = "TECOSIM_HEARTBEAT_DIR"
HEARTBEAT_SUFFIX = ".heartbeat"
HEARTBEAT_WIDTH = 48  # bytes of the line, newline included
#: the address this federate's zmq core listens on for the broker (default: HELICS's,
#: the loopback); the runner sets it for a federation across hosts
INTERFACE_ENV = "TECOSIM_LOCAL_INTERFACE"


# cffi parses a C type from its text the first time it meets it (pycparser, ~10 ms a
# type) and keeps it: parsed here, at import, the runner that forks the federates
# (``runner.launch.preimport_federates``) parses them once for all, instead of every
# federate in its time loop. These are the types pyhelics and this door use per call.
for _cdecl in ("HelicsError *", "char[]", "double[]", "int[1]"):
    _ffi.typeof(_cdecl)

#: the doors of this process not closed yet (:func:`abort_all`)
_open: set[Door] = set()
#: HELICS's library being closed in the background (:meth:`Door.close`, :func:`wait_closed`)
_closing: list[threading.Thread] = []


def abort_all(reason: str) -> None:
    """Halt the co-simulation from every open door of this process: a HELICS global
    error with ``reason``. Every other federate, on this host or another, then fails
    at its next HELICS call (or the one it waits in) naming ``reason``, instead of going
    on without this federate: one that merely left would let the others run on with
    its last values (or none)."""
    for door in list(_open):
        door.abort(reason)


def wait_closed() -> None:
    """Wait until HELICS's library, closed in the background by :meth:`Door.close`, is
    closed: a federate process calls it last, once its tables are written."""
    while _closing:
        _closing.pop().join()


def heartbeat_line(state: str, requested: float, granted: float) -> bytes:
    """``state requested granted`` [s], padded to HEARTBEAT_WIDTH bytes."""
    text = f"{state} {requested:.6f} {granted:.6f}"
    return (text[:HEARTBEAT_WIDTH - 1].ljust(HEARTBEAT_WIDTH - 1) + "\n").encode("ascii")


class Door:
    """A HELICS combination federate with tecosim's time discipline."""

    @classmethod
    def opening(cls, name: str, broker_address: str, *, log: logging.Logger | None = None) -> DoorOpening:
        """This door opened in the background (:class:`DoorOpening`): the federate
        builds its role meanwhile and takes the door with ``.door()``."""
        return DoorOpening(lambda: cls(name, broker_address, log=log))

    def __init__(self, name: str, broker_address: str, *, log: logging.Logger | None = None,
                 timeout_s: float = 60.0) -> None:
        self.name = name
        self.log = log or logging.getLogger(name)
        self._debug = self.log.isEnabledFor(logging.DEBUG)
        fi = h.helicsCreateFederateInfo()
        h.helicsFederateInfoSetCoreTypeFromString(fi, "zmq")
        # across hosts the broker connects back to this core: it listens on this host's
        # address on the route to the broker (set by runner.launch.Federation.build)
        iface = os.environ.get(INTERFACE_ENV)
        h.helicsFederateInfoSetCoreInitString(
            fi, f"--federates=1 --broker_address={broker_address} --timeout={int(timeout_s)}s"
            + (f" --local_interface=tcp://{iface}" if iface else "")
        )
        h.helicsFederateInfoSetFlagOption(fi, h.HELICS_FLAG_UNINTERRUPTIBLE, True)
        self.fed = h.helicsCreateCombinationFederate(name, fi)
        h.helicsFederateInfoFree(fi)
        _open.add(self)
        self.granted = -1.0
        self.n_requests = 0
        #: wall and main-thread CPU seconds spent in time requests (logged on close)
        self.waited_s = self.waited_cpu_s = 0.0
        #: work left for the next time request (:meth:`later`) and the wall seconds spent
        #: on such work while a request was pending
        self._later: list[Callable[[], None]] = []
        self.overlapped_s = 0.0
        self._t_enter: tuple[float, float] | None = None
        self._beat_fd: int | None = None
        beat_dir = os.environ.get(HEARTBEAT_ENV)
        if beat_dir:
            try:
                self._beat_fd = os.open(Path(beat_dir) / f"{name}{HEARTBEAT_SUFFIX}",
                                        os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:  # no heartbeat only costs the runner its hang detection
                self.log.warning("no heartbeat file: %s", e)

    def _beat(self, state: str, requested: float) -> None:
        if self._beat_fd is not None:
            os.pwrite(self._beat_fd, heartbeat_line(state, requested, self.granted), 0)

    # -- interfaces ---------------------------------------------------------
    def publication(self, key: str, unit: str):
        return h.helicsFederateRegisterGlobalPublication(self.fed, key, h.HELICS_DATA_TYPE_VECTOR, unit)

    def subscription(self, key: str, unit: str):
        return h.helicsFederateRegisterSubscription(self.fed, key, unit)

    def endpoint(self, name: str):
        return h.helicsFederateRegisterGlobalEndpoint(self.fed, name, "")

    def add_delay_filter(self, ep, latency_s: float):
        """Delay every message sent from ``ep`` by ``latency_s`` [s] with a HELICS delay
        filter (none for 0 s). Losses are not a HELICS random-drop filter (its RNG is
        not seeded by the study): the sender skips the lost messages (``comms.kept``)."""
        if latency_s <= 0.0:
            return None
        name = h.helicsEndpointGetName(ep)
        filt = h.helicsFederateRegisterFilter(self.fed, h.HELICS_FILTER_TYPE_DELAY, f"{name}/delay")
        h.helicsFilterSet(filt, "delay", float(latency_s))
        h.helicsFilterAddSourceTarget(filt, name)
        return filt

    def enter(self) -> None:
        h.helicsFederateEnterExecutingMode(self.fed)
        self._t_enter = (time.perf_counter(), time.thread_time())
        self.granted = 0.0
        self._beat("grnt", 0.0)
        self.log.info("executing")

    # -- values and messages ---------------------------------------------------
    @staticmethod
    def publish(pub, values: np.ndarray) -> None:
        """Publish ``values`` as a HELICS double vector, straight from the numpy buffer
        (pyhelics' own wrapper converts element by element)."""
        a = np.ascontiguousarray(values, dtype=np.float64)
        err = h.helicsErrorInitialize()
        _lib.helicsPublicationPublishVector(pub.handle, _ffi.from_buffer("double[]", a), len(a), err)
        if err.error_code != 0:
            raise h.HelicsException(f"[{err.error_code}] {_ffi.string(err.message).decode()}")

    @staticmethod
    def updated(sub) -> bool:
        return bool(h.helicsInputIsUpdated(sub))

    @staticmethod
    def vector(sub, n: int) -> np.ndarray:
        """The latest vector of ``sub`` (``n`` values); zeros until something was published."""
        size = h.helicsInputGetVectorSize(sub)
        if size == 0:
            return np.zeros(n)
        if size != n:
            raise ValueError(f"input {h.helicsInputGetTarget(sub)} has {size} values, expected {n}")
        out = np.empty(size, dtype=np.float64)
        got = _ffi.new("int[1]")
        err = h.helicsErrorInitialize()
        _lib.helicsInputGetVector(sub.handle, _ffi.from_buffer("double[]", out), size, got, err)
        if err.error_code != 0:
            raise h.HelicsException(f"[{err.error_code}] {_ffi.string(err.message).decode()}")
        if got[0] != n:
            raise ValueError(f"input {h.helicsInputGetTarget(sub)} has {got[0]} values, expected {n}")
        return out

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
    def later(self, work: Callable[[], None]) -> None:
        """Do ``work`` while the next time request is pending (module docstring), in the
        order given; with no request to make, at once when :meth:`advance` is next
        called. ``work`` must not use this door."""
        self._later.append(work)

    def _work_off(self) -> None:
        while self._later:
            self._later.pop(0)()

    def advance(self, target: float) -> None:
        """Request ``target`` [s] and return once it is granted; the work left by
        :meth:`later` is done while the request is pending. What that work raises is
        raised here, with the request still pending (closing the door disconnects)."""
        while self.granted < target - TIME_TOL_S:
            self._beat("reqt", target)
            if self._later:
                h.helicsFederateRequestTimeAsync(self.fed, target)
                o0 = time.perf_counter()
                time.sleep(LATER_HANDOFF_S)
                self._work_off()
                self.overlapped_s += time.perf_counter() - o0
                w0, c0 = time.perf_counter(), time.thread_time()
                t = h.helicsFederateRequestTimeComplete(self.fed)
            else:
                w0, c0 = time.perf_counter(), time.thread_time()
                t = h.helicsFederateRequestTime(self.fed, target)
            self.waited_s += time.perf_counter() - w0
            self.waited_cpu_s += time.thread_time() - c0
            self.n_requests += 1
            if self._debug:
                self.log.debug("request %.6f -> granted %.6f", target, t)
            if t > target + TIME_TOL_S:
                raise RuntimeError(f"{self.name}: granted {t} beyond requested {target}")
            self.granted = t
            self._beat("grnt", target)
        self._work_off()  # granted already: no request to do it during

    def working(self, t_s: float) -> None:
        """Heartbeat while working between requests: the study time [s] reached."""
        self._beat("work", t_s)

    def abort(self, reason: str) -> None:
        """A HELICS global error from this federate (see :func:`abort_all`)."""
        self.log.warning("halting the co-simulation: %s", reason)
        try:
            h.helicsFederateGlobalError(self.fed, 1, reason)
        except h.HelicsException as e:  # already halted, or never connected
            self.log.warning("no global error: %s", e)

    def close(self) -> None:
        if self._t_enter is not None:
            loop_s, loop_cpu_s = time.perf_counter() - self._t_enter[0], time.thread_time() - self._t_enter[1]
            self.log.info("time loop %.3f s: %d time requests waited %.3f s (CPU %.3f s); outside them "
                          "%.3f s (CPU %.3f s), of which %.3f s with a request pending", loop_s, self.n_requests,
                          self.waited_s, self.waited_cpu_s, loop_s - self.waited_s, loop_cpu_s - self.waited_cpu_s,
                          self.overlapped_s)
        _open.discard(self)
        self._beat("done", self.granted)
        if self._beat_fd is not None:
            os.close(self._beat_fd)
            self._beat_fd = None
        h.helicsFederateDisconnect(self.fed)
        h.helicsFederateFree(self.fed)
        # closing the library waits (100 ms) for the core's threads to end: in the
        # background, while the federate writes its tables; the process waits for it
        # before it exits (wait_closed; exec'd, the interpreter joins the thread anyway)
        closing = threading.Thread(target=h.helicsCloseLibrary, name="helics-close")
        closing.start()
        _closing.append(closing)


def _ns(t_s: float) -> int:
    """``t_s`` [s] as HELICS time (integer ns, rounded as HELICS converts a double)."""
    return round(t_s * 1e9)


class LateEndpoint:
    """An endpoint whose messages reach their receivers ``latency_s`` [s] after they were
    sent, the delay kept by the receiving federate instead of a HELICS delay filter:
    each message carries its arrival time [ns] (the sender's granted time + the
    latency, ``<ns>|<text>``) and a receiver hands out only those that have arrived by its
    granted time, keeping the rest for a later call. The same rule as a delay filter and
    as the in-process engine (``runner.engine``: arrival = send + latency, in ns), with
    the delay outside HELICS's time coordination: with a delay filter on the ADMM's
    iterates (rounds 2e-4 s apart) a federation hung once in a full test run with HELICS
    3.6.1, every federate waiting for a grant none got. Both ends must be
    LateEndpoints of the same latency (0: plain messages, nothing held)."""

    def __init__(self, door: Door, ep: Any, latency_s: float) -> None:
        self.door, self.ep = door, ep
        self.latency_ns = _ns(latency_s) if latency_s > 0.0 else 0
        self._held: list[tuple[int, str]] = []  # (arrival [ns], text), in order of receipt

    def send(self, dest: str, text: str) -> None:
        if self.latency_ns:
            text = f"{_ns(self.door.granted) + self.latency_ns}|{text}"
        self.door.send(self.ep, dest, text)

    def receive(self) -> list[str]:
        """The messages that have arrived by the door's granted time, in order of sending
        (one latency for all: arrival order is sending order)."""
        new = self.door.receive(self.ep)
        if not self.latency_ns:
            return new
        for text in new:
            at, _, body = text.partition("|")
            self._held.append((int(at), body))
        now = _ns(self.door.granted)
        out = [body for at, body in self._held if at <= now]
        self._held = [(at, body) for at, body in self._held if at > now]
        return out


class DoorOpening:
    """A :class:`Door` being opened in a background thread. Creating the federate waits
    for its core to register with the broker (~0.1 s of wall time and a few ms of CPU,
    measured); the federate builds its role meanwhile (the feeder compiles its OpenDSS
    model) instead of one after the other. HELICS calls release the GIL."""

    def __init__(self, open_door: Callable[[], Door]) -> None:
        self._door: Door | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._door = open_door()
            except BaseException as e:  # raised again by door(), in the federate's thread
                self._error = e

        self._thread = threading.Thread(target=run, name="helics-open", daemon=True)
        self._thread.start()

    def door(self) -> Door:
        """The door, once open; what opening it raised, raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._door is not None
        return self._door
