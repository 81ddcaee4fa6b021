"""A stand-in for vLLM's OpenAI-compatible server, for tests and demos without a GPU.

This is a test double of the HTTP API that `vllm serve Qwen/Qwen2.5-VL-32B-Instruct` speaks. It is
not a model and never claims to be one: `/v1/models` lists it as owned by "tuwen-stand-in", and
every completion carries `system_fingerprint: "tuwen-stand-in"`. Its answers are Chinese (or
English) text assembled from templates, seeded by the SHA-256 of (image bytes, prompt text), and
grounded only in what is cheap to measure: size, orientation, dominant colours, brightness, and -
with `--ocr` - text recognised by RapidOCR.

What it copies from vLLM (checked against vllm/entrypoints/openai/engine/protocol.py):
- `GET /health` -> 200 with an empty body; `GET /v1/models` -> {"object": "list", "data": [...]};
- `POST /v1/chat/completions` with OpenAI content parts (text / image_url as a data URL or http(s)
  URL), extra vLLM fields (`mm_processor_kwargs`, `seed`, `top_k`, ...) accepted and ignored;
- errors as {"error": {"message", "type", "param", "code"}}: 400 BadRequestError for malformed
  requests, undecodable images and more than one image (vLLM's --limit-mm-per-prompt image=1),
  404 NotFoundError for an unknown model;
- usage counted the Qwen2.5-VL way for the image (one token per 28x28 patch after smart resize).
  Text is counted as one token per character, a deliberate over-estimate that keeps it cheap.

What it adds, for testing the client (stand-in only, under /stand-in/):
- fault injection: latency (fixed or log-normal with a heavy tail), HTTP 500/503/429 (+Retry-After),
  connection resets (RST, no response), hangs, truncated / malformed / refusal answers, hostile
  answers (a NUL, a lone surrogate, a long run of blanks, enormous output); chosen per request
  from rates, deterministically when a seed is set, "fail the first N requests", or pinned to an image;
- counters (`GET /stand-in/stats`), including requests per image hash, so a test can assert that
  stored answers were not requested again;
- injected contradictions (`--contradiction-rate R`, or `POST /stand-in/contradictions {"rate": R}`
  at run time): a share R of answers, chosen per (image, prompt), carries one false statement of a
  known kind (a wrong colour, a wrong pixel size, a quoted text the image does not hold), and
  `GET /stand-in/injections` lists them — test-only ground truth;
- faithfulness-judge requests (recognised by the judge prompt's opening): the stand-in splits the
  sample's answers into sentences and labels each by re-measuring the image (colour words against
  its colours, sizes against its size, quoted text against its OCR text), answering in the shape
  the prompt version asks for (v1: every statement labelled; v2: the contradicted ones only), as
  JSON when `response_format` asks for it and as plain lines otherwise. This tests the judge's
  plumbing end to end; it is not a model's judgement and says nothing about one (see `judging`).

Run it with `python -m tuwen.local.standin_vlm --port 8000`; from Python use `serve(...)` or, in tests and
benchmarks, the `StandinProcess` context manager that starts it as a subprocess on a free port.

The modules: `answers` (what it sees in an image, the answers it writes), `judging` (injected
contradictions and rule-based judge answers), `faults` (latency, errors
and bad or hostile answers, chosen per request or pinned to an image), `server` (the HTTP
endpoints), `process` (the subprocess helper and the command line), `serving` (off by default: an
emulation of vLLM's continuous batching - max_num_seqs, a waiting queue, step times that grow with
the batch, Prometheus /metrics under vLLM's names - that decides when answers come; see its doc).
"""

from tuwen.local.standin_vlm.answers import (
    REFUSAL,
    ImageFeatures,
    analyse_image,
    compose_answer,
    image_token_count,
)
from tuwen.local.standin_vlm.faults import (
    FAULT_KINDS,
    HOSTILE_FAULTS,
    FaultConfig,
    FaultPlan,
    LatencySpec,
    StandinConfigError,
    parse_fault_rates,
)
from tuwen.local.standin_vlm.process import StandinProcess, build_parser, main
from tuwen.local.standin_vlm.server import DEFAULT_MODEL, READY_LINE_PREFIX, StandinServer, run_server, serve

__all__ = [
    "DEFAULT_MODEL", "FAULT_KINDS", "HOSTILE_FAULTS", "READY_LINE_PREFIX", "REFUSAL", "FaultConfig", "FaultPlan",
    "ImageFeatures", "LatencySpec", "StandinConfigError", "StandinProcess", "StandinServer", "analyse_image",
    "build_parser", "compose_answer", "image_token_count", "main", "parse_fault_rates", "run_server", "serve",
]
