"""In-flight control from the server's state: keep vLLM's running batch full and its waiting queue short.

A fixed in-flight count (`TUWEN_VLM_MAX_IN_FLIGHT` x pool slots) is either too many for the server
(requests queue at vLLM, latency grows, long answers time out) or too few (free sequences on a
paid-for GPU, worst at the end of every batch task). `AIMDController` sets the limit from what the
server says about itself, with the hand-set limit kept as a ceiling:

- from vLLM's Prometheus `/metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`) when
  the endpoint serves them: while the waiting queue is at or under `waiting_low` and this client
  uses its whole limit, add `increase` per reading; while the server queues nothing at all, double
  instead (a slow start: an idle server is filled in a few readings; it ends at the first queued
  request, so a task that starts beside busy ones joins them gently); when the queue is over
  `waiting_high`, cut the limit by this client's share of the excess:
  `limit * (1 - excess / (running + waiting))`, at least by one and to no less than `max_decrease`
  of it. Every client of the server sees the same queue, so clients with controllers of their own
  back off together and each keeps its share in the end (AIMD's fairness);
- from latency when there are no metrics: seconds per completion token (which evens out answer
  lengths) against its slow moving average; a fast average over `latency_spike` times the slow
  one, or a timeout, halves the limit; otherwise the limit grows as above.

A short queue (not none) is the aim: vLLM admits waiting requests at the start of each step, so a
request must already be waiting when a sequence finishes, or its slot idles while the client turns
around (delivers, pulls the next request, sends it). A cut takes effect as this client's requests
finish (nothing is cancelled), so after one the controller neither cuts nor grows again until the
client's in-flight count is down to the new limit: the queue is still draining, and reacting to it
again would cut twice for one excess. That clock is the server's own completion rate, whatever
the model; `cooldown_s` is a floor under it.

The controller is pure (observations in, a limit out, the caller's clock). With no database,
`VLMClient` feeds one per run. With the lineage database (as in Airflow) one controller serves every
run through the same endpoint, its state kept in PostgreSQL (`SharedInflight`, tables `vlm_flow` and
`vlm_flow_member`): each run is a member that, every `metrics_poll_s`, records its requests in flight
and its demand (its workers still running), and in the same short transaction, under the flow row's
lock, feeds the controller its /metrics reading if no member has done so within the interval (so
the controller sees one reading per interval however many members there are) or its answers'
latencies; the controller's in-flight count is the members' sum. Each member's limit is then its
max-min fair share of the flow's limit (`fair_shares`), never above its own ceiling: a run that
starts beside busy ones gets its share at its first reading, instead of growing one request per
reading while the others back off. Members not seen for `STALE_POLLS` intervals (at least `STALE_S`:
a killed task) drop out.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from tuwen.db.models import VLMFlow, VLMFlowMember

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class ServerLoad:
    running: float
    waiting: float


def parse_vllm_metrics(text: str, model: str | None = None) -> ServerLoad | None:
    """Running and waiting requests from vLLM's /metrics text (summed over engines; `model` filters
    on `model_name` when given); None when the text has neither."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (RUNNING, WAITING) and (model is None or sample.labels.get("model_name") in
                                                      (None, model)):
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    if RUNNING not in found or WAITING not in found:
        return None
    return ServerLoad(found[RUNNING], found[WAITING])


