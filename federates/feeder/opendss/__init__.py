"""The OpenDSS adapter: the only package of tecosim that imports opendssdirect.

:class:`OpenDSSFeeder` is the one stateful object; everything else here is what it
delegates to, each module one concern:

- ``adapter.py``: OpenDSSFeeder: compile the model, attach customers, set-points,
  solve, regulators and capacitors, read a solution (with its per-solve bulk cache);
- ``customers.py``: the OpenDSS elements that connect customers (service
  transformers, drops, Loads; split-phase services);
- ``loadshapes.py``: the model's own Load shapes (``background_load_shape: model``),
  evaluated every step;
- ``limits.py``: where Lines, Transformers and three-phase buses sit in the bulk
  arrays; loadings, flows and voltage unbalance from them;
- ``topology.py``: PD elements, bus graph, phase layers; distances and paths;
- ``loss_index.py``: the per-phase loss index and background Load weights for the
  loss allocation (federates/feeder/losses.py);
- ``inventory.py``: read-only model facts for ``tecosim feeders show``;
- ``capi.py``: DSS C-API batches and array reads below opendssdirect.
"""

from federates.feeder.opendss.adapter import FeederFileError, OpenDSSFeeder

__all__ = ["FeederFileError", "OpenDSSFeeder"]
