"""
### tuwen_export — gate the samples on quality, then publish a LLaVA release

Manual (trigger with params). `quality_gate` runs tuwen's per-sample checks and a Great
Expectations suite over the samples in scope, records a `qc_run`, writes each sample's verdict and
reasons, and **fails the run** when the pass rate is below the minimum, so a bad prompt or a broken
model blocks the export instead of shipping. `export_release` then writes the LLaVA JSON (all tasks
and one file per task), a JSONL copy, the images, a manifest of SHA-256 per file and a dataset card
to `exports/<release>/` in the bucket (manifest last) and to the local release folder, and records
`export` / `export_item` rows. The QC report (plots, top rejection reasons with examples, a page
of passed samples with their images) is published by the gate to `qc/<qc_run>/report/` and copied
into the release as `qc_report/`, listed in its manifest.

**Params**: `release` (name: letters, digits, `.`, `_`, `-`, at most 120; default `tuwen-<run id>`,
unique per run), `overwrite` (a published name is refused without it; with it the new version is
published and the old one kept as `superseded`), `date_from`/`date_to` (crawl dates; empty:
all), `languages`, `task_types`, `qc_statuses`, `max_samples`, `mix` (task weights, e.g.
`{"conversation": 5, "complex_reasoning": 4, "detail": 4}`), `images` (`folder`, `tar` shards, `both`,
`none`), `shard_max_files`, `jsonl`, `english_json` (an English LLaVA-Instruct JSON to interleave,
uploaded under `inputs/` in the bucket),
`include_images`, `min_pass_rate` (empty: config). Same params over the same lineage give
byte-identical files.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from tuwen.domain import TASK_TYPES


@dag(
    dag_id="tuwen_export",
    schedule=None,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=1)},
    params={
        "release": Param(None, type=["null", "string"], maxLength=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                         description="release name (letters, digits, . _ -); empty = tuwen-<run id>"),
        "overwrite": Param(False, type="boolean",
                           description="replace a published release of this name (the old one is kept as "
                                       "superseded); without it a published name is refused"),
        "date_from": Param(None, type=["null", "string"], format="date", description="first crawl date"),
        "date_to": Param(None, type=["null", "string"], format="date", description="last crawl date"),
        "languages": Param(["zh"], type="array", description="sample languages to include"),
        "task_types": Param(list(TASK_TYPES), type="array", description="task types to include"),
        "qc_statuses": Param(["passed"], type="array", description="QC verdicts to ship (never taken_down)"),
        "max_samples": Param(None, type=["null", "integer"], minimum=1, description="size cap"),
        "mix": Param(None, type=["null", "object"],
                     description='task weights, e.g. {"conversation": 5, "complex_reasoning": 4, "detail": 4}'),
        "images": Param("folder", enum=["folder", "tar", "both", "none"],
                        description="images as a folder, tar shards (images-00000.tar...), both, or none"),
        "shard_max_files": Param(10000, type="integer", minimum=1, description="images per tar shard"),
        "jsonl": Param(True, type="boolean", description="also write the JSONL variant"),
        "english_json": Param(None, type=["null", "string"],
                              description="object key under inputs/ in the bucket of an English LLaVA-Instruct "
                                          "JSON to interleave into one more file"),
        "include_images": Param(True, type="boolean", description="copy the images into the release"),
        "min_pass_rate": Param(None, type=["null", "number"], minimum=0, maximum=1,
                               description="QC gate minimum; empty = TUWEN_QC_MIN_PASS_RATE"),
    },
    tags=["tuwen"],
    doc_md=__doc__,
)
def tuwen_export() -> None:
    @task(retries=0)  # a failed gate is a verdict, not a transient error
    def quality_gate() -> dict:
        from tuwen.config import Settings
        from tuwen.quality.run import run_quality_gate
        from tuwen.quality.scope import ReleaseScope
        from tuwen.release.export import check_can_publish
        from tuwen.release.params import release_params_for_run
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        # The params are parsed once, and the release's name and params checked before the gate runs:
        # a bad name or a published one (without overwrite) fails here, not after the gate.
        with fail_fast_on_bad_input():
            settings = Settings.from_env()
            scope = ReleaseScope.from_params(context["params"])
            release = release_params_for_run(context["params"], context["run_id"], context.get("logical_date"),
                                             scope)
        resources = Resources.from_settings(settings)
        check_can_publish(resources.engine, release)
        # Raises QualityGateFailed below the bar (export_release is then skipped as upstream_failed);
        # the QC report is published to qc/<qc_run>/report/ either way.
        result = run_quality_gate(resources, scope, dag_id=context["dag"].dag_id, run_id=context["run_id"])
        return {**result.as_dict(), "release": release.name}

    @task
    def export_release(gate: dict) -> dict:
        from tuwen.config import Settings
        from tuwen.release.export import write_release
        from tuwen.release.params import ReleaseParams
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            params = ReleaseParams.from_params(gate["release"], context["params"])
            settings = Settings.from_env()
        result = write_release(Resources.from_settings(settings), params,
                               dag_id=context["dag"].dag_id, run_id=context["run_id"], qc_run_id=gate["qc_run_id"])
        # The report the gate decided on is part of the release (qc_report/, listed in the manifest).
        report = result.local_path / "qc_report" / "index.html"
        print(f"release {result.name}: {result.n_samples} samples {result.counts_by_task} "
              f"at {result.local_path} and s3 {result.s3_prefix}; QC report {report}")
        return {"release": result.name, "samples": result.n_samples, "local_path": str(result.local_path),
                "s3_prefix": result.s3_prefix, "qc_report": str(report)}

    export_release(quality_gate())


tuwen_export()
