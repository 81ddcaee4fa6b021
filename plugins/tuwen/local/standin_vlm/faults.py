"""The stand-in's fault injection: latency, HTTP errors, resets, hangs, and bad or hostile answers.

A `FaultConfig` says what goes wrong and how often; a `FaultPlan` picks each request's fault,
reproducibly when seeded. Answer faults reshape a good answer: truncated, malformed, a refusal, or
hostile — what a misbehaving model or proxy can really send (a NUL, a lone surrogate, a long run of
blanks, an enormous answer) — so tests can show one such answer stays with its own item.
`image_faults` pins a fault on one image (by the SHA-256 of its bytes) for tests that need exactly one.
"""


from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Fault kinds in the fixed order in which rates are laid out on [0, 1): the order is part of what
# makes a seeded run reproducible, so new kinds go at the end.
HTTP_FAULTS = ("500", "503", "429")
# Answers a misbehaving model or proxy really sends, beyond max_tokens (see `hostile_answer`).
HOSTILE_FAULTS = ("nul", "surrogate", "blank_run", "enormous")
FAULT_KINDS = (*HTTP_FAULTS, "reset", "timeout", "truncated", "malformed", "refusal", *HOSTILE_FAULTS)
BLANK_RUN_CHARS = 8_000
ENORMOUS_CHARS = 100_000

# --------------------------------------------------------------------------------------------
# Fault configuration
# --------------------------------------------------------------------------------------------


class StandinConfigError(ValueError):
    """A latency, fault-rate or fault JSON setting is malformed; the message says which."""


@dataclass(frozen=True)
class LatencySpec:
    """How long a request takes before it is answered: fixed seconds, or log-normal (median, p99)."""

    kind: str = "fixed"
    seconds: float = 0.0
    median: float = 0.0
    p99: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> LatencySpec:
        """'fixed:1.0' or 'lognormal:MEDIAN,P99' (seconds)."""
        kind, _, args = spec.strip().partition(":")
        try:
            if kind == "fixed":
                seconds = float(args or 0)
                if seconds < 0:
                    raise ValueError
                return cls("fixed", seconds=seconds)
            if kind == "lognormal":
                median_s, p99_s = (float(a) for a in args.split(","))
                if not 0 < median_s <= p99_s:
                    raise ValueError
                return cls("lognormal", median=median_s, p99=p99_s)
        except ValueError:
            pass
        raise StandinConfigError(
            f"latency must be 'fixed:SECONDS' or 'lognormal:MEDIAN,P99' with 0 < MEDIAN <= P99, got {spec!r}"
        )

    def __str__(self) -> str:
        return (
            f"fixed:{self.seconds:g}" if self.kind == "fixed" else f"lognormal:{self.median:g},{self.p99:g}"
        )

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.seconds
        # p99 = median * exp(2.326 sigma): the 99th percentile of a normal is 2.326 sigma above its mean.
        sigma = math.log(self.p99 / self.median) / 2.3263478740408408
        return rng.lognormvariate(math.log(self.median), sigma)


