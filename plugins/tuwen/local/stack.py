"""Bring up everything the local demo needs, on the machine's defaults, idempotently.

PostgreSQL (databases `tuwen` and `airflow`, lineage schema migrated), the S3 server with the
bucket (its objects kept under `<run dir>/s3-data` across restarts), the stand-in VLM server (only when TUWEN_VLM_BASE_URL points at this machine) and the
fixture website. Every step prints what it found or started and where.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from tuwen.config import Settings, StackSettings
from tuwen.db.migrate import upgrade
from tuwen.local.services import (
    RUN_DIR,
    BackgroundService,
    ensure_database,
    ensure_postgres,
    fixture_site_service,
    s3_service,
    standin_vlm_service,
)
from tuwen.storage import ObjectStore

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def airflow_metadata_url() -> str:
    return os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                          "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow")


@dataclass
class LocalStack:
    settings: Settings
    run_dir: Path = RUN_DIR
    fixture_site_port: int | None = None  # None: TUWEN_FIXTURE_SITE_PORT
    # Share of the stand-in's answers given a known false statement (the judge's tests and demos);
    # None: TUWEN_STANDIN_CONTRADICTION_RATE (default 0, answers as they always were).
    standin_contradiction_rate: float | None = None
    _services: list[BackgroundService] | None = field(default=None, init=False, repr=False)

    def services(self) -> list[BackgroundService]:
        # The same objects every time: one that started its process reaps it when stopping it.
        if self._services is None:
            self._services = self._find_services()
        return self._services

    def _find_services(self) -> list[BackgroundService]:
        found = []
        host, _, port = self.settings.s3_endpoint.partition(":")
        if host in LOCAL_HOSTS:
            found.append(s3_service(int(port or 80), self.run_dir))
        # With replicas listed, the first is the one a local stand-in serves.
        vlm = urllib.parse.urlparse(self.settings.vlm_base_url.split(",")[0])
        if vlm.hostname in LOCAL_HOSTS:
            # With OCR on, the stand-in reads the text in each image too, so its answers quote what is
            # written there and the QC grounding check has something real to compare.
            extra = ["--ocr"] if self.settings.ocr_enabled else []
            rate = self.standin_contradiction_rate
            if rate is None:
                rate = StackSettings.from_env().standin_contradiction_rate
            found.append(standin_vlm_service(vlm.port or 80, self.settings.vlm_model, self.run_dir, extra,
                                             contradiction_rate=rate))
        site_port = self.fixture_site_port or StackSettings.from_env().fixture_site_port
        found.append(fixture_site_service(self.run_dir / "fixture-site", site_port, self.run_dir))
        return found

    def up(self) -> list[str]:
        messages = [ensure_postgres(self.settings.database_url)]
        for url, what in ((self.settings.database_url, "lineage"), (airflow_metadata_url(), "Airflow metadata")):
            created = ensure_database(url)
            name = url.rsplit("/", 1)[-1]
            messages.append(f"database {name} ({what}): {'created' if created else 'exists'}")
        upgrade(self.settings.database_url)
        messages.append("lineage schema: migrated to head")
        site_dir = self.run_dir / "fixture-site"
        if not (site_dir / "manifest.json").exists():
            from tuwen.local.fixture_site import generate_site

            generate_site(site_dir)
            messages.append(f"fixture site: generated in {site_dir}")
        for service in self.services():
            messages.append(service.start())
        created = ObjectStore(self.settings).ensure_bucket()
        messages.append(f"bucket {self.settings.s3_bucket}: {'created' if created else 'exists'} "
                        f"at {self.settings.s3_endpoint}")
        return messages

    def down(self) -> list[str]:
        return [service.stop() for service in self.services()]
