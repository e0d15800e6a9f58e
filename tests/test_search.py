"""End-to-end search runs on a tiny space and a small MNIST subset (real Optuna, OpenVINO, training).

Most tests read one shared finished run (`tiny_run` in conftest: feasible and over-budget trials);
the CLI's `main` runs in process unless a test is about the process itself (exit code, one line).
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nas.errors import UserError, run_cli
from tests.conftest import CHANCE, TINY_TRIALS, TinyRun, copy_run

TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
FAST = ["--space", str(TINY_SPACE), "--epochs", "1", "--limit", "300", "--quick-latency", "--quiet",
        "--no-baselines", "--no-fit", "--threads", "2"]


def search(results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.search", "--results", str(results), *FAST, *args],
                          capture_output=True, text=True, timeout=600)


def search_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python -m nas.search ARGS` as its `main` under `run_cli`: (exit code, stderr)."""
    from nas.search import main

    capsys.readouterr()
    try:
        code = run_cli(main, args)
    except SystemExit as exc:  # argparse's own exits (--help)
        code = exc.code
    return code, capsys.readouterr().err


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{run_dir / 'study.db'}")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_end_to_end_writes_every_result_file(tiny_run: TinyRun) -> None:
    run = tiny_run.path
    for name in ("config.yaml", "environment.json", "study.db", "trials.csv", "pareto.png", "pareto.html",
                 "summary.md", "front.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == TINY_TRIALS and all(r["state"] == "COMPLETE" for r in rows)
    feasible = [r for r in rows if r["feasible"] == "True"]
    assert feasible and len(feasible) < len(rows), "the budget lies between the trials' latencies"
    for row in rows:
        assert (float(row["latency_ms"]) <= tiny_run.budget_ms) == (row["feasible"] == "True"), row
        assert row["trained"] == row["feasible"], row  # trained exactly when within budget
    # 600 MNIST images, 2 epochs: every trained tiny model beats chance (measured 0.27-0.32)
    assert all(float(r["accuracy"]) > 2 * CHANCE for r in feasible), [r["accuracy"] for r in feasible]
    summary = (run / "summary.md").read_text()
    assert "Pareto-optimal" in summary
    assert f"within budget: {len(feasible)}, over budget: {len(rows) - len(feasible)}" in summary


def test_the_search_read_the_latencies_timed_before_it(tiny_run: TinyRun) -> None:
    """The run's latency cache served every trial: what decides feasibility is a recorded measurement."""
    recorded = {t.user_attrs["arch_hash"]: t.user_attrs["latency_ms"] for t in study_of(tiny_run.path).trials}
    assert recorded == tiny_run.latency_ms


def test_over_budget_trials_are_never_trained(tiny_run: TinyRun) -> None:
    trials = study_of(tiny_run.path).trials
    over = [t for t in trials if t.user_attrs["latency_ms"] > tiny_run.budget_ms]
    assert over and all(t.constraints["latency"] > 0 for t in over)
    for trial in over:
        attrs = trial.user_attrs
        assert attrs["trained"] is False and "curve" not in attrs and attrs["epochs"] == 0
        assert attrs["stop_reason"].startswith("over budget") and trial.values[0] == 0.0
    checkpoints = {p.name.split("-")[0] for p in (tiny_run.path / "checkpoints").iterdir()}
    assert checkpoints == {str(t.number) for t in trials if t not in over}


def test_winners_are_the_feasible_front_and_reload(tiny_run: TinyRun) -> None:
    from nas.runs import get_winner, list_winners

    study = study_of(tiny_run.path)
    front = json.loads((tiny_run.path / "front.json").read_text())
    winners = list_winners(tiny_run.path)
    assert front and len(winners) == len(front)
    by_number = {t.number: t for t in study.trials}
    for entry in front:
        trial = by_number[entry["trial"]]
        assert trial.user_attrs["trained"] and entry["latency_ms"] == trial.values[1] <= tiny_run.budget_ms
    for directory in sorted((tiny_run.path / "winners").iterdir()):
        assert {p.name for p in directory.iterdir()} >= {"arch.yaml", "weights.pt", "metrics.json"}
    winner = get_winner(tiny_run.path, None)
    assert winner.metrics["latency_ms"] <= tiny_run.budget_ms
    assert winner.metrics["accuracy"] == max(e["accuracy"] for e in front)
    model = winner.model()
    import torch

    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_resume_keeps_completed_trials_and_adds_more(tiny_run: TinyRun, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path)
    before = {t.number: (t.values, t.user_attrs["arch_hash"]) for t in study_of(run.path).trials}
    code, err = search_in_process(run.args("--trials", str(TINY_TRIALS + 2)), capsys)
    assert code == 0, err
    after = study_of(run.path).trials
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TINY_TRIALS + 2
    for trial in after:
        if trial.number in before:
            assert (trial.values, trial.user_attrs["arch_hash"]) == before[trial.number]


def test_resume_with_other_budget_is_refused(tiny_run: TinyRun) -> None:
    """The real process: exit 2, one stderr line, the run untouched."""
    before = tree_digest(tiny_run.path)
    args = tiny_run.args()
    args[args.index("--budget-ms") + 1] = "3"
    out = subprocess.run([sys.executable, "-m", "nas.search", *args, "--trials", "8"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2
    assert "budget_ms differs" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert tree_digest(tiny_run.path) == before


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (["--lr", "1e-3"], "lr"),
        (["--batch-size", "32"], "batch_size"),
        (["--epochs", "3"], "epochs"),
        (["--seed", "1"], "seed"),
        (["--sampler", "tpe"], "sampler"),
        (["--eta", "2"], "eta"),
        (["--limit", "200"], "limit"),
        (["--threads", "2"], "threads"),
        (["--data", "digits"], "data"),
        ([], "latency_settings"),  # resumed without --quick-latency: full timing settings
    ],
)
def test_resume_with_a_changed_identity_key_is_refused(tiny_run: TinyRun, change: list[str], key: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(tiny_run.path)
    args = tiny_run.args("--trials", "8", *change)
    if not change:
        args.remove("--quick-latency")
    code, err = search_in_process(args, capsys)
    assert code == 2, err
    assert f"{key} differs" in err and err.count("\n") == 1, err
    assert tree_digest(tiny_run.path) == before  # left untouched


def test_run_identity_is_validated() -> None:
    from pydantic import ValidationError

    from nas.identity import IDENTITY_KEYS, RunIdentity

    assert {"budget_ms", "space", "data", "seed", "epochs", "lr", "batch_size", "latency_settings", "sampler",
            "backend", "precision", "threads", "machine", "limit"} <= set(IDENTITY_KEYS)
    good = dict(budget_ms=5.0, space_file="s.yaml", space={}, proxy_resolution=64, target_resolution=224, data=None,
                limit=None, num_classes=10, seed=0, epochs=3, batch_size=64, lr=2e-3, min_epochs=1, eta=3,
                sampler="nsga2", backend="openvino", precision="fp32", threads=2, latency_settings={}, machine="m")
    RunIdentity(**good)
    for key, bad in (("budget_ms", -1.0), ("threads", 0), ("eta", 1), ("epochs", "3"), ("colour", "red")):
        with pytest.raises(ValidationError):
            RunIdentity(**{**good, key: bad})


def test_a_worker_with_another_identity_cannot_join_the_study() -> None:
    """Workers sharing a storage but not a run directory are checked against the study's record."""
    from nas.identity import RunIdentity
    from nas.search import check_study_identity

    good = dict(budget_ms=5.0, space_file="s.yaml", space={}, proxy_resolution=64, target_resolution=224, data=None,
                limit=None, num_classes=10, seed=0, epochs=3, batch_size=64, lr=2e-3, min_epochs=1, eta=3,
                sampler="nsga2", backend="openvino", precision="fp32", threads=2, latency_settings={}, machine="m")
    study = optuna.create_study(directions=["maximize", "minimize"])
    check_study_identity(study, RunIdentity(**good))  # the first worker records it
    check_study_identity(study, RunIdentity(**{**good, "space_file": "/elsewhere/s.yaml"}))  # same space, other path
    with pytest.raises(UserError, match=r"study 'no-name.*lr differs.*0.002 -> 0.001"):
        check_study_identity(study, RunIdentity(**{**good, "lr": 1e-3}))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--budget-ms", "-5"], "--budget-ms: must be a positive finite number"),
        (["--budget-ms", "abc"], "--budget-ms: expected a number"),
        (["--backend", "tensorrt"], "--backend: invalid choice"),
        (["--trials", "0"], "--trials: must be >= 1"),
        (["--data", "/no/such/dir"], "/no/such/dir"),
        (["--space", "/no/such.yaml"], "/no/such.yaml: file not found"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_cli_input_is_one_line_exit_2(tmp_path: Path, args: list[str], expected: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = search_in_process(["--results", str(tmp_path), *FAST, *args], capsys)
    assert code == 2, err
    assert expected in err
    assert err.strip().count("\n") == 0, err
    assert not any(tmp_path.iterdir()), "a refused search leaves nothing behind"


def test_bad_cli_input_in_a_real_process_is_one_line_exit_2(tmp_path: Path) -> None:
    out = search(tmp_path, "--budget-ms", "-5")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "--budget-ms: must be a positive finite number" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_cli_regenerates_files(tiny_run: TinyRun, tmp_path: Path) -> None:
    from nas.report import main

    run = copy_run(tiny_run, tmp_path)
    (run.path / "pareto.png").unlink()
    (run.path / "front.json").unlink()
    assert run_cli(main, ["--run", str(run.path)]) == 0
    assert (run.path / "pareto.png").is_file()
    assert (run.path / "front.json").read_text() == (tiny_run.path / "front.json").read_text()


def test_report_cli_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas.report import main

    assert run_cli(main, ["--run", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such run" in err and err.count("\n") == 1


def test_every_stage_knob_is_in_the_intersection_of_a_run_with_baselines(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Baselines enqueued with their encoding are ordinary members: Optuna's own intersection search
    space over the completed trials (what NSGA-II / multivariate TPE / GP model) holds every knob.
    A budget below the narrowest rung of every hand design: scaling times one rung per family."""
    from nas.search import main
    from nas.space import load_space

    args = [a for a in FAST if a != "--no-baselines"]
    args[args.index("--threads") + 1] = "1"
    assert run_cli(main, ["--results", str(tmp_path), *args, "--budget-ms", "0.3", "--trials", "5", "--epochs", "2",
                          "--run", "bl"]) == 0, capsys.readouterr().err
    complete = study_of(tmp_path / "bl").get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    baselines = [t for t in complete if t.user_attrs.get("baseline")]
    assert len(complete) == 5 and len(baselines) == 3
    common = optuna.search_space.intersection_search_space(complete)
    space = load_space(TINY_SPACE)
    assert set(common) == set(space.knobs())
    for i in range(len(space.stages)):
        assert {f"s{i}.mixer", f"s{i}.depth", f"s{i}.width"} <= set(common)
    for trial in baselines:  # the true hand design was evaluated; its parameters are its nearest encoding
        assert trial.user_attrs["arch"] == trial.user_attrs["baseline_arch"]
        assert space.encode(space.decode(trial.params, 10))[0] == trial.params
    for trial in complete:  # every trial says how many epochs it got and why it stopped
        attrs = trial.user_attrs
        if not attrs["trained"]:
            assert attrs["epochs"] == 0 and attrs["stop_reason"].startswith("over budget")
            continue
        (rung,) = attrs["rungs"]  # --epochs 2: one rung, after epoch 1
        assert rung["epoch"] == 1 and attrs["epochs"] == (2 if rung["promoted"] else 1) == len(attrs["curve"])
        assert attrs["stop_reason"] == (rung["reason"] if not rung["promoted"] else "trained all 2 epochs")
