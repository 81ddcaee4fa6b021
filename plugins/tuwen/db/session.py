"""Engines and sessions for the lineage database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


@lru_cache(maxsize=8)
def get_engine(database_url: str) -> Engine:
    # pool_pre_ping: a PostgreSQL restart must cost a reconnect, not a failed task.
    return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=5, future=True)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = sessionmaker(get_engine(database_url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
