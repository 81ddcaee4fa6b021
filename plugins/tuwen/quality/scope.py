"""Which samples a quality gate (and the release after it) looks at."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tuwen.domain import TASK_TYPES, param_choices, param_date


@dataclass(frozen=True)
class ReleaseScope:
    """The crawl dates, languages and task types in scope, and the gate's minimum pass rate for it
    (None: Settings.qc_min_pass_rate)."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    languages: tuple[str, ...] = ("zh",)
    task_types: tuple[str, ...] = TASK_TYPES
    min_pass_rate: float | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReleaseScope:
        rate = params.get("min_pass_rate")
        return cls(
            date_from=param_date(params.get("date_from"), "date_from"),
            date_to=param_date(params.get("date_to"), "date_to"),
            languages=tuple(params.get("languages") or ("zh",)),
            task_types=param_choices(params.get("task_types"), TASK_TYPES, "task_types", TASK_TYPES),
            min_pass_rate=float(rate) if rate is not None else None,
        )

    @property
    def label(self) -> str:
        return f"{self.date_from or 'start'}..{self.date_to or 'end'}"

    def as_json(self) -> dict[str, Any]:
        return {
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "languages": list(self.languages), "task_types": list(self.task_types),
        }
