-- Curation (issue 18) for analysts: each accepted image's verdict, and counts per day, status and reason.
-- Created by migration 0010; like views.sql, every statement is CREATE OR REPLACE so re-running is safe.
-- Personal data is named by kind only (personal_data.mobile ...): the matched text is never stored.

CREATE OR REPLACE VIEW v_curation AS
SELECT i.sha256           AS image_sha256,
       i.crawl_date,
       i.has_zh_text,
       c.status,
       c.reasons,
       c.scores,
       c.config_version,
       c.curated_at,
       c.dag_id,
       c.run_id
FROM curation c
JOIN image i ON i.id = c.image_id;

-- One row per (day, status, reason); a curated image counts under reason ''. An image with two reasons
-- counts under each, so sum `images` per status only where reason = '' or the image has one reason.
CREATE OR REPLACE VIEW v_curation_counts AS
SELECT i.crawl_date,
       c.status,
       coalesce(r.reason, '')                        AS reason,
       count(*)                                      AS images,
       count(*) FILTER (WHERE i.has_zh_text)         AS with_zh_text
FROM curation c
JOIN image i ON i.id = c.image_id
LEFT JOIN LATERAL jsonb_array_elements_text(c.reasons) AS r(reason) ON true
GROUP BY i.crawl_date, c.status, coalesce(r.reason, '');
