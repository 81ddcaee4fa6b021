-- Samples per site and task type, with how many passed QC and how many were taken down.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/02_samples_by_site.sql
SELECT site, task_type,
       sum(samples)                                          AS samples,
       sum(samples) FILTER (WHERE qc_status = 'passed')      AS passed,
       sum(samples) FILTER (WHERE qc_status = 'failed')      AS failed,
       sum(samples) FILTER (WHERE qc_status = 'taken_down')  AS taken_down
FROM v_site_samples
GROUP BY site, task_type
ORDER BY samples DESC, site, task_type;
