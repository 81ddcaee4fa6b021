-- Every takedown: how many images and samples it removed, and which published releases had shipped
-- them (those releases need re-issuing or withdrawing).
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/11_takedown_impact.sql
SELECT takedown_id, kind, value, reason, requested_at,
       count(DISTINCT image_sha256)                                          AS images,
       count(DISTINCT sample_id) FILTER (WHERE release_status = 'published') AS shipped_samples,
       coalesce(string_agg(DISTINCT release, ', ' ORDER BY release)
                FILTER (WHERE release_status = 'published'), '')             AS releases
FROM v_takedown_items
GROUP BY takedown_id, kind, value, reason, requested_at
ORDER BY requested_at DESC, takedown_id DESC;
