"""The faithfulness judge against real PostgreSQL, the S3 server and the stand-in VLM (over HTTP).

The stand-in judges by re-measuring the image against its own phrasing: these tests check the
judge's plumbing (keys, storage, reruns, a dead endpoint, contradictions carried from an answer to a
stored verdict), not how well any model judges.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from bench.common import seed_images
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.judge.keys import JudgeRunParams
from tuwen.judge.planning import plan_judging
from tuwen.judge.runner import CIRCUIT_OPEN, JudgeBatchResult, run_judge_batch
from tuwen.local.services import free_port
from tuwen.local.standin_vlm import StandinProcess
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import run_batch

DAY = dt.date(2026, 11, 21)
PARTITION = Partition(DAY, DAY + dt.timedelta(days=1))
JUDGE = JudgeRunParams(enabled=True)


def _rows(settings: Settings, sql: str) -> list:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def _synthesized(settings: Settings, n: int, vlm_url: str, **overrides) -> Resources:
    """n images with their samples written by the stand-in at vlm_url."""
    resources = Resources.from_settings(dataclasses.replace(settings, vlm_base_url=vlm_url, batch_size=10,
                                                            **overrides))
    resources.store.ensure_bucket()
    seed_images(resources.settings, n, DAY, width=224, height=168)
    plan = plan_partition(resources, PARTITION, RunParams())
    for batch in plan.batches:
        run_batch(resources, batch["image_ids"], RunParams())
    return resources


def _judge_all(resources: Resources, params: JudgeRunParams = JUDGE) -> list[JudgeBatchResult]:
    plan = plan_judging(resources, PARTITION, params)
    return [run_judge_batch(resources, batch["sample_ids"], params) for batch in plan.batches]


def test_every_sample_gets_a_verdict_and_a_rerun_pays_nothing(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _synthesized(settings, 18, vlm.base_url)
        settings = resources.settings
        n_samples = _rows(settings, "SELECT count(*) FROM sample")[0][0]
        assert n_samples == 18
        vlm.reset_stats()

        disabled = plan_judging(resources, PARTITION, JudgeRunParams(enabled=False))
        assert disabled.batches == [] and not disabled.enabled
        plan = plan_judging(resources, PARTITION, JUDGE)
        assert plan.samples == 18 and plan.to_judge == 18 and len(plan.batches) == 2
        results = [run_judge_batch(resources, batch["sample_ids"], JUDGE) for batch in plan.batches]
        assert sum(r.succeeded for r in results) == 18 and vlm.stats()["requests"] == 18

        rows = _rows(settings, "SELECT j.status, j.n_supported, j.n_contradicted, j.n_unverifiable, j.statements, "
                               "j.raw_text, j.prompt_id, j.prompt_tokens, j.completion_tokens, j.params, j.model, "
                               "j.language = s.language AS same_language FROM judgement j "
                               "JOIN sample s ON s.id = j.sample_id")
        assert len(rows) == 18 and Counter(r.status for r in rows) == {"succeeded": 18}
        for row in rows:
            # Prompt v2 (the latest, the default): only contradicted statements, the other counts not asked.
            assert row.prompt_id.startswith("faithfulness.") and row.prompt_id.endswith(".v2") and row.same_language
            assert all(s["label"] == "contradicted" for s in row.statements)
            assert row.n_contradicted == len(row.statements) and (row.n_supported, row.n_unverifiable) == (None, None)
            assert row.raw_text.startswith('{"contradicted"')  # structured output asked for, JSON came back
            assert row.prompt_tokens > 0 and row.completion_tokens > 0
            assert row.params["temperature"] == 0.0 and row.params["structured"] is True
            assert row.model == settings.vlm_model  # no judge model set: the VLM's
        # Without contradictions injected, the stand-in's answers hold up against its own measurements.
        assert sum(r.n_contradicted for r in rows) == 0

        # Rerun: the plan finds every verdict stored, and a batch run directly sends nothing.
        again = plan_judging(resources, PARTITION, JUDGE)
        assert again.to_judge == 0 and again.already_done == 18 and again.batches == []
        ids = [r[0] for r in _rows(settings, "SELECT id FROM sample")]
        result = run_judge_batch(resources, ids, JUDGE)
        assert result.requested == 0 and result.skipped_done == 18
        assert vlm.stats()["requests"] == 18
        assert _rows(settings, "SELECT count(*) FROM judgement")[0][0] == 18

        # Another judge parameter is another judgement: asked once more, stored beside the first.
        plain = Resources.from_settings(dataclasses.replace(settings, judge_structured_output=False))
        _judge_all(plain)
        assert vlm.stats()["requests"] == 36
        texts = _rows(settings, "SELECT raw_text, status FROM judgement WHERE NOT (params->>'structured')::boolean")
        assert len(texts) == 18 and all(r.status == "succeeded" for r in texts)
        assert not any(r.raw_text.lstrip().startswith("{") for r in texts)  # read by the plain-text fallback
        assert all(r.raw_text == "无矛盾" or r.raw_text == "none" for r in texts)  # v2's "nothing contradicted"

        # Prompt v1 pinned (TUWEN_JUDGE_PROMPT_VERSION=1): another judgement, every statement labelled.
        v1 = Resources.from_settings(dataclasses.replace(settings, judge_prompt_version=1))
        _judge_all(v1, JudgeRunParams(enabled=True, prompt_version=1))
        assert vlm.stats()["requests"] == 54
        full = _rows(settings, "SELECT n_supported, n_contradicted, n_unverifiable, statements FROM judgement "
                               "WHERE prompt_version = 1")
        assert len(full) == 18
        for row in full:
            labels = Counter(s["label"] for s in row.statements)
            assert sum(labels.values()) > 0
            assert (row.n_supported, row.n_contradicted, row.n_unverifiable) == (
                labels["supported"], labels["contradicted"], labels["unverifiable"])


def test_a_dead_judge_endpoint_leaves_samples_unjudged_with_a_reason(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _synthesized(settings, 30, vlm.base_url)
        dead = Resources.from_settings(dataclasses.replace(
            resources.settings, judge_base_url=f"http://127.0.0.1:{free_port()}/v1", vlm_max_retries=2,
            batch_size=30))
        started = time.monotonic()
        results = _judge_all(dead)  # returns: the judge is optional, its outage is no failed run
        assert time.monotonic() - started < 60
        assert len(results) == 1 and results[0].endpoint_down and "127.0.0.1" in results[0].endpoint_down
        assert results[0].succeeded == 0 and results[0].failed == 30
        rows = _rows(dead.settings, "SELECT status, error_type, error FROM judgement")
        assert len(rows) == 30 and {r.status for r in rows} == {"failed"}
        assert {r.error_type for r in rows} <= {"connection", CIRCUIT_OPEN} and all(r.error for r in rows)
        assert CIRCUIT_OPEN in {r.error_type for r in rows}
        # The samples are untouched, and the next run (endpoint back) asks for every one of them again.
        assert _rows(dead.settings, "SELECT count(*) FROM sample")[0][0] == 30
        vlm.reset_stats()
        assert plan_judging(resources, PARTITION, JUDGE).to_judge == 30
        _judge_all(resources)
        assert vlm.stats()["requests"] == 30
        assert Counter(r[0] for r in _rows(resources.settings, "SELECT status FROM judgement")) == {"succeeded": 30}


def test_injected_contradictions_come_back_contradicted(settings: Settings, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    # The stand-in's own rules find its own injections: plumbing, not a model's judgement.
    with StandinProcess(contradiction_rate=0.4) as vlm:
        resources = _synthesized(settings, 40, vlm.base_url)
        injected = {i["statement"] for i in vlm.injections()}
        assert injected
        samples = _rows(resources.settings, "SELECT id, conversations FROM sample")
        dirty = {s.id for s in samples if any(stmt in turn["value"] for turn in s.conversations
                                               for stmt in injected)}
        assert 0 < len(dirty) < len(samples)
        _judge_all(resources)
        flagged = {r.sample_id for r in _rows(resources.settings,
                                              "SELECT sample_id FROM judgement WHERE n_contradicted > 0")}
        recall = len(flagged & dirty) / len(dirty)
        false_flags = len(flagged - dirty) / (len(samples) - len(dirty))
        assert recall >= 0.9, (recall, len(dirty))
        assert false_flags <= 0.05, false_flags
        # The stored statements name what was injected.
        statements = {s["text"] for r in _rows(resources.settings, "SELECT statements FROM judgement")
                      for s in r.statements if s["label"] == "contradicted"}
        assert any(stmt.rstrip("。.") in " ".join(statements) for stmt in injected)

        # `make demo`'s summary reports the same counts.
        from tuwen.local.demo import print_summary, summarize

        summary = summarize(resources.settings)
        assert summary.judged_samples == len(samples) and summary.contradicted_samples == len(flagged)
        assert summary.judgements_by_status == {"succeeded": len(samples)}
        print_summary(resources.settings, summary)
        out = capsys.readouterr().out
        assert f"judged {len(samples)}/{len(samples)} samples, {len(flagged)} with a contradicted statement" in out
