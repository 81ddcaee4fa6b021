"""The analysts' role and query library: tuwen_analyst reads the views and nothing else, and every query
in sql/queries/ runs as that role through psql with its documented variables and answers correctly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.services.test_export import publish_then_supersede, seed
from tuwen.config import Settings
from tuwen.release.export import ReleaseParams, write_release
from tuwen.resources import Resources

REPO = Path(__file__).resolve().parents[2]
QUERIES = sorted((REPO / "sql" / "queries").glob("*.sql"))


def _psql(database_url: str, query: Path, **variables: str) -> list[list[str]]:
    args = ["psql", database_url.replace("+psycopg2", ""), "-X", "-q", "-A", "-t", "-F", "\t",
            "-v", "ON_ERROR_STOP=1", "-c", "SET ROLE tuwen_analyst"]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    proc = subprocess.run([*args, "-f", str(query)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]


def test_analyst_reads_views_only(lineage_db: str) -> None:
    engine = create_engine(lineage_db)
    with engine.connect() as conn:
        conn.execute(text("SET ROLE tuwen_analyst"))
        for view in ("v_sample", "v_sample_lineage", "v_release_contents", "v_takedown_items", "v_site_samples",
                     "v_qc_run", "v_release", "v_daily_counts", "v_generation_stats"):
            assert conn.execute(text(f"SELECT count(*) FROM {view}")).scalar() == 0
    for statement in ("SELECT count(*) FROM sample", "SELECT count(*) FROM image_source",
                      "SELECT count(*) FROM takedown", "SELECT count(*) FROM alembic_version",
                      "INSERT INTO takedown (kind, value) VALUES ('domain', 'example.com')",
                      "UPDATE export SET status = 'failed'", "DELETE FROM v_sample",
                      "CREATE TABLE mine (x int)", "SELECT nextval('image_id_seq')"):
        with engine.connect() as conn:  # one connection each: a refused statement aborts its transaction
            conn.execute(text("SET ROLE tuwen_analyst"))
            with pytest.raises(DBAPIError, match="permission denied|cannot delete from view"):
                conn.execute(text(statement))
    engine.dispose()
    # Granted on every v_* view, and on no base table.
    with engine.connect() as conn:
        grants = conn.execute(text("SELECT table_name FROM information_schema.role_table_grants "
                                   "WHERE grantee = 'tuwen_analyst'")).scalars().all()
        views = conn.execute(text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")).scalars().all()
    engine.dispose()
    assert sorted(set(grants)) == sorted(views) and all(v.startswith("v_") for v in views)


def test_every_library_query_runs_as_the_analyst(settings: Settings, resources: Resources) -> None:
    passed = seed(settings, 20, with_images=False)
    write_release(resources, ReleaseParams(name="lib", include_images=False))
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        sample = conn.execute(text("""SELECT s.id, i.sha256, src.url, src.page_url, src.site, g.prompt_id, g.model
                                      FROM sample s JOIN image i ON i.id = s.image_id
                                      JOIN image_source src ON src.image_id = i.id
                                      JOIN generation g ON g.id = s.generation_id
                                      WHERE s.id = :s"""), {"s": passed[0]}).one()
    engine.dispose()
    variables = {"sample_id": sample.id, "image_sha256": sample.sha256, "url": sample.url, "release": "lib"}
    results = {}
    for query in QUERIES:
        needed = set(re.findall(r":'(\w+)'", query.read_text(encoding="utf-8")))
        assert needed <= set(variables), (query.name, needed)
        assert "-- Usage: psql" in query.read_text(encoding="utf-8"), f"{query.name} documents its usage"
        results[query.name] = _psql(settings.database_url, query, **{k: variables[k] for k in needed})
    assert len(QUERIES) >= 12

    by_day = results["01_samples_by_task_day.sql"]
    assert sum(int(row[3]) for row in by_day) == 20 and sum(int(row[4]) for row in by_day) == len(passed)
    assert sum(int(row[2]) for row in results["02_samples_by_site.sql"]) == 20
    assert {row[0] for row in results["03_samples_by_language.sql"]} == {"zh"}
    assert sum(int(row[4]) for row in results["06_generation_stats.sql"] if row[3] == "succeeded") == 20
    lineage = results["07_sample_lineage.sql"]
    assert lineage[0][:6] == [sample.id, sample.sha256, sample.url, sample.page_url, lineage[0][4], sample.site]
    assert lineage[0][9] == sample.prompt_id and lineage[0][11] == sample.model
    assert lineage[-1][0] == "lib"  # the second statement: the release that shipped it
    assert [row[0] for row in results["08_url_lineage.sql"]] == [sample.id]
    assert results["08_url_lineage.sql"][0][-3] == "lib"
    files = results["09_release_contents.sql"][1:]  # (version, file, samples, ...)
    assert {row[0] for row in files} == {"1"} and sum(int(row[2]) for row in files) == len(passed)
    assert [row[:3] for row in results["10_releases_with_image.sql"]] == [["lib", "1", "published"]]
    assert results["11_takedown_impact.sql"] == []
    assert [row[:3] for row in results["12_releases.sql"]] == [["lib", "1", "published"]]


def test_postgres_init_leaves_grants_to_the_migration() -> None:
    init = (REPO / "deploy" / "postgres-init.sh").read_text(encoding="utf-8")
    assert "CREATE ROLE tuwen_analyst LOGIN PASSWORD :'analyst_password'" in init
    assert "GRANT SELECT" not in init and "DEFAULT PRIVILEGES" not in init


def test_a_superseded_release_stays_queryable_by_the_analyst(settings: Settings, resources: Resources) -> None:
    first, sha = publish_then_supersede(settings, resources, "ana")
    queries = {q.name: q for q in QUERIES}
    versions = _psql(settings.database_url, queries["09_release_contents.sql"], release="ana")
    assert [row[:4] for row in versions[:2]] == [["ana", "1", "superseded", str(first.n_samples)],
                                                  ["ana", "2", "published", "2"]]
    assert [row[:3] for row in _psql(settings.database_url, queries["10_releases_with_image.sql"],
                                     image_sha256=sha)] == [["ana", "1", "superseded"]]
    assert {(row[0], row[1], row[2]) for row in _psql(settings.database_url, queries["12_releases.sql"])} == {
        ("ana", "1", "superseded"), ("ana", "2", "published")}
