"""The in-flight controller as a pure function of observations: readings in, the limit it sets out."""

from __future__ import annotations

import json
import random

import pytest

from tuwen.synthesis.inflight import AIMDController, ServerLoad, fair_shares, parse_vllm_metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen2.5-VL-32B-Instruct"} 61.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen2.5-VL-32B-Instruct"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen2.5-VL-32B-Instruct"} 0.42
"""


def test_running_and_waiting_are_read_from_vllms_metrics_text() -> None:
    assert parse_vllm_metrics(VLLM_METRICS) == ServerLoad(61.0, 3.0)
    assert parse_vllm_metrics(VLLM_METRICS, model="Qwen2.5-VL-32B-Instruct") == ServerLoad(61.0, 3.0)
    assert parse_vllm_metrics(VLLM_METRICS, model="another-model") is None
    assert parse_vllm_metrics("# nothing here\n") is None


def test_slow_start_doubles_to_the_ceiling_while_the_queue_is_empty() -> None:
    c = AIMDController(ceiling=32)
    assert c.limit == 2  # a cautious start: many tasks start beside busy ones
    limits = [c.on_server_load(t, ServerLoad(running=c.limit, waiting=0), in_flight=c.limit) for t in range(6)]
    assert limits == [4, 8, 16, 32, 32, 32]  # never above the ceiling


def test_an_unused_limit_is_not_raised() -> None:
    c = AIMDController(ceiling=32, initial=10)
    assert c.on_server_load(0.0, ServerLoad(running=4, waiting=0), in_flight=4) == 10
    assert c.decisions == {"hold_unused": 1}


def test_a_growing_queue_cuts_the_limit_by_this_clients_share_of_the_excess() -> None:
    c = AIMDController(ceiling=64, initial=40, waiting_low=2, waiting_high=6)
    # 64 running, 16 waiting: 14 too many of 80 at the server, so each client cuts 14/80 of its limit.
    assert c.on_server_load(0.0, ServerLoad(running=64, waiting=16), in_flight=40) == 33
    # Until this client's in-flight count is down to the new limit the queue is still draining:
    # no second cut for the same excess, and no growth either.
    assert c.on_server_load(0.5, ServerLoad(running=64, waiting=12), in_flight=38) == 33
    assert c.on_server_load(0.6, ServerLoad(running=64, waiting=1), in_flight=35) == 33
    # Drained: growth is additive (+1 per reading), no longer doubling.
    assert c.on_server_load(2.0, ServerLoad(running=64, waiting=1), in_flight=33) == 34
    assert c.on_server_load(2.5, ServerLoad(running=64, waiting=2), in_flight=34) == 35
    # Between the marks, hold; an excess that outlives the drain is cut again.
    assert c.on_server_load(3.0, ServerLoad(running=64, waiting=4), in_flight=35) == 35
    assert c.on_server_load(3.5, ServerLoad(running=64, waiting=12), in_flight=35) == 30  # 35 x (1 - 10/76)


def test_a_task_that_starts_beside_busy_ones_skips_the_slow_start() -> None:
    c = AIMDController(ceiling=32)
    assert c.on_server_load(0.0, ServerLoad(running=64, waiting=2), in_flight=2) == 3


def test_a_cut_never_goes_below_half_or_the_floor_and_always_takes_at_least_one() -> None:
    c = AIMDController(ceiling=64, initial=40, floor=4)
    assert c.on_server_load(0.0, ServerLoad(running=64, waiting=500), in_flight=40) == 20
    c = AIMDController(ceiling=64, initial=40)
    assert c.on_server_load(0.0, ServerLoad(running=600, waiting=7), in_flight=40) == 39
    c = AIMDController(ceiling=64, initial=5, floor=4)
    assert c.on_server_load(0.0, ServerLoad(running=4, waiting=500), in_flight=5) == 4


def test_clients_sharing_a_server_converge_to_a_full_batch_and_a_short_queue() -> None:
    """Four batch tasks, one emulated 64-sequence server: the sum of limits settles near 64 + a short queue."""
    max_num_seqs = 64
    clients = [AIMDController(ceiling=32) for _ in range(4)]
    history = []
    for tick in range(200):
        now = tick * 0.5
        offered = sum(c.limit for c in clients)  # each client keeps its limit busy
        load = ServerLoad(running=min(offered, max_num_seqs), waiting=max(0, offered - max_num_seqs))
        for c in clients:
            c.on_server_load(now, load, in_flight=c.limit)
        history.append(load)
    settled = history[100:]
    assert min(h.running for h in settled) >= 0.9 * max_num_seqs
    assert sum(h.running for h in settled) / len(settled) >= 0.97 * max_num_seqs
    assert max(h.waiting for h in settled) <= 12
    assert max(c.limit for c in clients) - min(c.limit for c in clients) <= 6  # fair shares


def test_without_metrics_a_latency_spike_or_a_timeout_halves_the_limit() -> None:
    c = AIMDController(ceiling=64, initial=16)
    for i in range(60):  # steady 0.1 s per token: slow start, +1 per answer (double per round trip)
        c.on_latency(i * 0.1, latency_s=50.0, completion_tokens=500, in_flight=c.limit)
    assert c.limit == 64
    c.on_latency(5.0, latency_s=200.0, completion_tokens=500, in_flight=64)  # 0.4 s/token
    c.on_latency(5.1, latency_s=200.0, completion_tokens=500, in_flight=64)
    c.on_latency(5.2, latency_s=200.0, completion_tokens=500, in_flight=64)
    assert c.limit == 32
    c.on_latency(9.0, latency_s=30.0, completion_tokens=None, in_flight=32, timed_out=True)
    assert c.limit == 16


def test_additive_growth_without_metrics_is_one_per_round_trip() -> None:
    c = AIMDController(ceiling=64, initial=20)
    c.slow_start = False
    for i in range(20):  # 20 answers = one round trip of a limit of 20
        c.on_latency(float(i), latency_s=10.0, completion_tokens=100, in_flight=c.limit)
    assert c.limit == 21


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        AIMDController(ceiling=0)
    with pytest.raises(ValueError):
        AIMDController(ceiling=8, floor=9)


def test_clients_that_learn_of_a_limit_late_grow_it_by_their_demand() -> None:
    """Shared by several processes, the in-flight count lags the limit by a reading: demand says the limit binds."""
    c = AIMDController(ceiling=64, initial=10)
    c.slow_start = False
    assert c.on_server_load(0.0, ServerLoad(running=8, waiting=0), in_flight=8) == 10  # unused
    assert c.on_server_load(1.0, ServerLoad(running=8, waiting=0), in_flight=8, demand=32) == 11
    assert c.on_server_load(2.0, ServerLoad(running=8, waiting=0), in_flight=8, demand=9) == 11  # unused
    assert c.on_server_load(3.0, ServerLoad(running=12, waiting=0), in_flight=12, demand=32) == 11  # draining
    assert c.on_latency(4.0, 1.0, 100, in_flight=3, demand=32) == 11  # one answer of a round trip of 11
    assert c.decisions == {"hold_unused": 2, "increase": 1, "hold_draining": 1, "hold_credit": 1}


def _exercise(c: AIMDController, t0: float) -> list[int]:
    """Readings that touch every part of the state: slow start, a cut, latency averages, credit."""
    limits = [c.on_server_load(t0, ServerLoad(running=c.limit, waiting=0), in_flight=c.limit)]
    limits.append(c.on_server_load(t0 + 1, ServerLoad(running=40, waiting=30), in_flight=c.limit))
    for i in range(5):
        limits.append(c.on_latency(t0 + 2 + i, latency_s=2.0 + i, completion_tokens=100, in_flight=c.limit))
    return limits


def test_the_state_survives_a_json_round_trip_and_the_controller_carries_on_alike() -> None:
    original = AIMDController(ceiling=64, initial=12, cooldown_s=30.0)
    fresh_state = json.loads(json.dumps(original.state(), allow_nan=False))  # jsonb takes no Infinity
    assert fresh_state["last_decrease"] is None and fresh_state["slow_start"] is True
    _exercise(original, 0.0)
    assert original.fast_s_per_token is not None and original.last_decrease == 1.0 and original._credit > 0
    stored = json.loads(json.dumps(original.state(), allow_nan=False))

    restored = AIMDController(ceiling=64, initial=2, cooldown_s=30.0)
    restored.restore(stored)
    assert restored.state() == original.state()
    # Within the cooldown the restored one refuses a second cut, as the original does; then both go on alike.
    assert _exercise(restored, 20.0) == _exercise(original, 20.0)
    assert restored.state() == original.state()
    blank = AIMDController(ceiling=64)
    blank.restore(fresh_state)
    assert blank.state() == AIMDController(ceiling=64, initial=12).state()


def test_fair_shares_give_small_demands_what_they_ask_and_split_the_rest_equally() -> None:
    assert fair_shares(64, {"a": 32, "b": 32, "c": 32, "d": 32}) == {"a": 16, "b": 16, "c": 16, "d": 16}
    assert fair_shares(64, {"a": 4, "b": 32, "c": 32}) == {"a": 4, "b": 30, "c": 30}
    assert fair_shares(10, {"c": 8, "a": 8, "b": 8}) == {"a": 4, "b": 3, "c": 3}  # the odd unit in member order
    assert fair_shares(100, {"a": 3, "b": 5}) == {"a": 3, "b": 5}  # never more than asked
    assert fair_shares(9, {"a": 8, "b": 8, "c": 0}) == {"a": 4, "b": 4, "c": 1}  # everyone is owed one
    assert fair_shares(2, {"a": 8, "b": 8, "c": 8, "d": 0}) == {"a": 1, "b": 1, "c": 1, "d": 1}  # even past the total
    assert fair_shares(7, {}) == {}


def test_fair_shares_are_max_min_fair() -> None:
    rng = random.Random(19)
    for _ in range(2000):
        demands = {f"m{i}": rng.randint(0, 40) for i in range(rng.randint(1, 8))}
        total = rng.randint(len(demands), 160)
        shares = fair_shares(total, demands)
        assert shares.keys() == demands.keys()
        asks = {m: max(1, d) for m, d in demands.items()}  # everyone is owed one slot
        # Every slot goes to someone who asked for it, until every demand is met; never more.
        assert sum(shares.values()) == min(total, sum(asks.values()))
        for member, share in shares.items():
            assert 1 <= share <= asks[member]
            if share < asks[member]:  # held back: nobody may have more than one unit over it
                assert all(other <= share + 1 for other in shares.values()), (total, demands, shares)
