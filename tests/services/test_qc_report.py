"""The QC report as a person sees it: rendered by the gate, opened in headless Chromium, every plot and
sample image actually loaded (naturalWidth > 0), and the same files published to the bucket."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from sqlalchemy import create_engine, text

from tests.conftest import insert_labelled, labelled_rows
from tuwen.config import Settings
from tuwen.quality.checks import QCConfig
from tuwen.quality.report import N_TOP_REASONS, fetch_qc_report, report_prefix
from tuwen.quality.run import QualityGateFailed, run_quality_gate
from tuwen.quality.scope import ReleaseScope
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

SCOPE = ReleaseScope(languages=("zh", "en", "ja"))
PLOTS = ("pass_rate_history", "pass_rate_by_crawl_date", "distributions", "top_reasons")
SCREENSHOTS = Path(tempfile.gettempdir()) / "tuwen-qc-report-screenshots"

_LOADED_JS = """
return Array.from(document.images).map(img => ({src: img.getAttribute('src'), id: img.id,
  cls: img.className, complete: img.complete, width: img.naturalWidth}));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="tuwen-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,2000",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _images(driver: webdriver.Chrome) -> list[dict]:
    driver.execute_script("return document.readyState")
    return driver.execute_script(_LOADED_JS)


def _screenshot(driver: webdriver.Chrome, name: str) -> None:
    """The whole page (for a person to look at), not just the first screen."""
    SCREENSHOTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height, 12000))
    driver.save_screenshot(str(SCREENSHOTS / name))
    driver.set_window_size(1280, 2000)


def _gate(settings: Settings, **kwargs) -> None:
    # The labelled set is mostly rejects: the gate fails, and that is when the report matters most.
    with contextlib.suppress(QualityGateFailed):
        run_quality_gate(Resources.from_settings(settings), SCOPE, **kwargs)


def test_report_renders_and_loads_in_chromium(settings: Settings, tmp_path: Path, browser: webdriver.Chrome) -> None:
    rows = [row for row in labelled_rows() if row["task_type"] != "caption"]
    insert_labelled(settings, rows, image_size=(480, 320))
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:  # two crawl days, so the by-date plot has a line to draw
        conn.execute(text("UPDATE image SET crawl_date = :d WHERE id % 2 = 0"), {"d": dt.date(2026, 11, 19)})
    # An earlier run with other thresholds, so "pass rate over time" has history.
    _gate(settings, config=QCConfig(ocr_min_coverage=0.0, zh_min_cjk_ratio=0.3), report=False)
    report_dir = tmp_path / "report"
    _gate(settings, report_dir=report_dir)

    with engine.connect() as conn:
        run = conn.execute(text("SELECT id, results, success FROM qc_run ORDER BY id DESC LIMIT 1")).one()
    assert not run.success
    assert run.results["report_key"] == report_prefix(run.id) + "index.html"

    # Published: every local file is in the bucket under qc/<id>/report/, byte for byte.
    store = ObjectStore(settings)
    local = sorted(p.relative_to(report_dir).as_posix() for p in report_dir.rglob("*") if p.is_file())
    assert sorted(k.removeprefix(report_prefix(run.id)) for k in store.list_keys(report_prefix(run.id))) == local
    assert store.get_bytes(run.results["report_key"]) == (report_dir / "index.html").read_bytes()
    assert {f"plots/{p}.png" for p in PLOTS} <= set(local)

    browser.get((report_dir / "index.html").as_uri())
    assert f"qc_run {run.id}" in browser.title
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "FAILED" in page and "refusal" in page
    images = _images(browser)
    plots = {img["id"].removeprefix("plot-"): img for img in images if img["id"].startswith("plot-")}
    assert set(plots) == set(PLOTS)
    examples = [img for img in images if "sample-image" in img["cls"]]
    reasons_shown = browser.find_elements(By.CSS_SELECTOR, ".card.rejection")
    assert len(reasons_shown) == min(len(run.results["failed_reasons"]), N_TOP_REASONS)
    assert len(examples) == len(reasons_shown)  # one example, with its image, per reason
    not_loaded = [img for img in images if not (img["complete"] and img["width"] > 0)]
    assert not not_loaded, not_loaded
    # The refusal example quotes the conversation itself.
    refusal = browser.find_element(By.ID, "reason-refusal").text
    assert "gpt" in refusal and ("无法" in refusal or "AI" in refusal)
    _screenshot(browser, "index.png")

    browser.find_element(By.ID, "passed-samples-link").click()
    assert browser.current_url.endswith("samples.html")
    samples = _images(browser)
    with engine.connect() as conn:
        n_passed = conn.execute(text("SELECT count(*) FROM sample WHERE qc_status = 'passed'")).scalar_one()
    assert len(samples) == min(12, n_passed) > 0
    assert all(img["complete"] and img["width"] == 480 for img in samples), samples
    cards = browser.find_elements(By.CSS_SELECTOR, ".card.passed-sample")
    assert len(cards) == len(samples)
    with engine.connect() as conn:
        passed_ids = set(conn.execute(text("SELECT id FROM sample WHERE qc_status = 'passed'")).scalars())
    assert {c.get_attribute("id").removeprefix("sample-") for c in cards} <= passed_ids
    _screenshot(browser, "samples.png")

    # The release copy is the published one, and it renders the same way.
    copy = fetch_qc_report(store, run.id, tmp_path / "release" / "qc_report")
    assert copy.read_bytes() == (report_dir / "index.html").read_bytes()
    browser.get(copy.as_uri())
    assert all(img["complete"] and img["width"] > 0 for img in _images(browser))
    engine.dispose()


