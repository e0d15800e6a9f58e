"""Several machines (issue 13): the run pins its latency device, training-only workers get their
latencies from a measuring worker through the study, and orphans are judged in UTC.

Real processes and a real PostgreSQL server (the throwaway one of tests/test_reliability.py); another
device is simulated with VITNAS_DEVICE_FINGERPRINT, another host with a `host:<name>` record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from nas.errors import UserError, run_cli
from nas.latency import MeasureSettings, describe_device
from nas.objective import latency_key
from nas.search import main, storage_for
from nas.search.roles import ANSWER, DEVICE_ATTR, REQUEST, join_study
from nas.workers import CLAIM_SECONDS, HOST_ATTR, is_orphan, worker_claim
from tests.test_reliability import intervals, postgres_url  # noqa: F401  (the throwaway server fixture)

TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
FAST = ["--space", str(TINY_SPACE), "--epochs", "1", "--limit", "100", "--quick-latency", "--quiet",
        "--no-baselines", "--no-fit", "--threads", "1", "--backend", "torch", "--batch-size", "32",
        "--budget-ms", "1000"]
OTHER_DEVICE = "a-gpu-box"


def worker(results: Path, storage: str, role: str, trace: Path, *args: str, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas.search", "--results", str(results), "--run", "shared", *FAST,
           "--storage", storage, "--role", role, *args]
    environ = {k: v for k, v in os.environ.items() if k not in ("VITNAS_FAULTS", "VITNAS_DEVICE_FINGERPRINT")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**environ, "VITNAS_TRACE": str(trace), **env})


def test_training_worker_gets_latencies_from_the_measuring_worker(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """A training-only worker on "another device" and a measuring worker share one PostgreSQL study:
    every latency is timed by the measuring worker on the pinned device, every trial trained by the other."""
    trials, trace = 3, tmp_path / "trace.log"
    # Separate results roots: as on two hosts, each worker keeps its own run directory and latency cache.
    measurer = worker(tmp_path / "device", postgres_url, "measure", trace, "--trials", str(trials))
    trainer = worker(tmp_path / "gpu", postgres_url, "train", trace, "--trials", str(trials),
                     VITNAS_DEVICE_FINGERPRINT=OTHER_DEVICE)
    (_, t_err), (m_out, m_err) = trainer.communicate(timeout=240), measurer.communicate(timeout=240)
    assert trainer.returncode == 0, t_err
    assert measurer.returncode == 0, m_err

    study = optuna.load_study(study_name="search", storage=postgres_url)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == trials
    assert {t.user_attrs["worker"]["pid"] for t in done} == {trainer.pid}
    pinned = study.user_attrs[DEVICE_ATTR]
    assert pinned["device_fingerprint"] != OTHER_DEVICE and pinned["backend"] == "torch" and pinned["threads"] == 1
    quick = MeasureSettings.quick()
    for trial in done:  # the decided latency is the measuring worker's record, first (and second) measurement
        answers = [study.user_attrs.get(ANSWER + latency_key(trial.user_attrs["arch_hash"], quick, i)) for i in (1, 2)]
        recorded = [a for a in answers if a is not None]
        assert recorded and all(a["device"] == pinned["device_fingerprint"] for a in recorded)
        assert trial.user_attrs["latency_ms"] == min(a["stats"]["estimate_ms"] for a in recorded)
    requests = [k for k in study.user_attrs if k.startswith(REQUEST)]
    assert requests and all(ANSWER + k.removeprefix(REQUEST) in study.user_attrs for k in requests)
    spans = intervals(trace)  # only the measuring worker timed ("train" spans include its export/compile)
    assert spans["measure"] and {pid for pid, _, _ in spans["measure"]} == {measurer.pid}
    assert trainer.pid in {pid for pid, _, _ in spans["train"]}
    assert f"measured {len(requests)} latency request(s)" in m_out
    assert (tmp_path / "gpu" / "shared" / "trials.csv").is_file()


def pinned_study(tmp_path: Path) -> str:
    """A study whose device was pinned by a timing worker on this machine (torch, 1 thread, fp32)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="search", storage=storage_for(url), directions=["maximize", "minimize"])
    join_study(study, "both", "torch", 1, "fp32", journal=False)
    return url


