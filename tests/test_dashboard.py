"""optuna-dashboard (installed by the set-up) opens a finished run's study.db, as summary.md says.

The real `optuna-dashboard` command on a free localhost port; the study is found through its HTTP API.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna

from nas.cli import installed_command
from tests.conftest import TinyRun, copy_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, deadline: float, server: subprocess.Popen) -> dict:
    """GET `url` as JSON, retrying while the server starts (it imports Optuna first)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            assert server.poll() is None, f"optuna-dashboard exited with {server.returncode}"
            assert time.monotonic() < deadline, f"optuna-dashboard did not answer {url}"
            time.sleep(0.3)


def test_dashboard_serves_a_finished_runs_study(tiny_run: TinyRun, tmp_path: Path) -> None:
    assert "optuna-dashboard" in (tiny_run.path / "summary.md").read_text()
    command = installed_command("optuna-dashboard")  # the README's test command does not activate the venv
    assert command, "optuna-dashboard is not installed (bash .ci/setup-venv installs it)"
    run = copy_run(tiny_run, tmp_path)  # the dashboard may write to the study (notes); not to the shared run
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{run.path / 'study.db'}")
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen([command, f"sqlite:///{run.path / 'study.db'}", "--port", str(port),
                               "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base, deadline = f"http://127.0.0.1:{port}/api", time.monotonic() + 120
        (summary,) = get_json(f"{base}/studies", deadline, server)["study_summaries"]
        assert summary["study_name"] == "search" and summary["directions"] == ["maximize", "minimize"]
        detail = get_json(f"{base}/studies/{summary['study_id']}?after=0", deadline, server)
        assert len(detail["trials"]) == len(study.trials)
        assert {t["number"] for t in detail["trials"]} == {t.number for t in study.trials}
        # The dashboard's Pareto front is Optuna's constrained one: the over-budget trials are not on it.
        feasible = {t.number for t in study.trials if t.constraints["latency"] <= 0}
        best = {t["number"] for t in detail["best_trials"]}
        assert best and best <= feasible
        assert best == {t.number for t in study.best_trials}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
