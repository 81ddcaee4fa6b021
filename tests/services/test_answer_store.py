"""`AnswerStore`: an answer's generation row and its sample written as one transaction (one query string in one
round trip), and an answer that cannot be stored recorded as `unstorable` with nothing half-written."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import text

from bench.common import seed_images
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.lineage import AnswerStore
from tuwen.synthesis.planning import plan_partition

DAY = dt.date(2026, 11, 13)
DAG, RUN = "tuwen_synthesize", "scheduled__2026-11-13T00:00:00+00:00"


def _pending(settings: Settings, n: int) -> tuple[Resources, list[tuple[int, int]]]:
    """n queued generation rows of one run: (generation id, image id)."""
    resources = Resources.from_settings(dataclasses.replace(settings, curate_enabled=False))
    resources.store.ensure_bucket()
    seed_images(resources.settings, n, DAY, width=224, height=168)
    plan_partition(resources, Partition(DAY, DAY + dt.timedelta(days=1)), RunParams(), DAG, RUN)
    with resources.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, image_id FROM generation WHERE status = 'pending' ORDER BY id")).all()
    assert len(rows) == n
    return resources, [(r.id, r.image_id) for r in rows]


def _answer(generation_id: int, text_: str) -> dict:
    return {"dag_id": DAG, "run_id": RUN, "task_id": "synthesize", "map_index": 0, "id": generation_id,
            "attempts": 1, "latency_ms": 12.5, "raw_text": text_, "response": {"choices": [{"text": text_}]},
            "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20, "status": "succeeded",
            "error_type": None, "error": None}


def _sample(sample_id: str, generation_id: int, image_id: int) -> dict:
    return {"id": sample_id, "generation_id": generation_id, "image_id": image_id, "task_type": "detail",
            "language": "zh", "conversations": [{"from": "human", "value": "<image>\n描述"},
                                                {"from": "gpt", "value": "一张图。"}],
            "rounds": 1, "parse_notes": []}


def test_an_answer_and_its_sample_are_stored_together_and_a_clash_leaves_neither(settings: Settings) -> None:
    resources, [(g1, i1), (g2, i2), (g3, _)] = _pending(settings, 3)
    store = AnswerStore(resources.engine)
    try:
        assert store.store_answer(_answer(g1, "第一个回答"), _sample("s-1", g1, i1)) is True
        # The second answer's sample has the first one's id: the INSERT fails, so its UPDATE must not stay either.
        assert store.store_answer(_answer(g2, "第二个回答"), _sample("s-1", g2, i2)) is False
        # An answer with no sample (unparseable) is one statement; the writer goes on after the clash.
        assert store.store_answer({**_answer(g3, "乱码"), "status": "unparseable", "error_type": "unparseable",
                                   "error": "no dialogue"}, None) is True
    finally:
        store.close()
    with resources.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text(
            "SELECT id, status, error_type, error, raw_text, response, completion_tokens, attempts FROM generation"))}
        samples = conn.execute(text("SELECT id, generation_id, image_id, conversations FROM sample")).all()
    assert (rows[g1].status, rows[g1].raw_text, rows[g1].completion_tokens) == ("succeeded", "第一个回答", 20)
    assert rows[g1].response == {"choices": [{"text": "第一个回答"}]}
    assert [(s.id, s.generation_id, s.image_id) for s in samples] == [("s-1", g1, i1)]
    assert samples[0].conversations[1]["value"] == "一张图。"
    # Paid for, so done, with the reason; and nothing of the UPDATE that went with the failed INSERT.
    assert (rows[g2].status, rows[g2].error_type) == ("unparseable", "unstorable")
    assert "UniqueViolation" in rows[g2].error and "pk_sample" in rows[g2].error
    assert rows[g2].raw_text is None and rows[g2].response is None and rows[g2].completion_tokens is None
    assert rows[g2].attempts == 1
    assert (rows[g3].status, rows[g3].error, rows[g3].raw_text) == ("unparseable", "no dialogue", "乱码")


def test_the_writer_s_connection_goes_back_to_the_pool_in_transaction_mode(settings: Settings) -> None:
    resources, [(g1, i1)] = _pending(settings, 1)
    store = AnswerStore(resources.engine)
    store.store_answer(_answer(g1, "回答"), _sample("s-9", g1, i1))
    driver = store._conn.driver_connection
    store.close()
    assert driver.autocommit is False
    # The same pooled connection, checked out again, runs in a transaction as SQLAlchemy expects.
    with resources.engine.connect() as conn:
        assert conn.connection.driver_connection is driver
        conn.execute(text("UPDATE generation SET attempts = 99 WHERE id = :id"), {"id": g1})
        conn.rollback()
        assert conn.execute(text("SELECT attempts FROM generation WHERE id = :id"), {"id": g1}).scalar() == 1
