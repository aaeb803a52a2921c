"""The machine a benchmark ran on, and how busy it was while each case ran."""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def machine() -> list[tuple[str, str]]:
    """(what, value) rows: CPU, CPUs, memory, OS, Python and the packages that set the pace."""
    from runner.launch import git_commit, git_dirty, versions

    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    sep = "=" if key.endswith("=") else ":"
                    return line.split(sep, 1)[1].strip().strip('"')
        except OSError:
            pass
        return None

    mem_kb = first("/proc/meminfo", "MemTotal")
    mem = f"{int(mem_kb.split()[0]) / 2**20:.1f} GiB" if mem_kb else "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    v = versions()
    dirty = git_dirty()
    return [
        ("CPU", first("/proc/cpuinfo", "model name") or platform.processor() or "unknown"),
        ("logical CPUs", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("memory", mem),
        ("OS", f"{first('/etc/os-release', 'PRETTY_NAME=') or platform.system()}, kernel {platform.release()}"),
        ("Python", f"{v['python']} ({platform.python_implementation()})"),
        ("helics", v["helics"]),
        ("opendssdirect.py", f"{v['opendssdirect.py']} (dss-python {v['dss-python']})"),
        ("tecosim commit", (git_commit() or "unknown") + (" (working tree differs)" if dirty else "")),
    ]


def _busy_s() -> float | None:
    """CPU time [s] the whole machine spent busy so far (/proc/stat: all but idle, iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    """CPU time [s] of this process and its reaped children (the federates, the broker)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


@dataclass
class Load:
    """How busy the machine was during one case: the 1-minute load average at the start,
    at the end and the highest sampled (every second) in between; the CPU time [s] this
    process and its children used; the CPU time the rest of the machine used (the
    machine's busy time minus ours), as average cores."""

    label: str
    wall_s: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0
    load_max: float = 0.0
    own_cpu_s: float = 0.0
    others_cores: float | None = None
    samples: list[float] = field(default_factory=list)


class LoadMonitor:
    """``with LoadMonitor(label) as m: ...``; then ``m.load`` (:class:`Load`)."""

    def __init__(self, label: str, every_s: float = 1.0) -> None:
        self.load = Load(label)
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LoadMonitor:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_s(), _own_s()
        self.load.load_start = self.load.load_max = os.getloadavg()[0]
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            x = os.getloadavg()[0]
            self.load.samples.append(x)
            self.load.load_max = max(self.load.load_max, x)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        ld = self.load
        ld.wall_s = time.perf_counter() - self._t0
        ld.load_end = os.getloadavg()[0]
        ld.load_max = max(ld.load_max, ld.load_end)
        ld.own_cpu_s = _own_s() - self._own0
        busy = _busy_s()
        if busy is not None and self._busy0 is not None and ld.wall_s > 0:
            ld.others_cores = max(0.0, (busy - self._busy0) - ld.own_cpu_s) / ld.wall_s
