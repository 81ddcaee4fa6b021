-- Where one sample came from — image URL, page, site, crawl run (and its Airflow run), prompt and its
-- SHA-256, model and sampling, synthesis Airflow run, QC run — and which releases shipped it.
-- Usage: psql "$TUWEN_ANALYST_URL" -v sample_id=tw-0123abcd... -f sql/queries/07_sample_lineage.sql
SELECT sample_id, image_sha256, image_url, page_url, page_title, site,
       crawl_run_id, crawl_dag_id, crawl_airflow_run_id,
       prompt_id, prompt_sha256, model, sampling,
       synthesis_dag_id, synthesis_airflow_run_id, qc_run_id
FROM v_sample_lineage
WHERE sample_id = :'sample_id'
ORDER BY image_url, page_url;

SELECT release, status, published_at, file, position, image_path
FROM v_release_contents
WHERE sample_id = :'sample_id'
ORDER BY published_at NULLS LAST, release;
