"""The synthesis bench's bound: what a client with no overhead reaches of the Little's-law ideal."""

from __future__ import annotations

import math

from bench.bench_synthesis import HEAVY_TAIL, perfect_client_fraction, zero_overhead_makespan


def test_fixed_latency_ends_with_its_last_partial_wave() -> None:
    # 3,000 requests 128 at a time take ceil(3000 / 128) = 24 one-second waves; the ideal is 3000 / 128 s.
    mean, p10, p90 = perfect_client_fraction(3000, 128, "fixed:1.0")
    assert mean == p10 == p90 == (3000 / 128) / math.ceil(3000 / 128)
    assert perfect_client_fraction(1280, 128, "fixed:1.0")[0] == 1.0  # whole waves lose nothing


def test_a_heavy_tail_costs_a_short_run_more_than_a_long_one() -> None:
    short, short_p10, short_p90 = perfect_client_fraction(3000, 128, HEAVY_TAIL, trials=60)
    long, _, _ = perfect_client_fraction(12000, 128, HEAVY_TAIL, trials=20)
    assert short_p10 <= short <= short_p90
    # The slowest of the last 128 requests (p99 10 s) ends the run: a fixed cost that a longer run spreads.
    assert 0.5 < short < 0.8 < long < 1.0


def test_the_next_request_goes_out_the_instant_a_slot_frees() -> None:
    assert zero_overhead_makespan([1.0, 1.0, 1.0, 1.0], 2) == 2.0
    # One slow request holds one slot while the other slot sends the rest back to back.
    assert zero_overhead_makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert zero_overhead_makespan([3.0, 1.0, 1.0, 1.0, 1.0], 2) == 4.0
    assert zero_overhead_makespan([0.5], 4) == 0.5