@dataclass
class AIMDController:
    ceiling: int  # the hand-set TUWEN_VLM_MAX_IN_FLIGHT: never more
    floor: int = 1
    # A task starts with 2 requests in flight: many tasks start beside busy ones, and whatever they
    # send before their first reading joins the queue (an idle server is filled by the slow start).
    initial: int = 2
    increase: int = 1
    waiting_low: float = 2.0
    waiting_high: float = 6.0
    max_decrease: float = 0.5  # a cut never leaves less than this share of the limit
    latency_spike: float = 2.0
    cooldown_s: float = 0.0
    fast_alpha: float = 0.3  # latency averages (exponential): fast follows the last few answers,
    slow_alpha: float = 0.02  # slow the last ~50
    limit: int = field(init=False)
    slow_start: bool = field(init=False, default=True)
    last_decrease: float = field(init=False, default=-math.inf)
    fast_s_per_token: float | None = field(init=False, default=None)
    slow_s_per_token: float | None = field(init=False, default=None)
    decisions: dict[str, int] = field(init=False, default_factory=dict)
    _credit: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.ceiling < 1 or not 1 <= self.floor <= self.ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor {self.floor}, ceiling {self.ceiling}")
        self.limit = self._clamp(self.initial)

    def state(self) -> dict[str, Any]:
        """What the controller has learned, as JSON (its settings stay the caller's)."""
        return {
            "limit": self.limit,
            "slow_start": self.slow_start,
            # JSON has no infinity: None is "never cut".
            "last_decrease": None if math.isinf(self.last_decrease) else self.last_decrease,
            "fast_s_per_token": self.fast_s_per_token,
            "slow_s_per_token": self.slow_s_per_token,
            "decisions": dict(self.decisions),
            "credit": self._credit,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take up where `state()` left off."""
        self.limit = int(state["limit"])
        self.slow_start = bool(state["slow_start"])
        self.last_decrease = -math.inf if state["last_decrease"] is None else float(state["last_decrease"])
        self.fast_s_per_token = state["fast_s_per_token"]
        self.slow_s_per_token = state["slow_s_per_token"]
        self.decisions = dict(state["decisions"])
        self._credit = float(state["credit"])

    def _clamp(self, value: float) -> int:
        return max(self.floor, min(self.ceiling, int(value)))

    def _count(self, decision: str) -> int:
        self.decisions[decision] = self.decisions.get(decision, 0) + 1
        return self.limit

    def _grow(self, in_flight: int, demand: int | None, per_answer: bool = False) -> int:
        if in_flight > self.limit:
            return self._count("hold_draining")  # a cut has not taken effect yet
        if (in_flight if demand is None else demand) < self.limit:
            return self._count("hold_unused")  # the limit is not what holds this client back
        if per_answer:
            # One answer is 1/limit of a round trip: AIMD's "+increase per round trip" (and slow
            # start's doubling per round trip) spread over the answers of that round trip.
            self._credit += 1.0 if self.slow_start else self.increase / self.limit
            if self._credit < 1.0:
                return self._count("hold_credit")
            step, self._credit = int(self._credit), self._credit - int(self._credit)
        else:
            step = self.limit if self.slow_start else self.increase
        self.limit = self._clamp(self.limit + step)
        return self._count("increase")

    def _cut(self, now: float, factor: float, in_flight: int) -> int:
        if in_flight > self.limit or now - self.last_decrease < self.cooldown_s:
            return self._count("hold_draining")  # the last cut is still taking effect
        self.slow_start = False
        factor = max(self.max_decrease, factor)
        self.limit = self._clamp(min(self.limit - 1, math.floor(self.limit * factor)))
        self.last_decrease = now
        return self._count("decrease")

    def on_server_load(self, now: float, load: ServerLoad, in_flight: int, demand: int | None = None) -> int:
        """One reading of the server's running and waiting requests; `in_flight` is this client's.

        `demand` is how many requests the clients would have in flight without the limit (default
        `in_flight`: one client's workers take a freed slot at once). Clients that learn of a new
        limit a reading late say so with their demand, or every other reading would look unused."""
        if load.waiting > 0:
            self.slow_start = False  # the server is full: from here on, +increase per reading
        if load.waiting > self.waiting_high:
            excess = load.waiting - self.waiting_low
            return self._cut(now, 1.0 - excess / max(1.0, load.running + load.waiting), in_flight)
        if load.waiting <= self.waiting_low:
            return self._grow(in_flight, demand)
        return self._count("hold")

    def on_latency(self, now: float, latency_s: float, completion_tokens: int | None, in_flight: int,
                   timed_out: bool = False, demand: int | None = None) -> int:
        """One finished request, for when the server has no /metrics (the limit follows latency)."""
        if timed_out:
            return self._cut(now, 0.5, in_flight)
        per_token = latency_s / max(1, completion_tokens or 1)
        if self.fast_s_per_token is None or self.slow_s_per_token is None:
            self.fast_s_per_token = self.slow_s_per_token = per_token
            return self._grow(in_flight, demand, per_answer=True)
        self.fast_s_per_token += self.fast_alpha * (per_token - self.fast_s_per_token)
        self.slow_s_per_token += self.slow_alpha * (per_token - self.slow_s_per_token)
        if self.fast_s_per_token > self.latency_spike * self.slow_s_per_token:
            return self._cut(now, 0.5, in_flight)
        return self._grow(in_flight, demand, per_answer=True)


def fair_shares(total: int, demands: Mapping[str, int]) -> dict[str, int]:
    """`total` slots split max-min fairly (water-filling) over members asking for `demands`.

    A member asking for no more than an equal share of what is left gets what it asks; the rest is
    split equally among the others, the units an uneven split leaves over going in member order (so
    members computing it from the same rows agree). Every member counts as asking for one slot at
    least and gets one, so only a `total` smaller than the number of members is exceeded.
    """
    asks = {member: max(1, demand) for member, demand in demands.items()}
    shares: dict[str, int] = {}
    left = total
    pending = sorted(asks, key=lambda member: (asks[member], member))
    while pending and asks[pending[0]] <= left // len(pending):
        member = pending.pop(0)
        shares[member] = asks[member]
        left -= asks[member]
    if pending:
        equal, extra = divmod(left, len(pending))
        for rank, member in enumerate(sorted(pending)):
            shares[member] = max(1, equal + (1 if rank < extra else 0))
    return shares


STALE_POLLS = 5  # a member not seen for this many intervals (and at least STALE_S) is gone: a killed task
STALE_S = 5.0


@dataclass(frozen=True)
class Answer:
    """One finished request, for the latency signal (a server without /metrics)."""

    latency_s: float
    completion_tokens: int | None
    timed_out: bool


class SharedInflight:
    """One run's membership of the in-flight control that every run through an endpoint shares (module doc).

    `tick` and `leave` block on the database: call them off the event loop, one at a time.
    """

    def __init__(self, engine: Engine, endpoint: str, member: str, ceiling: int, poll_s: float) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.member = member
        self.ceiling = ceiling
        self.poll_s = poll_s
        self.limit = min(ceiling, AIMDController.initial)  # this member's, until its first tick
        self.flow_limit: int | None = None  # over all members, as of this member's last tick
        self._joined = False

    def tick(self, load: ServerLoad | None, answers: Sequence[Answer], in_flight: int, demand: int) -> int:
        """Record this member, feed the flow's controller what it saw, and return this member's limit.

        `load` is this member's /metrics reading (None without one), `answers` what finished since
        its last tick when it follows latency, `demand` the requests it would have in flight
        without a limit (its workers that have not run out of requests).
        """
        stale_s = max(STALE_S, STALE_POLLS * self.poll_s)
        with self.engine.begin() as conn:
            conn.execute(insert(VLMFlow).values(endpoint=self.endpoint).on_conflict_do_nothing())
            # The flow row's lock serialises the members' ticks: a reading is applied once, and every
            # tick locks the flow row before any member row, so ticks never deadlock on each other.
            flow = conn.execute(
                select(VLMFlow.state, func.extract("epoch", func.clock_timestamp()).label("now"),
                       func.extract("epoch", func.clock_timestamp() - VLMFlow.read_at).label("age"))
                .where(VLMFlow.endpoint == self.endpoint).with_for_update()
            ).one()
            seen = {"in_flight": in_flight, "demand": demand, "ceiling": self.ceiling, "seen_at": func.clock_timestamp()}
            conn.execute(insert(VLMFlowMember).values(endpoint=self.endpoint, member=self.member, **seen)
                         .on_conflict_do_update(index_elements=["endpoint", "member"], set_=seen))
            conn.execute(delete(VLMFlowMember).where(
                VLMFlowMember.endpoint == self.endpoint,
                VLMFlowMember.seen_at < func.clock_timestamp() - dt.timedelta(seconds=stale_s)))
            members = conn.execute(select(VLMFlowMember.member, VLMFlowMember.in_flight, VLMFlowMember.demand,
                                          VLMFlowMember.ceiling).where(VLMFlowMember.endpoint == self.endpoint)).all()
            # The flow's ceiling is its members' ceilings added up; its floor one request each.
            controller = AIMDController(ceiling=sum(m.ceiling for m in members), floor=len(members))
            # A run that joins a flow with no other member starts afresh, as a run alone always did: what
            # the flow learned may be hours old, from a server restarted or resized since.
            if flow.state is not None and (self._joined or len(members) > 1):
                controller.restore(flow.state)
                controller.limit = max(controller.limit, controller.floor)
            now = float(flow.now)
            total_in_flight, total_demand = sum(m.in_flight for m in members), sum(m.demand for m in members)
            # 0.9: one member's ticks are one interval apart plus the reading, and a timer may fire early.
            read = load is not None and (flow.age is None or float(flow.age) >= 0.9 * self.poll_s)
            if read and load is not None:
                controller.on_server_load(now, load, total_in_flight, total_demand)
            for answer in answers:
                controller.on_latency(now, answer.latency_s, answer.completion_tokens, total_in_flight,
                                      timed_out=answer.timed_out, demand=total_demand)
            conn.execute(update(VLMFlow).where(VLMFlow.endpoint == self.endpoint).values(
                state=controller.state(), updated_at=func.clock_timestamp(),
                **({"read_at": func.clock_timestamp()} if read else {})))
        self._joined = True
        self.flow_limit = controller.limit
        share = fair_shares(controller.limit, {m.member: m.demand for m in members})[self.member]
        self.limit = min(self.ceiling, share)
        return self.limit

    def leave(self) -> None:
        """The run is over: its slots go to the other members at their next tick."""
        with self.engine.begin() as conn:
            conn.execute(delete(VLMFlowMember).where(VLMFlowMember.endpoint == self.endpoint,
                                                     VLMFlowMember.member == self.member))
