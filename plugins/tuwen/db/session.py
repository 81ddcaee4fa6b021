"""Engines and sessions for the lineage database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


@lru_cache(maxsize=8)
def get_engine(database_url: str, *, pre_ping: bool = True) -> Engine:
    """The process's engine for `database_url`.

    pool_pre_ping: a PostgreSQL restart must cost a reconnect, not a failed task. The ping is a round
    trip per checkout, though; the crawler, which checks out a connection several times per image,
    takes an engine without it and retries a write that met a dead connection instead
    (`tuwen_crawler.lineage.retry_on_disconnect`).
    """
    return create_engine(database_url, pool_pre_ping=pre_ping, pool_size=5, max_overflow=5, future=True)


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
