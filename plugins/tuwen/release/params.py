"""The export DAG's params, parsed once: the gate's scope plus what only the release needs.

`ReleaseParams.from_params` reads the scope (crawl dates, languages, task types) through
`ReleaseScope.from_params` — the same parse the quality gate runs on — and adds the release-only
fields; every error is a `ParamError` whose message names the param. Release names and the
`english_json` source come from outside (the Airflow UI, the REST API, the command line), so both are
checked here, before the gate runs: a name is a short folder/object-key segment of a safe charset,
and `english_json` is an object key under `inputs/` in the tuwen bucket, never a path on the worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuwen.domain import LANGUAGES, QC_STATUSES, TASK_TYPES, ParamError, param_choices
from tuwen.quality.scope import ReleaseScope

IMAGE_LAYOUTS = ("folder", "tar", "both", "none")
# A shard closes at whichever comes first: small enough to download and retry, few enough objects.
DEFAULT_SHARD_FILES = 10_000
DEFAULT_SHARD_BYTES = 1_000_000_000
# Release names become a folder name, an object-key segment, an export row and a dataset name in
# LLaMA-Factory's dataset_info.json: ASCII letters, digits, '.', '_' and '-', starting with a letter or
# digit, no '..', at most MAX_NAME_CHARS.
MAX_NAME_CHARS = 120
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# `english_json` is read from the bucket, under this prefix only (uploaded there by an operator).
ENGLISH_JSON_PREFIX = "inputs/"
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
SHIPPABLE_QC_STATUSES = tuple(s for s in QC_STATUSES if s != "taken_down")


def check_release_name(name: Any) -> str:
    """The name, or a ParamError saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise ParamError(f"param release: a release name is required, got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ParamError(f"param release: at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ParamError(f"param release: {name!r} must be letters, digits, '.', '_' and '-' (starting with a "
                         "letter or digit, no '..')")
    return name


def default_release_name(run_id: str | None, logical_date: dt.date | dt.datetime | None = None) -> str:
    """`tuwen-<run>`: unique per Airflow run (the run id is unique per DAG), so two manual runs on one day
    never collide, and a run without a logical date still has a name. Characters outside the name's
    charset become '-'; a long run id is cut and suffixed with a hash of the whole, so it stays unique."""
    if not run_id:
        if logical_date is None:
            raise ParamError("param release: empty, and the run has neither a run id nor a logical date")
        return check_release_name(f"tuwen-{logical_date.isoformat()[:10]}")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-_") or "run"
    name = f"tuwen-{slug}"
    if len(name) > MAX_NAME_CHARS:
        name = f"{name[:MAX_NAME_CHARS - 13].rstrip('-_')}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"
    return check_release_name(name)


def check_english_json(value: Any) -> str | None:
    """An object key under inputs/ in the tuwen bucket (an `s3://<bucket>/` prefix is allowed), or None."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ParamError(f"param english_json: must be an object key under {ENGLISH_JSON_PREFIX}, got {value!r}")
    key = re.sub(r"^s3://[^/]+/", "", value)
    segments = key.split("/")
    if (not key.startswith(ENGLISH_JSON_PREFIX) or len(key) > 512
            or not all(_KEY_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)):
        raise ParamError(f"param english_json: {value!r} is not an object key under {ENGLISH_JSON_PREFIX} in the "
                         "tuwen bucket (e.g. inputs/llava_instruct_150k.json); files on the worker are never read")
    return key


def _int(params: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = params.get(key)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ParamError(f"param {key}: must be an integer, got {value!r}") from None
    if isinstance(value, bool) or (number != value and str(number) != str(value).strip()):
        raise ParamError(f"param {key}: must be an integer, got {value!r}")
    if number < minimum:
        raise ParamError(f"param {key}: must be at least {minimum}, got {number}")
    return number


def _bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ParamError(f"param {key}: must be true or false, got {value!r}")


def _mix(value: Any) -> dict[str, int] | None:
    if value in (None, "", {}):
        return None
    if not isinstance(value, Mapping):
        raise ParamError(f"param mix: must be an object of task weights, got {value!r}")
    return {str(k): _int({"mix": v}, "mix", 0, 0) or 0 for k, v in value.items()}


@dataclass(frozen=True)
class ReleaseParams:
    """Everything that decides a release's contents; recorded in `export.params` and the manifest.

    `mix` (e.g. {"conversation": 5, "complex_reasoning": 4, "detail": 4}) picks the largest subset whose
    per-task counts meet the ratio (to within one sample per task, largest-remainder rounding) and, with
    `max_samples`, no more than that; within a task the samples with the smallest ids are taken (ids are
    hashes, so that is a deterministic pseudo-random pick). Without `mix`, `max_samples` takes the first
    samples by id across all tasks, which keeps the natural mix. `images`: "folder", "tar" shards,
    "both", or "none". `english_json`: an English LLaVA-Instruct JSON array (an object key under
    inputs/ in the bucket) to interleave with the release into one more file, its records untouched.
    `overwrite`: replace a published release of the same name (the old one is kept as `superseded`);
    it decides what happens to an existing release, not the contents, so it is not in `as_json`.
    """

    name: str
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    languages: tuple[str, ...] = ("zh",)
    task_types: tuple[str, ...] = TASK_TYPES
    qc_statuses: tuple[str, ...] = ("passed",)
    max_samples: int | None = None
    include_images: bool = True
    mix: Mapping[str, int] | None = None
    images: str = "folder"
    shard_max_files: int = DEFAULT_SHARD_FILES
    shard_max_bytes: int = DEFAULT_SHARD_BYTES
    jsonl: bool = True
    english_json: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_release_name(self.name)
        param_choices(self.task_types, TASK_TYPES, "task_types", TASK_TYPES)
        if not self.task_types or not self.languages or not self.qc_statuses:
            raise ParamError("params task_types, languages and qc_statuses must not be empty")
        if "taken_down" in self.qc_statuses:
            raise ParamError("param qc_statuses: taken-down samples never ship: remove 'taken_down'")
        if self.images not in IMAGE_LAYOUTS:
            raise ParamError(f"param images: must be one of {IMAGE_LAYOUTS}, got {self.images!r}")
        if self.max_samples is not None and self.max_samples < 0:
            raise ParamError("param max_samples: must be positive")
        if self.shard_max_files < 1 or self.shard_max_bytes < 1:
            raise ParamError("params shard_max_files and shard_max_bytes: must be positive")
        if self.date_from and self.date_to and self.date_to < self.date_from:
            raise ParamError(f"param date_to: {self.date_to} is before date_from {self.date_from}")
        if self.mix is not None:
            bad = {k: v for k, v in self.mix.items() if k not in self.task_types or not isinstance(v, int) or v < 0}
            if bad or sum(self.mix.values()) == 0:
                raise ParamError(f"param mix: needs non-negative integer weights for included task types "
                                 f"{list(self.task_types)} (not all zero), got {dict(self.mix)}")
        object.__setattr__(self, "english_json", check_english_json(self.english_json))  # the bare object key

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any], scope: ReleaseScope | None = None) -> ReleaseParams:
        """From the export DAG's params (JSON values; empty means default): the gate's scope — `scope`
        when the caller already parsed it for the gate, else `ReleaseScope.from_params` — plus the
        release-only params."""
        scope = scope if scope is not None else ReleaseScope.from_params(dict(params))
        return cls(
            name=check_release_name(name),
            date_from=scope.date_from,
            date_to=scope.date_to,
            languages=param_choices(scope.languages, LANGUAGES, "languages", ("zh",)),
            task_types=scope.task_types,
            qc_statuses=param_choices(params.get("qc_statuses"), SHIPPABLE_QC_STATUSES, "qc_statuses", ("passed",)),
            max_samples=_int(params, "max_samples", None, 1),
            include_images=_bool(params, "include_images", True),
            mix=_mix(params.get("mix")),
            images=str(params.get("images") or "folder"),
            shard_max_files=_int(params, "shard_max_files", DEFAULT_SHARD_FILES, 1) or DEFAULT_SHARD_FILES,
            shard_max_bytes=_int(params, "shard_max_bytes", DEFAULT_SHARD_BYTES, 1) or DEFAULT_SHARD_BYTES,
            jsonl=_bool(params, "jsonl", True),
            english_json=check_english_json(params.get("english_json")),
            overwrite=_bool(params, "overwrite", False),
        )

    @property
    def scope(self) -> ReleaseScope:
        """The samples the quality gate judges before this release (min_pass_rate is the gate's own)."""
        return ReleaseScope(date_from=self.date_from, date_to=self.date_to, languages=self.languages,
                            task_types=self.task_types)

    @property
    def image_layout(self) -> str:
        return self.images if self.include_images else "none"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "languages": list(self.languages), "task_types": list(self.task_types),
            "qc_statuses": list(self.qc_statuses), "max_samples": self.max_samples,
            "include_images": self.include_images,
            "mix": dict(sorted(self.mix.items())) if self.mix else None,
            "images": self.image_layout, "shard_max_files": self.shard_max_files,
            "shard_max_bytes": self.shard_max_bytes, "jsonl": self.jsonl,
            "english_json": self.english_json,
        }


def release_params_for_run(params: Mapping[str, Any], run_id: str | None,
                           logical_date: dt.date | dt.datetime | None = None,
                           scope: ReleaseScope | None = None) -> ReleaseParams:
    """A DAG run's release: the `release` param, or a default name unique to the run."""
    name = params.get("release") or default_release_name(run_id, logical_date)
    return ReleaseParams.from_params(name, params, scope)