def test_a_worker_on_another_device_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = pinned_study(tmp_path)
    monkeypatch.setenv("VITNAS_DEVICE_FINGERPRINT", OTHER_DEVICE)
    for role in ("both", "measure"):
        code = run_cli(main, ["--results", str(tmp_path), "--run", role, *FAST, "--storage", url, "--role", role])
        err = capfd.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert OTHER_DEVICE in err and "--role train" in err
    study = optuna.load_study(study_name="search", storage=url)
    join_study(study, "train", "torch", 1, "fp32", journal=False)  # a training-only worker may join
    assert study.user_attrs[DEVICE_ATTR]["device_fingerprint"] != OTHER_DEVICE


def test_a_training_worker_without_a_measuring_worker_gives_up(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    code = run_cli(main, ["--results", str(tmp_path), "--run", "alone", *FAST, "--trials", "1", "--role", "train",
                          "--latency-wait", "1"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: no measuring worker timed") and "--role measure" in err[-1], err
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'alone' / 'study.db'}")
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].startswith("LatencyUnavailable")
    assert DEVICE_ATTR not in study.user_attrs  # a training-only worker pins no device
    assert [k for k in study.user_attrs if k.startswith(REQUEST)] == [REQUEST + latency_key(
        trial.user_attrs["arch_hash"], MeasureSettings.quick(), 1)]


def test_the_device_fingerprint_covers_backend_threads_and_precision() -> None:
    base = describe_device("torch", 1, "fp32")
    for other in (describe_device("openvino", 1, "fp32"), describe_device("torch", 2, "fp32"),
                  describe_device("torch", 1, "bf16")):
        assert other["device_fingerprint"] != base["device_fingerprint"]
        assert other["fingerprint"] == base["fingerprint"]  # the machine description underneath is the same
    assert base["runtime_version"] and base["logical_cpus"] and base["cpu"]


def test_journal_storage_is_refused_for_workers_on_several_hosts(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'journal.log'}"
    study = optuna.create_study(study_name="search", storage=storage_for(url), directions=["maximize", "minimize"])
    join_study(study, "both", "torch", 1, "fp32", journal=True)  # one host: fine, and recorded
    join_study(study, "train", "torch", 1, "fp32", journal=True)
    study.set_user_attr(HOST_ATTR + "elsewhere", {"role": "train"})
    with pytest.raises(UserError, match="elsewhere.*no heartbeat.*postgresql"):
        join_study(study, "both", "torch", 1, "fp32", journal=True)
    join_study(study, "both", "torch", 1, "fp32", journal=False)  # an RDB storage has the heartbeat


def running(start: datetime, claim: dict | None = None, number: int = 0) -> FrozenTrial:
    return FrozenTrial(number=number, state=TrialState.RUNNING, value=None, datetime_start=start,
                       datetime_complete=None, params={}, distributions={}, user_attrs={"worker": claim} if claim
                       else {}, system_attrs={}, intermediate_values={}, trial_id=number)


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_orphans_are_judged_in_utc(berlin: None) -> None:
    # Optuna's naive start is local time: 01:59:50 CET is 00:59:50 UTC; 20 s later clocks read 03:00:10 CEST.
    start = datetime(2026, 3, 29, 1, 59, 50)
    assert not is_orphan(running(start), now=datetime(2026, 3, 29, 1, 0, 10, tzinfo=UTC))  # not 1 h
    assert is_orphan(running(start), now=datetime(2026, 3, 29, 1, 0, 50, tzinfo=UTC))
    aware = datetime.now(UTC) - timedelta(seconds=CLAIM_SECONDS + 5)  # an aware start is taken as it is
    assert is_orphan(running(aware)) and not is_orphan(running(aware + timedelta(seconds=10)))
    # Workers on several hosts: an unclaimed trial's naive start may be another zone's; the heartbeat decides.
    assert not is_orphan(running(datetime.now() - timedelta(hours=2)), single_host=False)
    claim = worker_claim(0)
    assert datetime.fromisoformat(claim["claimed_utc"]).utcoffset() == timedelta(0)
    assert not is_orphan(running(datetime.now() - timedelta(hours=2), claim))  # our own live process


def test_fail_orphaned_trials_leaves_unclaimed_trials_of_a_multi_host_study_to_the_heartbeat(tmp_path: Path) -> None:
    from nas.search import fail_orphaned_trials

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["maximize", "minimize"])
    old = running(datetime.now() - timedelta(seconds=CLAIM_SECONDS + 60))
    study.add_trial(old)
    study.set_user_attr(HOST_ATTR + "elsewhere", {"role": "train"})
    assert fail_orphaned_trials(study) == []
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", directions=["maximize", "minimize"])
    study.add_trial(old)
    assert fail_orphaned_trials(study) == [0]
