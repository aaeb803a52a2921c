"""The study clock, shared by every federate and the in-process engine.

Study time ``t_s`` runs from 0 to ``duration_s``. Market interval ``k`` covers
``[k*M, (k+1)*M)``; physics step ``n`` of that interval starts at ``k*M + n*dt``; the
global step index is ``g = k*S + n`` with ``S = M/dt`` steps per interval.

The federation runs on HELICS time = study time + fixed phase offsets, so that each
exchange happens at a time strictly after the one it depends on (no same-time races),
including the control loop of the physics steps, which runs in explicit exchanges.
(HELICS iterative time requests were the first design; with HELICS 3.6.1 they
deadlocked as soon as a round ended with no federate sending anything, reproduced with
three minimal federates; explicit rounds are deterministic and give the engine the
same call order.)

    k*M + 0.125  meters send the AMI readings of k-1 to the controllers (DSO), from the
                 feeder's meter block of k-1
    k*M + 0.25   prosumers send bids for k and publish the deviations of every step of
                 k (one vector), and with demand response what the calls of k-1 got
                 (dr_delivered, from an endpoint without the bids' comms delay); meters
                 send the interval energy of k-1 and the feeder the curtailment notices
                 of k-1 to the market; controllers send, with
                 network-aware clearing, the operating envelopes (market, feeder) or
                 grid constraints (market) of k
    k*M + 0.50   market settles k-1 (demand response paid by the DSO, from the
                 deliveries) and clears k: confirmations (to the prosumers and
                 the controllers), schedule values; with grid constraints the export
                 envelopes it set (to the feeder)
    k*M + 0.75   only with ``prosumers.flex_dispatch: cleared``: the prosumers read the
                 confirmations of k (and the DSO's envelopes of k, which the DSO then
                 sends them too), set their flexible devices' power from the price they
                 pay and publish the deviations of every step of k (instead of at
                 k*M + 0.25, where they then send only their bids). With ``planned``
                 nothing happens at this time: the other times and exchanges are the same
    t + 1.00     the physics steps of the interval, worked through by the feeder at
                 this one HELICS time (study time t = k*M + n*dt lives in the step
                 index the messages carry, not in HELICS time); the feeder stops only
                 to show the DSO a view (report by exception, federates.common.alarms)
                 and ends the interval with a last value:
                 view_time(k, s)   = t + 1 + 2*s*HOP  the feeder shows the DSO its view
                                                      number s of the interval (the
                                                      step and control round inside),
                                                      or that there are no more
                 answer_time(k, s) = view_time + HOP  the DSO answers the view (its caps
                                                      and whether it is quiet); the
                                                      feeder reads the answer at
                                                      view_time(k, s + 1)
                 after the last step of interval k the feeder publishes its meter block;
                 when the feeder says the interval has no more views, the DSO sends
                 its demand-response calls for k+1 (controllers.demand_response), which
                 the prosumers read at their report time of k+1 (and the feeder, which
                 records them, at its first step of k+1), and its load limits
                 for k+1 (demand_response.load_limit), which the prosumers read with
                 the calls and the feeder at its first step of k+1 (t + 1.00 of k+1)

Every federate is uninterruptible (granted exactly the times it asks for), and each
exchange is a sender's time followed by a receiver's strictly later one. A federate
wakes only when it has something to do: the feeder and the DSO once per interval and
once per view, the prosumers, meters and market once or twice per market interval.
A federate may work while its next time request is pending (``Door.later``): the
market keeps its books (the settlement of k-1, the ledger's blocks) while the feeder
plays k.
(A DSO woken by the view itself, an interruptible HELICS federate, was tried first:
with HELICS 3.6.1 the federation deadlocked at time 0 in a run with a delay filter on
the bids (comms.latency_s), every federate waiting for a grant.)

With ``market.mechanism: admm_distributed`` (and only then) the market clears k in
explicit ADMM rounds r = 0, 1, ... after its market time, the peers' steps in the
prosumers federates (federates.market.admm_distributed):

                 admm_time(k, r)       = k*M + 0.5 + 2*r*ADMM_HOP_S   the market reads
                                          the replies that have arrived; once a step's
                                          replies are all in (or after its patience) it
                                          ends the step (after a buyers' step: the price
                                          update and the stopping test) and sends the
                                          requests of the next (to the sellers, then to
                                          the buyers), or, once done, its word that the
                                          clearing is over, the confirmations and the
                                          schedule
                 admm_reply_time(k, r) = admm_time(k, r) + ADMM_HOP_S  the prosumers read
                                          the requests (and the word) that have arrived
                                          and reply
                 the gate closes at round 2*ADMM_MAX_ITERATIONS, k*M + PHASE_ADMM_GATE_S;
                 the prosumers listen for the word for ADMM_POLL_ROUNDS rounds at most
                 (their last at k*M + 0.7399, before the dispatch phase at k*M + 0.75)

After the last interval, the reports and settlement of the last interval happen at
``duration_s + 0.125``, ``duration_s + 0.25`` and ``duration_s + 0.5``. A physics
step must therefore be at least 2 s long.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

PHASE_AMI_S = 0.125
PHASE_REPORT_S = 0.25
PHASE_MARKET_S = 0.5
PHASE_DISPATCH_S = 0.75  # prosumers.flex_dispatch: cleared only
PHASE_STEP_S = 1.0
HOP_S = 0.001
#: the distributed ADMM clearing (market.mechanism admm_distributed): one round is 2
#: hops of ADMM_HOP_S [s] (market -> peers -> market); with perfect comms an iteration
#: takes 2 rounds, and the gate at k*M + PHASE_ADMM_GATE_S is round 2*ADMM_MAX_ITERATIONS;
#: the peers listen for the market's word that it is done for at most ADMM_POLL_ROUNDS
#: rounds (their last at k*M + 0.7399)
ADMM_HOP_S = 1e-4
PHASE_ADMM_GATE_S = 0.7
ADMM_MAX_ITERATIONS = 500  # (PHASE_ADMM_GATE_S - PHASE_MARKET_S) / (4 * ADMM_HOP_S)
ADMM_POLL_ROUNDS = 1200
TIME_TOL_S = 1e-6  # HELICS keeps time in integer ns; compare granted times with this
MAX_ROUNDS = 100


@dataclass(frozen=True)
class Timeline:
    """Intervals and steps of one study [s]."""

    duration_s: float
    market_interval_s: float
    physics_step_s: float

    def __post_init__(self) -> None:
        if self.physics_step_s < 2.0:
            raise ValueError("physics_step_s must be at least 2 s")
        for name, ratio in (
            ("market_interval_s / physics_step_s", self.market_interval_s / self.physics_step_s),
            ("duration_s / market_interval_s", self.duration_s / self.market_interval_s),
        ):
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {ratio:g}")

    # computed once per timeline (it is frozen): the feeder and the inverters ask for
    # these at every solve
    @cached_property
    def n_intervals(self) -> int:
        return round(self.duration_s / self.market_interval_s)

    @cached_property
    def steps_per_interval(self) -> int:
        return round(self.market_interval_s / self.physics_step_s)

    @cached_property
    def n_steps(self) -> int:
        return self.n_intervals * self.steps_per_interval

    @property
    def interval_h(self) -> float:
        """Length of a market interval [h]."""
        return self.market_interval_s / 3600.0

    @property
    def step_h(self) -> float:
        """Length of a physics step [h]."""
        return self.physics_step_s / 3600.0

    def interval_start_s(self, k: int) -> float:
        return k * self.market_interval_s

    def step_t_s(self, g: int) -> float:
        """Study time [s] at the start of global step ``g``."""
        return g * self.physics_step_s

    def interval_of_step(self, g: int) -> int:
        return g // self.steps_per_interval

    def steps_of_interval(self, k: int) -> range:
        s = self.steps_per_interval
        return range(k * s, (k + 1) * s)

    # HELICS times [s]
    def ami_time(self, k: int) -> float:
        """AMI readings of k-1 to the DSO (k may equal n_intervals)."""
        return k * self.market_interval_s + PHASE_AMI_S

    def report_time(self, k: int) -> float:
        """Bids for k, reports of k-1 (k may equal n_intervals: final reports)."""
        return k * self.market_interval_s + PHASE_REPORT_S

    def market_time(self, k: int) -> float:
        """Settle k-1, clear k (k may equal n_intervals: final settlement)."""
        return k * self.market_interval_s + PHASE_MARKET_S

    def dispatch_time(self, k: int) -> float:
        """The prosumers read k's confirmations and publish k's deviations
        (``prosumers.flex_dispatch: cleared`` only)."""
        return k * self.market_interval_s + PHASE_DISPATCH_S

    def step_time(self, g: int) -> float:
        return self.step_t_s(g) + PHASE_STEP_S

    def view_time(self, k: int, s: int) -> float:
        """View ``s`` of interval ``k``: the feeder shows the DSO a view (or that there
        are no more); the DSO answers at :meth:`answer_time`."""
        if s < 0 or s > self.max_views(k):
            raise ValueError(f"interval {k}: DSO view {s} outside 0..{self.max_views(k)} (the views of an "
                             f"interval must end before its next AMI time)")
        return self.interval_start_s(k) + PHASE_STEP_S + 2 * s * HOP_S

    def answer_time(self, k: int, s: int) -> float:
        """The DSO answers view ``s`` of interval ``k``; the feeder reads the answer at
        ``view_time(k, s + 1)``."""
        return self.view_time(k, s) + HOP_S

    def max_views(self, k: int) -> int:
        """The most views interval ``k`` has room for before the next AMI time (the
        control rounds of all its steps fit: at least half a million in a 15-min
        interval)."""
        room = self.ami_time(k + 1) - self.interval_start_s(k) - PHASE_STEP_S - 2 * HOP_S
        return int(room / (2 * HOP_S))

    def admm_time(self, k: int, h: int) -> float:
        """Round ``h`` of the distributed ADMM clearing of ``k``: the market reads the
        replies that have arrived and sends requests (or its word that it is done); at
        most 2 * ADMM_MAX_ITERATIONS, the gate."""
        if not 0 <= h <= 2 * ADMM_MAX_ITERATIONS:
            raise ValueError(f"interval {k}: ADMM round {h} outside 0..{2 * ADMM_MAX_ITERATIONS} "
                             f"(the gate closes at k*M + {PHASE_ADMM_GATE_S})")
        return self.market_time(k) + 2 * h * ADMM_HOP_S

    def admm_reply_time(self, k: int, h: int) -> float:
        """The prosumers read the requests of round ``h`` of ``k`` that have arrived
        (and the market's word that it is done) and reply."""
        if not 0 <= h < ADMM_POLL_ROUNDS:
            raise ValueError(f"interval {k}: ADMM reply {h} outside 0..{ADMM_POLL_ROUNDS - 1}")
        return self.market_time(k) + 2 * h * ADMM_HOP_S + ADMM_HOP_S

    @property
    def final_time(self) -> float:
        return self.market_time(self.n_intervals)
