"""Task assignment: deterministic per image set, and every partition of >= 1,000 images within ±1 point."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuwen.domain import SEED_TASK_MIX, TASK_TYPES
from tuwen.synthesis.planning import assign_task_type, assign_task_types, deal_tasks

TOLERANCE = 0.01

mixes = st.one_of(
    st.just(dict(SEED_TASK_MIX)),
    st.just({"conversation": 1, "complex_reasoning": 0, "detail": 0}),
    st.just({"conversation": 1, "complex_reasoning": 1, "detail": 1}),
    st.fixed_dictionaries({task: st.integers(0, 1_000) for task in TASK_TYPES}).filter(
        lambda mix: sum(mix.values()) > 0
    ),
)


def image_hashes(seed: int, n: int) -> list[str]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]


def shares_off_by(assigned: Counter[str], mix: dict[str, int]) -> float:
    """Largest absolute difference between a task's share and its target share."""
    total, weight_total = sum(assigned.values()), sum(mix.values())
    return max(abs(assigned[t] / total - mix.get(t, 0) / weight_total) for t in TASK_TYPES)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1_000, 6_000), mix=mixes)
def test_every_partition_of_1000_or_more_meets_the_mix(seed: int, n: int, mix: dict[str, int]) -> None:
    assignment = assign_task_types(image_hashes(seed, n), mix)
    assert len(assignment) == n
    assert shares_off_by(Counter(assignment.values()), mix) <= TOLERANCE


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 3_000), mix=mixes)
def test_counts_never_stray_more_than_one_image_from_target(seed: int, n: int, mix: dict[str, int]) -> None:
    counts = Counter(assign_task_types(image_hashes(seed, n), mix).values())
    weight_total = sum(mix.values())
    for task in TASK_TYPES:
        assert abs(counts[task] - n * mix.get(task, 0) / weight_total) < 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 2_000), shuffle_seed=st.integers(0, 2**32), mix=mixes)
