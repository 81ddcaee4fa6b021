"""In-flight control shared through PostgreSQL: every run through one endpoint is a member of one flow.

First the flow's bookkeeping on its own (readings and members fed by hand), then two client runs in
two threads (each its own event loop and VLMClient, as two mapped tasks are two processes) against
one stand-in serving model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, text

from tuwen.db.session import get_engine
from tuwen.local.standin_vlm import DEFAULT_MODEL, StandinProcess
from tuwen.synthesis.inflight import Answer, ServerLoad, SharedInflight
from tuwen.synthesis.vlm_client import ClientStats, VLMClient, VLMRequest, VLMResult

ENDPOINT = "model @ http://vlm:8000/v1"
EMPTY = ServerLoad(running=0, waiting=0)


@pytest.fixture
def engine(lineage_db: str) -> Engine:
    return get_engine(lineage_db)


def flow_state(engine: Engine, endpoint: str = ENDPOINT) -> dict[str, Any]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT state FROM vlm_flow WHERE endpoint = :e"), {"e": endpoint}).scalar_one()


def members(engine: Engine, endpoint: str = ENDPOINT) -> dict[str, int]:
    with engine.connect() as conn:
        return {member: in_flight for member, in_flight in conn.execute(
            text("SELECT member, in_flight FROM vlm_flow_member WHERE endpoint = :e"), {"e": endpoint})}


def age_reading(engine: Engine, seconds: float) -> None:
    """As if the flow's last reading were `seconds` older (instead of sleeping through the interval)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE vlm_flow SET read_at = read_at - make_interval(secs => :s)"), {"s": seconds})


def test_one_reading_per_interval_feeds_the_flow_and_members_take_fair_shares(engine: Engine) -> None:
    a = SharedInflight(engine, ENDPOINT, "a", ceiling=16, poll_s=1.0)
    b = SharedInflight(engine, ENDPOINT, "b", ceiling=16, poll_s=1.0)
    assert a.limit == 2  # before its first tick, the controller's cautious start
    # A joins alone: a fresh controller (2), whose first reading (an idle server) doubles it.
    assert a.tick(EMPTY, [], in_flight=0, demand=16) == 4
    # B's reading within the interval is not applied (the flow has had this interval's), but B takes its share.
    assert b.tick(EMPTY, [], in_flight=0, demand=16) == 2
    assert a.tick(EMPTY, [], in_flight=2, demand=16) == 2
    assert flow_state(engine)["limit"] == 4 and flow_state(engine)["decisions"] == {"increase": 1}
    assert members(engine) == {"a": 2, "b": 0}
    # The next interval: one reading (B's), the sum of the members' requests its in-flight count.
    age_reading(engine, 1.0)
    assert b.tick(EMPTY, [], in_flight=2, demand=16) == 4
    assert a.flow_limit == 4 and b.flow_limit == 8
    # A member that asks for less gets what it asks; the other the rest, never above its ceiling.
    assert a.tick(None, [], in_flight=2, demand=3) == 3
    assert b.tick(None, [], in_flight=4, demand=16) == 5
    state = flow_state(engine) | {"limit": 60}
    with engine.begin() as conn:
        conn.execute(text("UPDATE vlm_flow SET state = CAST(:s AS jsonb)"), {"s": json.dumps(state)})
    assert b.tick(None, [], in_flight=5, demand=16) == 16
    # A killed task never leaves: its row is dropped once it has not been seen for a while.
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO vlm_flow_member VALUES (:e, 'killed', 30, 30, 32, now() - interval '1 hour')"),
                     {"e": ENDPOINT})
    a.tick(None, [], in_flight=3, demand=3)
    assert members(engine) == {"a": 3, "b": 5}
    a.leave()
    b.leave()
    assert members(engine) == {}
    # A run that finds the flow empty starts afresh rather than from what the flow learned hours ago.
    c = SharedInflight(engine, ENDPOINT, "c", ceiling=16, poll_s=1.0)
    age_reading(engine, 1.0)
    assert c.tick(EMPTY, [], in_flight=0, demand=16) == 4
    assert flow_state(engine)["decisions"] == {"increase": 1}


def test_without_metrics_members_feed_the_flow_their_answers_latencies(engine: Engine) -> None:
    a = SharedInflight(engine, ENDPOINT, "a", ceiling=32, poll_s=1.0)
    b = SharedInflight(engine, ENDPOINT, "b", ceiling=32, poll_s=1.0)
    a.tick(None, [], in_flight=0, demand=32)
    b.tick(None, [], in_flight=0, demand=32)
    assert flow_state(engine)["limit"] == 2
    steady = [Answer(latency_s=1.0, completion_tokens=100, timed_out=False)] * 2
    a.tick(None, steady, in_flight=1, demand=32)  # slow start: +1 per answer
    b.tick(None, steady, in_flight=1, demand=32)
    assert flow_state(engine)["limit"] == 6
    assert flow_state(engine)["slow_s_per_token"] == pytest.approx(0.01)
    b.tick(None, [Answer(latency_s=30.0, completion_tokens=None, timed_out=True)], in_flight=3, demand=32)
    assert flow_state(engine)["limit"] == 3  # a timeout halves the flow's limit, whoever saw it
    assert (a.limit, b.limit) == (2, 1)  # A's was 2 of 4 at its last tick; B's is 1 of 3 (the odd one is A's)


