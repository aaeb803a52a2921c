"""Market micro-benchmarks: clearing, one market time of the role, P2P ADMM, ledger size.

    .venv/bin/python benchmarks/market.py [--only clear,role10k,role,admm,ledger] [--repeat N]
        [--ledger-sizes 40,1000] [--no-admm-reference] [--json PATH]

* ``clear``: one community book of 10,000 orders (10,000 participants, one order each,
  energies U(0.01, 10) kWh, limits U(0, 0.4) USD/kWh), each mechanism through
  ``federates.market.mechanisms.clear``, the part of it that only makes the result's
  20k Trade and Confirmation objects, and the exact Fraction reference.
* ``role10k``: the same 10k book through ``MarketRole.on_market_time``, end to end: the
  market time that clears it (k=0: clear, confirmation prices, trade ids, the bids and
  trades rows) and the one that settles it (k=1, metered = scheduled +- 10 %), ledger
  off, then on (orders signed beforehand; verifying and sealing are in the figure).
  The clearing alone hides what the role then does with each of its objects.
* ``role``: a default-sized market day (40 prosumers, 96 intervals, synthetic like
  ``synthetic_day``) replayed through ``MarketRole.on_market_time`` (settle k-1, clear k,
  ledger blocks), with the time per market time split into verify / clear / record /
  settle / ledger by wrapping the role's calls.
* ``admm``: ``tecosim clear``'s P2P ADMM of a 1000-order book against the P2P LP
  (welfare, iterations, seconds; ``--no-admm-reference`` skips the LP, about 30 s).
* ``ledger``: the ledger of a synthetic day of 1000 and of 40 participants (bids,
  trades, curtailments, curtailed trades and settlements as the role makes them) in
  MB, and the time of ``verify_ledger`` on it.

Prints one line per measurement (``--json``: also the lines and their figures, for
``benchmarks/run.py``); wall times are the minimum over ``--repeat`` runs (the machine
may be shared). Nothing is asserted: tests check results, this reports speed.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federates.common.messages import CurtailmentNotice, IntervalEnergy, Order
from federates.market.ledger import KeyRing, sign_order, verify_ledger

RETAIL, FEED_IN = 0.26, 0.08
TARIFFS = {"retail_usd_per_kwh": RETAIL, "feed_in_usd_per_kwh": FEED_IN}
#: what was measured: (key, printed line, figures), in order (``--json``)
RESULTS: list[tuple[str, str, dict]] = []


def emit(key: str, line: str, **figures) -> None:
    """Print ``line`` and keep it with its figures."""
    print(line, flush=True)
    RESULTS.append((key, line, figures))


# ------------------------------------------------------------------------ inputs


def random_book(n: int, seed: int = 1) -> list[Order]:
    """``n`` orders of ``n`` participants: side 50/50, U(0.01, 10) kWh, U(0, 0.4) USD/kWh."""
    rng = random.Random(seed)
    return [Order(f"p{i:05d}", rng.choice(["buy", "sell"]), 0, rng.uniform(0.01, 10.0),
                  rng.uniform(0.0, 0.4)) for i in range(n)]


def synthetic_day(n: int, seed: int = 7, n_intervals: int = 96, interval_h: float = 0.25):
    """(participants, per-interval inputs) of a market day of ``n`` prosumers.

    Each prosumer's net power is a household load (0.2-1.5 kW, evening peak) minus, for
    60 %, a 6-14 kWp PV profile (06:00-18:00 half sine x a shared cloud factor); one
    order a interval (buy the import, sell the export, 5 % of intervals none), limit
    U(feed-in, retail), signed with the prosumer's key as the prosumers federate does.
    Metered energy = scheduled +- 10 %, a reading missing in 1 %; around noon the DSO
    curtails 5 % of the sellers by 0-30 % of their offer. Returns ``[(k, orders,
    energies of k-1, notices of k-1)]`` for k = 0..n_intervals.
    """
    rng = np.random.default_rng(seed)
    names = [f"p{i:04d}" for i in range(n)]
    keys = KeyRing.from_seed(seed, names)
    base_kw = rng.uniform(0.2, 1.5, n)
    pv_kwp = np.where(rng.random(n) < 0.6, rng.uniform(6, 14, n), 0.0)
    buses = [f"b{int(i)}" for i in rng.integers(0, max(n // 3, 1), n)]
    phases = [("a", "b", "c")[int(i)] for i in rng.integers(0, 3, n)]
    cloud = np.clip(1 - 0.4 * rng.random(n_intervals), 0, 1)
    out = []
    prev_orders: list[Order] = []
    for k in range(n_intervals + 1):
        energies, notices = [], []
        if k >= 1:
            for o in prev_orders:
                e = o.energy_kwh if o.side == "buy" else -o.energy_kwh
                if rng.random() > 0.01:
                    energies.append(IntervalEnergy(o.participant, k - 1, float(e * rng.uniform(0.9, 1.1))))
                if o.side == "sell" and 40 <= (k - 1) % 96 <= 56 and rng.random() < 0.05:
                    notices.append(CurtailmentNotice(o.participant, k - 1,
                                                     float(o.energy_kwh * rng.uniform(0, 0.3)), "v_max"))
        orders = []
        if k < n_intervals:
            hour = (k % 96) * interval_h
            load = base_kw * (0.6 + 0.6 * math.exp(-((hour - 19.5) / 2.5) ** 2)) * rng.uniform(0.7, 1.3, n)
            sun = max(0.0, math.sin(math.pi * (hour - 6) / 12)) if 6 <= hour <= 18 else 0.0
            net = load - pv_kwp * 0.8 * sun * cloud[k % n_intervals]
            for i in range(n):
                if rng.random() < 0.05 or net[i] == 0:
                    continue
                side = "buy" if net[i] > 0 else "sell"
                o = Order(names[i], side, k, float(abs(net[i]) * interval_h),
                          float(rng.uniform(FEED_IN, RETAIL)), bus=buses[i], phase=phases[i])
                orders.append(sign_order(keys, o))
        out.append((k, orders, energies, notices))
        prev_orders = orders
    return names, out


def study_config(n_intervals: int = 96):
    from federates.common.config import StudyFile

    return StudyFile.model_validate({
        "study": {"duration": f"{n_intervals * 15}min", "market_interval": "15min",
                  "physics_step": "60s", "seed": 7},
        "market": TARIFFS,
    })


def run_day(names, day, ledger_dir: Path | None):
    """Replay ``day`` through a MarketRole; returns it (tables not yet drained)."""
    from federates.market.role import MarketRole

    role = MarketRole(study_config(len(day) - 1), names,
                      None if ledger_dir is None else ledger_dir / "ledger.zst")
    for k, orders, energies, notices in day:
        role.on_market_time(k, orders, energies, notices)
    return role


# -------------------------------------------------------------------- measurements


CPU: dict[str, float] = {}  # the CPU time [s] of best_of's last call (its least over the runs)


def best_of(fn, repeat: int) -> tuple[float, object]:
    """(least wall time [s] over ``repeat`` runs of ``fn``, its result); the least CPU
    time goes to ``CPU["last"]`` (steadier than wall time on a shared machine)."""
    best, best_cpu, out = math.inf, math.inf, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    CPU["last"] = best_cpu
    return best, out


def bench_clear(repeat: int) -> None:
    from federates.market.community import clear_uniform_price_reference
    from federates.market.mechanisms import clear

    book = random_book(10_000)
    for mech in ("uniform_price", "pay_as_bid", "lp"):
        t, r = best_of(lambda m=mech: clear("community", m, book, interval=0, **TARIFFS), repeat)
        emit(f"clear/{mech}", f"clear community/{mech:13s} 10k orders: {t * 1e3:7.1f} ms wall, "
             f"{CPU['last'] * 1e3:7.1f} ms CPU  ({len(r.trades)} trades, {len(r.confirmations)} confirmations)",
             wall_ms=t * 1e3, cpu_ms=CPU["last"] * 1e3)
    # the result is columns (``federates.common.rows.Rows``); its 20k objects are made
    # where someone reads them one by one (settlement, ledger, the in-process prosumers),
    # not in the lines above: what that costs, once per result
    r = clear("community", "uniform_price", book, interval=0, **TARIFFS)

    def objects():
        fresh = [x.with_columns() for x in (r.trades, r.confirmations)]
        return [x.objects() for x in fresh]

    t, _ = best_of(objects, repeat)
    emit("clear/objects", f"  not in them: the result as objects, made on first read ({len(r.trades)} Trade + "
         f"{len(r.confirmations)} Confirmation, Rows.objects): {t * 1e3:7.1f} ms wall, "
         f"{CPU['last'] * 1e3:7.1f} ms CPU", wall_ms=t * 1e3, cpu_ms=CPU["last"] * 1e3)
    from federates.market.lp import clear_lp_reference
    from federates.market.pay_as_bid import clear_pay_as_bid_reference

    for name, fn in (("uniform_price", clear_uniform_price_reference),
                     ("pay_as_bid", clear_pay_as_bid_reference), ("lp", clear_lp_reference)):
        t, _ = best_of(lambda f=fn: f(book, interval=0, **TARIFFS), 1)
        emit(f"clear/{name}/reference", f"clear community/{name:13s} 10k orders, reference (Fraction walk"
             f"{', pyomo' if name == 'lp' else ''}): {t * 1e3:7.1f} ms wall, {CPU['last'] * 1e3:7.1f} ms CPU",
             wall_ms=t * 1e3, cpu_ms=CPU["last"] * 1e3)


def bench_role10k(repeat: int) -> None:
    from federates.market.ledger import sign_order
    from federates.market.role import MarketRole

    book = random_book(10_000)
    names = [o.participant for o in book]
    rng = random.Random(5)
    energies = [IntervalEnergy(o.participant, 0, (o.energy_kwh if o.side == "buy" else -o.energy_kwh)
                               * rng.uniform(0.9, 1.1)) for o in book]
    for ledger, runs in ((False, repeat), (True, max(1, repeat // 3))):
        signed = book
        if ledger:
            keys = KeyRing.from_seed(7, names)  # the seed study_config gives the role
            signed = [sign_order(keys, o) for o in book]
        best = {"open": math.inf, "settle": math.inf, "both": math.inf}
        cpu = math.inf
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                role = MarketRole(study_config(2), names, Path(tmp) / "ledger.zst" if ledger else None)
                t0, c0 = time.perf_counter(), time.process_time()
                role.on_market_time(0, signed, [], [])
                t1 = time.perf_counter()
                role.on_market_time(1, [], energies, [])
                t2, c2 = time.perf_counter(), time.process_time()
                role.tables()
            best = {"open": min(best["open"], t1 - t0), "settle": min(best["settle"], t2 - t1),
                    "both": min(best["both"], t2 - t0)}
            cpu = min(cpu, c2 - c0)
        tag = "on " if ledger else "off"
        emit(f"role10k/ledger_{tag.strip()}",
             f"role 10k orders, ledger {tag}: clear market time {best['open'] * 1e3:7.1f} ms + settle market "
             f"time {best['settle'] * 1e3:7.1f} ms = {best['both'] * 1e3:7.1f} ms wall, {cpu * 1e3:7.1f} ms CPU "
             f"(least of {runs})",
             open_ms=best["open"] * 1e3, settle_ms=best["settle"] * 1e3, wall_ms=best["both"] * 1e3,
             cpu_ms=cpu * 1e3)


@contextmanager
def _timed(obj, name: str, acc: dict[str, float], label: str, cpu: dict[str, float] | None = None):
    """Add the wall time of every call of ``obj.name`` to ``acc[label]`` (and the
    process's CPU time, every thread's, to ``cpu[label]``)."""
    orig = getattr(obj, name)

    def wrapper(*a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return orig(*a, **kw)
        finally:
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0
            if cpu is not None:
                cpu[label] = cpu.get(label, 0.0) + time.process_time() - c0

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        setattr(obj, name, orig)


def bench_role(repeat: int, n: int = 40) -> None:
    import federates.market.role as role_mod

    names, day = synthetic_day(n)
    best = best_cpu = math.inf
    parts: dict[str, float] = {}
    cpu_parts: dict[str, float] = {}
    for _ in range(repeat):
        acc: dict[str, float] = {}
        acc_cpu: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            from federates.market.role import MarketRole

            role = MarketRole(study_config(), names, Path(tmp) / "ledger.zst")
            with (_timed(role_mod, "verified_bids", acc, "verify", acc_cpu),
                  _timed(role, "_cleared", acc, "clear", acc_cpu),  # the mechanism, trade ids, prices
                  _timed(role, "_record_clearing", acc, "record", acc_cpu),
                  _timed(role_mod, "settle_interval", acc, "settle", acc_cpu),
                  _timed(role, "_seal", acc, "ledger", acc_cpu),
                  _timed(role_mod, "bid_record_of", acc, "ledger", acc_cpu)):  # made with the books
                t0, c0 = time.perf_counter(), time.process_time()
                for k, orders, energies, notices in day:
                    role.on_market_time(k, orders, energies, notices)
                total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if total < best:
            best, parts = total, acc
        if cpu < best_cpu:  # the CPU split of the run of least CPU (steadier on a shared machine)
            best_cpu, cpu_parts = cpu, acc_cpu
    m = len(day)
    split = "  ".join(f"{k} {v / m * 1e3:.2f}" for k, v in parts.items())
    other = best - sum(parts.values())
    emit("role", f"role {n} prosumers: {best / m * 1e3:.2f} ms per market time wall, "
         f"{best_cpu / m * 1e3:.2f} ms CPU ({m} market times); {split}  other {other / m * 1e3:.2f} ms",
         wall_ms=best / m * 1e3, cpu_ms=best_cpu / m * 1e3, other_ms=other / m * 1e3,
         **{f"{k}_ms": v / m * 1e3 for k, v in parts.items()})
    cpu_split = "  ".join(f"{k} {v / m * 1e3:.2f}" for k, v in cpu_parts.items())
    cpu_other = best_cpu - sum(cpu_parts.values())
    emit("role/cpu", f"  the same in CPU time (every thread's; the run of least CPU): {cpu_split}  "
         f"other {cpu_other / m * 1e3:.2f} ms; verify + clear + record "
         f"{sum(cpu_parts.get(k, 0.0) for k in ('verify', 'clear', 'record')) / m * 1e3:.2f} ms CPU, "
         f"{sum(parts.get(k, 0.0) for k in ('verify', 'clear', 'record')) / m * 1e3:.2f} ms wall",
         other_ms=cpu_other / m * 1e3, **{f"{k}_ms": v / m * 1e3 for k, v in cpu_parts.items()})
    # the floor: the Ed25519 operations a market time needs, at this machine's speed now
    keys = KeyRing.from_seed(7, ["a"])
    msg = b"x" * 300
    sig = keys.sign_bytes("a", msg)
    t_sign, _ = best_of(lambda: [keys.sign_bytes("a", msg) for _ in range(200)], 5)
    t_verify, _ = best_of(lambda: [keys.verify_bytes("a", msg, sig) for _ in range(200)], 5)
    n_verify = sum(len(orders) for _, orders, _, _ in day) / m
    with tempfile.TemporaryDirectory() as tmp:
        from federates.market.ledger import read_blocks

        run_day(names, day, Path(tmp))
        blocks = read_blocks(Path(tmp) / "ledger.zst")
    n_sign = sum(len(b["acks"]) + 1 for b in blocks[1:]) / m  # acknowledgements + seals
    floor = n_verify * t_verify / 200 + n_sign * t_sign / 200
    emit("role/ed25519", f"  Ed25519 floor: {n_verify:.1f} verifies x {t_verify / 200 * 1e6:.0f} us + "
         f"{n_sign:.1f} signs x {t_sign / 200 * 1e6:.0f} us = {floor * 1e3:.2f} ms per market time",
         floor_ms=floor * 1e3)
    # the verify step's own floor: the day's checks and nothing else (payloads made
    # beforehand) on the signature threads as verify runs them, against the same checks
    # split evenly over the CPUs (what threads without a GIL would give)
    from federates.market.ledger import _order_payload, _parallel_map, _verify_pool

    ring = KeyRing.from_seed(7, names)  # synthetic_day's keys
    books = [[(o.participant, _order_payload(o), bytes.fromhex(o.signature)) for o in orders]
             for _, orders, _, _ in day if orders]
    t_threads, ok = best_of(lambda: [_parallel_map(lambda a: ring.verify_bytes(*a), b) for b in books], repeat)
    assert all(all(x) for x in ok)
    cpus = _verify_pool()[1]
    emit("role/checks", f"  the checks alone: {t_threads / m * 1e3:.2f} ms per market time on {cpus} signature "
         f"threads (verify's floor here; evenly over {cpus} CPUs: "
         f"{n_verify * t_verify / 200 / cpus * 1e3:.2f} ms)",
         threads_ms=t_threads / m * 1e3, even_ms=n_verify * t_verify / 200 / cpus * 1e3)


def bench_admm(repeat: int, reference: bool = True) -> None:
    from federates.market.mechanisms import clear

    book = random_book(1000, seed=3)
    t, r = best_of(lambda: clear("p2p", "admm", book, interval=0, **TARIFFS), repeat)
    cpu = CPU["last"]
    vs = ""
    if reference:
        t_lp, lp = best_of(lambda: clear("p2p", "lp", book, interval=0, **TARIFFS), 1)
        gap = (lp.welfare_usd - r.welfare_usd) / lp.welfare_usd * 100
        vs = f" vs LP {lp.welfare_usd:.4f} ({gap:+.3f} % below), LP {t_lp:.2f} s"
    emit("admm", f"p2p admm 1000 orders: {t:.2f} s wall, {cpu:.2f} s CPU, {r.iterations} iterations, "
         f"converged {r.converged}, welfare {r.welfare_usd:.4f} USD{vs}",
         wall_s=t, cpu_s=cpu, iterations=r.iterations, converged=bool(r.converged))


def bench_ledger(repeat: int, sizes: tuple[int, ...] = (40, 1000)) -> None:
    for n in sizes:
        names, day = synthetic_day(n)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_day(names, day, Path(tmp))
            t_run = time.perf_counter() - t0
            path = Path(tmp) / "ledger.zst"
            size = path.stat().st_size
            t, res = best_of(lambda p=path: verify_ledger(p), 1)
            emit(f"ledger/{n}", f"ledger {n} participants, 96 intervals: {size / 1e6:.2f} MB, "
                 f"{res.n_blocks} blocks, {res.n_records} records, verify {t:.2f} s "
                 f"({'ok' if res.ok else res.first_bad}); market day {t_run:.1f} s",
                 mb=size / 1e6, blocks=res.n_blocks, records=res.n_records, verify_s=t, day_s=t_run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="clear,role10k,role,admm,ledger")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ledger-sizes", default="40,1000", help="participants of the ledger days (default 40,1000)")
    ap.add_argument("--no-admm-reference", action="store_true", help="skip the P2P LP the ADMM is compared with")
    ap.add_argument("--json", type=Path, help="also write the lines and figures here")
    args = ap.parse_args()
    sizes = tuple(int(x) for x in args.ledger_sizes.split(","))
    benches = {"clear": bench_clear, "role10k": bench_role10k, "role": bench_role,
               "admm": lambda r: bench_admm(r, reference=not args.no_admm_reference),
               "ledger": lambda r: bench_ledger(r, sizes)}
    for name in args.only.split(","):
        benches[name](args.repeat)
    if args.json:
        import json

        args.json.write_text(json.dumps([{"key": k, "line": line, **v} for k, line, v in RESULTS], indent=1))


if __name__ == "__main__":
    main()
