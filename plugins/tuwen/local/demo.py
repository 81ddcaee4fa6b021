"""`make demo`: the whole pipeline through Airflow on local services, then a summary of what it made."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text

from tuwen.config import Settings
from tuwen.db.models import Export, Image, ImageSource, QCRun, Sample
from tuwen.db.session import session_scope
from tuwen.local.airflow_stack import airflow_env, dags_test, ensure_pool, migrate_metadata
from tuwen.local.services import RUN_DIR
from tuwen.local.stack import LocalStack, airflow_metadata_url

DAG_ORDER = ("tuwen_crawl", "tuwen_synthesize", "tuwen_export")


@dataclass
class PipelineSummary:
    images_by_status: dict[str, int]
    sources_by_outcome: dict[str, int]
    rejection_reasons: dict[str, int]
    samples_by_task: dict[str, int]
    generations_by_status: dict[str, int]
    judgements_by_status: dict[str, int]
    judged_samples: int  # samples with a succeeded faithfulness verdict
    contradicted_samples: int  # of those, the ones with at least one contradicted statement
    qc_pass_rate: float | None
    qc_passed: int
    qc_total: int
    release: dict[str, Any] | None
    # Curation (tuwen.curate): verdicts per status and reason, and the share of curated images with
    # Chinese text the policy aims at (TUWEN_CURATE_ZH_SHARE).
    curation_by_status: dict[str, int] = field(default_factory=dict)
    curation_reasons: dict[str, int] = field(default_factory=dict)
    curated_zh_share: float | None = None


def summarize(settings: Settings, release: str | None = None) -> PipelineSummary:
    with session_scope(settings.database_url) as s:
        images = dict(s.execute(select(Image.status, func.count()).group_by(Image.status)).all())
        sources = dict(s.execute(select(ImageSource.outcome, func.count()).group_by(ImageSource.outcome)).all())
        reasons: dict[str, int] = {reason: n for reason, n in s.execute(
            select(ImageSource.reason, func.count()).where(ImageSource.reason.is_not(None))
            .group_by(ImageSource.reason)) if reason is not None}
        samples = dict(s.execute(select(Sample.task_type, func.count()).group_by(Sample.task_type)).all())
        generations: dict[str, int] = {status: n for status, n in s.execute(
            text("SELECT status, count(*) FROM generation GROUP BY status"))}
        judgements: dict[str, int] = {status: n for status, n in s.execute(
            text("SELECT status, count(*) FROM judgement GROUP BY status"))}
        judged, contradicted = s.execute(text(
            "SELECT count(DISTINCT sample_id), count(DISTINCT sample_id) FILTER (WHERE n_contradicted > 0) "
            "FROM judgement WHERE status = 'succeeded'")).one()
        curation = {status: n for status, n in s.execute(
            text("SELECT status, count(*) FROM curation GROUP BY status"))}
        curation_reasons = {reason: n for reason, n in s.execute(text(
            "SELECT r, count(*) FROM curation, jsonb_array_elements_text(reasons) AS r GROUP BY r ORDER BY r"))}
        zh_share = s.execute(text("""SELECT avg(CASE WHEN i.has_zh_text THEN 1.0 ELSE 0.0 END) FROM curation c
                                     JOIN image i ON i.id = c.image_id
                                     WHERE c.status = 'curated' AND i.has_zh_text IS NOT NULL""")).scalar()
        qc = s.execute(select(QCRun).order_by(QCRun.id.desc()).limit(1)).scalar_one_or_none()
        query = select(Export).where(Export.status == "published").order_by(Export.published_at.desc())
        if release:
            query = query.where(Export.name == release)
        export = s.execute(query.limit(1)).scalar_one_or_none()
        return PipelineSummary(
            images_by_status=images, sources_by_outcome=sources, rejection_reasons=reasons,
            samples_by_task=samples, generations_by_status=generations,
            judgements_by_status=judgements, judged_samples=judged, contradicted_samples=contradicted,
            qc_pass_rate=qc.pass_rate if qc else None, qc_passed=qc.n_passed if qc else 0,
            qc_total=qc.n_samples if qc else 0,
            curation_by_status=curation, curation_reasons=curation_reasons,
            curated_zh_share=None if zh_share is None else float(zh_share),
            release=None if export is None else {
                "name": export.name, "samples": export.n_samples, "local_path": export.local_path,
                "s3": f"s3://{settings.s3_bucket}/{export.s3_prefix}", "files": sorted(export.files)[:6],
            },
        )


def print_summary(settings: Settings, summary: PipelineSummary) -> None:
    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"

    print("\n================ tuwen demo: what the pipeline made ================")
    print(f"images (distinct):      {fmt(summary.images_by_status)}")
    print(f"image mentions (URL on a page): {fmt(summary.sources_by_outcome)}")
    print(f"mentions by reason:     {fmt(summary.rejection_reasons)}")
    zh = "n/a (OCR off)" if summary.curated_zh_share is None else f"{100 * summary.curated_zh_share:.0f}%"
    print(f"curation:               {fmt(summary.curation_by_status)}; reasons {fmt(summary.curation_reasons)}; "
          f"curated with Chinese text {zh} (target >= {100 * settings.curate_zh_share:.0f}%)")
    print(f"generations (paid):     {fmt(summary.generations_by_status)}")
    print(f"samples per task:       {fmt(summary.samples_by_task)}")
    n_samples = sum(summary.samples_by_task.values())
    print(f"faithfulness judge:     judged {summary.judged_samples}/{n_samples} samples, "
          f"{summary.contradicted_samples} with a contradicted statement (judgements: "
          f"{fmt(summary.judgements_by_status)})")
    if summary.qc_pass_rate is not None:
        print(f"QC pass rate:           {summary.qc_passed}/{summary.qc_total} = {100 * summary.qc_pass_rate:.1f}%")
    if summary.release:
        r = summary.release
        print(f"release {r['name']}: {r['samples']} samples")
        print(f"  on disk:   {r['local_path']}")
        print(f"  in bucket: {r['s3']}  (S3 endpoint http://{settings.s3_endpoint})")
    print("\nAnswers came from the STAND-IN VLM server (a test double of vLLM's API, not a model)"
          if settings.vlm_model == "tuwen-standin-vlm" else f"\nAnswers came from {settings.vlm_model}")
    if settings.judge_endpoint[1] == "tuwen-standin-vlm":
        print("The faithfulness judge was the stand-in too: its verdicts exercise the plumbing, not a model's "
              "judgement\n(TUWEN_STANDIN_CONTRADICTION_RATE=0.1 make demo has it inject known contradictions to find).")
    print("To use a real Qwen2.5-VL served by vLLM, set e.g.\n"
          "  TUWEN_VLM_BASE_URL=http://gpu-host:8000/v1 TUWEN_VLM_MODEL=Qwen/Qwen2.5-VL-32B-Instruct make demo")
    db = settings.database_url.replace("postgresql+psycopg2://", "postgresql://")
    print("\nLook at the samples with SQL:")
    print(f"  psql '{db}' -c \"SELECT task_type, qc_status, count(*) FROM sample GROUP BY 1, 2 ORDER BY 1, 2\"")
    print("Airflow logs of this run: " + str(RUN_DIR / "logs"))


def run_demo(settings: Settings, release: str = "tuwen-demo", logical_date: dt.date | None = None) -> PipelineSummary:
    stack = LocalStack(settings)
    for line in stack.up():
        print(line)
    log_dir = RUN_DIR / "logs"
    env = airflow_env(airflow_metadata_url(), RUN_DIR / "airflow")
    print("airflow: migrating the metadata database ...")
    migrate_metadata(env, log_dir)
    ensure_pool(env, log_dir, slots=4)
    day = logical_date or dt.datetime.now(dt.UTC).date()
    for dag_id in DAG_ORDER:
        # The demo republishes its own release each run: byte-identical files leave the published
        # version as it is; changed lineage publishes a new version and keeps the old one (superseded).
        conf: dict[str, Any] | None = None
        if dag_id == "tuwen_export":
            conf = {"release": release, "overwrite": True}
        elif dag_id == "tuwen_synthesize":
            conf = {"judge": True}  # the demo shows the optional faithfulness judge (off by default)
        print(f"airflow dags test {dag_id} {day} ...", flush=True)
        log_file = dags_test(dag_id, day, env, log_dir, conf=conf)
        print(f"  ok (log {log_file})")
    summary = summarize(settings, release)
    print_summary(settings, summary)
    return summary
