-- Views for analysts over the lineage schema. Created by migration 0002; `psql` examples in README.md.

CREATE OR REPLACE VIEW v_sample AS
SELECT s.id                AS sample_id,
       s.task_type,
       s.language,
       s.rounds,
       s.qc_status,
       s.qc_reasons,
       s.conversations,
       i.sha256            AS image_sha256,
       i.crawl_date,
       i.has_zh_text,
       g.model,
       g.prompt_id,
       g.prompt_version,
       g.finish_reason,
       g.prompt_tokens,
       g.completion_tokens,
       g.latency_ms,
       g.dag_id,
       g.run_id,
       s.created_at
FROM sample s
JOIN image i ON i.id = s.image_id
JOIN generation g ON g.id = s.generation_id;

CREATE OR REPLACE VIEW v_daily_counts AS
SELECT i.crawl_date,
       s.task_type,
       s.language,
       count(*)                                        AS samples,
       count(*) FILTER (WHERE s.qc_status = 'passed')  AS passed,
       count(*) FILTER (WHERE s.qc_status = 'failed')  AS failed
FROM sample s
JOIN image i ON i.id = s.image_id
GROUP BY i.crawl_date, s.task_type, s.language;

CREATE OR REPLACE VIEW v_site_outcomes AS
SELECT site, outcome, coalesce(reason, '') AS reason, count(*) AS urls
FROM image_source
GROUP BY site, outcome, coalesce(reason, '');

CREATE OR REPLACE VIEW v_qc_failure_reasons AS
SELECT r.reason, s.task_type, count(*) AS samples
FROM sample s, jsonb_array_elements_text(s.qc_reasons) AS r(reason)
WHERE s.qc_status = 'failed'
GROUP BY r.reason, s.task_type;

-- Both percentiles come from one sort per group (an array of fractions), not one sort each.
CREATE OR REPLACE VIEW v_generation_stats AS
SELECT model, prompt_id, prompt_version, status, generations, attempts, avg_prompt_tokens,
       avg_completion_tokens, latency[1] AS p50_latency_ms, latency[2] AS p95_latency_ms
FROM (
    SELECT model, prompt_id, prompt_version, status,
           count(*)                                                                 AS generations,
           sum(attempts)                                                            AS attempts,
           avg(prompt_tokens)::numeric(10, 1)                                       AS avg_prompt_tokens,
           avg(completion_tokens)::numeric(10, 1)                                   AS avg_completion_tokens,
           percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms)     AS latency
    FROM generation
    GROUP BY model, prompt_id, prompt_version, status
) AS per_group;

CREATE OR REPLACE VIEW v_sample_lineage AS
SELECT s.id              AS sample_id,
       src.url           AS image_url,
       src.page_url,
       src.page_title,
       src.site,
       cr.id             AS crawl_run_id,
       cr.dag_id         AS crawl_dag_id,
       cr.run_id         AS crawl_airflow_run_id,
       g.prompt_id,
       g.prompt_sha256,
       g.model,
       g.sampling,
       g.dag_id          AS synthesis_dag_id,
       g.run_id          AS synthesis_airflow_run_id,
       s.qc_run_id,
       i.sha256          AS image_sha256
FROM sample s
JOIN image i ON i.id = s.image_id
JOIN generation g ON g.id = s.generation_id
LEFT JOIN image_source src ON src.image_id = i.id
LEFT JOIN crawl_run cr ON cr.id = src.crawl_run_id;

CREATE OR REPLACE VIEW v_release_contents AS
SELECT e.name AS release, e.status, e.published_at, ei.position, ei.sample_id, ei.file, ei.image_path,
       i.sha256 AS image_sha256
FROM export e
JOIN export_item ei ON ei.export_id = e.id
JOIN image i ON i.id = ei.image_id;
