"""Planning a judge run: which samples of a partition still need a verdict, split into mapped batches.

A sample needs one when it has no succeeded or unparseable judgement under the current key (see
`tuwen.judge.keys`): a new judge prompt version, model or parameter makes every sample due again,
and a failed judgement (the endpoint was down) is due again on the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuwen.domain import Partition
from tuwen.judge import lineage
from tuwen.judge.keys import JudgeRunParams, judge_spec
from tuwen.resources import Resources
from tuwen.synthesis.planning import split_batches


@dataclass
class JudgePlan:
    partition: str
    enabled: bool
    samples: int  # judgeable samples in the partition
    to_judge: int
    already_done: int
    batches: list[dict[str, Any]] = field(default_factory=list)  # {"sample_ids": [...], "partition": ...}


def plan_judging(resources: Resources, partition: Partition, params: JudgeRunParams) -> JudgePlan:
    """The partition's samples without a stored verdict, in batches of TUWEN_BATCH_SIZE; none when disabled."""
    if not params.enabled:
        return JudgePlan(partition.label, False, 0, 0, 0)
    settings = resources.settings
    rows = lineage.partition_samples(resources.engine, partition)
    keys = {row.id: judge_spec(settings, params, row.id, row.language).key for row in rows}
    done = lineage.judged_keys(resources.engine, keys.values())
    todo = [sample_id for sample_id, key in keys.items() if key not in done]
    return JudgePlan(partition.label, True, len(rows), len(todo), len(keys) - len(todo),
                     split_batches(todo, settings.batch_size, partition.label, key="sample_ids"))
