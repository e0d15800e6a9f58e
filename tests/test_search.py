"""End-to-end search runs on a tiny space and a small MNIST subset (real Optuna, OpenVINO, training)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nas.errors import UserError

TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
FAST = ["--space", str(TINY_SPACE), "--epochs", "1", "--limit", "300", "--quick-latency", "--quiet",
        "--no-baselines", "--threads", "2"]


def search(results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.search", "--results", str(results), *FAST, *args],
                          capture_output=True, text=True, timeout=600)


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{run_dir / 'study.db'}")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    out = search(results, "--budget-ms", "1000", "--trials", "3", "--run", "e2e")
    assert out.returncode == 0, out.stderr
    return results / "e2e"


def test_end_to_end_writes_every_result_file(finished_run: Path) -> None:
    for name in ("config.yaml", "environment.json", "study.db", "trials.csv", "pareto.png", "pareto.html",
                 "summary.md", "front.json"):
        assert (finished_run / name).is_file(), name
    rows = list(csv.DictReader((finished_run / "trials.csv").open()))
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    assert all(float(r["latency_ms"]) > 0 and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    winners = sorted((finished_run / "winners").iterdir())
    assert winners, "a 1000 ms budget admits every tiny model, so the front is not empty"
    for directory in winners:
        assert {p.name for p in directory.iterdir()} >= {"arch.yaml", "weights.pt", "metrics.json"}
    assert "Pareto-optimal" in (finished_run / "summary.md").read_text()


def test_winner_weights_reload_into_their_arch(finished_run: Path) -> None:
    from nas.runs import get_winner

    winner = get_winner(finished_run, None)
    model = winner.model()
    assert sum(p.numel() for p in model.parameters()) > 0
    assert winner.metrics["latency_ms"] <= 1000


def test_resume_keeps_completed_trials_and_adds_more(finished_run: Path) -> None:
    before = {t.number: (t.values, t.user_attrs["arch_hash"]) for t in study_of(finished_run).trials}
    out = search(finished_run.parent, "--budget-ms", "1000", "--trials", "5", "--run", "e2e")
    assert out.returncode == 0, out.stderr
    after = study_of(finished_run).trials
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5
    for trial in after:
        if trial.number in before:
            assert (trial.values, trial.user_attrs["arch_hash"]) == before[trial.number]


def test_resume_with_other_budget_is_refused(finished_run: Path) -> None:
    out = search(finished_run.parent, "--budget-ms", "3", "--trials", "5", "--run", "e2e")
    assert out.returncode == 2
    assert "budget_ms differs" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (["--lr", "1e-3"], "lr"),
        (["--batch-size", "32"], "batch_size"),
        (["--epochs", "2"], "epochs"),
        (["--seed", "1"], "seed"),
        (["--sampler", "tpe"], "sampler"),
        (["--eta", "2"], "eta"),
        (["--limit", "200"], "limit"),
        (["--threads", "1"], "threads"),
        (["--data", "digits"], "data"),
        ([], "latency_settings"),  # resumed without --quick-latency: full timing settings
    ],
)
def test_resume_with_a_changed_identity_key_is_refused(finished_run: Path, change: list[str], key: str) -> None:
    files = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    fast = FAST if change else [a for a in FAST if a != "--quick-latency"]
    out = subprocess.run([sys.executable, "-m", "nas.search", "--results", str(finished_run.parent), *fast,
                          "--budget-ms", "1000", "--trials", "5", "--run", "e2e", *change],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    assert f"{key} differs" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == files  # left untouched


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


def test_over_budget_trials_are_never_trained(tmp_path: Path) -> None:
    out = search(tmp_path, "--budget-ms", "0.001", "--trials", "3", "--run", "tight")
    assert out.returncode == 0, out.stderr
    trials = study_of(tmp_path / "tight").trials
    assert len(trials) == 3
    assert all(t.user_attrs["trained"] is False and "curve" not in t.user_attrs for t in trials)
    assert not (tmp_path / "tight" / "checkpoints").exists()
    assert "no trained trial within the budget" in (tmp_path / "tight" / "summary.md").read_text()


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
def test_bad_cli_input_is_one_line_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    out = search(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_report_cli_regenerates_files(finished_run: Path) -> None:
    (finished_run / "pareto.png").unlink()
    out = subprocess.run([sys.executable, "-m", "nas.report", "--run", str(finished_run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (finished_run / "pareto.png").is_file()


def test_report_cli_missing_run_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "nas.report", "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such run" in out.stderr


def test_every_stage_knob_is_in_the_intersection_of_a_run_with_baselines(tmp_path: Path) -> None:
    """Baselines enqueued with their encoding are ordinary members: Optuna's own intersection search
    space over the completed trials (what NSGA-II / multivariate TPE / GP model) holds every knob."""
    from nas.space import load_space

    args = [a for a in FAST if a != "--no-baselines"]
    out = subprocess.run([sys.executable, "-m", "nas.search", "--results", str(tmp_path), *args,
                          "--budget-ms", "2", "--trials", "5", "--epochs", "2", "--run", "bl"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
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
