"""
### tuwen_synthesize — have the VLM write LLaVA samples for a partition's images

Runs daily and is backfillable: the partition is the crawl date of the images (the run's data
interval, or `date_from`..`date_to` in a manual run). `plan` assigns each new image exactly one
task type (conversation / complex reasoning / description, in the configured mix) and lists the
images that still need a completion; `synthesize` is mapped over batches of them in the pool
`vlm`, which bounds the requests in flight across all runs and backfills. Requests flow continuously:
a batch task whose own images are all sent takes the run's pending work that no other task holds
(the batches still queued for a slot) instead of idling until its slowest request returns, so
later tasks may find their batch already done. Each answer is stored
the moment it arrives under a deterministic request key, so a retry, rerun or backfill pays for
nothing it already has.

**Backfill** (UI: the DAG's "Trigger" menu → Backfill, or `POST /api/v2/backfills`): pick the crawl
dates, "Reprocess behavior" *None* for dates never run, *Failed* after an outage, *Completed* after
a prompt or model change (stored answers are still reused unless `force_regenerate` is set in the
run conf), and a small "Max active runs" (3: the default pool `vlm` of 8 slots holds the tasks of 3 runs
and of the daily run, so every active run sends and the GPU never waits for the next run to start):
backfill runs are counted apart from the daily run, which keeps going, and every batch task of every
run shares the pool `vlm`.

**Params**: `language` (zh, en or mix with `en_share`), `task_types`, `prompt_version` (empty:
latest), `limit` (at most this many new completions), `force_regenerate` (pay again on purpose: the new
answers are new generations and samples keyed by this run, the earlier ones stay, and releases
that shipped them still reference them), `judge` (empty: TUWEN_JUDGE_ENABLED).

**Faithfulness judge** (optional, `tuwen.judge`): after the batches, `plan_judging` lists the
partition's samples without a stored verdict and `judge` is mapped over them in the same pool
`vlm`: the VLM (or the model of TUWEN_JUDGE_*) is shown each sample with its image and quotes the
statements the image contradicts (judge prompt v2; v1 labelled every statement), each verdict
stored as it arrives and never paid twice. A judge endpoint that is down leaves the samples unjudged with the reason and does not
fail the run; the next run asks again. Disabled, `plan_judging` returns no batches and `judge` skips.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from tuwen.config import StackSettings
from tuwen.domain import LANGUAGES, TASK_TYPES


@dag(
    dag_id="tuwen_synthesize",
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=2,
    # TUWEN_RETRY_DELAY_S lets the fault tests watch a retry within seconds; production keeps a minute.
    default_args={"retries": 2, "retry_delay": dt.timedelta(seconds=StackSettings.from_env().retry_delay_s)},
    params={
        "date_from": Param(None, type=["null", "string"], format="date", description="first crawl date"),
        "date_to": Param(None, type=["null", "string"], format="date", description="last crawl date"),
        "language": Param("zh", enum=[*LANGUAGES, "mix"], description="answer language"),
        "en_share": Param(0.5, type="number", minimum=0, maximum=1, description="English share for mix"),
        "task_types": Param(list(TASK_TYPES), type="array", description="task types to synthesize"),
        "prompt_version": Param(None, type=["null", "integer"], description="prompt version; empty = latest"),
        "limit": Param(None, type=["null", "integer"], minimum=0, description="max new completions"),
        "force_regenerate": Param(False, type="boolean", description="request again even if stored"),
        "judge": Param(None, type=["null", "boolean"],
                       description="run the faithfulness judge; empty = TUWEN_JUDGE_ENABLED"),
    },
    tags=["tuwen"],
    doc_md=__doc__,
)
def tuwen_synthesize() -> None:
    @task
    def plan() -> list[dict]:
        from tuwen.config import Settings
        from tuwen.domain import resolve_partition
        from tuwen.resources import Resources
        from tuwen.synthesis.keys import RunParams
        from tuwen.synthesis.planning import plan_partition
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            params = RunParams.from_params(context["params"], context["run_id"])
            partition = resolve_partition(context)
            settings = Settings.from_env()
        plan = plan_partition(Resources.from_settings(settings), partition, params, context["dag"].dag_id,
                              context["run_id"])
        print(f"partition {plan.partition}: {plan.images} images, {plan.newly_assigned} newly assigned a task, "
              f"{plan.already_done} already stored, {plan.to_request} to request in {len(plan.batches)} batches")
        return plan.batches

    @task(pool="vlm")
    def synthesize(batch: dict) -> dict:
        from tuwen.config import Settings
        from tuwen.resources import Resources
        from tuwen.synthesis.keys import RunParams
        from tuwen.synthesis.runner import AirflowIds, run_batch
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        ids = AirflowIds(context["dag"].dag_id, context["run_id"], context["task"].task_id,
                         context["ti"].map_index)
        with fail_fast_on_bad_input():
            params = RunParams.from_params(context["params"], context["run_id"])
            settings = Settings.from_env()
        result = run_batch(Resources.from_settings(settings), batch["image_ids"], params, ids)
        return result.as_dict()

    # none_failed: judging also runs when there was nothing new to synthesize (the batches skipped).
    @task(trigger_rule="none_failed")
    def plan_judging() -> list[dict]:
        from tuwen.config import Settings
        from tuwen.domain import resolve_partition
        from tuwen.judge.keys import JudgeRunParams
        from tuwen.judge.planning import plan_judging as plan_partition_judging
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            settings = Settings.from_env()
            params = JudgeRunParams.from_params(context["params"], settings)
            partition = resolve_partition(context)
        plan = plan_partition_judging(Resources.from_settings(settings), partition, params)
        if not plan.enabled:
            print("faithfulness judge off (param judge / TUWEN_JUDGE_ENABLED)")
        else:
            print(f"judge partition {plan.partition}: {plan.samples} samples, {plan.already_done} already judged, "
                  f"{plan.to_judge} to judge in {len(plan.batches)} batches")
        return plan.batches

    @task(pool="vlm")
    def judge(batch: dict) -> dict:
        from tuwen.config import Settings
        from tuwen.judge.keys import JudgeRunParams
        from tuwen.judge.runner import run_judge_batch
        from tuwen.resources import Resources
        from tuwen.synthesis.runner import AirflowIds
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        ids = AirflowIds(context["dag"].dag_id, context["run_id"], context["task"].task_id,
                         context["ti"].map_index)
        with fail_fast_on_bad_input():
            settings = Settings.from_env()
            params = JudgeRunParams.from_params(context["params"], settings)
        result = run_judge_batch(Resources.from_settings(settings), batch["sample_ids"], params, ids)
        return result.as_dict()

    @task(trigger_rule="none_failed")
    def summarize(results: list[dict], verdicts: list[dict]) -> dict:
        summary: dict[str, dict[str, int]] = {}
        # Read each mapped task's results once: every pass over Airflow's lazy sequence looks one past its end.
        verdicts = list(verdicts or [])
        for stage, outcomes in (("synthesis", results), ("judge", verdicts)):
            totals: dict[str, int] = {}
            for result in outcomes or []:
                for name, value in result.items():
                    if isinstance(value, int):
                        totals[name] = totals.get(name, 0) + value
            summary[stage] = totals
            print(f"{stage} totals: {totals}")
        down = [v["endpoint_down"] for v in verdicts if v.get("endpoint_down")]
        if down:
            print(f"WARNING: the judge endpoint was down in {len(down)} batches; those samples are unjudged "
                  f"(recorded as failed judgements; the next run asks again): {down[0]}")
        return summary

    synthesized = synthesize.expand(batch=plan())
    judge_batches = plan_judging()
    synthesized >> judge_batches
    summarize(synthesized, judge.expand(batch=judge_batches))


tuwen_synthesize()
