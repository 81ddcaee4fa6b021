"""The quality gate through the database: the labelled set's verdicts, quarantine, and re-checking with
other thresholds without regenerating anything."""

from __future__ import annotations

import dataclasses

import psycopg2.errors
import pytest
from sqlalchemy import create_engine, text

from bench.common import SeedSample, insert_samples
from tests.conftest import insert_labelled, labelled_rows
from tuwen.config import Settings
from tuwen.quality.checks import QCConfig
from tuwen.quality.near_duplicates import find_near_duplicate_answers
from tuwen.quality.run import NEAR_DUPLICATE_REASON, QualityGateFailed, run_quality_gate
from tuwen.quality.scope import ReleaseScope
from tuwen.resources import Resources

# The labelled set holds one Japanese-language sample (expected to fail structure.task_type), so the
# scope takes every language the set uses; min_pass_rate 0: these tests are about verdicts, not the bar.
SCOPE = ReleaseScope(languages=("zh", "en", "ja"), min_pass_rate=0.0)
STORABLE = [row for row in labelled_rows() if row["task_type"] != "caption"]
COPY_ID = "zz-copy-of-good-detail-lake"  # sorts after the original, so the original is the one kept


def _gate(settings: Settings, config: QCConfig | None = None) -> int:
    """Run the gate; the verdicts are the point here, so a failed batch decision is not an error."""
    try:
        return run_quality_gate(Resources.from_settings(settings), SCOPE, config=config, report=False).qc_run_id
    except QualityGateFailed:
        with create_engine(settings.database_url).connect() as conn:
            return conn.execute(text("SELECT max(id) FROM qc_run")).scalar_one()


def _verdicts(settings: Settings) -> dict[str, tuple[str, list[str], int]]:
    with create_engine(settings.database_url).connect() as conn:
        return {r.id: (r.qc_status, r.qc_reasons, r.qc_run_id)
                for r in conn.execute(text("SELECT id, qc_status, qc_reasons, qc_run_id FROM sample"))}


def _answers(row: dict) -> str:
    return "\n".join(t["value"] for t in row["conversations"] if isinstance(t, dict) and t.get("from") == "gpt"
                     and isinstance(t.get("value"), str))


@pytest.fixture
def labelled(settings: Settings) -> dict[str, dict]:
    """The labelled set in the database, plus a verbatim copy of one good sample on another image."""
    rows = insert_labelled(settings, STORABLE)
    original = rows["good-detail-lake"]
    with create_engine(settings.database_url).connect() as conn:
        image_id = conn.execute(text("SELECT image_id FROM sample WHERE id = 'good-detail-lake'")).scalar_one()
        other_image = conn.execute(text("SELECT max(id) FROM image")).scalar_one()
    assert other_image != image_id
    insert_samples(settings, [SeedSample(other_image, "detail", original["conversations"], "zh", "stop", COPY_ID)])
    return rows


def test_caption_task_is_refused_by_the_schema(settings: Settings) -> None:
    """The labelled set's unknown task type cannot even be stored: the database enforces it, which is
    why that row is left out of the DB-path comparison."""
    [caption] = [row for row in labelled_rows() if row["task_type"] == "caption"]
    with pytest.raises(psycopg2.errors.CheckViolation, match="ck_generation_task_type"):
        insert_labelled(settings, [caption])


def test_labelled_verdicts_through_the_database(settings: Settings, labelled: dict[str, dict]) -> None:
    qc_run_id = _gate(settings)
    verdicts = _verdicts(settings)
    # Near-duplicate answers are the one cross-sample rule, and it only looks at samples that passed
    # their own checks (a failed sample must not be the "kept" copy of a good one). The labelled set's
    # failing rows are variations of a few base answers, so they are near-copies of each other; its
    # passing rows are not. The only near-duplicate is the planted copy, and its original is kept.
    failing = [(sid, _answers(row)) for sid, row in labelled.items() if row["expected"] == "fail"]
    assert len(find_near_duplicate_answers(failing)) >= 5  # would have piled a reason on rejects
    passing = [(sid, _answers(row)) for sid, row in labelled.items() if row["expected"] == "pass"]
    assert find_near_duplicate_answers(passing) == {}
    assert verdicts[COPY_ID] == ("failed", [NEAR_DUPLICATE_REASON], qc_run_id)
    assert verdicts["good-detail-lake"] == ("passed", [], qc_run_id)
    mismatches = {}
    for sample_id, row in labelled.items():
        status, reasons, run = verdicts[sample_id]
        expected = ("passed" if row["expected"] == "pass" else "failed", row["expected_reasons"])
        if (status, reasons) != expected or run != qc_run_id:
            mismatches[sample_id] = {"got": (status, reasons, run), "expected": expected}
    assert not mismatches, mismatches

    with create_engine(settings.database_url).connect() as conn:
        run = conn.execute(text("SELECT * FROM qc_run WHERE id = :id"), {"id": qc_run_id}).one()
        assert run.n_samples == len(labelled) + 1
        assert run.n_passed == sum(row["expected"] == "pass" for row in labelled.values())
        assert run.results["failed_reasons"][NEAR_DUPLICATE_REASON] == 1
        # Quarantined, not dropped: rejected samples stay queryable with their reasons.
        view = {(r.reason, r.task_type): r.samples
                for r in conn.execute(text("SELECT reason, task_type, samples FROM v_qc_failure_reasons"))}
        expected_view: dict[tuple[str, str], int] = {}
        for row in labelled.values():
            for reason in row["expected_reasons"]:
                expected_view[(reason, row["task_type"])] = expected_view.get((reason, row["task_type"]), 0) + 1
        expected_view[(NEAR_DUPLICATE_REASON, "detail")] = 1
        assert view == expected_view
        refusal = conn.execute(text(
            "SELECT qc_status, qc_reasons, conversations FROM sample WHERE qc_reasons ? 'refusal' ORDER BY id")).all()
        assert {r.qc_status for r in refusal} == {"failed"} and len(refusal) == 4
        assert all(r.conversations for r in refusal)  # the text is kept for review


