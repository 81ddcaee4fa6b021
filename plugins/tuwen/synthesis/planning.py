"""Planning a run: which of the three tasks an image is annotated with, and which images still need asking.

`plan_partition` (at the end) persists the tasks of new images and splits the images whose answer
is not stored yet into batches for the mapped tasks. The rest of this module is the task rule,
a pure function.

Every image is used once, for one task, and the tasks must follow the configured mix (the seed's
247,431 : 194,646 : 199,791) within one percentage point in every partition of 1,000 images or more.

Why not a per-image hash threshold: that rule is stateless but each image is an independent draw,
so a partition's share of a task is binomial — for n = 1,000 and p ≈ 0.385 its standard deviation
is about 1.5 points, and ±1 point fails on about three partitions in four. Balance needs the images
of a partition to be dealt together.

The rule, dealing by quota:
  1. The images of a partition that have no task yet are sorted by their SHA-256, so the result
     depends on the set of images and never on the order a query returned them in.
  2. Tasks are dealt one image at a time to the task furthest behind its target share of the
     running total (`existing_counts` plus the images dealt so far): the task with the largest
     `weight * (total + 1) - count * sum(weights)`, ties to the earlier task in TASK_TYPES, in exact
     integer arithmetic. With three tasks every count stays strictly within one image of its target
     at every step (the deficits sum to the one image being dealt, so the largest is >= 1/3 and no
     task falls below -2/3 after being dealt; a task left undealt at 1 or more would need another at
     1 or more and the third at -1 or less), so a partition of n images dealt from a fresh
     tally is off by under 1/n — 0.1 point at n = 1,000 — and by under 2/n when continuing a tally.
  3. The caller persists the task on first assignment, in the lineage database. That
     row is what "same image, same task across reruns" rests on: a rerun or backfill selects only
     images without a task, passes the tally of the ones that have one as `existing_counts`, and
     an image already assigned is never dealt again. The function itself is pure: the same set of
     new hashes with the same counts gives the same answer every time, in any input order.
     Without persistence an image's task would depend on which other images share its partition,
     the price of balance.

`existing_counts` should tally the scope that must stay balanced — the partition being assigned —
so late arrivals or a second chunk of the same day are dealt so the day's totals still track the
mix. Passing counts from a different mix (after the mix changed) makes the new images make up the
difference, which skews them; start a fresh tally in that case.

Optional OCR bias (off by default): with `ocr_char_counts`, the number of description slots is
computed exactly as above, then those slots go to the images with the most recognised text
(ties by hash), because the description prompt asks the model to transcribe text in the image. The
other images take the remaining tasks in dealing order. The counts per task are identical with and
without the bias, so the mix guarantee does not change; only who gets which slot does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuwen.domain import TASK_TYPES, Partition
from tuwen.resources import Resources
from tuwen.synthesis import lineage
from tuwen.synthesis.keys import RunParams, generation_row, request_spec

MAX_MAPPED_BATCHES = 1024  # Airflow caps a mapped list at 1024 by default

DESCRIPTION_TASK = "detail"


def _validated_mix(mix: Mapping[str, int]) -> dict[str, int]:
    unknown = set(mix) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown task types in mix: {sorted(unknown)}; known: {', '.join(TASK_TYPES)}")
    weights = {task: mix.get(task, 0) for task in TASK_TYPES}
    if any(not isinstance(w, int) or w < 0 for w in weights.values()) or sum(weights.values()) == 0:
        raise ValueError(f"mix weights must be non-negative integers, not all zero; got {dict(mix)}")
    return weights


def _validated_counts(existing_counts: Mapping[str, int] | None) -> dict[str, int]:
    counts = {task: 0 for task in TASK_TYPES}
    for task, count in (existing_counts or {}).items():
        if task not in counts:
            raise ValueError(f"unknown task type in existing_counts: {task!r}")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"existing_counts[{task!r}] must be a non-negative integer, got {count!r}")
        counts[task] = count
    return counts


def deal_tasks(n: int, mix: Mapping[str, int], existing_counts: Mapping[str, int] | None = None) -> list[str]:
    """The sequence of tasks for the next n images, continuing from existing_counts (see the module doc)."""
    weights = _validated_mix(mix)
    counts = _validated_counts(existing_counts)
    weight_total = sum(weights.values())
    total = sum(counts.values())
    dealt: list[str] = []
    for _ in range(n):
        total += 1
        # max() keeps the first of equal keys, so ties go to the earlier task in TASK_TYPES.
        task = max(TASK_TYPES, key=lambda t: weights[t] * total - counts[t] * weight_total)
        counts[task] += 1
        dealt.append(task)
    return dealt


def assign_task_types(
    image_hashes: Iterable[str],
    mix: Mapping[str, int],
    existing_counts: Mapping[str, int] | None = None,
    ocr_char_counts: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Task type for each image not yet assigned, keyed by image SHA-256.

    image_hashes: the partition's images that have no task yet (duplicates are ignored).
    existing_counts: tasks already assigned in the same partition, so the running totals track the mix.
    ocr_char_counts: characters of OCR text per image; when given, description slots go to the
    images with the most text. Images missing from it count as having none.
    """
    ordered = sorted(set(image_hashes))
    dealt = deal_tasks(len(ordered), mix, existing_counts)
    if ocr_char_counts is None:
        return dict(zip(ordered, dealt, strict=True))

    description_slots = dealt.count(DESCRIPTION_TASK)
    by_text = sorted(ordered, key=lambda h: (-ocr_char_counts.get(h, 0), h))
    assignment = dict.fromkeys(by_text[:description_slots], DESCRIPTION_TASK)
    other_tasks = [task for task in dealt if task != DESCRIPTION_TASK]
    others = [h for h in ordered if h not in assignment]
    assignment.update(zip(others, other_tasks, strict=True))
    return assignment