def parse_fault_rates(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """'500=0.1,429=0.05' (or a mapping) -> {kind: probability}; kinds are FAULT_KINDS, sum <= 1."""
    if not spec:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in spec.split(","):
            kind, sep, value = part.partition("=")
            if not sep:
                raise StandinConfigError(f"fault rate {part!r} is not KIND=PROBABILITY")
            items.append((kind.strip(), value.strip()))
    rates: dict[str, float] = {}
    for kind, value in items:
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise StandinConfigError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise StandinConfigError(f"fault rate for {kind!r} must be a number, got {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise StandinConfigError(f"fault rate for {kind!r} must be in [0, 1], got {rate}")
        if rate:
            rates[kind] = rate
    if sum(rates.values()) > 1.0 + 1e-9:
        raise StandinConfigError(f"fault rates add up to {sum(rates.values()):g}, more than 1")
    return rates


@dataclass(frozen=True)
class FaultConfig:
    """What goes wrong, and how slowly things go right. JSON form: see `to_json`."""

    latency: LatencySpec = field(default_factory=LatencySpec)
    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None
    fail_first: int = 0
    fail_first_kind: str = "503"
    hang_s: float = 30.0
    retry_after_s: int = 1
    image_faults: Mapping[str, str] = field(default_factory=dict)  # image SHA-256 -> fault, every request

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.image_faults.values()) - set(FAULT_KINDS)):
            raise StandinConfigError(f"image_faults: unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if self.fail_first_kind not in FAULT_KINDS:
            raise StandinConfigError(
                f"fail_first_kind must be one of {', '.join(FAULT_KINDS)}, got {self.fail_first_kind!r}"
            )
        if self.fail_first < 0 or self.hang_s < 0 or self.retry_after_s < 0:
            raise StandinConfigError("fail_first, hang_s and retry_after_s must not be negative")

    @classmethod
    def from_json(cls, data: Any) -> FaultConfig:
        """Build from the faults endpoint's JSON; keys left out take their defaults."""
        if not isinstance(data, dict):
            raise StandinConfigError("fault config must be a JSON object")
        known = {
            "latency",
            "fault_rates",
            "fault_seed",
            "fail_first",
            "fail_first_kind",
            "hang_s",
            "retry_after_s",
            "image_faults",
        }
        if unknown := set(data) - known:
            raise StandinConfigError(f"unknown fault config keys: {', '.join(sorted(unknown))}")
        try:
            seed = data.get("fault_seed")
            return cls(
                latency=LatencySpec.parse(str(data.get("latency", "fixed:0"))),
                rates=parse_fault_rates(data.get("fault_rates")),
                seed=None if seed is None else int(seed),
                fail_first=int(data.get("fail_first", 0)),
                fail_first_kind=str(data.get("fail_first_kind", "503")),
                hang_s=float(data.get("hang_s", 30.0)),
                retry_after_s=int(data.get("retry_after_s", 1)),
                image_faults={str(k): str(v) for k, v in dict(data.get("image_faults") or {}).items()},
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, StandinConfigError):
                raise
            raise StandinConfigError(f"malformed fault config: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": str(self.latency),
            "fault_rates": dict(self.rates),
            "fault_seed": self.seed,
            "fail_first": self.fail_first,
            "fail_first_kind": self.fail_first_kind,
            "hang_s": self.hang_s,
            "retry_after_s": self.retry_after_s,
            "image_faults": dict(self.image_faults),
        }


class FaultPlan:
    """Chooses each request's fault and latency from a FaultConfig.

    With a seed, the choice for a request depends only on (seed, request key, how many times that
    key was seen before), not on arrival order, so concurrent runs and retries are reproducible.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._attempts: Counter[str] = Counter()
        self._served = 0
        self._unseeded = random.Random()

    def choose(self, request_key: str, image_sha256: str | None = None) -> tuple[str | None, float]:
        """-> (fault kind or None, latency in seconds) for the next request with this key (and image)."""
        position = self._served
        self._served += 1
        if self.config.seed is None:
            rng = self._unseeded
        else:
            # Attempts are only counted when seeded: an unseeded demo server should not grow a map forever.
            attempt = self._attempts[request_key]
            self._attempts[request_key] += 1
            rng = random.Random(f"{self.config.seed}:{request_key}:{attempt}")
        latency = self.config.latency.sample(rng)
        if image_sha256 is not None and image_sha256 in self.config.image_faults:
            return self.config.image_faults[image_sha256], latency
        if position < self.config.fail_first:
            return self.config.fail_first_kind, latency
        draw = rng.random()
        threshold = 0.0
        for kind in FAULT_KINDS:
            threshold += self.config.rates.get(kind, 0.0)
            if draw < threshold:
                return kind, latency
        return None, latency


def malformed(answer: str, task: str) -> str:
    """The same content in a shape the parser should reject: markers removed, or JSON instead of prose."""
    if task in {"conversation", "complex_reasoning"}:
        stripped = re.sub(r"(用户|助手|问题|回答|User|Assistant|Question|Answer):\s*", "", answer)
        return re.sub(r"\n+", " ", stripped).strip()
    return json.dumps({"description": answer}, ensure_ascii=False)


def truncate_mid_sentence(answer: str, rng: random.Random) -> str:
    """Cut somewhere in the middle of the text, never right after sentence-ending punctuation."""
    cut = max(1, int(len(answer) * rng.uniform(0.4, 0.7)))
    while cut > 1 and answer[cut - 1] in "。！？.!?\n ":
        cut -= 1
    return answer[:cut]


def hostile_answer(kind: str, answer: str) -> str:
    """A good answer made hostile: a NUL or a lone surrogate inside it, or a long run of blanks after it
    (with a letter at the end, the shape that makes a backtracking pattern slow), or enormous."""
    middle = len(answer) // 2
    if kind == "nul":
        return f"{answer[:middle]}\x00{answer[middle:]}"
    if kind == "surrogate":
        return f"{answer[:middle]}\udc80{answer[middle:]}"
    if kind == "blank_run":
        return f"{answer}\n\n{' ' * BLANK_RUN_CHARS}x"
    if kind == "enormous":
        return f"{answer}{' ' * ENORMOUS_CHARS}x"
    raise ValueError(f"not a hostile fault: {kind!r}")
