-- Views over releases, QC runs and takedowns, for the analysts' query library (sql/queries/).
-- Created by migration 0003; like views.sql, every statement is CREATE OR REPLACE so re-running is safe.

-- One row per release: what was asked for, what was written, which QC run and Airflow run made it.
CREATE OR REPLACE VIEW v_release AS
SELECT e.id                      AS export_id,
       e.name                    AS release,
       e.status,
       e.n_samples,
       e.params,
       e.files,
       e.s3_prefix,
       e.qc_run_id,
       e.dag_id,
       e.run_id,
       e.created_at,
       e.published_at
FROM export e;

-- One row per QC run, with the per-rule failure counts the dataset card quotes.
CREATE OR REPLACE VIEW v_qc_run AS
SELECT q.id                          AS qc_run_id,
       q.suite,
       q.suite_version,
       q.scope,
       q.config -> 'min_pass_rate'   AS min_pass_rate,
       q.n_samples,
       q.n_passed,
       q.n_failed,
       q.pass_rate,
       q.success,
       q.results -> 'failed_reasons' AS failed_reasons,
       q.data_docs_key,
       q.dag_id,
       q.run_id,
       q.created_at
FROM qc_run q;

-- One row per (takedown request, image it removed, release that had shipped that image).
-- release is NULL when no release ever contained the image.
CREATE OR REPLACE VIEW v_takedown_items AS
SELECT t.id               AS takedown_id,
       t.kind,
       t.value,
       t.reason,
       t.created_at       AS requested_at,
       i.sha256           AS image_sha256,
       ti.previous_status,
       i.taken_down_at,
       e.name             AS release,
       e.status           AS release_status,
       e.published_at     AS release_published_at,
       ei.sample_id,
       ei.file
FROM takedown t
LEFT JOIN takedown_image ti ON ti.takedown_id = t.id
LEFT JOIN image i ON i.id = ti.image_id
LEFT JOIN export_item ei ON ei.image_id = i.id
LEFT JOIN export e ON e.id = ei.export_id;

-- Samples per site, task, language and QC outcome. A sample counts once per site its image was seen on.
CREATE OR REPLACE VIEW v_site_samples AS
SELECT src.site, s.task_type, s.language, s.qc_status, count(*) AS samples
FROM sample s
JOIN (SELECT DISTINCT image_id, site FROM image_source WHERE image_id IS NOT NULL) AS src
  ON src.image_id = s.image_id
GROUP BY src.site, s.task_type, s.language, s.qc_status;
