-- One release: its parameters and QC run, then samples per file.
-- Usage: psql "$TUWEN_ANALYST_URL" -v release=tuwen-2026-11-20 -f sql/queries/09_release_contents.sql
-- A name re-exported with overwrite has several versions: the published one and those it superseded.
SELECT release, version, status, n_samples, qc_run_id, dag_id, run_id, published_at, superseded_at, params
FROM v_release
WHERE release = :'release'
ORDER BY version;

SELECT version, file, count(*) AS samples, min(position) AS first_position, max(position) AS last_position
FROM v_release_contents
WHERE release = :'release'
GROUP BY version, file
ORDER BY version, file;
