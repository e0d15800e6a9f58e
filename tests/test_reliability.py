"""Reliability (issue 6): crashes, several workers, bad input and numerical faults lose nothing.

Real processes, real Optuna storages (SQLite, journal file, PostgreSQL), real training; faults come
from SIGKILL or from `nas.faults` (VITNAS_FAULTS). Runs use the tiny space, 100 images, 1 epoch and
the torch latency backend so that every search takes seconds.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import TinyRun, copy_run

TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
FAST = ["--space", str(TINY_SPACE), "--epochs", "1", "--limit", "100", "--quick-latency", "--quiet",
        "--no-baselines", "--no-fit", "--threads", "1", "--backend", "torch", "--batch-size", "32"]
# Debian's server binaries (`.ci/run` installs the `postgresql` package when they are missing)
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/usr/lib/postgresql"))


def search_cmd(results: Path, run: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "nas.search", "--results", str(results), "--run", run, *FAST, *args]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VITNAS_FAULTS", "VITNAS_TRACE")}
    return {**env, **extra}


def _as_from_a_terminal() -> None:
    """SIGINT as an interactive shell leaves it: a suite started in the background (`cmd &` without job
    control) hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def search(results: Path, run: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd(results, run, *args), capture_output=True, text=True, timeout=300,
                          env=env or env_with(), preexec_fn=_as_from_a_terminal)


def study_of(run_dir: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=storage or f"sqlite:///{run_dir / 'study.db'}")


def completed(study: optuna.Study) -> dict[int, tuple]:
    """Identity of each completed trial: number -> (values, arch hash, completion time)."""
    return {t.number: (tuple(t.values), t.user_attrs["arch_hash"], t.datetime_complete)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}


def assert_none_lost(before: dict[int, tuple], study: optuna.Study) -> None:
    after = completed(study)
    lost = {n for n in before if after.get(n) != before[n]}
    assert not lost, f"completed trials lost or changed: {sorted(lost)}"


