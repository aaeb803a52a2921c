"""Progress on stderr: simulated time and ETA of a run, and the progress file through
which the federation's feeder reports its simulated time to the runner.

On a terminal :class:`Progress` redraws one bar line; otherwise (CI logs, pipes) it
prints a line at every 10 % so that logs stay readable. The ETA is the wall time per
simulated second so far times the simulated seconds left.

The file is written by the feeder federate (:func:`federates.common.study.write_progress_file`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from federates.common.study import PROGRESS_FILE, write_progress_file

__all__ = ["PROGRESS_FILE", "Progress", "read_progress_file", "write_progress_file"]

BAR_WIDTH_CHARS = 28
REDRAW_MIN_S = 0.2
"""Least wall time between two redraws of the terminal bar [s]."""


def read_progress_file(run_dir: Path) -> float | None:
    """The simulated time [s] in ``<run_dir>/progress``, or None (no file yet)."""
    try:
        return float((Path(run_dir) / PROGRESS_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def format_duration(seconds: float) -> str:
    """A wall-time span for people: ``40 s``, ``2 min``, ``1 h 05 min``."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min" if s >= 600 else f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def format_sim_time(t_s: float) -> str:
    """Simulated time as ``H:MM:SS`` (hours may exceed 24)."""
    s = max(0, round(t_s))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def eta_s(elapsed_wall_s: float, done: float, total: float) -> float:
    """Wall time left [s] at the rate so far (inf before any progress)."""
    if done <= 0:
        return math.inf
    return elapsed_wall_s / done * max(0.0, total - done)


class Progress:
    """Progress of one run over ``total_s`` simulated seconds.

    ``update(t_s)`` takes the simulated time reached [s]; ``finish()`` marks the end
    (100 %), ``close()`` ends the terminal line. A disabled instance prints nothing.
    """

    def __init__(self, total_s: float, *, label: str = "tecosim", enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total_s = float(total_s)
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.clock = clock
        self.t0_wall_s = clock()
        self.sim_s = 0.0
        self.next_decile = 1  # non-TTY: the next 10 % step to print
        self.last_draw_s = -math.inf
        self.drawn = False  # TTY: a bar line is open
        self.shown_done = False  # TTY: 100 % drawn

    def __call__(self, t_s: float) -> None:
        self.update(t_s)

    def fraction(self) -> float:
        return 1.0 if self.total_s <= 0 else min(1.0, max(0.0, self.sim_s / self.total_s))

    def update(self, t_s: float) -> None:
        if not self.enabled:
            return
        self.sim_s = max(self.sim_s, float(t_s))
        now = self.clock()
        frac = self.fraction()
        if self.tty:
            if (frac >= 1.0 and not self.shown_done) or now - self.last_draw_s >= REDRAW_MIN_S:
                self.shown_done = frac >= 1.0
                self.last_draw_s = now
                self._draw(now)
            return
        decile = math.floor(frac * 10 + 1e-9)
        if decile >= self.next_decile:
            self.next_decile = decile + 1
            self._line(now)

    def finish(self) -> None:
        """The run completed: show 100 % (if not shown yet) and end the line."""
        self.update(self.total_s)
        self.close()

    def close(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def _text(self, now: float) -> str:
        frac = self.fraction()
        eta = eta_s(now - self.t0_wall_s, self.sim_s, self.total_s)
        tail = "done" if frac >= 1.0 else f"ETA {format_duration(eta)}"
        return (f"{frac * 100:3.0f} %  simulated {format_sim_time(self.sim_s)} of "
                f"{format_sim_time(self.total_s)}, {tail}")

    def _draw(self, now: float) -> None:
        filled = round(self.fraction() * BAR_WIDTH_CHARS)
        bar = "#" * filled + "." * (BAR_WIDTH_CHARS - filled)
        self.stream.write(f"\r{self.label}: [{bar}] {self._text(now)}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def _line(self, now: float) -> None:
        self.stream.write(f"{self.label}: {self._text(now)}\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
