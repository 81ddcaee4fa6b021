-- Samples per language and task type over all days.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/03_samples_by_language.sql
SELECT language, task_type, sum(samples) AS samples, sum(passed) AS passed, sum(failed) AS failed
FROM v_daily_counts
GROUP BY language, task_type
ORDER BY language, task_type;