def assert_none_duplicated(study: optuna.Study) -> None:
    """No trial number twice, and no completed trial was run again (retries only follow failures)."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    state = {t.number: t.state for t in trials}
    origins = []
    for t in trials:
        history = t.system_attrs.get("retry_history", [])
        assert all(state[n] == TrialState.FAIL for n in history), f"trial {t.number} re-ran a non-failed trial"
        if t.state == TrialState.COMPLETE and history:
            origins.append(history[0])
    assert len(origins) == len(set(origins)), "one failed trial was completed twice by retries"


def assert_files_whole(run_dir: Path) -> None:
    """Every result file present parses; nothing half-written is left under a final name."""
    import matplotlib.image
    import torch

    from nas.report import CSV_COLUMNS
    from nas.space import load_arch_file

    checks = {
        "config.yaml": lambda p: isinstance(yaml.safe_load(p.read_text()), dict),
        "environment.json": lambda p: isinstance(json.loads(p.read_text()), dict),
        "front.json": lambda p: isinstance(json.loads(p.read_text()), list),
        "summary.md": lambda p: p.read_text().startswith("# Search summary"),
        "pareto.html": lambda p: p.read_text().rstrip().endswith("</html>"),
        "pareto.png": lambda p: matplotlib.image.imread(p).ndim == 3,
    }
    for name, check in checks.items():
        if (run_dir / name).exists():
            assert check(run_dir / name), name
    if (run_dir / "trials.csv").exists():
        rows = list(csv.DictReader((run_dir / "trials.csv").open()))
        assert rows and tuple(rows[0]) == CSV_COLUMNS
        assert len({r["number"] for r in rows}) == len(rows)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        assert torch.load(path, map_location="cpu", weights_only=True), path
    for winner in (run_dir / "winners").glob("*-*"):
        load_arch_file(winner / "arch.yaml")
        json.loads((winner / "metrics.json").read_text())
        torch.load(winner / "weights.pt", map_location="cpu", weights_only=True)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1. kill and resume ------------------------------------------------------------------------

KILL_ROUNDS = [  # (VITNAS_FAULTS for the round, what it hits); trial numbers follow from the retries
    ("kill:measure:1", "timing trial 1 (machine lock held)"),
    ("kill:train:2", "training trial 2 = trial 1 retried"),
    ("kill:done:3", "trial 3 finished, not yet recorded complete"),
    ("kill:report", "writing the results (trials.csv new, pareto.png not yet)"),
]


@pytest.mark.slow
def test_kill_at_every_phase_then_resume_loses_nothing(tmp_path: Path) -> None:
    run_dir, trials = tmp_path / "kill", 4
    before: dict[int, tuple] = {}
    for faults, _where in KILL_ROUNDS:
        out = search(tmp_path, "kill", "--budget-ms", "1000", "--trials", str(trials),
                     env=env_with(VITNAS_FAULTS=faults))
        assert out.returncode == -signal.SIGKILL, (faults, out.returncode, out.stderr)
        study = study_of(run_dir)
        assert_none_lost(before, study)
        assert_none_duplicated(study)
        assert_files_whole(run_dir)
        before = completed(study)
    out = search(tmp_path, "kill", "--budget-ms", "1000", "--trials", str(trials))  # the same command, no fault
    assert out.returncode == 0, out.stderr
    study = study_of(run_dir)
    assert_none_lost(before, study)
    assert_none_duplicated(study)
    assert_files_whole(run_dir)
    by_state = {s: [t for t in study.trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == trials and not by_state[TrialState.RUNNING]
    # Trials 1, 2 and 3 died with their workers: failed on resume with the reason, 1 retried as 2, 2 as 3.
    assert {t.number for t in by_state[TrialState.FAIL]} == {1, 2, 3}
    assert all("died during the trial" in t.user_attrs["fail_reason"] for t in by_state[TrialState.FAIL])
    assert study.trials[3].system_attrs["retry_history"] == [1, 2]
    rows = {int(r["number"]): r for r in csv.DictReader((run_dir / "trials.csv").open())}
    assert len(rows) == len(study.trials) and "died during the trial" in rows[2]["fail_reason"]
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".report.lock"]
    assert not leftovers, "the resumed report removes the killed one's temporary files"


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_loses_nothing(tmp_path: Path) -> None:
    rng, run_dir, trials = random.Random(6), tmp_path / "random", 5
    before: dict[int, tuple] = {}
    landed = []
    for _ in range(3):
        trace = tmp_path / "trace.log"
        trace.unlink(missing_ok=True)
        proc = subprocess.Popen(search_cmd(tmp_path, "random", "--budget-ms", "1000", "--trials", str(trials)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env_with(VITNAS_TRACE=str(trace)))
        deadline = time.monotonic() + 60
        while not (run_dir / "study.db").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # start-up (imports, data) is not interesting: kill inside the search loop
        time.sleep(rng.uniform(0.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        events = trace.read_text().split() if trace.exists() else []
        landed.append(events[-3] if events and events[-3].endswith("start") else "outside the lock")
        if run_dir.joinpath("study.db").exists():
            study = study_of(run_dir)
            assert_none_lost(before, study)
            assert_none_duplicated(study)
            before = completed(study)
        assert_files_whole(run_dir)
    out = search(tmp_path, "random", "--budget-ms", "1000", "--trials", str(trials))
    assert out.returncode == 0, out.stderr
    study = study_of(run_dir)
    assert_none_lost(before, study)
    assert_none_duplicated(study)
    assert_files_whole(run_dir)
    assert len(completed(study)) == trials
    assert not study.get_trials(states=(TrialState.RUNNING,))
    print(f"random kills landed in: {landed}")


# --- 2. several workers --------------------------------------------------------------------------

def run_workers(results: Path, storage: str, trials: int, trace: Path, n: int = 2) -> None:
    cmd = search_cmd(results, "shared", "--budget-ms", "1000", "--trials", str(trials), "--storage", storage)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_with(VITNAS_TRACE=str(trace))) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err


def intervals(trace: Path) -> dict[str, list[tuple[int, float, float]]]:
    """(pid, start, end) per kind ('measure', 'train') from VITNAS_TRACE lines, on the monotonic clock."""
    opened: dict[tuple[int, str], float] = {}
    spans: dict[str, list[tuple[int, float, float]]] = {"measure": [], "train": []}
    for line in trace.read_text().splitlines():
        pid, event, _wall, mono = line.split()
        kind, edge = event.split("_")
        if edge == "start":
            opened[(int(pid), kind)] = float(mono)
        else:
            spans[kind].append((int(pid), opened.pop((int(pid), kind)), float(mono)))
    assert not opened, "every interval closed"
    return spans


def assert_workers_shared_the_study(study: optuna.Study, trials: int, trace: Path) -> None:
    all_trials = study.get_trials(deepcopy=False)
    done = [t for t in all_trials if t.state == TrialState.COMPLETE]
    assert len(done) == trials, [(t.number, t.state.name) for t in all_trials]
    assert len({t.number for t in all_trials}) == len(all_trials)
    assert not [t for t in all_trials if t.state == TrialState.RUNNING]
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2, "both workers completed trials"
    spans = intervals(trace)
    overlaps = [(m, t) for m in spans["measure"] for t in spans["train"]
                if m[0] != t[0] and m[1] < t[2] and t[1] < m[2]]
    assert not overlaps, f"timing overlapped another worker's training: {overlaps[:3]}"
    # Both workers trained; measurements may all fall to one worker (the latency cache is shared).
    assert spans["measure"] and len({pid for pid, _, _ in spans["train"]}) == 2
    print(f"{len(done)}/{trials} trials, {len(spans['measure'])} measurements, {len(spans['train'])} epochs, "
          f"{len(overlaps)} overlaps")


@pytest.mark.slow
def test_two_workers_share_a_journal_study(tmp_path: Path) -> None:
    journal, trace, trials = tmp_path / "journal.log", tmp_path / "trace.log", 6
    run_workers(tmp_path, f"journal:{journal}", trials, trace)
    from nas.search import storage_for

    study = optuna.load_study(study_name="search", storage=storage_for(f"journal:{journal}"))
    assert_workers_shared_the_study(study, trials, trace)
    assert_files_whole(tmp_path / "shared")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on localhost (run as `postgres` when we are root)."""
    if not (PG_BIN / "initdb").is_file():
        missing = f"PostgreSQL server binaries not found in {PG_BIN}"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: .ci/run installs them (Debian package postgresql)")
        pytest.skip(missing)
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed (pip install 'psycopg[binary]')")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="vitnas-pg-"))  # not under pytest's 0700 tmp: postgres must enter it
    if as_user:
        shutil.chown(root, "postgres")
    port, data = free_port(), root / "data"
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "vitnas", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://vitnas@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    trace, trials = tmp_path / "trace.log", 4
    run_workers(tmp_path, postgres_url, trials, trace)
    assert_workers_shared_the_study(study_of(tmp_path, postgres_url), trials, trace)


