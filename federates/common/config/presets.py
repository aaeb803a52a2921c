"""Grid presets: named sets of feeder and PV values (``grid_preset: strong | weak |
very_weak``), applied by :func:`federates.common.config.loader.apply_grid_preset`, which
documents each value and its source."""

from __future__ import annotations

from typing import Any

#: ``grid_preset``: the values a preset fills in (see :func:`apply_grid_preset`).
GRID_PRESETS: dict[str, dict[str, Any]] = {
    "strong": {
        "feeder": {
            "synthetic": {"source_mva_sc": 200.0, "line_length_multiplier": 1.0, "phase_imbalance": 0.0},
            "customer_connection": {"transformer_kva": 50.0, "service_length_m": 30.0,
                                    "service_r_ohm_per_km": 1.32, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 30.0},
    },
    "weak": {
        "feeder": {
            "synthetic": {"source_mva_sc": 30.0, "line_length_multiplier": 2.0, "phase_imbalance": 0.3},
            "customer_connection": {"transformer_kva": 25.0, "service_length_m": 100.0,
                                    "service_r_ohm_per_km": 2.09, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 80.0},
    },
    "very_weak": {
        "feeder": {
            "synthetic": {"source_mva_sc": 8.0, "line_length_multiplier": 3.0, "phase_imbalance": 0.6},
            "customer_connection": {"transformer_kva": 15.0, "service_length_m": 150.0,
                                    "service_r_ohm_per_km": 3.33, "service_x_ohm_per_km": 0.1},
        },
        "prosumers": {"pv_penetration_pct": 150.0},
    },
}