def test_new_thresholds_relabel_without_regenerating(settings: Settings, labelled: dict[str, dict]) -> None:
    engine = create_engine(settings.database_url)
    first_run = _gate(settings)
    before = _verdicts(settings)

    def snapshot() -> tuple:
        with engine.connect() as conn:
            generations = conn.execute(text("SELECT * FROM generation ORDER BY id")).all()
            samples = conn.execute(text("SELECT id, generation_id, conversations, rounds, created_at "
                                        "FROM sample ORDER BY id")).all()
        return generations, samples

    generations_before, samples_before = snapshot()
    # Looser OCR grounding: the samples rejected for that alone pass now.
    second_run = _gate(settings, QCConfig(ocr_min_coverage=0.0))
    after = _verdicts(settings)
    assert second_run > first_run
    for sample_id in ("fail-ocr-coverage-ignored-menu", "fail-ocr-coverage-partial"):
        assert before[sample_id][:2] == ("failed", ["grounding.ocr_coverage"])
        assert after[sample_id] == ("passed", [], second_run)
    assert {sid for sid, v in after.items() if v[0] == "passed"} == (
        {sid for sid, v in before.items() if v[0] == "passed"}
        | {"fail-ocr-coverage-ignored-menu", "fail-ocr-coverage-partial"})
    assert all(run == second_run for _, _, run in after.values())

    # A stricter minimum length for descriptions: good descriptions below it fail for that alone.
    third_run = _gate(settings, QCConfig(min_round_chars_by_task={"conversation": 0, "complex_reasoning": 40,
                                                                  "detail": 250}))
    after = _verdicts(settings)
    newly_short = [sid for sid, row in labelled.items() if row["task_type"] == "detail" and row["language"] == "zh"
                   and row["expected"] == "pass" and len(_answers(row)) < 250]
    assert newly_short, "the labelled set should hold short good descriptions"
    for sample_id in newly_short:
        assert after[sample_id] == ("failed", ["length.too_short"], third_run)
    assert all(run == third_run for _, _, run in after.values())
    assert set(after) == set(before)

    # Nothing was regenerated: generation rows (status, attempts, raw text, completed_at...) and the
    # samples' content are byte-for-byte what they were, and no row was added.
    generations_after, samples_after = snapshot()
    assert generations_after == generations_before
    assert samples_after == samples_before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM qc_run")).scalar_one() == 3
        configs = conn.execute(text("SELECT config FROM qc_run ORDER BY id")).scalars().all()
    # Each run records the thresholds that judged it.
    grounding = [next(c for c in cfg["checks"] if c["name"] == "grounding.ocr_coverage") for cfg in configs]
    assert [g["thresholds"]["ocr_min_coverage"] for g in grounding] == [0.3, 0.0, 0.3]
    engine.dispose()


def test_taken_down_samples_keep_their_status(settings: Settings, labelled: dict[str, dict]) -> None:
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sample SET qc_status = 'taken_down' WHERE id = 'good-conv-menu'"))
    _gate(settings, dataclasses.replace(QCConfig()))
    with engine.connect() as conn:
        row = conn.execute(text("SELECT qc_status, qc_run_id FROM sample WHERE id = 'good-conv-menu'")).one()
    assert row == ("taken_down", None)
    engine.dispose()


def test_worker_processes_give_the_same_verdicts(settings: Settings, labelled: dict[str, dict],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """At seed size the checks run in spawned worker processes over id ranges; the verdicts (and the
    near-duplicate found across two ranges) must be those of the in-process path."""
    import tuwen.quality.run

    def stored() -> dict[str, tuple]:
        with create_engine(settings.database_url).connect() as conn:
            return {r.id: (r.qc_status, r.qc_reasons, r.qc_metrics)
                    for r in conn.execute(text("SELECT id, qc_status, qc_reasons, qc_metrics FROM sample"))}

    with pytest.raises(QualityGateFailed):  # 37% pass rate against the default 80% minimum
        run_quality_gate(Resources.from_settings(settings), ReleaseScope(languages=("zh", "en", "ja")),
                         report=False, workers=0)
    in_process = stored()
    monkeypatch.setattr(tuwen.quality.run, "_CHUNK_ROWS", 7)  # ranges are cut in this process, workers just read
    second = run_quality_gate(Resources.from_settings(settings), SCOPE, report=False, workers=2)
    assert stored() == in_process
    assert in_process[COPY_ID][1] == [NEAR_DUPLICATE_REASON]
    assert second.n_samples == len(labelled) + 1
