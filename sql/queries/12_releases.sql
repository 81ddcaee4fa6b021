-- All releases, newest first, with size, QC run and the Airflow run that wrote them.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/12_releases.sql
SELECT release, version, status, n_samples, qc_run_id, dag_id, run_id, created_at, published_at, superseded_at,
       params ->> 'date_from' AS date_from, params ->> 'date_to' AS date_to, params -> 'mix' AS mix
FROM v_release
ORDER BY created_at DESC, release, version DESC;
