-- Which sites give the most rejected (or duplicate) images, and why.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/04_rejected_images_by_site.sql
SELECT site, outcome, reason, urls
FROM v_site_outcomes
WHERE outcome <> 'accepted'
ORDER BY urls DESC, site, outcome, reason;
