"""The OpenDSS adapter: the only package of tecosim that imports opendssdirect.

:class:`OpenDSSFeeder` (``adapter.py``) is the one stateful object: it owns an OpenDSS
engine context and is what the feeder role, ``tecosim feeders show`` and the
benchmarks use. The other modules hold what it delegates to.
"""

from federates.feeder.opendss.adapter import FeederFileError, OpenDSSFeeder

__all__ = ["FeederFileError", "OpenDSSFeeder"]
