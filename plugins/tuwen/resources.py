"""The services a stage works with, built once by its entry point and handed in.

Entry points — a DAG task, the `tuwen` command, the crawler's pipeline, a benchmark — call
`Resources.from_settings(settings)` once and pass the result (or just the engine or the store) to
the stage functions they run. Stage functions never build an engine or an object store of their
own, and rules that need no service take plain values, so they are tested without any service.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from tuwen.config import Settings
from tuwen.db.session import get_engine
from tuwen.storage import ObjectStore


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine  # the lineage database
    store: ObjectStore  # the bucket named in settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        return cls(settings=settings, engine=get_engine(settings.database_url), store=ObjectStore(settings))
