-- Every sample generated from an image URL or a page URL, and the releases that contain them.
-- Usage: psql "$TUWEN_ANALYST_URL" -v url='https://example.cn/a.jpg' -f sql/queries/08_url_lineage.sql
SELECT l.sample_id, l.image_url, l.page_url, l.site, l.prompt_id, l.model,
       s.task_type, s.qc_status, r.release, r.file, r.position
FROM v_sample_lineage l
JOIN v_sample s ON s.sample_id = l.sample_id
LEFT JOIN v_release_contents r ON r.sample_id = l.sample_id AND r.status = 'published'
WHERE l.image_url = :'url' OR l.page_url = :'url'
ORDER BY l.sample_id, r.release;
