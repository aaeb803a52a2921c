"""Read a book of orders from a CSV file, collecting every problem before raising.

Columns: ``participant``, ``side`` (buy|sell), ``energy_kwh`` [kWh, finite, >= 0],
``price_usd_per_kwh`` [USD/kWh, finite, may be negative] are required; ``bus``,
``phase``, ``community`` are optional (default ""). Rows are numbered as in a
spreadsheet: the header is row 1, the first order is row 2.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from federates.common.errors import ConfigError, Problem
from federates.common.messages import Order

REQUIRED = ("participant", "side", "energy_kwh", "price_usd_per_kwh")
OPTIONAL = ("bus", "phase", "community")
SIDES = ("buy", "sell")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_orders_csv(path: str | Path, *, interval: int = 0) -> list[Order]:
    """The orders in the CSV file ``path``, all for market interval ``interval``.

    Raises ConfigError (source = the path) listing every problem once: a missing or
    unknown column (``column X``), and per row (``row N, column X``) an empty
    participant, a side other than buy/sell, a non-numeric or negative or non-finite
    ``energy_kwh`` [kWh], a non-numeric or non-finite ``price_usd_per_kwh`` [USD/kWh].
    """
    path = Path(path)
    problems: list[Problem] = []
    orders: list[Order] = []
    try:
        data = path.read_bytes()
    except OSError as e:  # missing, a directory, unreadable
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot be read: {e.strerror or e}"
        raise ConfigError([Problem("<file>", reason, "a CSV file of orders")], source=str(path)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        row = data[: e.start].count(b"\n") + 1
        raise ConfigError([Problem(f"row {row}", f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                                   "a UTF-8 CSV file")], source=str(path)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        _read_rows(reader, interval, problems, orders)
    except csv.Error as e:  # e.g. a field larger than csv's field size limit
        problems.append(Problem(f"row {reader.line_num + 1}", f"cannot be read as CSV: {e}", "a CSV row"))
    if problems:
        raise ConfigError(problems, source=str(path))
    return orders


def _read_rows(reader: csv.DictReader, interval: int, problems: list[Problem], orders: list[Order]) -> None:
    """Check the header and every row of ``reader``: problems and good orders appended."""
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    allowed_cols = ", ".join(REQUIRED + OPTIONAL)
    for col in REQUIRED:
        if col not in header:
            problems.append(Problem(f"column {col}", "missing", allowed_cols))
    for col in header:
        if col not in REQUIRED + OPTIONAL:
            problems.append(Problem(f"column {col!r}", "unknown column", allowed_cols))
    if any(col not in header for col in REQUIRED):
        return

    for n, row in enumerate(reader, start=2):
        order, found = _row_order(n, row, interval, allowed_cols)
        problems += found
        if order is not None:
            orders.append(order)


def _row_order(n: int, row: dict, interval: int, allowed_cols: str) -> tuple[Order | None, list[Problem]]:
    """The order of row ``n`` (None if it has a problem) and the row's problems."""
    problems: list[Problem] = []
    if None in row:
        problems.append(Problem(f"row {n}", "more fields than columns", allowed_cols))
    cell = {k: (v or "").strip() for k, v in row.items() if k is not None}
    ok = True
    if not cell["participant"]:
        problems.append(Problem(f"row {n}, column participant", "empty", "a non-empty id"))
        ok = False
    side = cell["side"].lower()
    if side not in SIDES:
        problems.append(
            Problem(f"row {n}, column side", f"unknown side {cell['side']!r}", "buy, sell")
        )
        ok = False
    energy = _number(cell["energy_kwh"])
    if energy is None or not math.isfinite(energy) or energy < 0:
        what = (
            "not a number" if energy is None else f"{energy!r} is not a finite value >= 0"
        )
        problems.append(
            Problem(
                f"row {n}, column energy_kwh",
                f"{what} ({cell['energy_kwh']!r})",
                "a finite number >= 0 [kWh]",
            )
        )
        ok = False
    price = _number(cell["price_usd_per_kwh"])
    if price is None or not math.isfinite(price):
        what = "not a number" if price is None else f"{price!r} is not finite"
        problems.append(
            Problem(
                f"row {n}, column price_usd_per_kwh",
                f"{what} ({cell['price_usd_per_kwh']!r})",
                "a finite number [USD/kWh]",
            )
        )
        ok = False
    if not (ok and energy is not None and price is not None):
        return None, problems
    return Order(
        participant=cell["participant"],
        side="buy" if side == "buy" else "sell",
        interval=interval,
        energy_kwh=energy,
        price_usd_per_kwh=price,
        bus=cell.get("bus", ""),
        phase=cell.get("phase", ""),
        community=cell.get("community", ""),
    ), problems
