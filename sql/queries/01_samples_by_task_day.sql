-- Samples per crawl day and task type, with QC outcome.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/01_samples_by_task_day.sql
SELECT crawl_date, task_type, language, samples, passed, failed,
       round(100.0 * passed / nullif(samples, 0), 1) AS pass_pct
FROM v_daily_counts
ORDER BY crawl_date, task_type, language;