def test_report_draw_is_deterministic(settings: Settings, resources: Resources, tmp_path: Path) -> None:
    """Same lineage, same page of passed samples (seeded draw), so two renders can be compared."""
    from tuwen.quality.report import render_qc_report

    rows = [row for row in labelled_rows() if row["expected"] == "pass"]
    insert_labelled(settings, rows, image_size=(96, 64))
    outcome = run_quality_gate(resources, ReleaseScope(languages=("zh", "en"), min_pass_rate=0.0), report=False)
    engine, store = resources.engine, resources.store
    first = render_qc_report(engine, store, outcome.qc_run_id, tmp_path / "a").with_name("samples.html")
    second = render_qc_report(engine, store, outcome.qc_run_id, tmp_path / "b").with_name("samples.html")
    assert first.read_text(encoding="utf-8") == second.read_text(encoding="utf-8")
    assert first.read_text(encoding="utf-8").count('class="card passed-sample"') == 12


def test_report_counts_rejections_per_task_and_check(settings: Settings, resources: Resources, tmp_path: Path) -> None:
    """The per-task × per-check table says, for each task, how many of its samples failed each check:
    the labelled set's own expected reasons, counted by hand."""
    import re
    from collections import Counter

    from tuwen.quality.report import render_qc_report

    rows = [row for row in labelled_rows() if row["task_type"] != "caption"]
    insert_labelled(settings, rows, image_size=(96, 64))
    with contextlib.suppress(QualityGateFailed):
        run_quality_gate(resources, SCOPE, report=False)
    with resources.engine.connect() as conn:
        qc_run_id = conn.execute(text("SELECT max(id) FROM qc_run")).scalar_one()
    page = render_qc_report(resources.engine, resources.store, qc_run_id, tmp_path / "r").read_text(encoding="utf-8")
    expected = Counter((row["task_type"], reason) for row in rows for reason in row["expected_reasons"])
    table = page[page.index('id="reasons-by-task"'):page.index("</table>", page.index('id="reasons-by-task"'))]
    shown = Counter()
    for reason, cells in re.findall(r'<tr id="by-task-([^"]+)">(.*?)</tr>', table, re.S):
        for task, n in re.findall(r'data-task="([^"]+)">\s*(\d+)', cells):
            if int(n):
                shown[(task, reason)] = int(n)
    assert shown == expected
    assert ("conversation", "conversation.off_task") in shown
