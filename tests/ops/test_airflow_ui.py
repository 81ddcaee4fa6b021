"""`tuwen up` starts a real Airflow (LocalExecutor) that a browser can use; `tuwen down` stops it all.

Headless Chromium (Debian's chromium + chromedriver, driven by Selenium) signs in with the
non-default credentials from the environment, opens each tuwen DAG in graph view and screenshots
it; the graph must really be drawn (React Flow nodes for the DAG's tasks), no import error may show,
and `GET /api/v2/importErrors` must be empty. The REST API refuses anonymous and wrong-password calls.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import _db_url
from tests.ops.live_airflow import live_group_members
from tuwen.local.airflow_stack import AirflowAPI
from tuwen.local.services import drop_database, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DAGS = {"tuwen_crawl": 5, "tuwen_synthesize": 3, "tuwen_export": 2}  # DAG -> number of tasks


class UpStack:
    def __init__(self, run_dir: Path, env: dict[str, str], port: int, user: str, password: str, output: str):
        self.run_dir, self.env, self.port, self.user, self.password, self.output = (
            run_dir, env, port, user, password, output)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _tuwen(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    tuwen = str(Path(sys.executable).parent / "tuwen")
    return subprocess.run([tuwen, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def up_stack(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    run_dir = tmp_path_factory.mktemp("tuwen-up")
    lineage, metadata = (_db_url(f"{kind}_ui_{uuid.uuid4().hex[:10]}") for kind in ("tuwen", "airflow"))
    port, user, password = free_port(), "ui-operator", "uipass-" + secrets.token_hex(8)
    env = {
        **os.environ,
        "TUWEN_DATABASE_URL": lineage,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "TUWEN_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
        "TUWEN_S3_BUCKET": f"tuwen-ui-{uuid.uuid4().hex[:8]}",
        "TUWEN_VLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "TUWEN_FIXTURE_SITE_PORT": str(free_port()),
        "TUWEN_OCR_ENABLED": "false",
        "TUWEN_AIRFLOW_PORT": str(port),
        "TUWEN_AIRFLOW_USER": user,
        "TUWEN_AIRFLOW_PASSWORD": password,
    }
    started = time.monotonic()
    up = _tuwen(["up", "--executor", "local", "--run-dir", str(run_dir)], env, timeout_s=420)
    print(f"tuwen up: {time.monotonic() - started:.0f}s\n{up.stdout}\n{up.stderr[-3000:]}")
    pids = [int(p.read_text()) for p in run_dir.glob("*.pid")]
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield UpStack(run_dir, env, port, user, password, up.stdout)
    finally:
        down = _tuwen(["down", "--run-dir", str(run_dir)], env, timeout_s=120)
        print(down.stdout, down.stderr[-2000:])
        drop_database(lineage)
        drop_database(metadata)
        left = [member for pid in pids for member in live_group_members(pid)]
        assert down.returncode == 0 and not left, f"tuwen down left processes running: {left}"
        assert not list(run_dir.glob("*.pid"))


def _api(stack: UpStack) -> AirflowAPI:
    return AirflowAPI(stack.base_url, stack.user, stack.password)


def test_tuwen_up_prints_where_and_who_but_not_the_password(up_stack: UpStack) -> None:
    assert f"Airflow UI: {up_stack.base_url}" in up_stack.output
    assert f"user {up_stack.user}" in up_stack.output
    assert up_stack.password not in up_stack.output
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "s3-server", "standin-vlm", "fixture-site"):
        assert (up_stack.run_dir / f"{name}.pid").exists(), name
    passwords = up_stack.run_dir / "airflow" / "simple_auth_manager_passwords.json"
    assert passwords.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_api_refuses_anonymous_and_wrong_password_has_the_pool_and_dag_docs(up_stack: UpStack) -> None:
    assert httpx.get(f"{up_stack.base_url}/api/v2/dags").status_code == 401
    wrong = httpx.post(f"{up_stack.base_url}/auth/token", json={"username": up_stack.user, "password": "admin"})
    assert wrong.status_code == 401
    default = httpx.post(f"{up_stack.base_url}/auth/token", json={"username": "admin", "password": "admin"})
    assert default.status_code == 401
    api = _api(up_stack)
    try:
        assert api.get("/pools/vlm")["slots"] == 8  # VLM_POOL_SLOTS's default: 2 tasks x (3 backfill runs + daily)
        assert api.get("/pools/curate")["slots"] == 4
        _wait_for_dags(api)
        for dag_id in DAGS:  # the docs the UI shows under "Dag Docs": what the DAG is for and its params
            doc = api.get(f"/dags/{dag_id}/details")["doc_md"]
            assert f"### {dag_id}" in doc and "**Params**" in doc, dag_id
    finally:
        api.close()


def _wait_for_dags(api: AirflowAPI, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if {d["dag_id"] for d in api.get("/dags", tags="tuwen")["dags"]} >= set(DAGS):
            return
        time.sleep(2)
    raise AssertionError("the tuwen DAGs were not parsed")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), "install chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_signs_in_and_sees_each_dag_graph(up_stack: UpStack, browser: object,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: object = browser
    started = time.monotonic()
    api = _api(up_stack)
    try:
        _wait_for_dags(api)
        assert api.get("/importErrors")["total_entries"] == 0
    finally:
        api.close()
    shots = tmp_path_factory.mktemp("ui-screenshots")
    wait = WebDriverWait(driver, 60)
    driver.get(f"{up_stack.base_url}/")  # type: ignore[attr-defined]
    # Anonymous: the UI sends us to the SimpleAuthManager sign-in form.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
    assert "/auth/login" in driver.current_url  # type: ignore[attr-defined]
    username = driver.find_element(By.CSS_SELECTOR, "input:not([type=password])")  # type: ignore[attr-defined]
    username.send_keys(up_stack.user)
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(up_stack.password)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # type: ignore[attr-defined]
    wait.until(lambda d: "/auth/login" not in d.current_url)
    # The UI remembers the preferred DAG view in local storage; ask for the graph.
    driver.execute_script("window.localStorage.setItem('default_dag_view', JSON.stringify('graph'))")  # type: ignore[attr-defined]
    for dag_id, n_tasks in DAGS.items():
        driver.get(f"{up_stack.base_url}/dags/{dag_id}")  # type: ignore[attr-defined]
        wait.until(lambda d, n=n_tasks: len(d.find_elements(By.CSS_SELECTOR, ".react-flow__node")) >= n)
        time.sleep(1.5)  # let the layout settle before the picture
        body = driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        assert dag_id in body
        assert "import error" not in body.lower()
        nodes = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".react-flow__node"))  # type: ignore[attr-defined]
        assert "synthesize" in nodes or "crawl_site" in nodes or "export_release" in nodes
        png = shots / f"{dag_id}-graph.png"
        assert driver.save_screenshot(str(png))  # type: ignore[attr-defined]
        # A real render is tens of kilobytes; a blank page compresses to a few hundred bytes.
        assert png.stat().st_size > 20_000, png
        print(f"screenshot: {png} ({png.stat().st_size} bytes)")
        if os.environ.get("TUWEN_SCREENSHOT_DIR"):  # keep them past pytest's tmp retention, to look at
            Path(os.environ["TUWEN_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, os.environ["TUWEN_SCREENSHOT_DIR"])
    print(f"UI test: {time.monotonic() - started:.0f}s")
