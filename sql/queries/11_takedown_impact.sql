-- Every takedown: how many images and samples it removed, and which releases had shipped them (those
-- releases need re-issuing or withdrawing); a superseded version shipped too, and is named with it.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/11_takedown_impact.sql
SELECT takedown_id, kind, value, reason, requested_at,
       count(DISTINCT image_sha256)                                          AS images,
       count(DISTINCT sample_id) FILTER (WHERE release_status IN ('published', 'superseded')) AS shipped_samples,
       coalesce(string_agg(DISTINCT release_label, ', ' ORDER BY release_label)
                FILTER (WHERE release_status IN ('published', 'superseded')), '') AS releases
FROM v_takedown_items
GROUP BY takedown_id, kind, value, reason, requested_at
ORDER BY requested_at DESC, takedown_id DESC;
