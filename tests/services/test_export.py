"""Releases against real PostgreSQL and the S3 server: every file loads in LLaVA's, Qwen2.5-VL's and
LLaMA-Factory's loaders without a sample lost, every `<image>` is a shipped file, the card's counts are
the files' counts, and the same params over the same lineage give byte-identical files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.bench_export import seed_lineage
from bench.common import seed_images
from tuwen.config import Settings
from tuwen.domain import ParamError
from tuwen.quality.checks import CHECKS
from tuwen.release.export import (
    ExportError,
    ReleaseExists,
    ReleaseParams,
    ReleaseResult,
    mix_quotas,
    size_label,
    write_release,
)
from tuwen.release.trainer_formats import (
    check_record,
    load_llamafactory,
    load_llava,
    load_qwen_finetune,
    read_records,
)
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

DAY = dt.date(2026, 11, 18)
N = 30
FAILED_EVERY = 7  # seed_lineage fails every 7th sample in QC


def seed(settings: Settings, n: int = N, *, with_images: bool = True) -> list[str]:
    """n samples in the seed mix on real (small) JPEGs in the test bucket; returns the passed sample ids."""
    ObjectStore(settings).ensure_bucket()
    image_ids = seed_images(settings, n, DAY, width=56, height=56) if with_images else None
    info = seed_lineage(settings, n, day=DAY, image_ids=image_ids, failed_every=FAILED_EVERY, keep_ids=True)
    return [sid for k, sid in enumerate(info.sample_ids) if k % FAILED_EVERY != FAILED_EVERY - 1]


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def card_counts(card: str) -> dict[str, int]:
    """The Chinese task table of the card: {task name: count}."""
    rows = re.findall(r"^\| (日常对话|复杂推理|描述图片) \| ([\d,]+) \|", card, flags=re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def tar_index(release: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for shard in sorted(release.glob("images-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert names == sorted(names), f"{shard.name} is not sorted"
            for info in tar.getmembers():
                assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
                members[info.name] = tar.extractfile(info).read()
    return members


def publish_then_supersede(settings: Settings, resources: Resources, name: str) -> tuple[ReleaseResult, str]:
    """A release published, then overwritten by a smaller version: the first version's result and the
    SHA-256 of an image only the first version shipped."""
    seed(settings, 10, with_images=False)
    first = write_release(resources, ReleaseParams(name=name, include_images=False))
    write_release(resources, ReleaseParams(name=name, include_images=False, max_samples=2, overwrite=True))
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        sha = conn.execute(text("""SELECT i.sha256 FROM export_item ei JOIN image i ON i.id = ei.image_id
                                   WHERE ei.export_id = :e ORDER BY ei.position DESC LIMIT 1"""),
                           {"e": first.export_id}).scalar()
    engine.dispose()
    return first, sha


def test_release_loads_in_every_trainer_with_nothing_dropped(settings: Settings, resources: Resources) -> None:
    passed = seed(settings)
    result = write_release(resources, ReleaseParams(name="r1", images="both", shard_max_files=8))
    release = result.local_path
    assert result.n_samples == len(passed) and sum(result.counts_by_task.values()) == len(passed)
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    names = manifest["data_files"]
    assert names["all"] == f"llava_instruct_zh_{len(passed)}.json"  # below 1000: the exact count

    records = read_records(release / names["all"])
    assert sorted(r["id"] for r in records) == sorted(passed)  # failed samples stay out
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)  # stable order
    assert all(check_record(r) == [] for r in records)
    assert read_records(release / names["jsonl"]) == records

    members = tar_index(release)
    assert len(manifest["images"]["shards"]) == -(-len(passed) // 8)  # 8 files per shard
    for exists in (None, members.__contains__):  # the folder, then the tar shards alone
        llava = load_llava(release / names["all"], release, exists)
        qwen_json = load_qwen_finetune(release / names["all"], release, exists)
        qwen_jsonl = load_qwen_finetune(release / names["jsonl"], release, exists)
        factory = load_llamafactory(release, "r1", exists)
        for report in (llava, qwen_json, qwen_jsonl, factory):
            assert report.dropped == [], (report.trainer, report.dropped[:3])
            assert report.ids == [r["id"] for r in records], report.trainer

    # One file per task, named like the seed's, holding exactly that task's samples; the card agrees.
    card = (release / "README.md").read_text(encoding="utf-8")
    per_task = {t: read_records(release / names[t]) for t in ("conversation", "complex_reasoning", "detail")}
    assert {t: len(v) for t, v in per_task.items()} == result.counts_by_task
    assert card_counts(card) == {"日常对话": len(per_task["conversation"]),
                                 "复杂推理": len(per_task["complex_reasoning"]), "描述图片": len(per_task["detail"])}
    assert sorted(r["id"] for v in per_task.values() for r in v) == sorted(passed)
    for task in per_task:
        assert load_llamafactory(release, f"r1_{task}").dropped == []

    # The card quotes the prompts verbatim with their SHA-256, the model and the QC rules.
    prompt = (settings.prompts_dir / "detail.zh.v1.txt").read_text(encoding="utf-8").split("---\n")[-1].strip("\n")
    assert prompt in card and hashlib.sha256(prompt.encode()).hexdigest() in card
    assert "Qwen/Qwen2.5-VL-32B-Instruct" in card
    assert f"`language.cjk_ratio` v{CHECKS['language.cjk_ratio'].version}" in card
    assert "news.example.cn" in card

    # Every file in the manifest has the recorded hash; every image's checksum is its bytes'.
    for rel, meta in manifest["files"].items():
        assert hashlib.sha256((release / rel).read_bytes()).hexdigest() == meta["sha256"], rel
    lines = (release / "images.sha256").read_text().splitlines()
    assert len(lines) == len(passed)
    for line in lines:
        digest, path = line.split("  ")
        assert hashlib.sha256((release / path).read_bytes()).hexdigest() == digest == hashlib.sha256(
            members[path]).hexdigest()

    # Lineage: export_item says where every sample went; the object store has the release, manifest last.
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        items = conn.execute(text("SELECT sample_id, position, file, image_path FROM export_item "
                                  "WHERE export_id = :e ORDER BY position"), {"e": result.export_id}).all()
        export = conn.execute(text("SELECT status, n_samples, files FROM export WHERE id = :e"),
                              {"e": result.export_id}).one()
    engine.dispose()
    assert [(i.sample_id, i.image_path) for i in items] == [(r["id"], r["image"]) for r in records]
    assert [i.position for i in items] == list(range(len(records)))
    assert {i.file for i in items} <= {names[t] for t in per_task}
    assert export.status == "published" and export.n_samples == len(passed) and export.files == manifest["files"]
    keys = set(ObjectStore(settings).list_keys("exports/r1/"))
    assert {f"exports/r1/{rel}" for rel in manifest["files"]} | {"exports/r1/manifest.json"} == keys


def test_same_params_same_lineage_give_byte_identical_files(settings: Settings, resources: Resources) -> None:
    seed(settings, 20)
    engine = create_engine(settings.database_url)
    samples_sql = text("SELECT md5(string_agg(id || conversations::text || qc_status, ',' ORDER BY id)) FROM sample")
    with engine.connect() as conn:
        before = conn.execute(samples_sql).scalar()
    params = ReleaseParams(name="same", images="tar", shard_max_files=6)
    published = write_release(resources, params)
    first = file_hashes(published.local_path)
    # Re-exporting a published name needs overwrite; identical files leave the published version as it is.
    again = write_release(resources, dataclasses.replace(params, overwrite=True))
    second = file_hashes(again.local_path)
    assert first == second and len(first) > 8 and again.export_id == published.export_id
    other = file_hashes(write_release(resources, dataclasses.replace(params, name="same-again")).local_path)
    data_files = [f for f in first if f.endswith((".json", ".jsonl", ".tar", ".sha256"))
                  and f not in ("manifest.json", "dataset_info.json")]
    assert data_files and all(first[f] == other[f] for f in data_files)  # only the name differs elsewhere
    with engine.connect() as conn:
        assert conn.execute(samples_sql).scalar() == before  # exporting never changes samples
    engine.dispose()


def test_a_rerun_whose_card_alone_differs_keeps_the_published_release(settings: Settings,
                                                                      resources: Resources) -> None:
    # `make demo` twice: the second run's card names other latencies (and a new QC run), its samples and
    # images are the same. That is the same release: no new version, nothing superseded.
    seed(settings, 12)
    params = ReleaseParams(name="rerun", overwrite=True)
    published = write_release(resources, params)
    card = (published.local_path / "README.md").read_bytes()
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE generation SET latency_ms = coalesce(latency_ms, 0) + 12345"))
    again = write_release(resources, params)
    assert again.export_id == published.export_id and again.s3_prefix == published.s3_prefix
    assert (again.local_path / "README.md").read_bytes() == card  # the published card stands
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), max(version) FROM export WHERE name = 'rerun'")).one() == (1, 1)
    engine.dispose()


def test_mix_picks_a_deterministic_subset_meeting_the_ratio(settings: Settings, resources: Resources) -> None:
    passed = set(seed(settings, 40, with_images=False))
    params = ReleaseParams(name="mix", include_images=False, mix={"conversation": 2, "complex_reasoning": 1,
                                                                  "detail": 1}, max_samples=12)
    result = write_release(resources, params)
    assert result.counts_by_task == {"conversation": 6, "complex_reasoning": 3, "detail": 3}
    manifest = json.loads((result.local_path / "manifest.json").read_text())
    records = read_records(result.local_path / manifest["data_files"]["all"])
    assert {r["id"] for r in records} <= passed
    conv = read_records(result.local_path / manifest["data_files"]["conversation"])
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        expected = conn.execute(text("SELECT id FROM sample WHERE task_type = 'conversation' AND qc_status = "
                                     "'passed' ORDER BY id LIMIT 6")).scalars().all()
    engine.dispose()
    assert [r["id"] for r in conv] == expected  # smallest ids: a hash-ordered, reproducible pick
    assert (result.local_path / "conversation_6.json").is_file()


def test_mix_quotas_and_size_label() -> None:
    available = {"conversation": 100, "complex_reasoning": 100, "detail": 10}
    assert mix_quotas(available, {"conversation": 5, "complex_reasoning": 4, "detail": 4}, None) == {
        "conversation": 12, "complex_reasoning": 10, "detail": 10}  # detail is the binding task
    assert mix_quotas(available, {"conversation": 1, "complex_reasoning": 1, "detail": 0}, 7) == {
        "conversation": 4, "complex_reasoning": 3, "detail": 0}
    quotas = mix_quotas({"a": 3, "b": 3, "c": 3}, {"a": 1, "b": 1, "c": 1}, None)
    assert quotas == {"a": 3, "b": 3, "c": 3}
    assert [size_label(n) for n in (0, 7, 999, 1000, 1999, 247_431)] == ["0", "7", "999", "1k", "1k", "247k"]


def test_english_mix_interleaves_untouched_records(settings: Settings, resources: Resources, tmp_path: Path) -> None:
    passed = seed(settings, 12, with_images=False)
    english = [{"id": f"0000000{i:05d}", "image": f"coco/train2017/0000000{i:05d}.jpg",
                "conversations": [{"from": "human", "value": "What is in the image?\n<image>"},
                                  {"from": "gpt", "value": f"A cat number {i}."}]} for i in range(4)]
    source = tmp_path / "llava_instruct_en.json"
    source.write_text(json.dumps(english, indent=2), encoding="utf-8")
    resources.store.put_file("inputs/llava_instruct_en.json", source)  # read from the bucket, never the worker's disk
    result = write_release(resources, ReleaseParams(name="bi", include_images=False,
                                                    english_json="inputs/llava_instruct_en.json"))
    manifest = json.loads((result.local_path / "manifest.json").read_text())
    mix = manifest["english_mix"]
    assert (mix["records_zh"], mix["records_en"], mix["share_en"]) == (len(passed), 4, round(4 / (len(passed) + 4), 4))
    mixed = read_records(result.local_path / mix["file"])
    assert [r for r in mixed if not r["id"].startswith("tw-")] == english  # unchanged, in order
    positions = [k for k, r in enumerate(mixed) if not r["id"].startswith("tw-")]
    assert max(b - a for a, b in zip([-1, *positions], [*positions, len(mixed)], strict=True)) <= 4  # spread
    assert load_llamafactory(result.local_path, "bi_with_en", lambda _: True).dropped == []


def test_a_sample_trainers_would_drop_stops_the_release(settings: Settings, resources: Resources) -> None:
    seed(settings, 10, with_images=False)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        bad = conn.execute(text("""UPDATE sample SET conversations = jsonb_build_array(
                                     jsonb_build_object('from', 'human', 'value', '<image> q'),
                                     jsonb_build_object('from', 'gpt', 'value', 'a <image>'))
                                   WHERE id = (SELECT min(id) FROM sample WHERE qc_status = 'passed')
                                   RETURNING id""")).scalar_one()
    with pytest.raises(ExportError, match=bad):
        write_release(resources, ReleaseParams(name="broken", include_images=False))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM export WHERE name = 'broken'")).scalar() == "failed"
        assert conn.execute(text("SELECT count(*) FROM export_item")).scalar() == 0
    engine.dispose()
    assert not (settings.release_dir / "broken").exists()
    assert not ObjectStore(settings).exists("exports/broken/manifest.json")


def test_release_params_from_dag_params() -> None:
    params = ReleaseParams.from_params("r", {"date_from": "2026-11-01", "mix": {"detail": "2"}, "max_samples": "",
                                            "images": "tar", "task_types": ["detail"]})
    assert params.date_from == dt.date(2026, 11, 1) and params.mix == {"detail": 2} and params.max_samples is None
    with pytest.raises(ParamError, match="param mix"):
        ReleaseParams(name="r", mix={"conversation": 1}, task_types=("detail",))
    with pytest.raises(ParamError, match="param qc_statuses"):
        ReleaseParams(name="r", qc_statuses=("passed", "taken_down"))


# --- published releases are immutable ------------------------------------------------------------


def _state(settings: Settings, store: ObjectStore) -> dict[str, object]:
    """Everything a release name touches: export rows, their items, objects (with bytes), local files."""
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        exports = [tuple(r) for r in conn.execute(text(
            "SELECT id, name, version, status, n_samples, files::text, s3_prefix, local_path, published_at "
            "FROM export ORDER BY id")).all()]
        items = [tuple(r) for r in conn.execute(text(
            "SELECT export_id, sample_id, position, file, image_path FROM export_item ORDER BY 1, 3")).all()]
    engine.dispose()
    objects = {key: hashlib.sha256(store.get_bytes(key)).hexdigest() for key in sorted(store.list_keys("exports/"))}
    return {"exports": exports, "items": items, "objects": objects,
            "local": {p.name: file_hashes(p) for p in sorted(settings.release_dir.iterdir()) if p.is_dir()}}


def test_a_published_name_is_refused_without_overwrite_and_nothing_changes(settings: Settings,
                                                                           resources: Resources) -> None:
    seed(settings, 12)
    write_release(resources, ReleaseParams(name="pub", images="folder"))
    before = _state(settings, resources.store)
    assert before["objects"] and before["items"]
    for params in (ReleaseParams(name="pub", images="folder"), ReleaseParams(name="pub", max_samples=3)):
        with pytest.raises(ReleaseExists, match="already published.*overwrite"):
            write_release(resources, params)
        assert _state(settings, resources.store) == before


def test_overwrite_publishes_a_new_version_and_keeps_the_old_lineage(
        settings: Settings, resources: Resources, capsys: pytest.CaptureFixture[str]) -> None:
    seed(settings, 12)
    old = write_release(resources, ReleaseParams(name="ver", images="folder"))
    old_files = file_hashes(old.local_path)
    old_objects = {k: resources.store.get_bytes(k) for k in resources.store.list_keys("exports/ver/")}
    new = write_release(resources, ReleaseParams(name="ver", images="folder", max_samples=4, overwrite=True))
    assert new.export_id != old.export_id and new.n_samples == 4 < old.n_samples
    assert new.s3_prefix == "exports/ver@v2/" and new.local_path == settings.release_dir / "ver"
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        rows = {r.version: r for r in conn.execute(text(
            "SELECT version, status, n_samples, s3_prefix, local_path, superseded_at FROM export "
            "WHERE name = 'ver'")).all()}
        old_items = conn.execute(text("SELECT count(*) FROM export_item WHERE export_id = :e"),
                                 {"e": old.export_id}).scalar()
        shipped_only_in_v1 = conn.execute(text("""
            SELECT sample_id FROM export_item WHERE export_id = :old
            EXCEPT SELECT sample_id FROM export_item WHERE export_id = :new ORDER BY 1 LIMIT 1"""),
            {"old": old.export_id, "new": new.export_id}).scalar()
    engine.dispose()
    assert (rows[1].status, rows[2].status) == ("superseded", "published")
    assert rows[1].superseded_at is not None and rows[1].s3_prefix == "exports/ver/"
    assert old_items == old.n_samples  # the superseded release's lineage is kept
    # The old release's objects are untouched; its local copy moved aside, byte for byte.
    assert {k: resources.store.get_bytes(k) for k in resources.store.list_keys("exports/ver/")} == old_objects
    assert rows[1].local_path == str(settings.release_dir / "ver@v1")
    assert file_hashes(settings.release_dir / "ver@v1") == old_files
    assert resources.store.exists("exports/ver@v2/manifest.json")
    # "Which release shipped this sample" still names the superseded one.
    from tuwen.cli import main as cli

    env = {"TUWEN_DATABASE_URL": settings.database_url, "TUWEN_S3_ENDPOINT": settings.s3_endpoint,
           "TUWEN_S3_BUCKET": settings.s3_bucket}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        capsys.readouterr()
        assert cli.main(["releases", "--sample", shipped_only_in_v1]) == 0
    assert capsys.readouterr().out.startswith(f"ver\tsuperseded\t{shipped_only_in_v1}\t")


def test_a_failed_overwrite_leaves_the_published_release_intact(settings: Settings, resources: Resources) -> None:
    seed(settings, 10, with_images=False)
    write_release(resources, ReleaseParams(name="keep", include_images=False))
    before = _state(settings, resources.store)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:  # a sample the trainers would drop: the new version fails while writing
        conn.execute(text("""UPDATE sample SET conversations = jsonb_build_array(
                                jsonb_build_object('from', 'gpt', 'value', '<image> a'))
                              WHERE id = (SELECT min(id) FROM sample WHERE qc_status = 'passed')"""))
    with pytest.raises(ExportError):
        write_release(resources, ReleaseParams(name="keep", include_images=False, overwrite=True))
    after = _state(settings, resources.store)
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT version, status FROM export WHERE name = 'keep' ORDER BY 1")).all()
    engine.dispose()
    assert [tuple(s) for s in statuses] == [(1, "published"), (2, "failed")]
    assert after["items"] == before["items"] and after["objects"] == before["objects"]
    assert after["local"] == before["local"]
    assert [e for e in after["exports"] if e[3] == "published"] == [e for e in before["exports"] if e[3] == "published"]


def test_a_bucket_that_outlived_its_database_keeps_its_releases(settings: Settings, resources: Resources) -> None:
    seed(settings, 10, with_images=False)
    params = ReleaseParams(name="kept", include_images=False)
    first = write_release(resources, params)
    shipped = {k: resources.store.get_bytes(k) for k in resources.store.list_keys("exports/")}
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:  # the lineage database is recreated; the bucket is not
        conn.execute(text("DELETE FROM export_item"))
        conn.execute(text("DELETE FROM export"))
    engine.dispose()
    # The same lineage gives the same manifest: the same prefix, not one byte changed.
    again = write_release(resources, params)
    assert again.s3_prefix == first.s3_prefix == "exports/kept/"
    assert {k: resources.store.get_bytes(k) for k in resources.store.list_keys("exports/")} == shipped
    # Other contents under that name never overwrite the objects someone may have downloaded.
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM export_item"))
        conn.execute(text("DELETE FROM export"))
    engine.dispose()
    other = write_release(resources, dataclasses.replace(params, max_samples=2))
    assert other.s3_prefix == "exports/kept@v1.2/" and other.n_samples == 2
    assert {k: resources.store.get_bytes(k) for k in resources.store.list_keys("exports/kept/")} == shipped
