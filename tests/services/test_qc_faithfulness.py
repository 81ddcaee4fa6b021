"""The quality gate reads the faithfulness judge's verdicts from the database (check faithfulness.judge):
the latest succeeded judgement of each sample counts, a sample without one passes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.conftest import insert_labelled, labelled_rows
from tuwen.config import Settings
from tuwen.quality.run import QualityGateFailed, run_quality_gate
from tuwen.quality.scope import ReleaseScope
from tuwen.resources import Resources

SCOPE = ReleaseScope(min_pass_rate=0.0)
GOOD = [row for row in labelled_rows() if row["expected"] == "pass" and row["language"] in ("zh", "en")]
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def insert_judgement(settings: Settings, sample_id: str, *, status: str = "succeeded", contradicted: int | None = 0,
                     completed_at: dt.datetime | None = T0, error_type: str | None = None) -> None:
    statements: list[dict[str, Any]] = [{"text": f"false statement {i} of {sample_id}", "label": "contradicted"}
                                        for i in range(contradicted or 0)]
    statements.append({"text": "a true one", "label": "supported"})
    with create_engine(settings.database_url).begin() as conn:
        conn.execute(text(
            "INSERT INTO judgement (request_key, sample_id, language, prompt_id, prompt_version, prompt_sha256, model, "
            "params, status, n_supported, n_contradicted, n_unverifiable, statements, prompt_tokens, completion_tokens, "
            "latency_ms, error_type, completed_at) VALUES (:key, :sid, 'zh', 'faithfulness.zh.v1', 1, :sha, 'judge-model', "
            "'{}'::jsonb, :status, :sup, :con, 0, CAST(:statements AS jsonb), 900, 120, 40.0, :error_type, :completed_at)"),
            {"key": uuid.uuid4().hex, "sid": sample_id, "sha": "0" * 64, "status": status,
             "sup": 1 if status == "succeeded" else None, "con": contradicted if status == "succeeded" else None,
             "statements": json.dumps(statements if status == "succeeded" else None), "error_type": error_type,
             "completed_at": completed_at})


def gate(settings: Settings) -> dict[str, tuple[str, list[str], dict[str, Any]]]:
    with contextlib.suppress(QualityGateFailed):  # the verdicts are the point here, not the batch decision
        run_quality_gate(Resources.from_settings(settings), SCOPE, report=False)
    with create_engine(settings.database_url).connect() as conn:
        return {r.id: (r.qc_status, r.qc_reasons, r.qc_metrics)
                for r in conn.execute(text("SELECT id, qc_status, qc_reasons, qc_metrics FROM sample"))}


def test_the_gate_fails_judged_contradictions_and_passes_unjudged_samples(settings: Settings) -> None:
    rows = insert_labelled(settings, GOOD[:8])
    ids = sorted(rows)
    contradicted, clean, unjudged, newer_clean, newer_failed, only_failed = ids[:6]
    insert_judgement(settings, contradicted, contradicted=2)
    insert_judgement(settings, clean, contradicted=0)
    # The latest succeeded judgement counts: a rerun by another judge model that found nothing wins over
    # an older verdict; a newer failed call (the endpoint was down) does not erase an older verdict.
    insert_judgement(settings, newer_clean, contradicted=1, completed_at=T0)
    insert_judgement(settings, newer_clean, contradicted=0, completed_at=T0 + dt.timedelta(hours=1))
    insert_judgement(settings, newer_failed, contradicted=1, completed_at=T0)
    insert_judgement(settings, newer_failed, status="failed", error_type="connection", completed_at=T0 + dt.timedelta(hours=1))
    insert_judgement(settings, only_failed, status="failed", error_type="timeout")

    verdicts = gate(settings)
    assert verdicts[contradicted][:2] == ("failed", ["faithfulness.judge"])
    assert verdicts[contradicted][2]["judge_contradicted"] == 2
    assert verdicts[newer_failed][:2] == ("failed", ["faithfulness.judge"])
    for sample_id in (clean, newer_clean):
        assert verdicts[sample_id][:2] == ("passed", []), sample_id
        assert verdicts[sample_id][2]["judged"] == 1
    for sample_id in (unjudged, only_failed, *ids[6:]):
        assert verdicts[sample_id][:2] == ("passed", []), sample_id
        assert verdicts[sample_id][2]["judged"] == 0


def test_a_sample_outside_the_chunk_range_does_not_leak_its_verdict(settings: Settings) -> None:
    """The judgement subquery is bounded by each chunk's id range; a judgement of a sample that is not
    in scope (another language) changes nothing for the samples that are."""
    outside = next(row for row in labelled_rows() if row["language"] == "ja")
    rows = insert_labelled(settings, [*GOOD[:3], outside])
    insert_judgement(settings, outside["id"], contradicted=5)
    verdicts = gate(settings)
    assert all(verdicts[sample_id][:2] == ("passed", []) for sample_id in rows if sample_id != outside["id"])
    assert verdicts[outside["id"]][0] == "pending"


def report_html(settings: Settings, tmp_path: Path) -> str:
    with contextlib.suppress(QualityGateFailed):
        run_quality_gate(Resources.from_settings(settings), SCOPE, report_dir=tmp_path / "report")
    return (tmp_path / "report" / "index.html").read_text(encoding="utf-8")


def test_the_report_shows_judged_unjudged_and_escaped_contradicted_statements(settings: Settings, tmp_path: Path) -> None:
    rows = insert_labelled(settings, GOOD[:6])
    ids = sorted(rows)
    insert_judgement(settings, ids[0], contradicted=0)
    insert_judgement(settings, ids[1], contradicted=1)
    with create_engine(settings.database_url).begin() as conn:  # a statement that is markup, as a model may write
        conn.execute(text("UPDATE judgement SET statements = CAST(:s AS jsonb) WHERE sample_id = :id"),
                     {"id": ids[1], "s": json.dumps([{"text": "画面写着「<script>alert(1)</script>」", "label": "contradicted"},
                                                    {"text": "画面以蓝色为主。", "label": "supported"}])})
    insert_judgement(settings, ids[2], status="failed", error_type="connection")
    html = report_html(settings, tmp_path)
    section = html[html.index('id="faithfulness"'):html.index("Pass rate per check over time")]
    assert "faithfulness-not-run" not in section
    assert "2 of 6 samples" in section
    assert "connection 1" in section and "never asked 3" in section
    assert "50.0%" in section  # one of the two judged samples passed
    assert f'id="contradicted-{ids[1]}"' in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>" not in html
    assert "画面以蓝色为主" not in section  # only the contradicted statements are shown


def test_without_judgements_the_report_says_the_judge_did_not_run(settings: Settings, tmp_path: Path) -> None:
    insert_labelled(settings, GOOD[:3])
    html = report_html(settings, tmp_path)
    section = html[html.index('id="faithfulness"'):html.index("Pass rate per check over time")]
    assert 'id="faithfulness-not-run"' in section and "<table" not in section
