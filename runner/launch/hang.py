"""Finding a hung federation from the federates' heartbeats (``<run>/logs/<name>.heartbeat``,
written by ``federates.common.door``): :class:`HangWatch` names the culprit."""

from __future__ import annotations

from pathlib import Path

from federates.common.errors import FederationError
from runner.launch.processes import Proc

# as in federates/common/door.py (not imported here: it imports helics)
HEARTBEAT_ENV = "TECOSIM_HEARTBEAT_DIR"
HEARTBEAT_SUFFIX = ".heartbeat"


def _fmt_s(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _stopped(pid: int | None) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger), from /proc (Linux)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("T", "t")


class HangWatch:
    """Finds a hung federation from the federates' heartbeats (``federates.common.door``).

    Each federate's ``<run>/logs/<name>.heartbeat`` says whether it was granted a time
    (``grnt``, computing), waits in a time request (``reqt``) or closed (``done``). When no
    heartbeat has changed for ``timeout_s`` while some federate is still open, the
    federation is hung. The culprit is the federate that was granted a time and never
    requested again (the others sit in a request waiting for it); when every open
    federate waits in a request, it is a stopped process among them and the broker, else
    the broker. The clock starts with the first heartbeat (the federates entering
    executing mode), so a slow start is left to ``federation.timeout_s``.
    """

    def __init__(self, logs: Path, names: list[str], timeout_s: float) -> None:
        self.paths = {n: logs / f"{n}{HEARTBEAT_SUFFIX}" for n in names}
        self.timeout_s = timeout_s
        self._seen: dict | None = None
        self._since = 0.0

    def clear(self) -> None:
        """Remove heartbeats of an earlier run in this folder."""
        for path in self.paths.values():
            path.unlink(missing_ok=True)

    def read(self) -> dict[str, tuple[str, float, float] | None]:
        """name -> (state, requested [s], granted [s]), None without a (complete) heartbeat."""
        out: dict[str, tuple[str, float, float] | None] = {}
        for name, path in self.paths.items():
            try:
                state, req, granted = path.read_text().split()
                out[name] = (state, float(req), float(granted))
            except (OSError, ValueError):
                out[name] = None
        return out

    def check(self, procs: list[Proc], now: float) -> FederationError | None:
        """A FederationError naming the hung process, or None while time moves."""
        beats = self.read()
        if all(b is None for b in beats.values()):
            return None  # not executing yet
        if beats != self._seen:
            self._seen, self._since = beats, now
            return None
        stalled_s = now - self._since
        if stalled_s < self.timeout_s:
            return None
        open_ = [p for p in procs if p.name in beats and p.poll() is None
                 and (beats[p.name] is None or beats[p.name][0] != "done")]
        if not open_:
            return None  # all closed, finishing up: federation.timeout_s covers the rest
        computing = [p for p in open_ if beats[p.name] is None or beats[p.name][0] != "reqt"]
        if computing:
            t = min((beats[p.name] or ("", 0.0, 0.0))[2] for p in computing)
            return FederationError(", ".join(p.name for p in computing),
                                   f"hung at simulated time {_fmt_s(t)} s (no time request for "
                                   f"{stalled_s:.0f} s)", {p.name: p.tail(8) for p in computing})
        broker = [p for p in procs if p.name == "broker"]
        stopped = [p for p in open_ + broker if _stopped(p.popen.pid if p.popen else None)]
        for p in stopped:
            if p.name in beats:
                _, req, granted = beats[p.name]
                return FederationError(p.name, f"hung at simulated time {_fmt_s(granted)} s (process "
                                       f"stopped while requesting {_fmt_s(req)} s; no time grant for "
                                       f"{stalled_s:.0f} s)", {p.name: p.tail(8)})
        t = min(beats[p.name][2] for p in open_)
        waiting = ", ".join(f"{p.name} for {_fmt_s(beats[p.name][1])} s" for p in open_)
        return FederationError("broker", f"hung at simulated time {_fmt_s(t)} s "
                               f"({'process stopped; ' if stopped else ''}no time grant for "
                               f"{stalled_s:.0f} s; waiting: {waiting})",
                               {p.name: p.tail(8) for p in broker})
