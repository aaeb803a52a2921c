"""The exceptions of tecosim. One base class; each names what went wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


class TecosimError(Exception):
    """Base class of every error tecosim raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a config: the field path, what is wrong, what is allowed."""

    field: str
    message: str
    allowed: str = ""

    def __str__(self) -> str:
        tail = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.field}: {self.message}{tail}"


class ConfigError(TecosimError):
    """Every problem of a config, collected and raised once."""

    def __init__(self, problems: list[Problem], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PowerFlowNotConverged(TecosimError):
    """OpenDSS did not converge at a step."""

    def __init__(self, t_s: float, detail: str = ""):
        self.t_s = t_s
        super().__init__(f"power flow did not converge at t_s={t_s:g}" + (f": {detail}" if detail else ""))


class FeederModelError(TecosimError):
    """A feeder model that cannot be loaded: names the file and what OpenDSS said."""


class FederationError(TecosimError):
    """A federate died, hung or failed: names it and shows the tail of its log.

    ``log_tails`` maps a federate name to the last lines of its log.
    """

    def __init__(self, federate: str, reason: str, log_tails: dict[str, str] | None = None):
        self.federate = federate
        self.reason = reason
        self.log_tails = dict(log_tails or {})
        msg = f"federate '{federate}' {reason}"
        for name, tail in self.log_tails.items():
            msg += f"\n--- last lines of logs/{name}.log ---\n{tail or '(log is empty)'}"
        super().__init__(msg)