def test_same_images_same_tasks_in_any_order(
    seed: int, n: int, shuffle_seed: int, mix: dict[str, int]
) -> None:
    hashes = image_hashes(seed, n)
    first = assign_task_types(hashes, mix)
    shuffled = hashes[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    assert assign_task_types(shuffled, mix) == first
    assert assign_task_types(hashes + hashes[: n // 2], mix) == first  # duplicates are one image


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    chunk_sizes=st.lists(st.integers(1, 800), min_size=2, max_size=12),
    mix=mixes,
)
def test_incremental_chunks_keep_the_running_mix(
    seed: int, chunk_sizes: list[int], mix: dict[str, int]
) -> None:
    hashes = image_hashes(seed, sum(chunk_sizes))
    persisted: dict[str, str] = {}
    start = 0
    for size in chunk_sizes:
        chunk = hashes[start : start + size]
        start += size
        new = assign_task_types(chunk, mix, existing_counts=Counter(persisted.values()))
        assert set(new) == set(chunk)
        assert not set(new) & set(persisted), "an image already assigned is never dealt again"
        persisted.update(new)
        running = Counter(persisted.values())
        weight_total = sum(mix.values())
        for task in TASK_TYPES:
            assert abs(running[task] - len(persisted) * mix.get(task, 0) / weight_total) < 1
        if len(persisted) >= 1_000:
            assert shares_off_by(running, mix) <= TOLERANCE


def test_seed_mix_on_the_seed_dataset_size() -> None:
    total = sum(SEED_TASK_MIX.values())
    counts = Counter(deal_tasks(total, SEED_TASK_MIX))
    assert dict(counts) == SEED_TASK_MIX


def test_single_task_mix_and_zero_weights() -> None:
    assignment = assign_task_types(image_hashes(1, 1_500), {"detail": 3})
    assert set(assignment.values()) == {"detail"}
    assignment = assign_task_types(image_hashes(2, 1_500), {"conversation": 1, "detail": 1})
    assert Counter(assignment.values()) == {"conversation": 750, "detail": 750}


def test_equal_mix_deals_in_task_order() -> None:
    assert deal_tasks(6, {"conversation": 1, "complex_reasoning": 1, "detail": 1}) == [
        "conversation",
        "complex_reasoning",
        "detail",
        "conversation",
        "complex_reasoning",
        "detail",
    ]


def test_existing_counts_steer_new_images_to_the_tasks_behind() -> None:
    existing = {"conversation": 10, "complex_reasoning": 0, "detail": 0}
    new = assign_task_types(
        image_hashes(3, 20), {"conversation": 1, "complex_reasoning": 1, "detail": 1}, existing
    )
    assert Counter(new.values()) == {"complex_reasoning": 10, "detail": 10}


def test_assign_task_type_streams_one_image_at_a_time() -> None:
    running: Counter[str] = Counter()
    for image_hash in image_hashes(4, 3_000):
        running[assign_task_type(image_hash, SEED_TASK_MIX, running)] += 1
    assert shares_off_by(running, SEED_TASK_MIX) <= 0.001


def test_empty_partition() -> None:
    assert assign_task_types([], SEED_TASK_MIX) == {}


@pytest.mark.parametrize(
    ("mix", "existing", "message"),
    [
        ({"captioning": 1}, None, "unknown task types in mix"),
        ({"conversation": 0, "detail": 0}, None, "not all zero"),
        ({"conversation": -1, "detail": 2}, None, "non-negative"),
        ({"conversation": 1.5}, None, "non-negative integers"),
        (SEED_TASK_MIX, {"captioning": 3}, "unknown task type in existing_counts"),
        (SEED_TASK_MIX, {"detail": -3}, "must be a non-negative integer"),
    ],
)
def test_invalid_mix_or_counts(mix: dict, existing: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_task_types(image_hashes(0, 3), mix, existing)


# --- optional OCR bias ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 2_000), mix=mixes, text_seed=st.integers(0, 2**32))
def test_ocr_bias_keeps_the_counts_and_prefers_text_heavy_images_for_detail(
    seed: int, n: int, mix: dict[str, int], text_seed: int
) -> None:
    hashes = image_hashes(seed, n)
    rng = random.Random(text_seed)
    ocr_chars = {h: rng.choice([0, 0, 0, rng.randint(1, 500)]) for h in hashes}
    plain = assign_task_types(hashes, mix)
    biased = assign_task_types(hashes, mix, ocr_char_counts=ocr_chars)
    assert Counter(biased.values()) == Counter(plain.values())
    assert set(biased) == set(plain)
    detail = [ocr_chars[h] for h, task in biased.items() if task == "detail"]
    others = [ocr_chars[h] for h, task in biased.items() if task != "detail"]
    if detail and others:
        assert min(detail) >= max(others)
    shuffled = hashes[:]
    rng.shuffle(shuffled)
    assert assign_task_types(shuffled, mix, ocr_char_counts=ocr_chars) == biased


def test_ocr_bias_example() -> None:
    hashes = image_hashes(5, 9)
    text_heavy = {hashes[0]: 300, hashes[4]: 120, hashes[7]: 80}
    mix = {"conversation": 1, "complex_reasoning": 1, "detail": 1}
    biased = assign_task_types(hashes, mix, ocr_char_counts=text_heavy)
    assert {h for h, task in biased.items() if task == "detail"} == {hashes[0], hashes[4], hashes[7]}
    assert Counter(biased.values()) == {"conversation": 3, "complex_reasoning": 3, "detail": 3}


def test_ocr_bias_is_off_by_default() -> None:
    hashes = image_hashes(6, 300)
    assert assign_task_types(hashes, SEED_TASK_MIX) == dict(
        zip(sorted(hashes), deal_tasks(300, SEED_TASK_MIX), strict=True)
    )
