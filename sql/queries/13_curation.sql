-- Curation per day: images curated, held and rejected, and the share of curated images with Chinese text
-- (the knob TUWEN_CURATE_ZH_SHARE aims at); the reasons come from v_curation_counts.
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/13_curation.sql
SELECT crawl_date,
       count(*) FILTER (WHERE status = 'curated')                                  AS curated,
       count(*) FILTER (WHERE status = 'held')                                     AS held,
       count(*) FILTER (WHERE status = 'rejected')                                 AS rejected,
       round(avg(CASE WHEN has_zh_text THEN 1.0 ELSE 0.0 END)
             FILTER (WHERE status = 'curated'), 3)                                 AS curated_zh_share
FROM v_curation
GROUP BY crawl_date
ORDER BY crawl_date;