def test_flows_of_different_endpoints_are_separate(engine: Engine) -> None:
    a = SharedInflight(engine, ENDPOINT, "a", ceiling=16, poll_s=1.0)
    other = SharedInflight(engine, "model @ http://other:8000/v1", "b", ceiling=16, poll_s=1.0)
    assert a.tick(EMPTY, [], in_flight=0, demand=16) == 4
    assert other.tick(EMPTY, [], in_flight=0, demand=16) == 4
    assert members(engine) == {"a": 0}


# --- two runs against one emulated server ---------------------------------------------------------

MAX_NUM_SEQS = 8
CEILING = 16  # each run's hand-set limit: together they could queue 24 requests at the server


@pytest.fixture(scope="module")
def server() -> Iterator[StandinProcess]:
    with StandinProcess(serving="test-small", max_num_seqs=MAX_NUM_SEQS) as process:
        yield process


def requests(run: str, n: int) -> list[VLMRequest]:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (40, 90, 160)).save(buffer, "JPEG")
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()}}
    prompt = {"type": "text", "text": "Describe the scene in this photo in detail. Include object counts."}
    return [VLMRequest(key=f"{run}{i}", messages=[{"role": "user", "content": [image, prompt]}], max_tokens=2000,
                       temperature=0.7, top_p=0.9, seed=None, extra_body={}) for i in range(n)]


def test_two_runs_share_the_servers_batch_and_the_later_one_gets_its_share(
        server: StandinProcess, engine: Engine) -> None:
    server.reset_serving()
    finished: dict[str, list[float]] = {"early": [], "late": []}
    stats: dict[str, ClientStats] = {}
    errors: list[BaseException] = []
    late_may_start = threading.Event()

    def run(name: str, n: int) -> None:
        def on_result(result: VLMResult) -> None:
            assert result.ok, result.error
            finished[name].append(time.monotonic())
            if name == "early" and len(finished[name]) == 30:
                late_may_start.set()

        async def go() -> ClientStats:
            async with VLMClient(server.base_url, "EMPTY", DEFAULT_MODEL, timeout_s=30, max_retries=0,
                                 max_in_flight=CEILING, inflight_control="aimd", metrics_poll_s=0.1,
                                 engine=engine) as client:
                return await client.run(requests(name, n), on_result)

        try:
            stats[name] = asyncio.run(go())
        except BaseException as exc:
            errors.append(exc)
            late_may_start.set()

    samples: list[tuple[float, dict[str, int]]] = []
    sampling = threading.Event()

    def sample() -> None:  # every member's requests in flight, as the flow's rows say
        while not sampling.is_set():
            with engine.connect() as conn:
                rows = {member: n for member, n in conn.execute(text("SELECT member, in_flight FROM vlm_flow_member"))}
            samples.append((time.monotonic(), rows))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    early = threading.Thread(target=run, args=("early", 220))

    def run_late() -> None:
        if late_may_start.wait(60):
            run("late", 90)

    late = threading.Thread(target=run_late)
    for thread in (sampler, early, late):
        thread.start()
    early.join(120)
    late.join(120)
    sampling.set()
    sampler.join()
    assert not errors, errors
    assert stats["early"].ok == 220 and stats["late"].ok == 90
    assert stats["early"].inflight_source == stats["late"].inflight_source == "metrics"
    assert members(engine, endpoint=f"{DEFAULT_MODEL} @ {server.base_url}") == {}  # both left the flow

    # The server's batch stayed full with a short queue: each run alone may queue 8 (two, 24).
    summary = server.serving()
    assert summary["occupancy"] > 0.8, summary
    assert summary["mean_waiting"] < 6, summary  # the controller holds between 2 and 6 waiting

    # While both ran, the later run had its share of the batch at once, not a request or two.
    start, end = finished["late"][0], min(finished["early"][-1], finished["late"][-1])
    assert end - start > 2.0, "the runs hardly overlapped"
    overlap = [rows for at, rows in samples if start <= at <= end and len(rows) == 2]
    assert len(overlap) >= 10
    totals = [sum(rows.values()) for rows in overlap]
    early_member = next(member for _, rows in samples if len(rows) == 1 for member in rows)  # the first alone
    shares = [1 - rows[early_member] / max(1, sum(rows.values())) for rows in overlap]  # the late run's
    assert statistics.median(shares) >= 0.35, shares
    assert statistics.mean(totals) <= MAX_NUM_SEQS + 6, totals  # one limit for both, not one each
    in_window = {name: sum(start <= t <= end for t in times) for name, times in finished.items()}
    assert in_window["late"] >= 0.35 * sum(in_window.values()), in_window
