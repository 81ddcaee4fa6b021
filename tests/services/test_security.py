"""Security properties that are cheap to check and expensive to lose.

- The bucket is private: no bucket policy, no public ACL grant; presigned URLs are short-lived and
  their lifetime is the one asked for.
- Credentials never reach a log: a crawl, a synthesis batch and an export run with distinctive
  secret values (S3 secret key, VLM API key, a DB password in the URL) and every log line they
  produce (Python logging at DEBUG and Scrapy's log file) is searched for them. The running-Airflow
  logs, with the Airflow password too, are searched in tests/test_airflow_live.py.
- Airflow's REST API refuses anonymous and default-credential logins: tests/test_airflow_ui.py.
- The crawler refuses private addresses: tests/test_crawl_resume.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
import urllib.parse
import uuid
from pathlib import Path

import pytest
from minio.error import S3Error

from tests.conftest import write_sites_file
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.resources import Resources
from tuwen.storage import ObjectStore
from tuwen.synthesis.runner import RunParams, plan_partition, run_batch


def test_bucket_has_no_policy_and_no_public_grant(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    with pytest.raises(S3Error) as missing:
        store.client.get_bucket_policy(settings.s3_bucket)
    assert missing.value.code == "NoSuchBucketPolicy"
    # No ACL grant to everyone or to any authenticated AWS user.
    acl = store.client._execute("GET", settings.s3_bucket, query_params={"acl": ""}).data.decode()
    assert "AllUsers" not in acl and "AuthenticatedUsers" not in acl


def test_presigned_urls_expire_when_asked(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    store.put_bytes("model/ab/x.jpg", b"jpeg", "image/jpeg")
    for asked, expected in ((None, "900"), (60, "60")):
        url = store.presigned_get("model/ab/x.jpg") if asked is None else store.presigned_get("model/ab/x.jpg", asked)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["X-Amz-Expires"] == [expected]
        assert settings.s3_secret_key not in url  # signed with it, never carrying it


def test_no_credential_appears_in_any_log(settings: Settings, fixture_site: tuple[str, Path], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from tuwen.crawl.run import run_crawl
    from tuwen.curate.run import curate_partition
    from tuwen.release.export import ReleaseParams, write_release

    values = {
        "s3_secret_key": "s3secret-" + secrets.token_hex(8),
        "vlm_api_key": "vlmkey-" + secrets.token_hex(8),
        "db_password": "dbpass-" + secrets.token_hex(8),  # trust auth ignores it; it still must not leak
    }
    site_url, _ = fixture_site
    settings = dataclasses.replace(
        settings,
        s3_secret_key=values["s3_secret_key"], vlm_api_key=values["vlm_api_key"],
        database_url=settings.database_url.replace("postgres@", f"postgres:{values['db_password']}@", 1),
        sites_file=write_sites_file(tmp_path / "sites.yaml", site_url), batch_size=1000,
    )
    ObjectStore(settings).ensure_bucket()
    day = dt.date(2026, 9, 1)
    caplog.set_level(logging.DEBUG)
    crawl = run_crawl(Resources.from_settings(settings), "fixture", day, timeout_s=300)
    curate_partition(Resources.from_settings(settings), day)  # synthesis takes curated images only
    plan = plan_partition(Resources.from_settings(settings), Partition(day, day + dt.timedelta(days=1)), RunParams(limit=20))
    for batch in plan.batches:
        run_batch(Resources.from_settings(settings), batch["image_ids"], RunParams())
    write_release(Resources.from_settings(settings), ReleaseParams(name=f"sec-{uuid.uuid4().hex[:6]}", qc_statuses=("pending",)))
    logs = caplog.text + Path(crawl.log_path).read_text(errors="replace")
    assert "crawl_run" in logs and len(logs) > 5_000  # the logs are really there
    leaked = [name for name, value in values.items() if value in logs]
    assert not leaked, f"secrets written to logs: {leaked}"
