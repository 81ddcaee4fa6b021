-- Which QC rule drops the most samples (current verdicts), per task type, with its share of failures;
-- then each QC run's own counts (what the dataset cards quote).
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/05_qc_failure_reasons.sql
SELECT reason, task_type, samples,
       round(100.0 * samples / sum(samples) OVER (), 1) AS pct_of_failures
FROM v_qc_failure_reasons
ORDER BY samples DESC, reason, task_type;

SELECT q.qc_run_id, q.created_at::date AS day, q.n_samples, q.pass_rate, r.key AS reason,
       r.value::int AS samples, round(100.0 * r.value::int / nullif(q.n_samples, 0), 2) AS drop_pct
FROM v_qc_run q, jsonb_each_text(coalesce(q.failed_reasons, '{}'::jsonb)) AS r
ORDER BY q.qc_run_id DESC, samples DESC, reason;