def assign_task_type(image_sha256: str, mix: Mapping[str, int], existing_counts: Mapping[str, int]) -> str:
    """Task for one image arriving alone (streaming), dealt against the running tally of its partition.

    Equivalent to `assign_task_types([image_sha256], mix, existing_counts)`; the tally must be read
    and the result persisted in one transaction, or two workers will both fill the same slot.
    """
    return deal_tasks(1, mix, existing_counts)[0]


# --- a run's plan --------------------------------------------------------------------------------


@dataclass
class Plan:
    partition: str
    images: int  # accepted images in the partition
    newly_assigned: int
    to_request: int
    already_done: int
    batches: list[dict[str, Any]] = field(default_factory=list)


def split_batches(todo: Sequence[Any], batch_size: int, partition_label: str, key: str = "image_ids",
                  max_batches: int = MAX_MAPPED_BATCHES) -> list[dict[str, Any]]:
    """Round-robin the items (images; the judge's samples) over at most `max_batches` (and
    MAX_MAPPED_BATCHES) batches of about batch_size, each batch {key: items, "partition": label}."""
    if not todo:
        return []
    n_batches = min(MAX_MAPPED_BATCHES, max_batches, math.ceil(len(todo) / batch_size))
    return [{key: list(todo[i::n_batches]), "partition": partition_label} for i in range(n_batches)]


def plan_partition(resources: Resources, partition: Partition, params: RunParams, dag_id: str | None = None,
                   run_id: str | None = None) -> Plan:
    """Assign tasks, then list the images that still need a completion, split into mapped batches.

    In an Airflow run (`dag_id`, `run_id`) the run's queue is written too: a pending generation row for
    each of those images, owned by the run, from which every mapped task takes work as its request
    slots free up (tuwen.synthesis.runner: no idle slots at batch ends).
    """
    settings = resources.settings
    # Only curated images (tuwen.curate) are dealt tasks and asked about; with curation off, every accepted one.
    newly_assigned = lineage.assign_tasks(
        resources.engine, partition, lambda new, existing: assign_task_types(new, settings.task_mix, existing),
        curated_only=settings.curate_enabled)
    rows, images = lineage.partition_images(resources.engine, partition, params.task_types,
                                            curated_only=settings.curate_enabled)
    specs = {row.id: request_spec(settings, params, row.sha256, row.task_type) for row in rows}
    done = lineage.stored_keys(resources.engine, (spec.key for spec in specs.values()))
    todo = [image_id for image_id, spec in specs.items() if spec.key not in done]
    if params.limit is not None:
        # Images with Chinese text first (issue 18: the seed is "mostly Chinese text"); a stable sort keeps
        # hash order within each group, so a limited run takes the same images every time.
        with_text = {row.id for row in rows if row.has_zh_text}
        todo = sorted(todo, key=lambda image_id: image_id not in with_text)[: params.limit]
    # Longest answers first (by max_tokens: conversations), in hash order within a task: the run's queue and
    # every batch then end with short answers, so the last requests of a run hold the server for less.
    todo.sort(key=lambda image_id: -specs[image_id].sampling["max_tokens"])
    max_batches = MAX_MAPPED_BATCHES
    if dag_id is not None and run_id is not None:
        lineage.queue_requests(resources.engine, [
            generation_row(settings, specs[image_id], image_id, dag_id, run_id, task_id="plan")
            for image_id in todo], dag_id, run_id)
        # A queued run needs only as many tasks as can send at once: each goes on with the queue, and a task
        # beyond the pool's slots would start (seconds of Airflow overhead on a held slot) to find its work done.
        max_batches = settings.synthesis_tasks
    lineage.refresh_statistics(resources.engine)
    return Plan(partition.label, images, newly_assigned, len(todo), len(specs) - len(todo),
                split_batches(todo, settings.batch_size, partition.label, max_batches=max_batches))
