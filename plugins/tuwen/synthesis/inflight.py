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
  of it. Every client of the server sees the same queue, so the mapped tasks of every run back off
  together and each keeps its share (AIMD's fairness), with no coordination between their processes;
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

The controller is pure (observations in, a limit out, the caller's clock): `VLMClient` feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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

    def _clamp(self, value: float) -> int:
        return max(self.floor, min(self.ceiling, int(value)))

    def _count(self, decision: str) -> int:
        self.decisions[decision] = self.decisions.get(decision, 0) + 1
        return self.limit

    def _grow(self, in_flight: int, per_answer: bool = False) -> int:
        if in_flight > self.limit:
            return self._count("hold_draining")  # a cut has not taken effect yet
        if in_flight < self.limit:
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

    def on_server_load(self, now: float, load: ServerLoad, in_flight: int) -> int:
        """One reading of the server's running and waiting requests; `in_flight` is this client's."""
        if load.waiting > 0:
            self.slow_start = False  # the server is full: from here on, +increase per reading
        if load.waiting > self.waiting_high:
            excess = load.waiting - self.waiting_low
            return self._cut(now, 1.0 - excess / max(1.0, load.running + load.waiting), in_flight)
        if load.waiting <= self.waiting_low:
            return self._grow(in_flight)
        return self._count("hold")

    def on_latency(self, now: float, latency_s: float, completion_tokens: int | None, in_flight: int,
                   timed_out: bool = False) -> int:
        """One finished request, for when the server has no /metrics (the limit follows latency)."""
        if timed_out:
            return self._cut(now, 0.5, in_flight)
        per_token = latency_s / max(1, completion_tokens or 1)
        if self.fast_s_per_token is None or self.slow_s_per_token is None:
            self.fast_s_per_token = self.slow_s_per_token = per_token
            return self._grow(in_flight, per_answer=True)
        self.fast_s_per_token += self.fast_alpha * (per_token - self.fast_s_per_token)
        self.slow_s_per_token += self.slow_alpha * (per_token - self.slow_s_per_token)
        if self.fast_s_per_token > self.latency_spike * self.slow_s_per_token:
            return self._cut(now, 0.5, in_flight)
        return self._grow(in_flight, per_answer=True)
