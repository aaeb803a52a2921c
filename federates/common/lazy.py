"""A module imported on first use, for heavy optional dependencies.

pyomo (0.3 s to import) is needed only by the mechanisms that build an optimisation
model (lp, p2p, bilevel, the grid-constraint acceptance); importing it also makes
every later ``import scipy`` import ``scipy.stats`` (pyomo's deferred-import hook
``_finalize_scipy``: 0.55 s more on this machine, through pvlib). A study that clears
by ``uniform_price`` never touches it, so the modules that need it import it on first
use through :class:`LazyModule`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name``; the first attribute read imports it (then each read
    is the module's own attribute)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<LazyModule {self._name!r} ({state})>"
