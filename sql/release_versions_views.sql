-- Release views with versions (migration 0008): a name can have several `export` rows — the published
-- one, the versions it superseded (kept with their items: what shipped stays queryable) and failed
-- attempts. CREATE OR REPLACE only appends columns to the views of views.sql and release_views.sql.

CREATE OR REPLACE VIEW v_release AS
SELECT e.id                      AS export_id,
       e.name                    AS release,
       e.status,
       e.n_samples,
       e.params,
       e.files,
       e.s3_prefix,
       e.qc_run_id,
       e.dag_id,
       e.run_id,
       e.created_at,
       e.published_at,
       e.version,
       e.superseded_at
FROM export e;

CREATE OR REPLACE VIEW v_release_contents AS
SELECT e.name AS release, e.status, e.published_at, ei.position, ei.sample_id, ei.file, ei.image_path,
       i.sha256 AS image_sha256,
       e.version
FROM export e
JOIN export_item ei ON ei.export_id = e.id
JOIN image i ON i.id = ei.image_id;

CREATE OR REPLACE VIEW v_takedown_items AS
SELECT t.id               AS takedown_id,
       t.kind,
       t.value,
       t.reason,
       t.created_at       AS requested_at,
       i.sha256           AS image_sha256,
       ti.previous_status,
       i.taken_down_at,
       e.name             AS release,
       e.status           AS release_status,
       e.published_at     AS release_published_at,
       ei.sample_id,
       ei.file,
       e.version          AS release_version,
       CASE WHEN e.status = 'superseded' THEN e.name || '@v' || e.version ELSE e.name END AS release_label
FROM takedown t
LEFT JOIN takedown_image ti ON ti.takedown_id = t.id
LEFT JOIN image i ON i.id = ti.image_id
LEFT JOIN export_item ei ON ei.image_id = i.id
LEFT JOIN export e ON e.id = ei.export_id;