# --- 3. bad input -------------------------------------------------------------------------------

BAD_CLI = [  # (module, arguments, fragment of the one-line message)
    ("nas.report", ["--bogus"], "unrecognized arguments: --bogus"),
    ("nas.report", ["--run", "/no/such/run"], "no such run"),
    ("nas.latency", ["--bogus"], "unrecognized arguments"),
    ("nas.latency", ["--arch", "/no/such.yaml"], "/no/such.yaml"),
    ("nas.latency", ["--passes", "0"], "--passes"),
    ("nas.models", ["--bogus"], "unrecognized arguments"),
    ("nas.models", ["--resolution", "4"], "--resolution"),
    ("compress.prune", ["--bogus"], "unrecognized arguments"),
    ("compress.prune", ["--run", "/no/such/run", "--ratio", "0.3"], "no such run"),
    ("compress.quantize", ["--max-drop", "-1"], "--max-drop"),
    ("compress.export", ["--rounds", "x"], "--rounds"),
]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_many([[sys.executable, "-m", module, *args]])[0]


def in_process(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as its `main` under `run_cli` (start-up would dominate a real process);
    stderr is captured at the file-descriptor level by the `capfd` fixture of the calling test."""
    from nas.errors import run_cli

    main = importlib.import_module(module + (".__main__" if module in ("nas.latency", "nas.models") else "")).main
    try:
        code = run_cli(main, list(args))
    except SystemExit as exc:  # argparse's own exit: not turned into one line
        code = exc.code
    return subprocess.CompletedProcess(module, code, "", "")


def capture(capfd: pytest.CaptureFixture[str], module: str, *args: str) -> subprocess.CompletedProcess:
    capfd.readouterr()
    out = in_process(module, *args)
    return subprocess.CompletedProcess(out.args, out.returncode, "", capfd.readouterr().err)


def run_many(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run commands concurrently (they are mostly interpreter start-up) and collect their results."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with())
             for cmd in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]


def assert_one_line_exit_2(out: subprocess.CompletedProcess, expected: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert expected in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize(("module", "args", "expected"), BAD_CLI,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_to_every_cli_are_one_line_exit_2(module: str, args: list[str], expected: str,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """In process (the CLIs' `main` under `run_cli`, as `python -m` runs them): start-up would dominate."""
    assert_one_line_exit_2(capture(capfd, module, *args), expected)


def test_missing_or_corrupt_dataset_is_one_line_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    for cls in ("a", "b"):
        (tmp_path / "corrupt" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "corrupt" / cls / f"{i}.png").write_bytes(os.urandom(300))
    assert_one_line_exit_2(search(tmp_path, "x", "--data", str(tmp_path / "empty")), "directory is empty")  # real
    args = search_cmd(tmp_path, "x", "--data", str(tmp_path / "corrupt"))[3:]
    assert_one_line_exit_2(capture(capfd, "nas.search", *args), "cannot read image")
    assert not (tmp_path / "x").exists(), "a refused search leaves no run behind"


def test_corrupt_winner_weights_are_one_line_exit_2(tiny_run: TinyRun, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from nas.runs import get_winner

    run = copy_run(tiny_run, tmp_path).path
    (get_winner(run, None).directory / "weights.pt").write_bytes(b"not a checkpoint" * 10)  # the default winner
    assert_one_line_exit_2(capture(capfd, "compress.prune", "--run", str(run), "--ratio", "0.3"), "weights.pt")


def test_corrupt_winner_or_config_is_one_line_exit_2(tiny_run: TinyRun, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from nas.runs import get_winner

    run = copy_run(tiny_run, tmp_path).path
    winner = get_winner(run, None).directory  # the one compress takes by default
    (winner / "arch.yaml").write_text("stages: [[[ not yaml")
    assert_one_line_exit_2(capture(capfd, "compress.quantize", "--run", str(run)), "arch.yaml")
    (run / "config.yaml").write_text("- just\n- a list\n")
    assert_one_line_exit_2(capture(capfd, "nas.report", "--run", str(run)), "config.yaml")


def test_corrupt_study_is_one_line_exit_2(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path).path
    (run / "study.db").write_bytes(os.urandom(4096))
    assert_one_line_exit_2(run_module("nas.report", "--run", str(run)), "cannot open the study")  # real process


def test_bad_input_against_an_existing_run_changes_nothing(tiny_run: TinyRun, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(tiny_run.path)
    (tmp_path / "empty").mkdir()
    other_budget = tiny_run.args("--trials", "3")
    other_budget[other_budget.index("--budget-ms") + 1] = "3"
    attempts = [
        ("nas.search", other_budget),  # other settings: refused
        ("nas.search", tiny_run.args("--data", str(tmp_path / "empty"))),
        ("nas.search", tiny_run.args("--storage", "nosuchdb://x")),  # same settings, unusable storage
        ("nas.report", ["--run", str(tiny_run.path), "--storage", "sqlite:////no/such/x.db"]),
        ("compress.prune", ["--run", str(tiny_run.path), "--ratio", "5"]),
    ]
    for module, args in attempts:
        out = capture(capfd, module, *args)
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, (module, args, out.stderr)
    assert tree_digest(tiny_run.path) == before, f"{tiny_run.path} changed"


def test_budget_no_architecture_meets(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = capture(capfd, "nas.search", *search_cmd(tmp_path, "tight", "--budget-ms", "0.0001", "--trials", "2")[3:])
    assert out.returncode == 0, out.stderr  # the search worked; its answer is "nothing fits"
    assert [line for line in out.stderr.splitlines() if line.startswith("no feasible architecture")]
    summary = (tmp_path / "tight" / "summary.md").read_text()
    assert "**No feasible architecture**" in summary and "no trained trial within the budget" in summary
    assert json.loads((tmp_path / "tight" / "front.json").read_text()) == []
    assert not (tmp_path / "tight" / "checkpoints").exists(), "over-budget trials are never trained"
    assert_one_line_exit_2(capture(capfd, "compress.prune", "--run", str(tmp_path / "tight"), "--ratio", "0.3"),
                           "no winners")


# --- 4. numerical and runtime faults -------------------------------------------------------------

@pytest.mark.slow
def test_faulty_trials_fail_with_reason_and_the_search_goes_on(tmp_path: Path) -> None:
    out = search(tmp_path, "faults", "--budget-ms", "1000", "--trials", "2",
                 env=env_with(VITNAS_FAULTS="latency:0,export:1,train:2"))
    assert out.returncode == 1, out.stderr  # the search went on; 3 of 5 trials failed (more than a quarter)
    assert "error: 3 of 5 trials failed (more than 25%)" in out.stderr
    study = study_of(tmp_path / "faults")
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 2
    rows = list(csv.DictReader((tmp_path / "faults" / "trials.csv").open()))
    for phase, trial, row in zip(("latency", "export", "train"), study.trials, rows, strict=False):
        assert trial.user_attrs["fail_reason"] == f"InjectedFault: injected {phase} fault (VITNAS_FAULTS)"
        assert row["fail_reason"] == trial.user_attrs["fail_reason"]
    assert "trial 2 failed: InjectedFault: injected train fault" in out.stderr


@pytest.mark.slow
def test_diverging_training_fails_trials_then_stops_with_exit_1(tmp_path: Path) -> None:
    out = search(tmp_path, "diverge", "--budget-ms", "1000", "--trials", "8", "--lr", "1e9", "--batch-size", "8")
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped after 5 failed trials in a row; last: TrainingDiverged" in errors[0]
    rows = list(csv.DictReader((tmp_path / "diverge" / "trials.csv").open()))
    assert len(rows) == 5 and all(r["state"] == "FAIL" and "TrainingDiverged" in r["fail_reason"] for r in rows)
    assert any("nan" in r["fail_reason"] or "inf" in r["fail_reason"] for r in rows)
    assert_files_whole(tmp_path / "diverge")
