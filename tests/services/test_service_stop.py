"""Stopping a background service: SIGTERM, then SIGKILL for a process group that ignores it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tuwen.local.services import BackgroundService, free_port

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def started(tmp_path: Path, code: str) -> tuple[BackgroundService, subprocess.Popen[str]]:
    service = BackgroundService(name="stubborn", argv=[], health_url="http://127.0.0.1:9/", run_dir=tmp_path)
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"  # handler installed
    service.pid_file.write_text(str(process.pid))
    # Reap it the moment it dies, as init does for a service `tuwen up` started: a zombie would still
    # count as a member of its process group.
    threading.Thread(target=process.wait, daemon=True).start()
    return service, process


def test_a_group_that_ignores_sigterm_is_killed_and_gone_when_stop_returns(tmp_path: Path) -> None:
    service, process = started(tmp_path, IGNORES_SIGTERM)
    began = time.monotonic()
    assert service.stop() == f"stubborn: killed (pid {process.pid})"
    assert not group_alive(process.pid)  # gone when stop returns, not some time later
    # The reaper thread may not have stored the status yet: wait() joins it (it is already reaped).
    assert process.wait(timeout=1) == -signal.SIGKILL
    assert 4 < time.monotonic() - began < 10 and not service.pid_file.exists()


def test_a_group_that_honours_sigterm_is_stopped(tmp_path: Path) -> None:
    service, process = started(tmp_path, "import time; print('ready', flush=True); time.sleep(60)")
    began = time.monotonic()
    assert service.stop() == f"stubborn: stopped (pid {process.pid})"
    assert process.wait(timeout=5) == -signal.SIGTERM and time.monotonic() - began < 3


def test_a_service_this_process_started_is_reaped_and_reported_stopped_at_once(tmp_path: Path) -> None:
    # The stopped child stays a zombie (a member of its group) until its parent reaps it: stop() must
    # reap it rather than wait for the group to vanish and then SIGKILL a process that already exited.
    port = free_port()
    service = BackgroundService(name="web", argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                health_url=f"http://127.0.0.1:{port}/", run_dir=tmp_path)
    service.start()
    assert service.process is not None
    began = time.monotonic()
    assert service.stop() == f"web: stopped (pid {service.process.pid})"
    assert time.monotonic() - began < 3 and service.process.returncode == -signal.SIGTERM
