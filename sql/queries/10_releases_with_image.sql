-- Which releases contain an image (by the SHA-256 of its original bytes), and as which sample.
-- Usage: psql "$TUWEN_ANALYST_URL" -v image_sha256=0a1b... -f sql/queries/10_releases_with_image.sql
-- Superseded versions count: they shipped.
SELECT release, version, status, published_at, sample_id, file, position, image_path
FROM v_release_contents
WHERE image_sha256 = :'image_sha256'
ORDER BY published_at NULLS LAST, release, version;
