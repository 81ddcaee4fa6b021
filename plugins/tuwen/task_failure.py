"""How a DAG task reports input that no retry can fix.

A malformed setting (`ConfigError`) or DAG param (`ParamError`) fails the same way on every try, so
a task that reads them inside `fail_fast_on_bad_input()` fails at once, with the message naming the
variable or param, instead of retrying it and burying that message under a traceback. Airflow is
imported only when there is such an error to raise: stage code and unit tests never load it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tuwen.config import ConfigError
from tuwen.domain import ParamError


@contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Re-raise a ConfigError or ParamError from the block as Airflow's AirflowFailException (no
    retries) with the same message; any other exception passes through untouched."""
    try:
        yield
    except (ConfigError, ParamError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
